"""Classification reports (accuracy, per-label precision/recall/F1, confusion matrix); knows nothing of models.

Label ids in, plain numbers out; numpy only:

    report = classification_report(y_true=[0, 1, 1], y_pred=[0, 1, 0], labels=["neg", "pos"])
    report["accuracy"], report["macro avg"]["f1"], report["confusion_matrix"]   # rows = true labels
    print(format_classification_report(report))                                # scikit-learn-style table
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from gptkit.errors import GptkitError, require


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
