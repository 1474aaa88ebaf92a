"""Image encoders: pixels (B, C, H, W) in [0, 1] -> feature tokens (B, N, d); knows nothing of text, files or training.

Two kinds, chosen by `VisionConfig.kind`:
- "vit" (Dosovitskiy et al. 2020): non-overlapping patches, a linear patch embedding, learned positions
  and pre-norm Transformer blocks with bidirectional attention. N = (image_size / patch_size)^2.
- "cnn": two stride-2 3x3 convolutions (GELU), then the feature map's cells as tokens, with learned
  positions and the same Transformer blocks (0 blocks is allowed). N = (image_size / 4)^2. On small
  images and few examples its locality prior learns faster than a ViT's.

The Transformer blocks are the encoder kind the audio encoder shares (`gptkit.models.encoder`: no causal
mask); the language model's blocks live in `gptkit.models.gpt`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn as nn

from gptkit.errors import require
from gptkit.models.encoder import EncoderBlock


@dataclass
class VisionConfig:
    kind: Literal["vit", "cnn"] = "cnn"
    image_size: int = 28
    """Images are resized to image_size x image_size before encoding (see `gptkit.data.images`)."""
    channels: int = 1
    """1 for grey images (MNIST), 3 for RGB."""
    patch_size: int = 7
    """vit: side of a square patch; image_size must be a multiple of it."""
    n_embd: int = 64
    n_layer: int = 1
    n_head: int = 4
    dropout: float = 0.0

    def validate(self) -> None:
        require(self.kind in ("vit", "cnn"), f"vision kind must be 'vit' or 'cnn', got {self.kind!r}")
        for name in ("image_size", "channels", "n_embd", "n_head", "patch_size"):
            value = getattr(self, name)
            require(isinstance(value, int) and value >= 1, f"vision {name} must be an integer >= 1, got {value!r}")
        require(isinstance(self.n_layer, int) and self.n_layer >= 0, f"vision n_layer must be >= 0, got {self.n_layer}")
        require(self.n_embd % self.n_head == 0, f"vision n_embd ({self.n_embd}) must be divisible by n_head "
                                                f"({self.n_head})")
        if self.kind == "vit":
            require(self.image_size % self.patch_size == 0,
                    f"vision image_size ({self.image_size}) must be a multiple of patch_size ({self.patch_size})")
        else:
            require(self.image_size % 4 == 0, f"a cnn encoder needs image_size divisible by 4, got {self.image_size}")
        require(0.0 <= self.dropout < 1.0, f"vision dropout must be in [0, 1), got {self.dropout}")

    @property
    def grid(self) -> int:
        """Tokens per side of the output grid."""
        return self.image_size // (self.patch_size if self.kind == "vit" else 4)

    @property
    def num_tokens(self) -> int:
        return self.grid ** 2


class VisionEncoder(nn.Module):
    """A ViT or a small CNN (see the module docstring), then Transformer blocks and a final LayerNorm."""

    def __init__(self, config: VisionConfig) -> None:
        super().__init__()
        config.validate()
        self.config = config
        self.out_dim = config.n_embd
        C, d = config.channels, config.n_embd
        if config.kind == "vit":
            # A patch embedding is a convolution whose kernel and stride are the patch size.
            self.stem: nn.Module = nn.Conv2d(C, d, kernel_size=config.patch_size, stride=config.patch_size)
        else:
            self.stem = nn.Sequential(nn.Conv2d(C, d // 2, 3, stride=2, padding=1), nn.GELU(),
                                      nn.Conv2d(d // 2, d, 3, stride=2, padding=1), nn.GELU())
        self.pos = nn.Parameter(torch.randn(1, config.num_tokens, d) / math.sqrt(d))
        self.blocks = nn.ModuleList(EncoderBlock(d, config.n_head, config.dropout) for _ in range(config.n_layer))
        self.norm = nn.LayerNorm(d)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        c = self.config
        require(images.dim() == 4 and tuple(images.shape[1:]) == (c.channels, c.image_size, c.image_size),
                f"images must be (batch, {c.channels}, {c.image_size}, {c.image_size}), got {tuple(images.shape)}")
        x = self.stem(images.to(self.pos.dtype) * 2 - 1)  # centre [0, 1] pixels on 0
        x = x.flatten(2).transpose(1, 2) + self.pos  # (B, N, d): grid cells as tokens, row-major
        for block in self.blocks:
            x = block(x)
        return self.norm(x)
