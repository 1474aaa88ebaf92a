"""Prefix caching: the keys and values of recent prompts, so that a new prompt sharing a prefix with one of them (a
chat's system prompt, few-shot examples) prefills only the rest; knows nothing of requests or sampling.

    cache = PrefixCache(max_tokens=4096)
    length, kv = cache.lookup(prompt)          # the longest stored prefix of `prompt`, block-aligned (0: none)
    ...prefill prompt[length:] on top of kv...
    cache.insert(prompt, keys, values)         # keep this prompt's KV for the next ones

Prefixes match in whole blocks of `block` tokens (as vLLM's automatic prefix caching does): every block-aligned
prefix of a stored prompt is indexed by its tokens, so a lookup tries the longest aligned prefix first and walks
down. At least one token of a prompt is always left to prefill, since its last position's logits are needed. The
cache holds at most `max_tokens` tokens of KV; the least recently used prompts go first. A token's key and value
depend only on the tokens before it (causal attention), so reused KV is what a fresh prefill would compute, up to
floating-point summation order.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass

import torch

from gptkit.errors import require


@dataclass
class CachedPrompt:
    tokens: tuple[int, ...]
    keys: list[torch.Tensor]
    """Per layer, (n_kv_head, len(tokens), head_dim)."""
    values: list[torch.Tensor]


class PrefixCache:
    def __init__(self, max_tokens: int = 8192, block: int = 16) -> None:
        require(max_tokens >= 0, f"the prefix cache's size must be >= 0 tokens, got {max_tokens}")
        require(block >= 1, f"the prefix cache's block must be >= 1 token, got {block}")
        self.max_tokens, self.block = max_tokens, block
        self.prompts: OrderedDict[tuple[int, ...], CachedPrompt] = OrderedDict()  # LRU order, oldest first
        self.index: dict[tuple[int, ...], tuple[int, ...]] = {}  # aligned prefix -> the stored prompt holding it
        self.tokens = 0
        self.hits = self.lookups = self.reused_tokens = 0

    def lookup(self, prompt: list[int]) -> tuple[int, CachedPrompt | None]:
        """(length, entry) of the longest stored block-aligned prefix of `prompt` that leaves a token to
        prefill; (0, None) when there is none."""
        self.lookups += 1
        for length in range((len(prompt) - 1) // self.block * self.block, 0, -self.block):
            owner = self.index.get(tuple(prompt[:length]))
            if owner is not None:
                self.prompts.move_to_end(owner)
                self.hits += 1
                self.reused_tokens += length
                return length, self.prompts[owner]
        return 0, None

    def insert(self, prompt: list[int], keys: list[torch.Tensor], values: list[torch.Tensor]) -> None:
        """Store `prompt`'s KV (per layer, (n_kv_head, >= its aligned length, head_dim); copied) and index its
        block-aligned prefixes."""
        length = len(prompt) // self.block * self.block
        if length == 0 or length > self.max_tokens:
            return
        tokens = tuple(prompt[:length])
        if tokens in self.prompts:
            self.prompts.move_to_end(tokens)
            return
        if self.index.get(tokens) is not None:  # a longer stored prompt already holds all of it
            self.prompts.move_to_end(self.index[tokens])
            return
        while self.tokens + length > self.max_tokens and self.prompts:
            self._evict_oldest()
        entry = CachedPrompt(tokens, [k[:, :length].clone() for k in keys], [v[:, :length].clone() for v in values])
        self.prompts[tokens] = entry
        self.tokens += length
        for end in range(self.block, length + 1, self.block):
            self.index[tokens[:end]] = tokens  # the newest holder of a prefix serves it

    def _evict_oldest(self) -> None:
        tokens, _ = self.prompts.popitem(last=False)
        self.tokens -= len(tokens)
        for end in range(self.block, len(tokens) + 1, self.block):
            if self.index.get(tokens[:end]) == tokens:
                # another stored prompt may hold the same prefix: let it serve it
                other = next((t for t in reversed(self.prompts) if t[:end] == tokens[:end]), None)
                if other is None:
                    del self.index[tokens[:end]]
                else:
                    self.index[tokens[:end]] = other

    def stats(self) -> dict[str, int]:
        return {"prompts": len(self.prompts), "tokens": self.tokens, "lookups": self.lookups, "hits": self.hits,
                "reused_tokens": self.reused_tokens}
