"""Text embeddings from a GPT's final hidden states: each text's token states pooled (mean or last), optionally
L2-normalised and cut to fewer dimensions; knows nothing of tokenizer files, HTTP or training.

    vectors = embed_rows(gpt, [[12, 7, 99], [5, 3]], pooling="mean")      # (2, n_embd), unit length
    vectors @ vectors.T                                                   # cosine similarities

Rows are token ids, at most the model's context long (the caller truncates and says so) and never empty. They are
scored in batches of similar length, so padding costs little, and come back in the order given.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from gptkit.data.moderation_data import text_style
from gptkit.errors import require
from gptkit.models.gpt import GPT
from gptkit.models.heads import POOLINGS, Pooling, pad_batch, pool_hidden


@dataclass(frozen=True)
class EmbeddingStyle:
    """How a model embeds text: the pooling, and how a text is written before tokenising (an embedding fine-tune
    records both in its finetune.json; a plain checkpoint mean-pools raw text)."""

    pooling: Pooling = "mean"
    text_style: str = "raw"

    def __post_init__(self) -> None:
        require(self.pooling in POOLINGS, f"pooling must be one of {', '.join(POOLINGS)}, got {self.pooling!r}")
        text_style(self.text_style)  # a clear error for an unknown style

    def restyle(self, text: str) -> str:
        return text_style(self.text_style)(text)


@torch.no_grad()
def embed_rows(gpt: GPT, rows: Sequence[Sequence[int]], *, pooling: Pooling = "mean", normalize: bool = True,
               dimensions: int | None = None, batch_size: int = 32) -> torch.Tensor:
    """(N, dimensions or n_embd) float32 embeddings of token-id rows.

    dimensions: keep the first D components (then normalise, as OpenAI's `dimensions` does).
    """
    require(pooling in POOLINGS, f"pooling must be one of {', '.join(POOLINGS)}, got {pooling!r}")
    width, block = gpt.config.n_embd, gpt.config.block_size
    require(dimensions is None or 1 <= dimensions <= width,
            f"dimensions must be between 1 and this model's width {width}, got {dimensions}")
    require(all(len(r) > 0 for r in rows), "every input must have at least one token")
    require(all(len(r) <= block for r in rows), f"an input is longer than the model's context of {block} tokens")
    device = next(gpt.parameters()).device
    was_training = gpt.training
    gpt.eval()
    out = torch.empty(len(rows), width)
    order = sorted(range(len(rows)), key=lambda i: len(rows[i]))
    for start in range(0, len(order), batch_size):
        chosen = order[start:start + batch_size]
        ids, lengths = pad_batch([list(rows[i]) for i in chosen])
        hidden = gpt.hidden_states(ids.to(device))
        out[chosen] = pool_hidden(hidden, lengths.to(device), pooling).float().cpu()
    gpt.train(was_training)
    if dimensions is not None:
        out = out[:, :dimensions]
    return F.normalize(out, dim=-1) if normalize else out
