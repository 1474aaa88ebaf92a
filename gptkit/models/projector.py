"""The projector: encoder features (B, N, d_enc) -> tokens in the language model's embedding width (B, N', d_lm).

An MLP (Linear, GELU, Linear), after an optional token reduction over the encoder's square grid:
"pool" averages each f x f block of cells, "shuffle" concatenates them (pixel shuffle, as nanoVLM and
Idefics3 do: no information is thrown away, the width grows f^2 times instead), so N' = N / f^2. Fewer
media tokens leave more of a small context for text. Knows nothing of which encoder it follows.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn as nn
import torch.nn.functional as F

from gptkit.errors import require


@dataclass
class ProjectorConfig:
    reduction: Literal["none", "pool", "shuffle"] = "none"
    factor: int = 2
    """Side of the block of grid cells merged into one token (pool and shuffle)."""

    def validate(self) -> None:
        require(self.reduction in ("none", "pool", "shuffle"),
                f"projector reduction must be none, pool or shuffle, got {self.reduction!r}")
        require(isinstance(self.factor, int) and self.factor >= 1, f"projector factor must be >= 1, got {self.factor}")

    def tokens_out(self, tokens_in: int) -> int:
        return tokens_in if self.reduction == "none" else tokens_in // self.factor ** 2


class Projector(nn.Module):
    def __init__(self, in_dim: int, out_dim: int, config: ProjectorConfig | None = None) -> None:
        super().__init__()
        self.config = config or ProjectorConfig()
        self.config.validate()
        width = in_dim * (self.config.factor ** 2 if self.config.reduction == "shuffle" else 1)
        self.mlp = nn.Sequential(nn.Linear(width, out_dim), nn.GELU(), nn.Linear(out_dim, out_dim))

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.mlp(self.reduce(features))

    def reduce(self, x: torch.Tensor) -> torch.Tensor:
        mode, f = self.config.reduction, self.config.factor
        if mode == "none" or f == 1:
            return x
        B, N, d = x.shape
        side = math.isqrt(N)
        require(side * side == N and side % f == 0,
                f"token reduction needs a square grid whose side is a multiple of {f}; got {N} tokens")
        grid = x.transpose(1, 2).reshape(B, d, side, side)
        if mode == "pool":
            return F.avg_pool2d(grid, f).flatten(2).transpose(1, 2)
        # Pixel shuffle in reverse: each f x f block of cells becomes one cell with f^2 times the channels.
        return F.pixel_unshuffle(grid, f).flatten(2).transpose(1, 2)
