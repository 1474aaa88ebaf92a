"""Scores of a detector that flags texts (moderation): precision, recall, F1 and false-positive rate at a threshold,
ROC-AUC over all thresholds, and the threshold that maximises F1 within a false-positive budget; knows nothing of
models or text.

    flag_report(scores, positives, threshold=0.5)   # {"precision", "recall", "f1", "fpr", "roc_auc", "n", ...}
    calibrate_threshold(scores, positives, max_fpr=0.02)   # (threshold, that report)
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from gptkit.errors import require


def roc_auc(scores: Sequence[float], positives: Sequence[bool]) -> float | None:
    """The probability that a random positive scores above a random negative (ties count half): the area under the
    ROC curve. None when one class is missing."""
    s = np.asarray(scores, dtype=np.float64)
    y = np.asarray(positives, dtype=bool)
    n_pos, n_neg = int(y.sum()), int((~y).sum())
    if n_pos == 0 or n_neg == 0:
        return None
    order = np.argsort(s, kind="mergesort")
    ranks = np.empty(len(s), dtype=np.float64)
    sorted_s = s[order]
    # average ranks over ties (1-based)
    starts = np.r_[0, np.flatnonzero(np.diff(sorted_s)) + 1]
    ends = np.r_[starts[1:], len(s)]
    for a, b in zip(starts, ends):
        ranks[order[a:b]] = (a + b + 1) / 2.0
    return float((ranks[y].sum() - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg))


def flag_report(scores: Sequence[float], positives: Sequence[bool], threshold: float, *,
                auc: bool = True) -> dict[str, Any]:
    """Precision, recall, F1 and false-positive rate of flagging `scores >= threshold`, the counts, and (auc) the
    ROC-AUC of the scores."""
    s = np.asarray(scores, dtype=np.float64)
    y = np.asarray(positives, dtype=bool)
    require(len(s) == len(y), f"{len(s)} scores for {len(y)} labels")
    flagged = s >= threshold
    tp, fp = int((flagged & y).sum()), int((flagged & ~y).sum())
    fn, tn = int((~flagged & y).sum()), int((~flagged & ~y).sum())
    precision = tp / (tp + fp) if tp + fp else 0.0
    recall = tp / (tp + fn) if tp + fn else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return {"threshold": float(threshold), "precision": precision, "recall": recall, "f1": f1,
            "fpr": fp / (fp + tn) if fp + tn else 0.0, "roc_auc": roc_auc(s, y) if auc else None,
            "n": len(s), "positives": int(y.sum()), "tp": tp, "fp": fp, "fn": fn, "tn": tn}


def calibrate_threshold(scores: Sequence[float], positives: Sequence[bool], *,
                        max_fpr: float = 0.02) -> tuple[float, dict[str, Any]]:
    """The threshold with the best F1 among those whose false-positive rate is at most `max_fpr`, and its report.

    Candidates are the midpoints between distinct scores (and just above the highest, which flags nothing)."""
    require(0 <= max_fpr <= 1, f"max_fpr must be in [0, 1], got {max_fpr}")
    s = np.unique(np.asarray(scores, dtype=np.float64))
    require(len(s) > 0, "no scores to calibrate a threshold on")
    candidates = [*((s[:-1] + s[1:]) / 2), float(np.nextafter(s[-1], np.inf)), float(s[0])]
    best: tuple[float, dict[str, Any]] | None = None
    for t in candidates:
        report = flag_report(scores, positives, t, auc=False)
        if report["fpr"] > max_fpr:
            continue
        if best is None or report["f1"] > best[1]["f1"] or (report["f1"] == best[1]["f1"] and t > best[0]):
            best = (float(t), report)
    assert best is not None  # the top candidate flags nothing: false-positive rate 0
    return best[0], flag_report(scores, positives, best[0])
