"""Pointwise uncertainty measures of a probability matrix (rows = items, columns = classes)."""
from __future__ import annotations

import math

import numpy as np


def as_proba(proba) -> np.ndarray:
    """Float64 (n, K) view of ``proba``; a single row becomes a (1, K) matrix."""
    p = np.asarray(proba, dtype=np.float64)
    if p.ndim == 1:
        p = p[None, :]
    return p


def top2_margin(proba) -> np.ndarray:
    """p(top1) - p(top2) per row, in [0, 1]; 1 for a single-column matrix."""
    p = as_proba(proba)
    if p.shape[1] < 2:
        return np.ones(len(p))
    part = np.partition(p, p.shape[1] - 2, axis=1)
    return np.clip(part[:, -1] - part[:, -2], 0.0, 1.0)


def normalized_entropy(proba) -> np.ndarray:
    """Entropy of each row divided by log K: in [0, 1]."""
    p = as_proba(proba)
    K = p.shape[1]
    if K < 2:
        return np.zeros(len(p))
    q = np.clip(p, 1e-12, 1.0)
    return np.clip(-(q * np.log(q)).sum(axis=1) / math.log(K), 0.0, 1.0)


def least_confidence(proba) -> np.ndarray:
    """1 - p(top1), rescaled so that a uniform row scores 1: in [0, 1]."""
    p = as_proba(proba)
    K = p.shape[1]
    if K < 2:
        return np.zeros(len(p))
    return np.clip((1.0 - p.max(axis=1)) / (1.0 - 1.0 / K), 0.0, 1.0)


def zscore(x) -> np.ndarray:
    """Standardized scores (zeros when ``x`` is constant), so that measures on different scales
    can be added."""
    x = np.asarray(x, dtype=np.float64)
    sd = x.std()
    return (x - x.mean()) / sd if sd > 1e-12 else np.zeros_like(x)
