"""The modules PEFT puts into a built GPT: low-rank updates (LoRA, AdaLoRA's SVD form) around a linear layer, and
bottleneck adapters after a sublayer; knows nothing of configs or files."""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F



class LoRAPart(nn.Module):
    """One low-rank update B·A (out × in): A Kaiming-uniform like nn.Linear's weight, B zero."""

    def __init__(self, in_features: int, out_features: int, rank: int, like: torch.Tensor) -> None:
        super().__init__()
        self.A = nn.Parameter(torch.empty(rank, in_features, device=like.device, dtype=like.dtype))
        self.B = nn.Parameter(torch.zeros(out_features, rank, device=like.device, dtype=like.dtype))
        nn.init.kaiming_uniform_(self.A, a=math.sqrt(5))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(F.linear(x, self.A), self.B)  # two thin matmuls; B·A is never formed

    def weight(self) -> torch.Tensor:
        return self.B @ self.A


class SVDPart(nn.Module):
    """AdaLoRA's update Q·diag(Λ ⊙ mask)·P: P (r × in) and Q (out × r) orthogonal at init, Λ zero.

    The mask (a buffer, saved with the adapter) switches singular triplets off without deleting them.
    """

    def __init__(self, in_features: int, out_features: int, rank: int, like: torch.Tensor) -> None:
        super().__init__()
        P, Q = torch.empty(rank, in_features), torch.empty(out_features, rank)
        nn.init.orthogonal_(P)  # P·Pᵀ = I and Qᵀ·Q = I from the start: the regulariser starts at 0
        nn.init.orthogonal_(Q)
        self.P = nn.Parameter(P.to(like.device, like.dtype))
        self.lam = nn.Parameter(torch.zeros(rank, device=like.device, dtype=like.dtype))
        self.Q = nn.Parameter(Q.to(like.device, like.dtype))
        self.register_buffer("mask", torch.ones(rank, device=like.device, dtype=like.dtype))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(F.linear(x, self.P) * (self.lam * self.mask), self.Q)

    def weight(self) -> torch.Tensor:
        return (self.Q * (self.lam * self.mask)) @ self.P


class LowRankLinear(nn.Module):
    """`base(x)` plus `scaling`·(a low-rank update on each of some slices of the output rows).

    One module can carry several updates (q and v of the fused qkv); rows no update covers get zeros.
    """

    def __init__(self, base: nn.Linear, parts: dict[str, nn.Module], slices: dict[str, tuple[int, int]],
                 scaling: float, dropout: float) -> None:
        super().__init__()
        self.base = base
        self.lora = nn.ModuleDict(parts)
        self.slices = dict(sorted(slices.items(), key=lambda item: item[1][0]))
        self.scaling = scaling
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.base(x)
        h = self.dropout(x)
        pieces, end = [], 0
        for name, (start, stop) in self.slices.items():
            if start > end:
                pieces.append(y.new_zeros(*y.shape[:-1], start - end))
            pieces.append(self.lora[name](h))
            end = stop
        if end < y.shape[-1]:
            pieces.append(y.new_zeros(*y.shape[:-1], y.shape[-1] - end))
        return y + self.scaling * (torch.cat(pieces, dim=-1) if len(pieces) > 1 else pieces[0])

    def delta_weight(self) -> torch.Tensor:
        """The update as a (out, in) matrix, zero outside the slices: what merging adds to base.weight.
        Computed in fp32 at least (a bf16 model merges without rounding the update twice)."""
        weight = self.base.weight
        dtype = torch.promote_types(weight.dtype, torch.float32)
        delta = torch.zeros(weight.shape, dtype=dtype, device=weight.device)
        for name, (start, stop) in self.slices.items():
            delta[start:stop] = self.lora[name].weight().to(dtype)
        return self.scaling * delta


def _parts(kind: type[nn.Module], base: nn.Linear, rank: int,
           out_slices: Mapping[str, tuple[int, int]] | None) -> tuple[dict[str, nn.Module], dict[str, tuple[int, int]]]:
    slices = dict(out_slices or {"all": (0, base.out_features)})
    return {n: kind(base.in_features, stop - start, rank, base.weight) for n, (start, stop) in slices.items()}, slices


class LoRALinear(LowRankLinear):
    """LoRA on an nn.Linear (or on named slices of its output rows, `out_slices`: name -> (start, stop))."""

    def __init__(self, base: nn.Linear, rank: int, alpha: float, dropout: float = 0.0,
                 out_slices: Mapping[str, tuple[int, int]] | None = None) -> None:
        parts, slices = _parts(LoRAPart, base, rank, out_slices)
        super().__init__(base, parts, slices, alpha / rank, dropout)


class SVDLinear(LowRankLinear):
    """AdaLoRA on an nn.Linear: like LoRALinear, with SVD-parametrised updates of `init_rank` triplets."""

    def __init__(self, base: nn.Linear, init_rank: int, alpha: float, dropout: float = 0.0,
                 out_slices: Mapping[str, tuple[int, int]] | None = None) -> None:
        parts, slices = _parts(SVDPart, base, init_rank, out_slices)
        super().__init__(base, parts, slices, alpha / init_rank, dropout)


class Adapter(nn.Module):
    """Houlsby et al. 2019's bottleneck, h + up(gelu(down(h))); `up` starts at zero, so it starts as identity."""

    def __init__(self, dim: int, size: int, like: torch.Tensor) -> None:
        super().__init__()
        self.down = nn.Linear(dim, size, device=like.device, dtype=like.dtype)
        self.up = nn.Linear(size, dim, device=like.device, dtype=like.dtype)
        nn.init.zeros_(self.up.weight)
        nn.init.zeros_(self.up.bias)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return h + self.up(F.gelu(self.down(h)))


class WithAdapter(nn.Module):
    """A sublayer (attention or MLP) with an adapter on its output, before the residual add.

    Every argument passes through untouched, so attention still gets (x, rope, cache, slots) and
    KV-cache decoding works as before.
    """

    def __init__(self, base: nn.Module, adapter: Adapter) -> None:
        super().__init__()
        self.base, self.adapter = base, adapter

    def forward(self, *args: Any, **kwargs: Any) -> torch.Tensor:
        return self.adapter(self.base(*args, **kwargs))


WRAPPERS = (LowRankLinear, WithAdapter)
PEFT_PARTS = (LoRAPart, SVDPart, Adapter)
