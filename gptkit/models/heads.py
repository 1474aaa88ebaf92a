"""Heads on the Transformer's pooled final hidden states: a classifier (one linear layer) and a sentence embedder
(the pooled state, L2-normalised).

    classifier = SequenceClassifier(gpt, labels=["negative", "positive"], pooling="last")
    logits = classifier(ids, lengths)               # (B, num_labels)
    vectors = SentenceEmbedder(gpt, pooling="mean")(ids, lengths)   # (B, n_embd), unit length

The body is an ordinary `GPT` (possibly with LoRA or adapters swapped in by `gptkit.adapt`), so
`models/gpt.py` knows nothing of classification. Rows are right-padded: with causal attention a token
never sees the padding after it, so the hidden states of real tokens are exactly those of the
unpadded text, and pooling only has to skip the padding.
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn as nn

from gptkit.errors import require
from gptkit.models.gpt import GPT

Pooling = Literal["last", "mean"]
POOLINGS: tuple[str, ...] = ("last", "mean")


class SequenceClassifier(nn.Module):
    """`head(pool(gpt.hidden_states(ids)))`.

    pooling: "last" takes the hidden state of each row's last real token (it has read the whole text,
    as in GPT-1's classification fine-tuning); "mean" averages over the real tokens.
    """

    def __init__(self, gpt: GPT, labels: list[str], pooling: Pooling = "last") -> None:
        super().__init__()
        require(pooling in POOLINGS, f"pooling must be one of {', '.join(POOLINGS)}, got {pooling!r}")
        require(len(labels) >= 2, f"a classifier needs at least 2 labels, got {labels}")
        self.gpt, self.labels, self.pooling = gpt, list(labels), pooling
        self.config = gpt.config
        self.head = nn.Linear(gpt.config.n_embd, len(labels))
        # A small head init keeps the first steps' loss near log(num_labels), so early gradients into
        # a pretrained body are not dominated by a random head's confident mistakes.
        nn.init.normal_(self.head.weight, std=0.02)
        nn.init.zeros_(self.head.bias)

    def pool(self, hidden: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        """(B, T, C) hidden states of right-padded rows -> (B, C)."""
        return pool_hidden(hidden, lengths, self.pooling)

    def forward(self, ids: torch.Tensor, lengths: torch.Tensor, *, return_lm_logits: bool = False):
        """Label logits (B, num_labels) for right-padded token ids (B, T) with real lengths (B,).

        return_lm_logits: also return the language model's next-token logits (B, T, vocab) from the
        same pass, for fine-tuning with an auxiliary language-modelling loss (GPT-1, section 3.2).
        """
        hidden = self.gpt.hidden_states(ids)
        label_logits = self.head(self.pool(hidden, lengths))
        return (label_logits, self.gpt.lm_head(hidden)) if return_lm_logits else label_logits


class SentenceEmbedder(nn.Module):
    """`normalize(pool(gpt.hidden_states(ids)))`: what contrastive fine-tuning trains and `LLM.embed` computes.

    No weights of its own: the GPT (with LoRA or adapters, if any) is the whole model. It is a module so that
    training calls it through `forward`, as distributed wrappers need.
    """

    def __init__(self, gpt: GPT, pooling: Pooling = "mean") -> None:
        super().__init__()
        require(pooling in POOLINGS, f"pooling must be one of {', '.join(POOLINGS)}, got {pooling!r}")
        self.gpt, self.pooling = gpt, pooling
        self.config = gpt.config

    def forward(self, ids: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        pooled = pool_hidden(self.gpt.hidden_states(ids), lengths, self.pooling)
        return nn.functional.normalize(pooled.float(), dim=-1)


def pool_hidden(hidden: torch.Tensor, lengths: torch.Tensor, pooling: Pooling) -> torch.Tensor:
    """(B, T, C) hidden states of right-padded rows -> (B, C): the last real token's state, or the mean over the
    real tokens (padding skipped)."""
    if pooling == "last":
        return hidden[torch.arange(hidden.shape[0], device=hidden.device), lengths - 1]
    real = (torch.arange(hidden.shape[1], device=hidden.device) < lengths[:, None]).unsqueeze(-1)
    return (hidden * real).sum(1) / lengths[:, None].to(hidden.dtype)


def pad_batch(rows: list[list[int]], pad_id: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-pad token id lists into (B, T) ids and (B,) lengths."""
    longest = max(len(r) for r in rows)
    ids = torch.tensor([r + [pad_id] * (longest - len(r)) for r in rows], dtype=torch.long)
    return ids, torch.tensor([len(r) for r in rows], dtype=torch.long)


@torch.no_grad()
def predict_proba(classifier: nn.Module, rows: list[list[int]], *, batch_size: int = 32,
                  device: torch.device | str = "cpu") -> torch.Tensor:
    """Label probabilities (N, num_labels) for token id lists, batched by similar length.

    `classifier` is anything called as `classifier(ids, lengths)` for label logits: a
    `SequenceClassifier`, or a module wrapping one.
    """
    order = sorted(range(len(rows)), key=lambda i: len(rows[i]))  # little padding per batch
    parts = []
    was_training = classifier.training
    classifier.eval()
    try:
        for start in range(0, len(order), batch_size):
            ids, lengths = pad_batch([rows[i] for i in order[start:start + batch_size]])
            parts.append(classifier(ids.to(device), lengths.to(device)).float().softmax(-1).cpu())
    finally:
        classifier.train(was_training)
    probs = torch.empty_like(torch.cat(parts))
    probs[order] = torch.cat(parts)
    return probs
