"""Language-model evaluation: loss, perplexity and bits per byte over token windows of a prepared split or a text file;
knows nothing of checkpoints.

Bits per byte divides the total negative log-likelihood (in bits) by the UTF-8 bytes of the text,
so models with different tokenizers (characters, BPE of any size) are compared on equal terms.
"""

from __future__ import annotations

import math
from collections.abc import Iterator

from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from gptkit.data.dataset import META_FILE, TokenDataset
from gptkit.errors import GptkitError, require
from gptkit.tokenizer import Tokenizer



def lm_metrics(mean_loss: float, tokens_per_byte: float) -> dict[str, float]:
    """val_loss (nats/token), val_ppl and val_bpb from a mean token loss."""
    return {"val_loss": mean_loss, "val_ppl": math.exp(min(mean_loss, 50.0)),
            "val_bpb": mean_loss * tokens_per_byte / math.log(2)}


def eval_windows(tokens: np.ndarray, block_size: int, batch_size: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Consecutive, non-overlapping windows over `tokens`: every token but the first is a target exactly once."""
    n_targets = len(tokens) - 1
    starts = list(range(0, n_targets, block_size))
    full = [s for s in starts if s + block_size <= n_targets]
    for i in range(0, len(full), batch_size):
        rows = [np.asarray(tokens[s:s + block_size + 1], dtype=np.int64) for s in full[i:i + batch_size]]
        chunk = torch.from_numpy(np.stack(rows))
        yield chunk[:, :-1], chunk[:, 1:]
    if len(full) < len(starts):  # the ragged tail, on its own
        tail = torch.from_numpy(np.asarray(tokens[starts[-1]:], dtype=np.int64))[None]
        yield tail[:, :-1], tail[:, 1:]


@torch.no_grad()
def mean_token_loss(model: nn.Module, batches, device: torch.device) -> tuple[float, int]:
    """Mean cross-entropy over all target tokens of `batches`, and how many there were."""
    total, count = 0.0, 0
    for x, y in batches:
        logits = model(x.to(device))
        total += F.cross_entropy(logits.flatten(0, 1).float(), y.to(device).flatten(), reduction="sum").item()
        count += y.numel()
    return total / max(count, 1), count


def evaluate_tokens(model: nn.Module, tokens: np.ndarray, n_bytes: int, *, block_size: int, batch_size: int,
                    device: torch.device) -> dict[str, float]:
    """Exact metrics over a whole token array whose text had `n_bytes` UTF-8 bytes."""
    loss, count = mean_token_loss(model, eval_windows(tokens, block_size, batch_size), device)
    # The first token is never predicted; scale the byte count to the predicted share of the text.
    return {**lm_metrics(loss, len(tokens) / n_bytes), "val_tokens": float(count)}


def evaluation_tokens(data: str | Path, tokenizer: Tokenizer, split: str = "val") -> tuple[np.ndarray, int]:
    """(token ids, UTF-8 bytes of their text) of `data`: a prepared dataset's `split` (which must have been
    tokenised with `tokenizer`), or a UTF-8 text file encoded with `tokenizer`."""
    path = Path(data)
    require(path.exists(), f"--data {data} does not exist")
    if (path / META_FILE).is_file():
        dataset = TokenDataset(path)
        require(dataset.tokenizer.hf.to_str() == tokenizer.hf.to_str(),
                f"{path} was tokenised with a different tokenizer than the model's; pass the text file instead")
        tokens, n_bytes = dataset.split(split), dataset.n_bytes(split)
    else:
        require(path.is_file(), f"--data {data} is neither a prepared dataset (no {META_FILE}) nor a text file")
        try:
            text = path.read_text(encoding="utf-8")
        except UnicodeDecodeError as e:
            raise GptkitError(f"{path} is not UTF-8 text ({e.reason} at byte {e.start})") from None
        require(text, f"{path} is empty")
        tokens, n_bytes = np.asarray(tokenizer.encode(text), dtype=np.int64), len(text.encode())
    require(len(tokens) >= 2, f"{data} holds fewer than 2 tokens: nothing to evaluate")
    return tokens, n_bytes
