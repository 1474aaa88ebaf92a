"""Gated cross-attention (Flamingo, Alayrac et al. 2022) added to a built GPT from outside; knows nothing of encoders.

`add_cross_attention(gpt, context, every=k)` wraps every k-th block (and the last) so that after the
block runs, the text attends to the media of the running batch:

    y = y + tanh(g_attn) * xattn(norm(y), media)
    y = y + tanh(g_ffn) * ffn(norm(y))

Both gates start at 0, so a freshly added layer changes nothing: the model computes exactly what the
text-only GPT does (tested) and training opens the gates only as far as the media help. The media come
from a shared `MediaContext` (`gptkit.models.multimodal`), filled by the multimodal model for one forward
pass; with no media (a text-only prompt) the layers are skipped. `remove_cross_attention` undoes it.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from gptkit.errors import require
from gptkit.models.gpt import GPT
from gptkit.models.multimodal import MediaContext


class GatedCrossAttention(nn.Module):
    """Text queries (B, T, d) attending to media (B, M, d), each of the two sublayers behind a tanh gate."""

    def __init__(self, n_embd: int, n_head: int) -> None:
        super().__init__()
        require(n_embd % n_head == 0, f"n_embd ({n_embd}) must be divisible by n_head ({n_head})")
        self.n_head = n_head
        self.norm_attn = nn.LayerNorm(n_embd)
        self.q = nn.Linear(n_embd, n_embd, bias=False)
        self.kv = nn.Linear(n_embd, 2 * n_embd, bias=False)
        self.proj = nn.Linear(n_embd, n_embd, bias=False)
        self.norm_ffn = nn.LayerNorm(n_embd)
        self.ffn = nn.Sequential(nn.Linear(n_embd, 4 * n_embd), nn.GELU(), nn.Linear(4 * n_embd, n_embd))
        self.gate_attn = nn.Parameter(torch.zeros(()))
        self.gate_ffn = nn.Parameter(torch.zeros(()))

    def forward(self, x: torch.Tensor, media: torch.Tensor) -> torch.Tensor:
        B, T, C = x.shape
        M, h = media.shape[1], self.n_head
        q = self.q(self.norm_attn(x)).view(B, T, h, C // h).transpose(1, 2)
        k, v = self.kv(media.to(x.dtype)).view(B, M, 2, h, C // h).permute(2, 0, 3, 1, 4)
        y = F.scaled_dot_product_attention(q, k, v)  # every text position sees every media token
        x = x + torch.tanh(self.gate_attn) * self.proj(y.transpose(1, 2).reshape(B, T, C))
        return x + torch.tanh(self.gate_ffn) * self.ffn(self.norm_ffn(x))


class WithCrossAttention(nn.Module):
    """A GPT block followed by a gated cross-attention layer reading `context.media`."""

    def __init__(self, block: nn.Module, xattn: GatedCrossAttention, context: MediaContext) -> None:
        super().__init__()
        self.block, self.xattn = block, xattn
        self.context = context

    def forward(self, x, rope, cache, slots):
        x = self.block(x, rope, cache, slots)
        media = self.context.media
        if media is None:
            return x
        require(media.shape[0] == x.shape[0], f"{media.shape[0]} media rows for a batch of {x.shape[0]}")
        return self.xattn(x, media)


def cross_attention_layers(gpt: GPT, every: int) -> list[int]:
    """The blocks a cross-attention layer follows: every `every`-th, and always the last."""
    n = gpt.config.n_layer
    return sorted({i for i in range(every - 1, n, every)} | {n - 1})


def add_cross_attention(gpt: GPT, context: MediaContext, *, every: int = 1) -> GPT:
    """Wrap the chosen blocks of `gpt` in place (see the module docstring); returns `gpt`."""
    require(not any(isinstance(b, WithCrossAttention) for b in gpt.blocks), "this GPT already has cross-attention")
    require(isinstance(every, int) and every >= 1, f"every must be an integer >= 1, got {every!r}")
    param = next(gpt.parameters())
    for i in cross_attention_layers(gpt, every):
        xattn = GatedCrossAttention(gpt.config.n_embd, gpt.config.n_head).to(param.device, param.dtype)
        gpt.blocks[i] = WithCrossAttention(gpt.blocks[i], xattn, context)
    return gpt


def remove_cross_attention(gpt: GPT) -> GPT:
    """Put the original blocks back: the text-only GPT again."""
    for i, block in enumerate(gpt.blocks):
        if isinstance(block, WithCrossAttention):
            gpt.blocks[i] = block.block
    return gpt
