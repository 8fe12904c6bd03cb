"""The query-strategy interface: one typed signature for every strategy.

- ``rank(proba, embeddings, k, context) -> indices``: the ``k`` items to label next, in query
  order (first = label first). ``proba`` is the head's (n, K) probability matrix on the unlabeled
  items, ``embeddings`` their (n, d) L2-normalized embeddings.
- ``priority(proba, embeddings, k=0, context) -> (n,) floats in [0, 1]``: LOWER = label first,
  because Label Studio sorts prediction scores ascending ("Uncertainty sampling").

Everything else a strategy may use travels in one ``QueryContext``; strategies ignore the fields
they do not need.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np

from .diversity import cluster_picks


@dataclass(frozen=True, eq=False)  # eq=False: numpy fields do not compare to one bool
class QueryContext:
    """What a strategy may know besides the unlabeled items.

    head: a fitted head (anything with ``predict_proba``); labeled_embeddings / labeled_y: the
    annotated items and their class indices; prototypes: zero-shot label prototypes, (K, d);
    rng: a numpy Generator or a seed; labeled_ids: ids a vector index must not return
    (``BoundaryRetrieval.query`` only).
    """

    head: Any = None
    labeled_embeddings: np.ndarray | None = None
    labeled_y: np.ndarray | None = None
    prototypes: np.ndarray | None = None
    rng: np.random.Generator | int | None = None
    labeled_ids: Sequence | None = None


def as_rng(rng) -> np.random.Generator:
    """The Generator itself (so callers share its state), else a new one seeded with ``rng``."""
    if isinstance(rng, np.random.Generator):
        return rng
    return np.random.default_rng(rng)


def seed_of(rng) -> int:
    """An int seed for libraries that want one (k-means): the seed itself, or drawn from a Generator."""
    if rng is None:
        return 0
    if isinstance(rng, (int, np.integer)):
        return int(rng)
    return int(as_rng(rng).integers(2**31 - 1))


def rank_priority(n: int, ranked: Sequence[int], base_priority: np.ndarray) -> np.ndarray:
    """Priorities for batch-aware strategies: the ranked batch gets [0, 0.5) in query order, every
    other item 0.5 + 0.5 * its base priority (base in [0, 1], lower = more useful)."""
    out = 0.5 + 0.5 * np.clip(np.asarray(base_priority, dtype=np.float64), 0.0, 1.0)
    ranked = list(ranked)
    for pos, i in enumerate(ranked):
        out[i] = 0.5 * pos / max(len(ranked), 1)
    return out


class QueryStrategy:
    """Base class: ``uncertainty`` in [0, 1] (higher = label first) drives rank and priority.

    With ``diverse=True`` rank() clusters a shortlist of ``shortlist_factor * k`` most uncertain
    items and takes the best of each cluster, skipping near-duplicates of each other and of the
    labeled items; by default it is the plain textbook top-k.
    """

    name = "strategy"
    needs_labels = True  # False: usable before any annotation (random, cold start)
    diverse = False
    shortlist_factor = 4

    def __init__(self, diverse: bool = False, shortlist_factor: int = 4):
        self.diverse, self.shortlist_factor = diverse, shortlist_factor

    def uncertainty(self, proba, embeddings=None, context: QueryContext = QueryContext()) -> np.ndarray:
        raise NotImplementedError

    def rank(self, proba, embeddings, k: int, context: QueryContext = QueryContext()) -> np.ndarray:
        u = self.uncertainty(proba, embeddings, context)
        order = np.argsort(-u, kind="stable")
        k = int(min(k, len(order)))
        if not self.diverse or embeddings is None:
            return order[:k]
        shortlist = order[:max(k * self.shortlist_factor, k)]
        picks = cluster_picks(shortlist, u[shortlist], np.asarray(embeddings, np.float32), k,
                              seed=seed_of(context.rng), avoid=context.labeled_embeddings)
        return np.asarray(picks, dtype=np.int64)

    def priority(self, proba, embeddings=None, k: int = 0, context: QueryContext = QueryContext()) -> np.ndarray:
        """(n,) in [0, 1], lower = label first. With k > 0 and a diverse strategy, the rank()
        batch comes first (see rank_priority)."""
        u = self.uncertainty(proba, embeddings, context)
        if k > 0 and self.diverse:
            return rank_priority(len(u), self.rank(proba, embeddings, k, context), 1.0 - u)
        return np.clip(1.0 - u, 0.0, 1.0)

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"
