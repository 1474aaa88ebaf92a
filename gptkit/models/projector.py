"""The projector: encoder features (B, N, d_enc) -> tokens in the language model's embedding width (B, N', d_lm).

An MLP (Linear, GELU, Linear), after an optional token reduction. Over an image encoder's square grid
("grid" layout), "pool" averages each f x f block of cells and "shuffle" concatenates them (pixel shuffle,
as nanoVLM and Idefics3 do: no information is thrown away, the width grows f^2 times instead), so
N' = N / f^2. Over an audio encoder's time axis ("sequence" layout) the same is done to runs of f
consecutive positions, so N' = N / f. Fewer media tokens leave more of a small context for text. Knows
nothing of which encoder it follows.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn as nn
import torch.nn.functional as F

from gptkit.errors import require

Layout = Literal["grid", "sequence"]


@dataclass
class ProjectorConfig:
    reduction: Literal["none", "pool", "shuffle"] = "none"
    factor: int = 2
    """Side of the block of grid cells merged into one token (pool and shuffle)."""

    def validate(self) -> None:
        require(self.reduction in ("none", "pool", "shuffle"),
                f"projector reduction must be none, pool or shuffle, got {self.reduction!r}")
        require(isinstance(self.factor, int) and self.factor >= 1, f"projector factor must be >= 1, got {self.factor}")

    def merged(self, layout: Layout) -> int:
        """Encoder tokens that become one media token."""
        if self.reduction == "none":
            return 1
        return self.factor ** 2 if layout == "grid" else self.factor

    def tokens_out(self, tokens_in: int, layout: Layout = "grid") -> int:
        return tokens_in // self.merged(layout)


class Projector(nn.Module):
    def __init__(self, in_dim: int, out_dim: int, config: ProjectorConfig | None = None,
                 layout: Layout = "grid") -> None:
        super().__init__()
        self.config = config or ProjectorConfig()
        self.config.validate()
        require(layout in ("grid", "sequence"), f"projector layout must be grid or sequence, got {layout!r}")
        self.layout = layout
        width = in_dim * (self.config.merged(layout) if self.config.reduction == "shuffle" else 1)
        self.mlp = nn.Sequential(nn.Linear(width, out_dim), nn.GELU(), nn.Linear(out_dim, out_dim))

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.mlp(self.reduce(features))

    def reduce(self, x: torch.Tensor) -> torch.Tensor:
        mode, f = self.config.reduction, self.config.factor
        if mode == "none" or f == 1:
            return x
        B, N, d = x.shape
        if self.layout == "sequence":  # runs of f positions in time; a last partial run is dropped
            require(N >= f, f"token reduction by {f} needs at least {f} positions; got {N}")
            runs = x[:, : N - N % f].reshape(B, N // f, f, d)
            return runs.mean(dim=2) if mode == "pool" else runs.flatten(2)
        side = math.isqrt(N)
        require(side * side == N and side % f == 0,
                f"token reduction needs a square grid whose side is a multiple of {f}; got {N} tokens")
        grid = x.transpose(1, 2).reshape(B, d, side, side)
        if mode == "pool":
            return F.avg_pool2d(grid, f).flatten(2).transpose(1, 2)
        # Pixel shuffle in reverse: each f x f block of cells becomes one cell with f^2 times the channels.
        return F.pixel_unshuffle(grid, f).flatten(2).transpose(1, 2)
