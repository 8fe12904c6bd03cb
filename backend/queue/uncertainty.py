"""The textbook pointwise strategies (the benchmark's baselines): random, least confidence,
margin, entropy."""
from __future__ import annotations

from .base import QueryContext, QueryStrategy, as_rng
from .measures import least_confidence, normalized_entropy, top2_margin


class RandomSampling(QueryStrategy):
    name = "random"
    needs_labels = False

    def uncertainty(self, proba, embeddings=None, context: QueryContext = QueryContext()):
        n = len(proba) if proba is not None else len(embeddings)
        return as_rng(context.rng).random(n)

    def rank(self, proba, embeddings, k, context: QueryContext = QueryContext()):
        n = len(proba) if proba is not None else len(embeddings)
        return as_rng(context.rng).permutation(n)[:int(min(k, n))]


class LeastConfidence(QueryStrategy):
    name = "least_confidence"

    def uncertainty(self, proba, embeddings=None, context: QueryContext = QueryContext()):
        return least_confidence(proba)


class Margin(QueryStrategy):
    name = "margin"

    def uncertainty(self, proba, embeddings=None, context: QueryContext = QueryContext()):
        return 1.0 - top2_margin(proba)


class Entropy(QueryStrategy):
    name = "entropy"

    def uncertainty(self, proba, embeddings=None, context: QueryContext = QueryContext()):
        return normalized_entropy(proba)
