"""Batch diversity: skip near-duplicates, spread picks over clusters or by maximal marginal relevance."""
from __future__ import annotations

from typing import Iterable

import numpy as np

DUPLICATE_COSINE = 0.95  # two items with a larger cosine similarity count as near-duplicates


def dedupe(order: Iterable[int], embeddings: np.ndarray, k: int, threshold: float = DUPLICATE_COSINE,
           avoid: np.ndarray | None = None) -> list[int]:
    """Walk ``order`` and keep up to k items whose cosine to every kept item (and to ``avoid``,
    e.g. labeled embeddings) is at most ``threshold``."""
    E = np.asarray(embeddings, dtype=np.float32)
    kept: list[int] = []
    kept_vecs = np.zeros((k, E.shape[1]), dtype=np.float32) if k > 0 else np.zeros((0, E.shape[1]), np.float32)
    avoid = None if avoid is None or len(avoid) == 0 else np.asarray(avoid, dtype=np.float32)
    for i in order:
        if len(kept) >= k:
            break
        v = E[i]
        if kept and float((kept_vecs[:len(kept)] @ v).max()) > threshold:
            continue
        if avoid is not None and float((avoid @ v).max()) > threshold:
            continue
        kept_vecs[len(kept)] = v
        kept.append(int(i))
    return kept


def kmeans_labels(X: np.ndarray, n_clusters: int, seed: int) -> np.ndarray:
    """Cluster index per row (k-means, one initialization: cheap, and seeded for repeatability)."""
    from sklearn.cluster import KMeans

    n_clusters = int(max(1, min(n_clusters, len(X))))
    if n_clusters == 1:
        return np.zeros(len(X), dtype=np.int64)
    km = KMeans(n_clusters=n_clusters, n_init=1, random_state=seed, max_iter=100)
    return km.fit_predict(np.asarray(X, dtype=np.float32))


def cluster_picks(candidates: np.ndarray, scores: np.ndarray, embeddings: np.ndarray, k: int, seed: int = 0,
                  threshold: float = DUPLICATE_COSINE, avoid: np.ndarray | None = None) -> list[int]:
    """Up to k of ``candidates``: cluster them into k groups (k-means) and take the best-scoring
    item (highest ``scores``) of each group, best groups first; near-duplicates are skipped and the
    batch is topped up from the remaining candidates by score."""
    candidates = np.asarray(candidates, dtype=np.int64)
    scores = np.asarray(scores, dtype=np.float64)
    if k <= 0 or len(candidates) == 0:
        return []
    if len(candidates) <= k:
        order = candidates[np.argsort(-scores, kind="stable")]
        return dedupe(order, embeddings, k, threshold, avoid)
    labels = kmeans_labels(embeddings[candidates], k, seed)
    best = {}
    for pos in np.argsort(-scores, kind="stable"):
        best.setdefault(int(labels[pos]), pos)
    firsts = sorted(best.values(), key=lambda pos: -scores[pos])
    rest = [pos for pos in np.argsort(-scores, kind="stable") if pos not in set(firsts)]
    order = candidates[np.asarray(firsts + rest, dtype=np.int64)]
    return dedupe(order, embeddings, k, threshold, avoid)


def mmr_picks(candidates: np.ndarray, relevance: np.ndarray, embeddings: np.ndarray, k: int, lam: float = 0.5,
              threshold: float = DUPLICATE_COSINE, avoid: np.ndarray | None = None) -> list[int]:
    """Up to k of ``candidates`` by maximal marginal relevance: repeatedly take the candidate with
    the largest relevance - lam * (its largest cosine to an item already taken), never one with a
    cosine above ``threshold`` to a taken item or to ``avoid``. Deterministic and stable: a small
    change in the candidate set changes the picks only where it matters."""
    candidates = np.asarray(candidates, dtype=np.int64)
    rel = np.asarray(relevance, dtype=np.float64)
    if k <= 0 or len(candidates) == 0:
        return []
    V = np.asarray(embeddings, np.float32)[candidates]
    max_sim = np.full(len(candidates), -1.0)
    if avoid is not None and len(avoid):
        A = np.asarray(avoid, np.float32)
        blocked = (V @ A.T).max(axis=1) > threshold
    else:
        blocked = np.zeros(len(candidates), bool)
    taken: list[int] = []
    alive = ~blocked
    while len(taken) < k and alive.any():
        score = np.where(alive, rel - lam * np.maximum(max_sim, 0.0), -np.inf)
        best = int(np.argmax(score))
        taken.append(best)
        alive[best] = False
        sims = V @ V[best]
        max_sim = np.maximum(max_sim, sims)
        alive &= sims <= threshold
    return [int(candidates[t]) for t in taken]
