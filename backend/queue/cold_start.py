"""The first batch, before any label: typical items, one per cluster."""
from __future__ import annotations

import numpy as np
from scipy.special import softmax

from .base import QueryContext, QueryStrategy, as_rng, seed_of
from .diversity import dedupe, kmeans_labels
from .measures import as_proba, top2_margin, zscore


def typicality(embeddings: np.ndarray, n_neighbors: int = 10, block: int = 2048) -> np.ndarray:
    """Mean cosine similarity to the n_neighbors nearest other items (exact, blockwise)."""
    E = np.asarray(embeddings, dtype=np.float32)
    n = len(E)
    k = int(min(n_neighbors, n - 1))
    if k <= 0:
        return np.ones(n)
    out = np.empty(n)
    for s in range(0, n, block):
        S = E[s:s + block] @ E.T
        S[np.arange(len(S)), np.arange(s, s + len(S))] = -np.inf  # not yourself
        top = np.partition(S, n - k, axis=1)[:, n - k:]
        out[s:s + len(S)] = top.mean(axis=1)
    return out


class ColdStart(QueryStrategy):
    """First batch without labels: one typical item per k-means cluster, biggest clusters first.

    Per item, score = z(typicality) - zero_shot_weight * z(zero-shot margin), where typicality is
    the mean cosine to its n_neighbors nearest items and the zero-shot margin comes from ``proba``
    (a zero-shot head's probabilities) when given, else from ``context.prototypes`` when given;
    without either the score is typicality alone. The unlabeled set is clustered into k groups
    (k-means on the embeddings), the best-scoring item of each group is taken, and near-duplicates
    are skipped. Above ``max_items`` items a random sample of that size is used, so the cost does
    not grow with the collection.
    """

    name = "cold_start"
    needs_labels = False
    diverse = True

    def __init__(self, n_neighbors: int = 10, zero_shot_weight: float = 0.3, max_items: int = 5000,
                 logit_scale: float = 30.0):
        self.n_neighbors = n_neighbors
        self.zero_shot_weight = zero_shot_weight
        self.max_items = max_items
        self.logit_scale = logit_scale

    def scores(self, proba, E: np.ndarray, prototypes=None) -> np.ndarray:
        """Per-item score, higher = more worth labeling first (see the class docstring)."""
        score = zscore(typicality(E, self.n_neighbors))
        if proba is None and prototypes is not None:
            proba = softmax(self.logit_scale * (E @ np.asarray(prototypes, np.float32).T), axis=1)
        if proba is not None and self.zero_shot_weight:
            score = score - self.zero_shot_weight * zscore(top2_margin(proba))
        return score

    def uncertainty(self, proba, embeddings=None, context: QueryContext = QueryContext()):
        if embeddings is None:
            return 1.0 - top2_margin(proba) if proba is not None else np.zeros(0)
        s = self.scores(proba, np.asarray(embeddings, np.float32), context.prototypes)
        lo, hi = s.min(), s.max()
        return (s - lo) / (hi - lo) if hi > lo else np.full(len(s), 0.5)

    def rank(self, proba, embeddings, k, context: QueryContext = QueryContext()):
        if embeddings is None:
            raise ValueError("ColdStart needs the embeddings of the unlabeled items")
        E = np.asarray(embeddings, dtype=np.float32)
        n = len(E)
        k = int(min(k, n))
        if k <= 0:
            return np.zeros(0, dtype=np.int64)
        gen = as_rng(context.rng)
        idx = np.sort(gen.choice(n, self.max_items, replace=False)) if n > self.max_items else np.arange(n)
        sub = E[idx]
        p_sub = None if proba is None else as_proba(proba)[idx]
        score = self.scores(p_sub, sub, context.prototypes)
        labels = kmeans_labels(sub, k, seed_of(gen))
        sizes = np.bincount(labels, minlength=labels.max() + 1)
        picks = []
        for c in np.argsort(-sizes, kind="stable"):
            members = np.flatnonzero(labels == c)
            if len(members):
                picks.append(members[np.argmax(score[members])])
        rest = [i for i in np.argsort(-score, kind="stable") if i not in set(picks)]
        chosen = dedupe(picks + rest, sub, k, avoid=context.labeled_embeddings)
        return idx[np.asarray(chosen, dtype=np.int64)]
