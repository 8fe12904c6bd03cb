"""Active-learning query strategies: which unlabeled items to label next.

Every strategy is a small class with one typed interface (shaped like small-text's query
strategies; see base.py): ``rank(proba, embeddings, k, context)`` -> the k items to label next, in
query order, and ``priority(proba, embeddings, k=0, context)`` -> (n,) floats in [0, 1], lower =
label first (Label Studio sorts prediction scores ascending). ``context`` is a QueryContext.

Strategies:

- RandomSampling: a random order.
- LeastConfidence: 1 - top probability.
- Margin: smallest difference between the two top probabilities.
- Entropy: highest entropy of the probability row.
- BoundaryRetrieval: for the most confused class pairs, retrieve unlabeled items near the pair's
  decision boundary with a vector search (exact numpy scan, or a vector store: HNSW, so
  sub-linear), rerank them by exact margin and keep the batch diverse. See the class docstring.
- ColdStart: no labels yet: typicality (density among nearest neighbours) within k-means clusters
  (one pick per cluster, largest clusters first), nudged toward items whose zero-shot margin is
  small when label prototypes are known.

The uncertainty strategies take ``diverse=True`` to skip near-duplicates and pick across clusters
of an uncertain shortlist; by default they are the plain textbook versions (the benchmark's
baselines). BoundaryRetrieval and ColdStart are always diverse.

Strategies assume single-choice probability rows (they sum to 1). For multiple-choice heads pass
per-class decision certainties instead or use the head's own ``score`` as the priority (what
priorities.queue_priorities does).
"""
from __future__ import annotations

from typing import Callable

from .base import QueryContext, QueryStrategy, rank_priority
from .boundary import BoundaryRetrieval, NumpyIndex, VectorIndex
from .cold_start import ColdStart, typicality
from .diversity import DUPLICATE_COSINE, cluster_picks, dedupe, mmr_picks
from .geometry import Pair, class_anchors, confused_pairs, crossing_point, head_weight_matrix
from .measures import least_confidence, normalized_entropy, top2_margin
from .uncertainty import Entropy, LeastConfidence, Margin, RandomSampling

STRATEGIES: dict[str, Callable[[], QueryStrategy]] = {
    "random": RandomSampling,
    "least_confidence": LeastConfidence,
    "margin": Margin,
    "entropy": Entropy,
    "boundary": BoundaryRetrieval,
    "cold_start": ColdStart,
}


def get_strategy(name: str, **kwargs) -> QueryStrategy:
    """A new strategy by its ``name``, with constructor keyword arguments."""
    try:
        return STRATEGIES[name](**kwargs)
    except KeyError:
        raise ValueError(f"unknown strategy {name!r}; one of {', '.join(STRATEGIES)}") from None


__all__ = [
    "STRATEGIES", "get_strategy", "QueryContext", "QueryStrategy", "rank_priority",
    "RandomSampling", "LeastConfidence", "Margin", "Entropy", "ColdStart", "BoundaryRetrieval",
    "VectorIndex", "NumpyIndex", "Pair", "class_anchors", "confused_pairs", "crossing_point", "head_weight_matrix",
    "typicality", "DUPLICATE_COSINE", "dedupe", "cluster_picks", "mmr_picks",
    "top2_margin", "normalized_entropy", "least_confidence",
]
