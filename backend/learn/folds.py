"""Cross-validation folds that tolerate what labeling projects have: classes with one item, and
multi-label rows."""
from __future__ import annotations

import numpy as np


def stratified_folds(Y: np.ndarray, k: int, multiple: bool, seed: int = 0) -> np.ndarray:
    """Fold index per item: stratified by class (single choice) or by rarest positive label (multiple).

    Not StratifiedKFold: that refuses data where every class has fewer than k items (one label
    per class is the common cold start), and it cannot stratify multi-label rows.
    """
    rng = np.random.default_rng(seed)
    n = len(Y)
    if multiple:
        Yb = np.asarray(Y).reshape(n, -1)
        freq = Yb.sum(axis=0)
        key = np.array([int(np.argmin(np.where(r > 0, freq, np.inf))) if r.any() else -1 for r in Yb])
    else:
        key = np.asarray(Y)
    folds = np.empty(n, dtype=np.int64)
    offset = 0
    for cls in np.unique(key):
        idx = np.flatnonzero(key == cls)
        idx = idx[rng.permutation(len(idx))]
        folds[idx] = (np.arange(len(idx)) + offset) % k  # rotate so singleton classes spread over folds
        offset += len(idx)
    return folds
