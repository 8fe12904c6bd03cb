"""Per-class decision thresholds of multi-label heads: tuning, certainty, and normalising them to 0.5."""
from __future__ import annotations

import numpy as np
from sklearn.metrics import precision_recall_curve


def decision_certainty(p: np.ndarray, t: np.ndarray) -> np.ndarray:
    """Per-class certainty of the decision p >= t, in [0.5, 1]; equals max(p, 1 - p) when t = 0.5."""
    t = np.clip(t, 1e-6, 1 - 1e-6)
    above = 0.5 + 0.5 * (p - t) / (1 - t)
    below = 0.5 + 0.5 * (t - p) / t
    return np.clip(np.where(p >= t, above, below), 0.5, 1.0)


def best_f1_threshold(p: np.ndarray, y: np.ndarray, default: float = 0.5) -> float:
    """The threshold on scores p that maximises F1 for binary labels y (midpoints between scores).

    Ties go to the threshold nearest the default; a class with no positives (or no negatives)
    keeps the default.
    """
    p = np.asarray(p, dtype=np.float64)
    y = np.asarray(y).astype(bool)
    n_pos = int(y.sum())
    if n_pos == 0 or n_pos == len(y):
        return default
    # One point per distinct score s (predict positive where p >= s). Reversed to descending
    # scores: among cuts equally near the default the first (highest) wins, as it always has.
    # F1 from precision/recall differs from 2tp/(k + n_pos) by rounding only; the 1e-12 tie
    # tolerance absorbs that, and distinct F1 values differ by more than 1e-12 below ~500k items.
    precision, recall, scores = precision_recall_curve(y, p)
    precision, recall, scores = precision[-2::-1], recall[-2::-1], scores[::-1]
    total = precision + recall
    f1 = np.divide(2 * precision * recall, total, out=np.zeros_like(total), where=total > 0)
    lower = np.append(scores[1:], scores[-1] - 1e-3)  # the next lower score: a cut cannot split ties
    cuts = (scores + lower) / 2
    candidates = cuts[f1 >= f1.max() - 1e-12]
    return float(np.clip(candidates[np.argmin(np.abs(candidates - default))], 0.02, 0.98))


def threshold_shift(proba: np.ndarray, head) -> np.ndarray:
    """Per-class monotone map sending each head's decision threshold to 0.5 (decisions unchanged).

    head: anything with decision_row (heads.Head). Lets out-of-fold rows from differently tuned
    fold heads be scored together at one threshold.
    """
    out = np.empty_like(proba, dtype=np.float64)
    for i, row in enumerate(proba):
        p, t = head.decision_row(np.asarray(row, dtype=np.float64))
        t = np.clip(t, 1e-6, 1 - 1e-6)
        out[i] = np.where(p >= t, 0.5 + 0.5 * (p - t) / (1 - t), 0.5 * p / t)
    return out
