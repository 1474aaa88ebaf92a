"""Evaluation: language-model loss, perplexity and bits per byte; classification reports.

Bits per byte divides the total negative log-likelihood (in bits) by the UTF-8 bytes of the text,
so models with different tokenizers (characters, BPE of any size) are compared on equal terms.

Classification (label ids in, plain numbers out; numpy only):

    report = classification_report(y_true=[0, 1, 1], y_pred=[0, 1, 0], labels=["neg", "pos"])
    report["accuracy"], report["macro avg"]["f1"], report["confusion_matrix"]   # rows = true labels
    print(format_classification_report(report))                                # scikit-learn-style table
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from gptkit.errors import GptkitError, require


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


# ------------------------------------------------------------------------------------------------
# classification


def _safe_divide(numerator: np.ndarray, denominator: np.ndarray) -> np.ndarray:
    """numerator / denominator, with 0.0 where the denominator is 0 (scikit-learn's zero_division=0)."""
    out = np.zeros_like(numerator, dtype=np.float64)
    np.divide(numerator, denominator, out=out, where=denominator != 0)
    return out


def confusion_matrix(y_true: Sequence[int], y_pred: Sequence[int], n_labels: int) -> np.ndarray:
    """counts[i, j]: how many rows of true label i were predicted as j."""
    counts = np.zeros((n_labels, n_labels), dtype=np.int64)
    np.add.at(counts, (np.asarray(y_true, dtype=np.int64), np.asarray(y_pred, dtype=np.int64)), 1)
    return counts


def classification_report(y_true: Sequence[int], y_pred: Sequence[int], labels: list[str]) -> dict[str, Any]:
    """Per-class precision/recall/F1/support, accuracy, macro and weighted averages, confusion matrix.

    `y_true` and `y_pred` are label ids (indices into `labels`). A class never predicted has precision
    0.0, one never present recall 0.0 (and F1 0.0), as scikit-learn with zero_division=0. Averages run over
    every class in `labels`, present or not. Returns plain Python numbers, so it serialises to JSON:

        {"labels": [...], "per_class": {label: {"precision", "recall", "f1", "support"}},
         "accuracy": float, "macro avg": {...}, "weighted avg": {...}, "support": int,
         "confusion_matrix": [[int]]}   # rows = true label, columns = predicted label
    """
    require(len(y_true) == len(y_pred), f"{len(y_true)} true labels but {len(y_pred)} predictions")
    require(len(y_true) > 0, "cannot report on zero predictions")
    require(len(labels) > 0, "the label list is empty")
    for name, ids in (("y_true", y_true), ("y_pred", y_pred)):
        bad = [int(i) for i in ids if not 0 <= int(i) < len(labels)]
        if bad:
            raise GptkitError(f"{name} holds label id {bad[0]}, outside 0..{len(labels) - 1} ({len(labels)} labels)")
    counts = confusion_matrix(y_true, y_pred, len(labels))
    correct = np.diag(counts).astype(np.float64)
    support = counts.sum(axis=1)  # rows of each true label
    predicted = counts.sum(axis=0)
    precision = _safe_divide(correct, predicted.astype(np.float64))
    recall = _safe_divide(correct, support.astype(np.float64))
    f1 = _safe_divide(2 * precision * recall, precision + recall)
    total = int(support.sum())
    weights = support / total

    def average(w: np.ndarray) -> dict[str, float | int]:
        return {"precision": float(precision @ w), "recall": float(recall @ w), "f1": float(f1 @ w),
                "support": total}

    return {
        "labels": list(labels),
        "per_class": {label: {"precision": float(precision[i]), "recall": float(recall[i]), "f1": float(f1[i]),
                              "support": int(support[i])} for i, label in enumerate(labels)},
        "accuracy": float(correct.sum() / total),
        "macro avg": average(np.full(len(labels), 1 / len(labels))),
        "weighted avg": average(weights),
        "support": total,
        "confusion_matrix": counts.tolist(),
    }


def format_classification_report(report: dict[str, Any], digits: int = 3) -> str:
    """A text table like scikit-learn's classification_report, then the confusion matrix."""
    labels = report["labels"]
    width = max(len("weighted avg"), *(len(label) for label in labels))
    number = max(digits + 2, len("precision"))
    header = f"{'':>{width}}  {'precision':>{number}}  {'recall':>{number}}  {'f1-score':>{number}}  {'support':>8}"

    def row(name: str, m: dict[str, float | int]) -> str:
        return (f"{name:>{width}}  {m['precision']:>{number}.{digits}f}  {m['recall']:>{number}.{digits}f}  "
                f"{m['f1']:>{number}.{digits}f}  {m['support']:>8}")

    lines = [header, ""]
    lines += [row(label, report["per_class"][label]) for label in labels]
    lines += ["", f"{'accuracy':>{width}}  {'':>{number}}  {'':>{number}}  "
                  f"{report['accuracy']:>{number}.{digits}f}  {report['support']:>8}"]
    lines += [row("macro avg", report["macro avg"]), row("weighted avg", report["weighted avg"])]
    # Confusion matrix: rows are true labels, columns predicted ones, each headed by its label.
    matrix = report["confusion_matrix"]
    cell = max(*(len(label) for label in labels), *(len(str(c)) for r in matrix for c in r)) + 2
    lines += ["", "confusion matrix (rows: true, columns: predicted)",
              f"{'':>{width}}" + "".join(f"{label:>{cell}}" for label in labels)]
    lines += [f"{label:>{width}}" + "".join(f"{c:>{cell}}" for c in r) for label, r in zip(labels, matrix)]
    return "\n".join(lines)
