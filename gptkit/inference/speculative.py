"""Prompt-lookup speculation for the one decode batch: draft tokens copied from where the row's own text (prompt and
output) last showed its latest n-gram, and how many of them the model's greedy choices accept; knows nothing of
caches, batches or requests.

A step then feeds each row its last token and its draft, k + 1 tokens, in one forward pass. The model's greedy
choice after each fed token is what one-token-at-a-time greedy decoding would have chosen, as long as the draft
agrees with it: a row keeps the drafts up to the first disagreement, plus the model's own token there, so the
text is the greedy text and each step yields 1 to k + 1 tokens. Keys and values written for rejected drafts sit
beyond the row's position and are overwritten later (the cache is slot-per-position). vLLM calls this the "ngram"
method; it pays where outputs repeat their context (retrieval-grounded answers, code edits, summaries).

A step of k + 1 tokens per row costs more than a step of one wherever the matmuls are not flat in their rows
(float32 on CPU: ~1.7x for 5 rows); measured in benchmarks/speculative.py.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from gptkit.errors import require


@dataclass(frozen=True)
class Speculation:
    tokens: int = 4
    """Draft tokens proposed per row and step at most."""
    max_ngram: int = 3
    """Longest suffix of the row's text looked up in it (tried first: a longer match predicts better)."""
    min_ngram: int = 2
    """Shortest suffix looked up; below it the row gets no draft that step."""
    window: int = 1024
    """Latest tokens of the row's text searched (bounds the host work per step)."""

    def validate(self) -> None:
        require(self.tokens >= 1, f"speculative tokens must be >= 1, got {self.tokens}")
        require(1 <= self.min_ngram <= self.max_ngram,
                f"need 1 <= min_ngram <= max_ngram, got {self.min_ngram} and {self.max_ngram}")
        require(self.window > self.max_ngram, f"window must exceed max_ngram, got {self.window}")


def propose(context: Sequence[int], spec: Speculation, limit: int) -> list[int]:
    """Up to min(spec.tokens, limit) tokens that followed the latest earlier occurrence of the context's last n
    tokens (n from spec.max_ngram down to spec.min_ngram); [] when none occurs."""
    limit = min(limit, spec.tokens)
    if limit <= 0:
        return []
    text = list(context[-spec.window:])
    end = len(text)
    for n in range(min(spec.max_ngram, end - 1), spec.min_ngram - 1, -1):
        suffix = text[end - n:]
        last = suffix[-1]
        for start in range(end - n - 1, -1, -1):  # the most recent occurrence first
            if text[start + n - 1] == last and text[start:start + n] == suffix:
                return text[start + n:start + n + limit]
    return []


def accepted(draft: Sequence[int], choices: Sequence[int]) -> int:
    """How many leading draft tokens equal the model's choices (choices[i]: its token after draft[:i])."""
    count = 0
    for proposed, chosen in zip(draft, choices):
        if proposed != chosen:
            break
        count += 1
    return count


def speculable(params) -> bool:
    """Whether a row's tokens are its model's greedy choices alone (no penalties, no logprobs to report)."""
    return params.greedy and not params.uses_penalties and params.logprobs is None


__all__ = ["Speculation", "accepted", "propose", "speculable"]
