"""Image encoders: pixels (B, C, H, W) in [0, 1] -> tokens (B, N, d); knows nothing of text, checkpoints or training.

Three kinds, chosen by `VisionConfig.kind`:
- "vit" (Dosovitskiy et al. 2020): non-overlapping patches, a linear patch embedding, learned positions
  and pre-norm Transformer blocks with bidirectional attention. N = (image_size / patch_size)^2.
- "cnn": two stride-2 3x3 convolutions (GELU), then the feature map's cells as tokens, with learned
  positions and the same Transformer blocks (0 blocks is allowed). N = (image_size / 4)^2. On small
  images and few examples its locality prior learns faster than a ViT's.
- "pretrained": a CLIP or SigLIP vision tower (transformers) or a timm ViT, read from a local directory
  (`gptkit.models.pretrained_vision`). N = (image_size / patch_size)^2 patch tokens of the tower's width.

      vision = VisionConfig.from_pretrained("models/siglip-base")  # reads the directory's config only
      model = build_multimodal(gpt, MultimodalConfig(vision=vision))
      model.vision.load_pretrained_weights()                        # the directory's weights, to train from

  The config records the tower's own config (`pretrained_config`), so a checkpoint rebuilds the tower
  from multimodal.json and takes its weights from model.safetensors: the directory is needed for training only.

The Transformer blocks are the encoder kind the audio encoder shares (`gptkit.models.encoder`: no causal
mask); the language model's blocks live in `gptkit.models.gpt`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch
import torch.nn as nn

from gptkit.errors import require
from gptkit.models.encoder import EncoderBlock
from gptkit.models.pretrained_vision import SPEC_KEYS, PretrainedTower, describe_tower

KINDS = ("vit", "cnn", "pretrained")


@dataclass
class VisionConfig:
    kind: Literal["vit", "cnn", "pretrained"] = "cnn"
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
    pretrained: str = ""
    """pretrained: the local directory the tower was read from (needed to load its weights, not a checkpoint)."""
    pretrained_config: dict[str, Any] = field(default_factory=dict)
    """pretrained: the tower's description (`describe_tower`: its own config, image mean/std and geometry),
    enough to rebuild its architecture. Filled by `from_pretrained`; image_size, patch_size, n_embd, n_layer
    and n_head are copied from it."""

    @classmethod
    def from_pretrained(cls, path: str | Path) -> VisionConfig:
        """The config of the pretrained tower in local directory `path` (reads its config files, not its weights)."""
        spec = describe_tower(path)
        return cls(kind="pretrained", pretrained=str(path), pretrained_config=spec, image_size=spec["image_size"],
                   channels=3, patch_size=spec["patch_size"], n_embd=spec["hidden_size"], n_layer=spec["num_layers"],
                   n_head=spec["num_heads"], dropout=0.0)

    def validate(self) -> None:
        require(self.kind in KINDS, f"vision kind must be one of {', '.join(KINDS)}, got {self.kind!r}")
        if self.kind == "pretrained":
            self.validate_pretrained()
            return
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

    def validate_pretrained(self) -> None:
        spec = self.pretrained_config
        where = repr(self.pretrained) if self.pretrained else "'path/to/tower'"
        require(isinstance(spec, dict) and bool(spec),
                f"vision kind 'pretrained' needs the tower's description (pretrained_config): build the config with "
                f"VisionConfig.from_pretrained({where})")
        missing = [key for key in SPEC_KEYS if key not in spec]
        require(not missing, f"vision pretrained_config lacks {missing}: build the config with "
                             f"VisionConfig.from_pretrained({where})")
        require(spec["library"] in ("transformers", "timm"),
                f"vision pretrained_config library must be 'transformers' or 'timm', got {spec['library']!r}")
        require(self.channels == 3, f"a pretrained vision tower takes RGB images: channels must be 3, got "
                                    f"{self.channels}")
        for name, key in (("image_size", "image_size"), ("patch_size", "patch_size"), ("n_embd", "hidden_size")):
            require(getattr(self, name) == spec[key],
                    f"vision {name} ({getattr(self, name)}) must be the pretrained tower's {key} ({spec[key]}): "
                    "build the config with VisionConfig.from_pretrained(path)")

    @property
    def grid(self) -> int:
        """Tokens per side of the output grid."""
        return self.image_size // (4 if self.kind == "cnn" else self.patch_size)

    @property
    def num_tokens(self) -> int:
        return self.grid ** 2


class VisionEncoder(nn.Module):
    """A ViT or a small CNN (see the module docstring), then Transformer blocks and a final LayerNorm;
    or, for kind "pretrained", the pretrained tower (its architecture only, until `load_pretrained_weights`)."""

    def __init__(self, config: VisionConfig) -> None:
        super().__init__()
        config.validate()
        self.config = config
        self.out_dim = config.n_embd
        if config.kind == "pretrained":
            self.tower = PretrainedTower(config.pretrained_config)
            return
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
        if c.kind == "pretrained":
            return self.tower(images)
        x = self.stem(images.to(self.pos.dtype) * 2 - 1)  # centre [0, 1] pixels on 0
        x = x.flatten(2).transpose(1, 2) + self.pos  # (B, N, d): grid cells as tokens, row-major
        for block in self.blocks:
            x = block(x)
        return self.norm(x)

    def load_pretrained_weights(self, path: str | Path | None = None) -> None:
        """Kind "pretrained": copy the tower's pretrained weights from `path` (default: `config.pretrained`).

        Call it once on a new model before training; a checkpoint's weights come from its model.safetensors."""
        require(self.config.kind == "pretrained", f"a {self.config.kind!r} vision encoder has no pretrained weights")
        path = path or self.config.pretrained
        require(bool(path), "no directory to load the vision tower's weights from: pass a path or set "
                            "VisionConfig.pretrained")
        self.tower.load_weights(path)
