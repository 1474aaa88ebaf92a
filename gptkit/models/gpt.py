"""The decoder-only Transformer: GPT-2 and Llama families in one file, chosen by config flags; knows nothing of
training, PEFT or files.

Variants: learned or rotary positions, LayerNorm or RMSNorm, GELU or SwiGLU MLP, multi-head or
grouped-query attention, biases on or off, tied or untied output head. Attention runs through
`F.scaled_dot_product_attention`. An optional `KVCache` makes incremental decoding cheap, and the
forward pass accepts ready input embeddings so other modalities can enter as prefixes.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from gptkit.config import ModelConfig
from gptkit.errors import require


@dataclass
class KVCache:
    """Keys and values of every layer, one slot per position: `k[layer]` is (B, n_kv_head, max_len, head_dim).

    A token at position p is stored in slot p of its row, so rows can hold sequences of different
    lengths (a batch of ragged prompts, or a serving engine's independent requests): a query at
    position p attends to slots 0..p of its own row, and anything written beyond p is ignored.
    """

    k: list[torch.Tensor]
    v: list[torch.Tensor]

    @classmethod
    def allocate(cls, config: ModelConfig, batch_size: int, max_len: int, *, device=None, dtype=None) -> "KVCache":
        require(max_len <= config.block_size, f"cache length {max_len} exceeds the context length {config.block_size}")
        shape = (batch_size, config.n_kv_head, max_len, config.head_dim)
        make = lambda: torch.zeros(shape, device=device, dtype=dtype)  # noqa: E731
        return cls([make() for _ in range(config.n_layer)], [make() for _ in range(config.n_layer)])

    @property
    def max_len(self) -> int:
        return self.k[0].shape[2]

    def rows(self, index: torch.Tensor | slice) -> "KVCache":
        """The cache of a subset of rows (a view when `index` is a slice, so writes go through)."""
        return KVCache([k[index] for k in self.k], [v[index] for v in self.v])

    def slots(self, input_pos: torch.Tensor) -> "CacheSlots":
        """Where a forward pass at positions `input_pos` ((T,) for every row, or (B, T)) writes and reads.

        Done once per forward pass rather than in every layer: it needs the largest position on the
        host (one sync), and the mask is the same for all layers.
        """
        low, high = torch.stack(torch.aminmax(input_pos)).tolist()  # the forward pass's one host sync
        require(high < self.max_len, f"position {high} is beyond the KV cache length {self.max_len}")
        T = input_pos.shape[-1]
        if input_pos.dim() == 2 and T == 1 and low == high:
            input_pos = input_pos[0]  # rows decoding in step (always so at batch 1) all write one slot
        if input_pos.dim() == 1 and T == 1:
            mask = None  # one query, at the newest slot in use: it may read them all
        else:
            mask = torch.arange(high + 1, device=input_pos.device) <= input_pos[..., None]  # ([B,] T, used)
            mask = mask[None, None] if mask.dim() == 2 else mask.unsqueeze(1)  # (B or 1, 1, T, used)
        return CacheSlots(input_pos, high + 1, mask)


@dataclass
class CacheSlots:
    """The cache slots of one forward pass, shared by every layer (see `KVCache.slots`)."""

    positions: torch.Tensor
    """(T,) when every row writes the same slots, else (B, T): a token at position p goes to slot p."""
    used: int
    """Queries read slots 0..used-1, the part of the allocation some row can see."""
    mask: torch.Tensor | None
    """(B or 1, 1, T, used) bool, True where a query may read a slot; None when it may read them all."""


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.rms_norm(x, (x.shape[-1],), self.weight, self.eps)


def make_norm(config: ModelConfig) -> nn.Module:
    if config.norm == "rmsnorm":
        return RMSNorm(config.n_embd, config.norm_eps)
    return nn.LayerNorm(config.n_embd, eps=config.norm_eps, bias=config.bias)


def rope_tables(config: ModelConfig) -> tuple[torch.Tensor, torch.Tensor]:
    """cos/sin of shape (block_size, head_dim) in the 'rotate half' layout used by Llama checkpoints."""
    half = config.head_dim // 2
    inv_freq = 1.0 / (config.rope_theta ** (torch.arange(0, half, dtype=torch.float64) / half))
    angles = torch.outer(torch.arange(config.block_size, dtype=torch.float64), inv_freq)
    angles = torch.cat([angles, angles], dim=-1)
    return angles.cos().float(), angles.sin().float()


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """x: (B, H, T, D); cos/sin: (B or 1, 1, T, D)."""
    x1, x2 = x.chunk(2, dim=-1)
    rotated = torch.cat([-x2, x1], dim=-1)
    return (x * cos + rotated * sin).type_as(x)


class CausalSelfAttention(nn.Module):
    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.n_head, self.n_kv_head, self.head_dim = config.n_head, config.n_kv_head, config.head_dim
        # One fused projection for q, k and v: a single matmul is markedly faster on CPU than three.
        self.qkv = nn.Linear(config.n_embd, (config.n_head + 2 * config.n_kv_head) * config.head_dim,
                             bias=config.qkv_bias)
        self.proj = nn.Linear(config.n_head * config.head_dim, config.n_embd, bias=config.bias)
        self.dropout = config.dropout

    def forward(self, x: torch.Tensor, rope: tuple[torch.Tensor, torch.Tensor] | None,
                cache: tuple[torch.Tensor, torch.Tensor] | None, slots: CacheSlots | None) -> torch.Tensor:
        B, T, _ = x.shape
        q, k, v = self.qkv(x).split(
            [self.n_head * self.head_dim, self.n_kv_head * self.head_dim, self.n_kv_head * self.head_dim], dim=-1)
        q = q.view(B, T, self.n_head, self.head_dim).transpose(1, 2)
        k = k.view(B, T, self.n_kv_head, self.head_dim).transpose(1, 2)
        v = v.view(B, T, self.n_kv_head, self.head_dim).transpose(1, 2)
        if rope is not None:
            q, k = apply_rope(q, *rope), apply_rope(k, *rope)

        dropout = self.dropout if self.training else 0.0
        if cache is None:
            y = F.scaled_dot_product_attention(q, k, v, is_causal=True, dropout_p=dropout,
                                               enable_gqa=self.n_kv_head != self.n_head)
        else:
            assert slots is not None
            k_cache, v_cache = cache
            k, v = k.to(k_cache.dtype), v.to(v_cache.dtype)
            if slots.positions.dim() == 1:  # every row writes the same slots: a plain copy, no gather
                k_cache.index_copy_(2, slots.positions, k)
                v_cache.index_copy_(2, slots.positions, v)
            else:
                rows = torch.arange(B, device=x.device)[:, None]
                k_cache[rows, :, slots.positions] = k.transpose(1, 2)
                v_cache[rows, :, slots.positions] = v.transpose(1, 2)
            # Attend only over the slots some row can see, not the whole allocation.
            used = slots.used
            y = F.scaled_dot_product_attention(q, k_cache[:, :, :used], v_cache[:, :, :used], attn_mask=slots.mask,
                                               dropout_p=dropout, enable_gqa=self.n_kv_head != self.n_head)
        y = y.transpose(1, 2).reshape(B, T, self.n_head * self.head_dim)
        return self.proj(y)


class MLP(nn.Module):
    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.swiglu = config.mlp == "swiglu"
        self.gelu_approximation = config.gelu_approximation
        hidden = config.intermediate_size
        # For SwiGLU, gate and up projections are fused into one matmul; the first half is the gate.
        self.fc = nn.Linear(config.n_embd, 2 * hidden if self.swiglu else hidden, bias=config.bias)
        self.proj = nn.Linear(hidden, config.n_embd, bias=config.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.fc(x)
        if self.swiglu:
            gate, up = h.chunk(2, dim=-1)
            h = F.silu(gate) * up
        else:
            h = F.gelu(h, approximate=self.gelu_approximation)
        return self.proj(h)


def _identity(x: torch.Tensor) -> torch.Tensor:
    return x


class Block(nn.Module):
    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.norm1 = make_norm(config)
        self.attn = CausalSelfAttention(config)
        self.norm2 = make_norm(config)
        self.mlp = MLP(config)
        self.drop = nn.Dropout(config.dropout)

    def forward(self, x, rope, cache, slots):
        # Out of training, dropout is the identity: skipping its module calls saves a few % of a tiny decode step.
        drop = self.drop if self.training else _identity
        x = x + drop(self.attn(self.norm1(x), rope, cache, slots))
        return x + drop(self.mlp(self.norm2(x)))


class GPT(nn.Module):
    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.config = config
        self.tok_emb = nn.Embedding(config.vocab_size, config.n_embd)
        self.pos_emb = nn.Embedding(config.block_size, config.n_embd) if config.position == "learned" else None
        self.drop = nn.Dropout(config.dropout)
        self.blocks = nn.ModuleList(Block(config) for _ in range(config.n_layer))
        self.norm_f = make_norm(config)
        self.lm_head = nn.Linear(config.n_embd, config.vocab_size, bias=False)
        if config.tie_embeddings:
            # Input and output embeddings share one matrix: fewer parameters, and it regularises
            # small models (Press & Wolf, 2017). GPT-2 does this.
            self.lm_head.weight = self.tok_emb.weight
        if config.position == "rope":
            cos, sin = rope_tables(config)
            self.register_buffer("rope_cos", cos, persistent=False)
            self.register_buffer("rope_sin", sin, persistent=False)
        self.apply(self._init_weights)
        # Residual projections add into the stream once per layer and sublayer; scaling their init by
        # 1/sqrt(2 * n_layer) keeps the stream's variance from growing with depth (GPT-2 paper, 2.3).
        for name, p in self.named_parameters():
            if name.endswith("attn.proj.weight") or name.endswith("mlp.proj.weight"):
                nn.init.normal_(p, mean=0.0, std=0.02 / math.sqrt(2 * config.n_layer))

    @staticmethod
    def _init_weights(module: nn.Module) -> None:
        if isinstance(module, nn.Linear):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Embedding):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)

    def num_parameters(self, *, exclude_embeddings: bool = False, trainable_only: bool = False) -> int:
        params = {id(p): p for p in self.parameters() if p.requires_grad or not trainable_only}
        if exclude_embeddings:
            params.pop(id(self.tok_emb.weight), None)
            if self.pos_emb is not None:
                params.pop(id(self.pos_emb.weight), None)
        return sum(p.numel() for p in params.values())

    def hidden_states(self, idx: torch.Tensor | None = None, *, inputs_embeds: torch.Tensor | None = None,
                      input_pos: torch.Tensor | None = None, kv_cache: KVCache | None = None) -> torch.Tensor:
        """Final normalised hidden states (B, T, n_embd).

        idx: token ids (B, T), or pass `inputs_embeds` (B, T, n_embd) instead.
        input_pos: position of each token, (B, T) or (T,); defaults to 0..T-1. Required with a cache.
        """
        require((idx is None) != (inputs_embeds is None), "pass exactly one of idx or inputs_embeds")
        x = self.tok_emb(idx) if idx is not None else inputs_embeds
        B, T, _ = x.shape
        if input_pos is None:
            require(kv_cache is None, "input_pos is required when decoding with a KV cache")
            require(T <= self.config.block_size,
                    f"sequence of {T} tokens exceeds the context length {self.config.block_size}")
            input_pos = torch.arange(T, device=x.device)
        slots = kv_cache.slots(input_pos) if kv_cache is not None else None
        if input_pos.dim() == 1:
            input_pos = input_pos.unsqueeze(0).expand(B, T)
        if self.pos_emb is not None:
            x = x + self.pos_emb(input_pos)
        if self.training:
            x = self.drop(x)
        rope = None
        if self.config.position == "rope":
            rope = (self.rope_cos[input_pos].unsqueeze(1), self.rope_sin[input_pos].unsqueeze(1))
        for i, block in enumerate(self.blocks):
            cache = (kv_cache.k[i], kv_cache.v[i]) if kv_cache is not None else None
            x = block(x, rope, cache, slots)
        return self.norm_f(x)

    def forward(self, idx: torch.Tensor | None = None, *, inputs_embeds: torch.Tensor | None = None,
                input_pos: torch.Tensor | None = None, kv_cache: KVCache | None = None) -> torch.Tensor:
        """Logits (B, T, vocab_size) for every position."""
        return self.lm_head(self.hidden_states(idx, inputs_embeds=inputs_embeds, input_pos=input_pos,
                                               kv_cache=kv_cache))


def unshared_state(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A state dict safetensors can write: contiguous tensors, a tied weight once (under its first name)."""
    seen: set[int] = set()
    out = {}
    for name, tensor in state.items():
        if tensor.data_ptr() in seen:
            continue
        seen.add(tensor.data_ptr())
        out[name] = tensor.contiguous()
    return out
