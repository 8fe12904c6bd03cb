"""Opt-in variants of boundary retrieval for tiny budgets, kept for the benchmark only.

Both are off by default because neither held up on all four benchmark datasets
(docs/active_learning.md): density weighting helped AG News and CIFAR-10 but cost banking77 two
batches; exploration helped none of them clearly.
"""
from __future__ import annotations

import numpy as np

from backend.queue.base import QueryContext, as_rng
from backend.queue.boundary import BoundaryRetrieval
from backend.queue.cold_start import typicality
from backend.queue.diversity import DUPLICATE_COSINE
from backend.queue.measures import top2_margin, zscore


def sampled_density(embeddings: np.ndarray, n_neighbors: int = 10, reference: int = 2000, rng=None) -> np.ndarray:
    """Typicality against a random reference sample of at most ``reference`` items: the mean cosine
    of each item to its n_neighbors nearest reference items (itself excluded). O(n * reference),
    so it stays cheap for large collections; equals ``typicality`` when n <= reference."""
    E = np.asarray(embeddings, dtype=np.float32)
    n = len(E)
    if n <= reference:
        return typicality(E, n_neighbors)
    ref = np.sort(as_rng(rng).choice(n, reference, replace=False))
    k = int(min(n_neighbors, reference - 1))
    out = np.empty(n)
    for s in range(0, n, 2048):
        S = E[s:s + 2048] @ E[ref].T
        S[S > 0.9999] = -np.inf  # the item itself (or an exact duplicate)
        out[s:s + len(S)] = np.partition(S, reference - k, axis=1)[:, reference - k:].mean(axis=1)
    return out


def percentile(x: np.ndarray) -> np.ndarray:
    """Rank of each value in [0, 1] (0 = smallest)."""
    x = np.asarray(x)
    if len(x) < 2:
        return np.ones(len(x))
    r = np.empty(len(x))
    r[np.argsort(x, kind="stable")] = np.arange(len(x))
    return r / (len(x) - 1)


def explore_picks(embeddings: np.ndarray, k: int, density: np.ndarray, labeled_embeddings=None,
                  coverage_weight: float = 1.0, predicted=None, labeled_y=None) -> list[int]:
    """Up to k typical items far from what is labeled (greedy): each pick maximizes
    z(density) + coverage_weight * z(1 - largest cosine to a labeled or already picked item).
    With ``predicted`` (the head's class per item) and ``labeled_y``, coverage is class-conditional:
    an item is covered only by labeled / picked items of its predicted class, so every predicted
    class gets its typical, not yet represented modes labeled."""
    E = np.asarray(embeddings, dtype=np.float32)
    if k <= 0 or not len(E):
        return []
    zt = zscore(density)
    near = np.full(len(E), -1.0)
    dup = np.full(len(E), -1.0)  # largest cosine to anything labeled / picked, any class
    cond = predicted is not None and labeled_y is not None
    pred = None if predicted is None else np.asarray(predicted)
    if labeled_embeddings is not None and len(labeled_embeddings):
        L = np.asarray(labeled_embeddings, np.float32)
        S = E @ L.T
        dup = S.max(axis=1).astype(np.float64)
        if cond:
            same = pred[:, None] == np.asarray(labeled_y).astype(int)[None, :]
            near = np.where(same, S, -1.0).max(axis=1).astype(np.float64)
        else:
            near = dup.copy()
    picks: list[int] = []
    for _ in range(int(min(k, len(E)))):
        s = zt + coverage_weight * zscore(1.0 - near)
        s[picks] = -np.inf
        s[dup > DUPLICATE_COSINE] = -np.inf
        if not np.isfinite(s).any():
            break
        b = int(np.argmax(s))
        picks.append(b)
        sims = (E @ E[b]).astype(np.float64)
        dup = np.maximum(dup, sims)
        near = np.maximum(near, np.where(pred == pred[b], sims, -1.0) if cond else sims)
    return picks


class ExploringBoundaryRetrieval(BoundaryRetrieval):
    """BoundaryRetrieval with two opt-in variants (``rank`` only; ``query`` is unchanged). With
    their defaults it is exactly BoundaryRetrieval.

    - ``explore`` > 0: that share of the batch (decreasing linearly to 0 at ``explore_until``
      labels per class) goes to typical items far from everything labeled (``explore_picks``;
      with ``class_coverage`` coverage counts only labeled items of the item's predicted class).
    - ``density_weight`` > 0: an item's margin is increased by density_weight * (1 - its density
      percentile), density = mean cosine to its 10 nearest items in a reference sample of
      ``density_reference`` items (``sampled_density``), so at equal uncertainty the typical item
      is labeled before the outlier (information density, Settles & Craven 2008).
    """

    def __init__(self, explore: float = 0.0, explore_until: float = 10.0, coverage_weight: float = 1.0,
                 density_weight: float = 0.0, density_reference: int = 2000, class_coverage: bool = True,
                 **boundary_kwargs):
        super().__init__(**boundary_kwargs)
        self.explore = explore
        self.explore_until = explore_until
        self.coverage_weight = coverage_weight
        self.density_weight = density_weight
        self.density_reference = density_reference
        self.class_coverage = class_coverage

    def explore_share(self, n_labeled: int, n_classes: int) -> float:
        """Share of the batch spent on exploration (typical, uncovered items): ``explore`` at the
        first labels, decreasing linearly to 0 at ``explore_until`` labels per class."""
        if self.explore <= 0 or self.explore_until <= 0:
            return 0.0
        return float(self.explore * max(0.0, 1.0 - n_labeled / (self.explore_until * max(n_classes, 1))))

    def weighted_margins(self, p: np.ndarray, density: np.ndarray | None) -> np.ndarray:
        margins = top2_margin(p)
        if density is not None and self.density_weight:
            # an item in the sparsest part of the collection counts as if its margin were
            # density_weight larger: at equal uncertainty, label the typical item, not the outlier
            margins = margins + self.density_weight * (1.0 - percentile(density))
        return margins

    def rank(self, proba, embeddings, k, context: QueryContext = QueryContext()):
        p, E, k = self.prepare(proba, embeddings, k)
        if k <= 0:
            return np.zeros(0, dtype=np.int64)
        gen = as_rng(context.rng)
        labeled_E, labeled_y = context.labeled_embeddings, context.labeled_y
        n_labeled = 0 if labeled_E is None else len(labeled_E)
        k_explore = int(round(self.explore_share(n_labeled, p.shape[1]) * k))
        density = None
        if k_explore or self.density_weight:
            density = sampled_density(E, reference=self.density_reference, rng=gen)
        if not k_explore:
            return self.boundary_rank(p, E, k, context, gen, avoid=labeled_E,
                                      margins=self.weighted_margins(p, density))
        cond = self.class_coverage and labeled_y is not None and n_labeled > 0
        first = explore_picks(E, k_explore, density, labeled_E, self.coverage_weight,
                              predicted=p.argmax(axis=1) if cond else None,
                              labeled_y=labeled_y if cond else None)
        rest = np.setdiff1d(np.arange(len(p)), first)
        seen = E[first] if labeled_E is None or not n_labeled \
            else np.vstack([np.asarray(labeled_E, np.float32), E[first]])
        more = self.boundary_rank(p[rest], E[rest], k - len(first), context, gen, avoid=seen,
                                  margins=self.weighted_margins(p[rest], None if density is None else density[rest]))
        return np.concatenate([np.asarray(first, np.int64), rest[more]]).astype(np.int64)
