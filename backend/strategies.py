"""Active-learning query strategies: which unlabeled items to label next.

Every strategy is a small class with the same two entry points (shaped like small-text's query
strategies):

- ``rank(proba, embeddings, k, **context) -> indices``: the ``k`` items to label next, in query
  order (first = label first). ``proba`` is the head's (n, K) probability matrix on the unlabeled
  items, ``embeddings`` their (n, d) L2-normalized embeddings.
- ``priority(proba, embeddings, k=0, **context) -> (n,) floats in [0, 1]``: LOWER = label first,
  because Label Studio sorts prediction scores ascending ("Uncertainty sampling"). The backend can
  write these as prediction scores.

Context keywords every ``rank`` accepts (strategies ignore what they do not use):
``head`` (a fitted head with ``predict_proba``), ``labeled_embeddings`` and ``labeled_y`` (the
annotated items and their class indices), ``prototypes`` (zero-shot label prototypes, (K, d)),
``rng`` (a numpy Generator or a seed).

Strategies:

- RandomSampling: a random order.
- LeastConfidence: 1 - top probability.
- Margin: smallest difference between the two top probabilities.
- Entropy: highest entropy of the probability row.
- BoundaryRetrieval: for the most confused class pairs, retrieve unlabeled items near the pair's
  decision boundary with a vector search (exact numpy scan, or a Chroma collection: HNSW, so
  sub-linear), rerank them by exact margin and keep the batch diverse. See the class docstring.
- ColdStart: no labels yet: typicality (density among nearest neighbours) within k-means clusters
  (one pick per cluster, largest clusters first), nudged toward items whose zero-shot margin is
  small when label prototypes are known.

The uncertainty strategies take ``diverse=True`` to skip near-duplicates and pick across clusters
of an uncertain shortlist; by default they are the plain textbook versions (the benchmark's
baselines). BoundaryRetrieval and ColdStart are always diverse.

Strategies assume single-choice probability rows (they sum to 1). For multiple-choice heads pass
per-class decision certainties instead (see ``heads.Head.score``) or use ``priority`` from the
head's own ``score``.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Iterable, Protocol, Sequence

import numpy as np

DUPLICATE_COSINE = 0.95  # two items with a larger cosine similarity count as near-duplicates


# -- small helpers ------------------------------------------------------------------------------
def _rng(rng) -> np.random.Generator:
    if isinstance(rng, np.random.Generator):
        return rng
    return np.random.default_rng(rng)


def _proba(proba) -> np.ndarray:
    p = np.asarray(proba, dtype=np.float64)
    if p.ndim == 1:
        p = p[None, :]
    return p


def _unit(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, dtype=np.float32)
    return x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), 1e-12)


def top2_margin(proba) -> np.ndarray:
    """p(top1) - p(top2) per row, in [0, 1]; 1 for a single-column matrix."""
    p = _proba(proba)
    if p.shape[1] < 2:
        return np.ones(len(p))
    part = np.partition(p, p.shape[1] - 2, axis=1)
    return np.clip(part[:, -1] - part[:, -2], 0.0, 1.0)


def normalized_entropy(proba) -> np.ndarray:
    p = _proba(proba)
    K = p.shape[1]
    if K < 2:
        return np.zeros(len(p))
    q = np.clip(p, 1e-12, 1.0)
    return np.clip(-(q * np.log(q)).sum(axis=1) / math.log(K), 0.0, 1.0)


def least_confidence(proba) -> np.ndarray:
    """1 - p(top1), rescaled so that a uniform row scores 1: in [0, 1]."""
    p = _proba(proba)
    K = p.shape[1]
    if K < 2:
        return np.zeros(len(p))
    return np.clip((1.0 - p.max(axis=1)) / (1.0 - 1.0 / K), 0.0, 1.0)


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


def _kmeans_labels(X: np.ndarray, n_clusters: int, seed: int) -> np.ndarray:
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
    labels = _kmeans_labels(embeddings[candidates], k, seed)
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


def rank_priority(n: int, ranked: Sequence[int], base_priority: np.ndarray) -> np.ndarray:
    """Priorities for batch-aware strategies: the ranked batch gets [0, 0.5) in query order, every
    other item 0.5 + 0.5 * its base priority (base in [0, 1], lower = more useful)."""
    out = 0.5 + 0.5 * np.clip(np.asarray(base_priority, dtype=np.float64), 0.0, 1.0)
    ranked = list(ranked)
    for pos, i in enumerate(ranked):
        out[i] = 0.5 * pos / max(len(ranked), 1)
    return out


# -- interface ----------------------------------------------------------------------------------
class QueryStrategy:
    """Base class: ``uncertainty`` in [0, 1] (higher = label first) drives rank and priority."""

    name = "strategy"
    needs_labels = True  # False: usable before any annotation (random, cold start)

    def __init__(self, diverse: bool = False, shortlist_factor: int = 4):
        self.diverse, self.shortlist_factor = diverse, shortlist_factor

    def uncertainty(self, proba, embeddings=None, **context) -> np.ndarray:
        raise NotImplementedError

    def rank(self, proba, embeddings=None, k: int = 10, **context) -> np.ndarray:
        u = self.uncertainty(proba, embeddings, **context)
        order = np.argsort(-u, kind="stable")
        k = int(min(k, len(order)))
        if not getattr(self, "diverse", False) or embeddings is None:
            return order[:k]
        shortlist = order[:max(k * getattr(self, "shortlist_factor", 4), k)]
        picks = cluster_picks(shortlist, u[shortlist], np.asarray(embeddings, np.float32), k,
                              seed=_seed_of(context.get("rng")),
                              avoid=context.get("labeled_embeddings"))
        return np.asarray(picks, dtype=np.int64)

    def priority(self, proba, embeddings=None, k: int = 0, **context) -> np.ndarray:
        """(n,) in [0, 1], lower = label first. With k > 0 and a diverse strategy, the rank()
        batch comes first (see rank_priority)."""
        u = self.uncertainty(proba, embeddings, **context)
        if k > 0 and getattr(self, "diverse", False):
            return rank_priority(len(u), self.rank(proba, embeddings, k, **context), 1.0 - u)
        return np.clip(1.0 - u, 0.0, 1.0)

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"


def _seed_of(rng) -> int:
    if rng is None:
        return 0
    if isinstance(rng, (int, np.integer)):
        return int(rng)
    return int(_rng(rng).integers(2**31 - 1))


class RandomSampling(QueryStrategy):
    name = "random"
    needs_labels = False

    def uncertainty(self, proba, embeddings=None, rng=None, **context):
        n = len(proba) if proba is not None else len(embeddings)
        return _rng(rng).random(n)

    def rank(self, proba, embeddings=None, k=10, rng=None, **context):
        n = len(proba) if proba is not None else len(embeddings)
        return _rng(rng).permutation(n)[:int(min(k, n))]


class LeastConfidence(QueryStrategy):
    name = "least_confidence"

    def uncertainty(self, proba, embeddings=None, **context):
        return least_confidence(proba)


class Margin(QueryStrategy):
    name = "margin"

    def uncertainty(self, proba, embeddings=None, **context):
        return 1.0 - top2_margin(proba)


class Entropy(QueryStrategy):
    name = "entropy"

    def uncertainty(self, proba, embeddings=None, **context):
        return normalized_entropy(proba)


# -- cold start ---------------------------------------------------------------------------------
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


def sampled_density(embeddings: np.ndarray, n_neighbors: int = 10, reference: int = 2000, rng=None) -> np.ndarray:
    """Typicality against a random reference sample of at most ``reference`` items: the mean cosine
    of each item to its n_neighbors nearest reference items (itself excluded). O(n * reference),
    so it stays cheap for large collections; equals ``typicality`` when n <= reference."""
    E = np.asarray(embeddings, dtype=np.float32)
    n = len(E)
    if n <= reference:
        return typicality(E, n_neighbors)
    ref = np.sort(_rng(rng).choice(n, reference, replace=False))
    k = int(min(n_neighbors, reference - 1))
    out = np.empty(n)
    for s in range(0, n, 2048):
        S = E[s:s + 2048] @ E[ref].T
        S[S > 0.9999] = -np.inf  # the item itself (or an exact duplicate)
        out[s:s + len(S)] = np.partition(S, reference - k, axis=1)[:, reference - k:].mean(axis=1)
    return out


def _percentile(x: np.ndarray) -> np.ndarray:
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
    zt = _zscore(density)
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
        s = zt + coverage_weight * _zscore(1.0 - near)
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


def _zscore(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, dtype=np.float64)
    sd = x.std()
    return (x - x.mean()) / sd if sd > 1e-12 else np.zeros_like(x)


class ColdStart(QueryStrategy):
    """First batch without labels: one typical item per k-means cluster, biggest clusters first.

    Per item, score = z(typicality) - zero_shot_weight * z(zero-shot margin), where typicality is
    the mean cosine to its n_neighbors nearest items and the zero-shot margin comes from ``proba``
    (a zero-shot head's probabilities) when given, else from ``prototypes`` when given; without
    either the score is typicality alone. The unlabeled set is clustered into k groups (k-means on
    the embeddings), the best-scoring item of each group is taken, and near-duplicates are skipped.
    Above ``max_items`` items a random sample of that size is used, so the cost does not grow with
    the collection.
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

    def _scores(self, proba, E, prototypes=None) -> np.ndarray:
        score = _zscore(typicality(E, self.n_neighbors))
        if proba is None and prototypes is not None:
            from .heads import softmax

            proba = softmax(self.logit_scale * (E @ np.asarray(prototypes, np.float32).T))
        if proba is not None and self.zero_shot_weight:
            score = score - self.zero_shot_weight * _zscore(top2_margin(proba))
        return score

    def uncertainty(self, proba, embeddings=None, prototypes=None, **context):
        if embeddings is None:
            return 1.0 - top2_margin(proba) if proba is not None else np.zeros(0)
        s = self._scores(proba, np.asarray(embeddings, np.float32), prototypes)
        lo, hi = s.min(), s.max()
        return (s - lo) / (hi - lo) if hi > lo else np.full(len(s), 0.5)

    def rank(self, proba, embeddings=None, k=10, prototypes=None, rng=None, labeled_embeddings=None, **context):
        if embeddings is None:
            raise ValueError("ColdStart needs the embeddings of the unlabeled items")
        E = np.asarray(embeddings, dtype=np.float32)
        n = len(E)
        k = int(min(k, n))
        if k <= 0:
            return np.zeros(0, dtype=np.int64)
        gen = _rng(rng)
        idx = np.sort(gen.choice(n, self.max_items, replace=False)) if n > self.max_items else np.arange(n)
        sub = E[idx]
        p_sub = None if proba is None else _proba(proba)[idx]
        score = self._scores(p_sub, sub, prototypes)
        labels = _kmeans_labels(sub, k, _seed_of(gen))
        sizes = np.bincount(labels, minlength=labels.max() + 1)
        picks = []
        for c in np.argsort(-sizes, kind="stable"):
            members = np.flatnonzero(labels == c)
            if len(members):
                picks.append(members[np.argmax(score[members])])
        rest = [i for i in np.argsort(-score, kind="stable") if i not in set(picks)]
        chosen = dedupe(picks + rest, sub, k, avoid=labeled_embeddings)
        return idx[np.asarray(chosen, dtype=np.int64)]


# -- boundary retrieval ---------------------------------------------------------------------------
class VectorIndex(Protocol):
    """What BoundaryRetrieval needs from a vector store: the m nearest items to a direction
    (cosine), excluding some ids, with their embeddings."""

    def search(self, direction: np.ndarray, m: int, exclude: set | None = None) -> tuple[list, np.ndarray]:
        ...


class NumpyIndex:
    """Exact scan over an in-memory matrix (fine for small collections): O(n d) per query."""

    def __init__(self, embeddings: np.ndarray, ids: Sequence | None = None):
        self.E = np.asarray(embeddings, dtype=np.float32)
        self.ids = list(range(len(self.E))) if ids is None else list(ids)

    def search(self, direction, m, exclude=None):
        q = _unit(np.asarray(direction, np.float32).ravel())
        sims = self.E @ q
        if exclude:
            mask = np.fromiter((i in exclude for i in self.ids), bool, len(self.ids))
            sims = np.where(mask, -np.inf, sims)
        m = int(min(m, int(np.isfinite(sims).sum())))
        if m <= 0:
            return [], np.zeros((0, self.E.shape[1]), np.float32)
        top = np.argpartition(-sims, m - 1)[:m]
        top = top[np.argsort(-sims[top], kind="stable")]
        return [self.ids[i] for i in top], self.E[top]


class ChromaIndex:
    """A Chroma collection (cosine space, HNSW: sub-linear). Labeled items are removed either by a
    metadata filter (``where``, e.g. {"labeled": False} if the store keeps such a flag) or, by
    default, by over-fetching and dropping ids in ``exclude``."""

    def __init__(self, collection, where: dict | None = None, overfetch_cap: int = 2000):
        self.collection = collection
        self.where = where
        self.overfetch_cap = overfetch_cap

    def search(self, direction, m, exclude=None):
        exclude = exclude or set()
        extra = min(len(exclude), self.overfetch_cap, max(m, 1) * 4)
        total = self.collection.count()
        n_results = int(max(1, min(m + extra, total)))
        kwargs = {"query_embeddings": [_unit(np.asarray(direction, np.float32).ravel()).tolist()],
                  "n_results": n_results, "include": ["embeddings"]}
        if self.where:
            kwargs["where"] = self.where
        res = self.collection.query(**kwargs)
        ids, embs = res["ids"][0], res["embeddings"][0]
        keep = [(i, e) for i, e in zip(ids, embs) if i not in exclude][:m]
        if not keep:
            return [], np.zeros((0, 0), np.float32)
        return [i for i, _ in keep], np.asarray([e for _, e in keep], dtype=np.float32)


def class_anchors(K: int, head=None, labeled_embeddings=None, labeled_y=None, prototypes=None) -> np.ndarray:
    """(K, d) unit vectors standing for each class, NaN rows where nothing is known.

    In order of preference: the mean embedding of the class's labeled items; the zero-shot
    prototype; the head's weight row (PromptAnchoredHead.W, ZeroShotHead.prototypes, a multinomial
    LogisticHead's coef_ row). A head without a per-class weight matrix (a binary LogisticRegression
    has one vector) relies on the labeled means and prototypes.
    """
    anchors = None
    if labeled_embeddings is not None and len(labeled_embeddings):
        E = np.asarray(labeled_embeddings, np.float32)
        y = np.asarray(labeled_y).astype(int)
        anchors = np.full((K, E.shape[1]), np.nan, dtype=np.float32)
        for c in np.unique(y):
            if 0 <= c < K:
                anchors[c] = _unit(E[y == c].mean(axis=0))
    fallbacks = []
    if prototypes is not None:
        fallbacks.append(np.asarray(prototypes, np.float32))
    W = head_weight_matrix(head, K)
    if W is not None:
        fallbacks.append(W)
    for F in fallbacks:
        if anchors is None:
            anchors = np.full((K, F.shape[1]), np.nan, dtype=np.float32)
        missing = np.isnan(anchors[:, 0])
        anchors[missing] = _unit(F[missing])
    if anchors is None:
        raise ValueError("BoundaryRetrieval needs labeled embeddings, prototypes or a head with weights")
    return anchors


def head_weight_matrix(head, K: int) -> np.ndarray | None:
    """The head's (K, d) class weight rows where it has them (None otherwise)."""
    if head is None:
        return None
    for attr in ("W", "prototypes"):
        W = getattr(head, attr, None)
        if isinstance(W, np.ndarray) and W.ndim == 2 and W.shape[0] == K:
            return W.astype(np.float32)
    models = getattr(head, "models", None)
    if models and models[0] is not None and hasattr(models[0], "coef_") and not getattr(head, "multiple", False):
        coef, classes = models[0].coef_, models[0].classes_
        if coef.shape[0] == len(classes) and len(classes) > 2:
            W = np.full((K, coef.shape[1]), np.nan, dtype=np.float32)
            W[classes] = coef
            return W
    return None


@dataclass
class Pair:
    i: int
    j: int
    weight: float
    slots: int = 0


def confused_pairs(proba, max_pairs: int | None = None) -> list[Pair]:
    """Class pairs ranked by how much probability mass sits between them: every item adds
    (1 - margin) to the pair of its two top classes."""
    p = _proba(proba)
    if p.shape[1] < 2 or len(p) == 0:
        return []
    top2 = np.argsort(-p, axis=1, kind="stable")[:, :2]
    a, b = np.minimum(top2[:, 0], top2[:, 1]), np.maximum(top2[:, 0], top2[:, 1])
    w = 1.0 - top2_margin(p)
    K = p.shape[1]
    acc = np.zeros(K * K)
    np.add.at(acc, a * K + b, w)
    order = np.argsort(-acc, kind="stable")
    pairs = [Pair(int(c // K), int(c % K), float(acc[c])) for c in order if acc[c] > 0]
    return pairs[:max_pairs] if max_pairs else pairs


def _allocate(pairs: list[Pair], k: int, power: float = 1.0) -> list[Pair]:
    """Share k batch slots among pairs in proportion to weight ** power (largest remainder);
    pairs that get no slot are dropped."""
    pairs = [p for p in pairs if p.weight > 0]
    if not pairs or k <= 0:
        return []
    w = np.array([p.weight for p in pairs], dtype=np.float64) ** power
    raw = w / w.sum() * k
    slots = np.floor(raw).astype(int)
    for idx in np.argsort(-(raw - slots), kind="stable")[:k - int(slots.sum())]:
        slots[idx] += 1
    out = []
    for p, s in zip(pairs, slots):
        if s > 0:
            p.slots = int(s)
            out.append(p)
    return out


def crossing_point(head, a: np.ndarray, b: np.ndarray, i: int, j: int, steps: int = 17) -> np.ndarray:
    """Unit vector on the arc from anchor a (class i) to anchor b (class j) where the head's
    preference flips from i to j (log p_i - log p_j crosses zero; linear interpolation between
    grid points). Where it never flips, the point where the two are closest; without a head, the
    normalized bisector."""
    if head is None:
        return _unit(a + b)
    t = np.linspace(0.0, 1.0, steps)
    pts = _unit((1 - t)[:, None] * a[None, :] + t[:, None] * b[None, :])
    p = np.clip(np.asarray(head.predict_proba(pts), dtype=np.float64), 1e-12, 1.0)
    d = np.log(p[:, i]) - np.log(p[:, j])
    flips = np.flatnonzero((d[:-1] > 0) & (d[1:] <= 0))
    if len(flips):
        s = flips[0]
        frac = d[s] / (d[s] - d[s + 1]) if d[s] != d[s + 1] else 0.5
        tt = t[s] + frac * (t[s + 1] - t[s])
    else:
        tt = t[int(np.argmin(np.abs(d)))]
    return _unit((1 - tt) * a + tt * b)


class BoundaryRetrieval(QueryStrategy):
    """Boundary-first queries by vector search.

    1. Confused pairs: every unlabeled item (or a sample of them, at scale) adds (1 - margin) to
       the pair of its two top classes; pairs share the k batch slots in proportion to that weight
       (largest remainder; a pair with too little weight gets none).
    2. Query points per pair (i, j): with ``direction="crossing"`` (default) the point where the
       head's preference flips on the arc between the class anchors (labeled class means, else
       zero-shot prototypes, else head weight rows; see class_anchors), plus the flip points
       between the closest labeled (i, j) example pairs, so queries spread along the boundary where
       data is. ``direction="bisector"`` queries the normalized bisector of the two anchors (the
       bisector of the head's weight rows when the head has them and there are no labels).
    3. Retrieval: the ``overfetch * slots`` nearest unlabeled items per query point (cosine), from
       an exact numpy scan (NumpyIndex) or a Chroma collection (ChromaIndex, HNSW: sub-linear).
    4. Rerank by the head's exact top-2 margin on the retrieved items, take a shortlist of
       ``shortlist_factor * slots`` per pair and pick from it by maximal marginal relevance
       ((1 - margin) - diversity * largest cosine to an item already picked: spreads the pair's
       slots over the boundary instead of one tight spot), never a near-duplicate (cosine > 0.95
       to a picked or labeled item); the batch is ordered by margin.

    Two opt-in variants for tiny budgets, both off by default because neither held up on all four
    benchmark datasets (docs/active_learning.md): density weighting helped AG News and CIFAR-10
    but cost banking77 two batches; exploration helped none of them clearly.

    - ``explore`` > 0: that share of the batch (decreasing linearly to 0 at ``explore_until``
      labels per class) goes to typical items far from everything labeled (``explore_picks``;
      with ``class_coverage`` coverage counts only labeled items of the item's predicted class).
    - ``density_weight`` > 0: an item's margin is increased by density_weight * (1 - its density
      percentile), density = mean cosine to its 10 nearest items in a reference sample of
      ``density_reference`` items (``sampled_density``), so at equal uncertainty the typical item
      is labeled before the outlier (information density, Settles & Craven 2008).

    ``rank`` runs this on in-memory arrays (below ``exhaustive_max`` items a pair's candidates are
    simply all items whose two top classes are that pair: the exact answer that steps 2-3
    approximate); ``query`` runs it on any VectorIndex and returns ids.
    """

    name = "boundary"
    diverse = True

    def __init__(self, overfetch: int = 10, min_candidates: int = 50, shortlist_factor: int = 3,
                 queries_per_pair: int = 3, direction: str = "crossing", pair_sample: int = 4000,
                 dup_threshold: float = DUPLICATE_COSINE, diversity: float = 0.5,
                 exhaustive_max: int = 50_000, pair_power: float = 1.0, explore: float = 0.0,
                 explore_until: float = 10.0, coverage_weight: float = 1.0, density_weight: float = 0.0,
                 density_reference: int = 2000, class_coverage: bool = True):
        if direction not in ("crossing", "bisector"):
            raise ValueError("direction must be 'crossing' or 'bisector'")
        self.overfetch = overfetch
        self.min_candidates = min_candidates
        self.shortlist_factor = shortlist_factor
        self.queries_per_pair = queries_per_pair
        self.direction = direction
        self.pair_sample = pair_sample
        self.dup_threshold = dup_threshold
        self.diversity = diversity
        self.exhaustive_max = exhaustive_max
        self.pair_power = pair_power
        self.explore = explore
        self.explore_until = explore_until
        self.coverage_weight = coverage_weight
        self.density_weight = density_weight
        self.density_reference = density_reference
        self.class_coverage = class_coverage

    def uncertainty(self, proba, embeddings=None, **context):
        return 1.0 - top2_margin(proba)

    # -- query points ---------------------------------------------------------------------------
    def query_points(self, pair: Pair, anchors: np.ndarray, head=None, labeled_embeddings=None,
                     labeled_y=None) -> list[np.ndarray]:
        a, b = anchors[pair.i], anchors[pair.j]
        if np.isnan(a).any() or np.isnan(b).any():
            return []
        if self.direction == "bisector":
            return [_unit(a + b)]
        points = [crossing_point(head, a, b, pair.i, pair.j)]
        if self.queries_per_pair > 1 and labeled_embeddings is not None and len(labeled_embeddings):
            E = np.asarray(labeled_embeddings, np.float32)
            y = np.asarray(labeled_y).astype(int)
            Ei, Ej = E[y == pair.i], E[y == pair.j]
            if len(Ei) and len(Ej):
                S = Ei @ Ej.T
                n_extra = min(self.queries_per_pair - 1, S.size)
                flat = np.argpartition(-S.ravel(), n_extra - 1)[:n_extra]
                for f in flat[np.argsort(-S.ravel()[flat])]:
                    r, c = divmod(int(f), S.shape[1])
                    points.append(crossing_point(head, Ei[r], Ej[c], pair.i, pair.j))
        return points

    # -- shared selection -----------------------------------------------------------------------
    def _retrieve(self, pair: Pair, anchors, search: Callable, score: Callable, head, labeled_embeddings,
                  labeled_y, seen: set):
        """Candidates of one pair from the vector search: (keys, embeddings, margins)."""
        points = self.query_points(pair, anchors, head, labeled_embeddings, labeled_y)
        if not points:
            return [], None, None
        m = max(self.min_candidates, int(math.ceil(self.overfetch * pair.slots / len(points))))
        keys, vecs = [], []
        for q in points:
            ks, vs = search(q, m)
            for key, v in zip(ks, vs):
                if key not in seen:
                    seen.add(key)
                    keys.append(key)
                    vecs.append(v)
        if not keys:
            return [], None, None
        V = np.asarray(vecs, dtype=np.float32)
        return keys, V, np.asarray(score(keys, V), dtype=np.float64)

    def _select(self, pairs: list[Pair], candidates_for: Callable, k: int, labeled_embeddings):
        """candidates_for(pair) -> (keys, embeddings, margins). Per pair: shortlist by margin, pick
        by maximal marginal relevance; top up from all candidates; order the batch by margin."""
        chosen_keys: list = []
        chosen_set: set = set()
        chosen_vecs: list[np.ndarray] = []
        chosen_margin: list[float] = []
        leftovers: list = []  # (margin, key, embedding) of candidates not picked, for the top-up
        avoid = None if labeled_embeddings is None or not len(labeled_embeddings) \
            else np.asarray(labeled_embeddings, np.float32)

        def avoid_now():
            prior = np.asarray(chosen_vecs, np.float32) if chosen_vecs else None
            if prior is None:
                return avoid
            return prior if avoid is None else np.vstack([avoid, prior])

        for pair in pairs:
            keys, V, margins = candidates_for(pair)
            if not keys:
                continue
            fresh = np.asarray([n for n, key in enumerate(keys) if key not in chosen_set], dtype=np.int64)
            if not len(fresh):
                continue
            order = fresh[np.argsort(margins[fresh], kind="stable")]
            shortlist = order[:max(pair.slots * self.shortlist_factor, pair.slots)]
            picks = mmr_picks(shortlist, 1.0 - margins[shortlist], V, pair.slots, lam=self.diversity,
                              threshold=self.dup_threshold, avoid=avoid_now())
            for p in picks:
                chosen_keys.append(keys[p])
                chosen_set.add(keys[p])
                chosen_vecs.append(V[p])
                chosen_margin.append(float(margins[p]))
            taken = set(picks)
            leftovers.extend((float(margins[o]), keys[o], V[o]) for o in order[:4 * max(k, 1)] if o not in taken)
        if len(chosen_keys) < k and leftovers:  # top up from everything retrieved, by margin
            leftovers.sort(key=lambda t: t[0])
            rest = [t for t in leftovers if t[1] not in chosen_set]
            if rest:
                R = np.asarray([t[2] for t in rest], np.float32)
                for p in dedupe(range(len(rest)), R, k - len(chosen_keys), self.dup_threshold, avoid_now()):
                    if rest[p][1] in chosen_set:
                        continue
                    chosen_keys.append(rest[p][1])
                    chosen_set.add(rest[p][1])
                    chosen_vecs.append(R[p])
                    chosen_margin.append(rest[p][0])
        order = np.argsort(np.asarray(chosen_margin), kind="stable")[:k]
        return [chosen_keys[o] for o in order]

    def _pairs(self, proba_sample, k: int) -> list[Pair]:
        # scale the sample's pair weights up to the collection: only the shares matter
        return _allocate(confused_pairs(proba_sample), k, self.pair_power)

    def rank(self, proba, embeddings=None, k=10, head=None, labeled_embeddings=None, labeled_y=None,
             prototypes=None, rng=None, **context):
        """In-memory version: indices into proba/embeddings.

        Up to ``exhaustive_max`` items the candidates of a pair are all items whose two top classes
        are that pair (the exact answer, from the probabilities already computed); above it, the
        pair's query points are searched by an exact numpy scan (NumpyIndex)."""
        p = _proba(proba)
        n = len(p)
        k = int(min(k, n))
        if k <= 0:
            return np.zeros(0, dtype=np.int64)
        if embeddings is None:
            raise ValueError("BoundaryRetrieval needs the embeddings of the unlabeled items")
        E = np.asarray(embeddings, np.float32)
        gen = _rng(rng)
        n_labeled = 0 if labeled_embeddings is None else len(labeled_embeddings)
        share = self.explore_share(n_labeled, p.shape[1])
        k_explore = int(round(share * k))
        density = None
        if k_explore or self.density_weight:
            density = sampled_density(E, reference=self.density_reference, rng=gen)
        if k_explore:
            cond = self.class_coverage and labeled_y is not None and n_labeled > 0
            first = explore_picks(E, k_explore, density, labeled_embeddings, self.coverage_weight,
                                  predicted=p.argmax(axis=1) if cond else None,
                                  labeled_y=labeled_y if cond else None)
            rest = np.setdiff1d(np.arange(n), first)
            seen = E[first] if labeled_embeddings is None or not n_labeled \
                else np.vstack([np.asarray(labeled_embeddings, np.float32), E[first]])
            more = self._boundary(p[rest], E[rest], k - len(first), head, seen, labeled_y, prototypes, gen,
                                  None if density is None else density[rest], labeled_embeddings)
            return np.concatenate([np.asarray(first, np.int64), rest[more]]).astype(np.int64)
        return self._boundary(p, E, k, head, labeled_embeddings, labeled_y, prototypes, gen, density,
                              labeled_embeddings)

    def explore_share(self, n_labeled: int, n_classes: int) -> float:
        """Share of the batch spent on exploration (typical, uncovered items): ``explore`` at the
        first labels, decreasing linearly to 0 at ``explore_until`` labels per class."""
        if self.explore <= 0 or self.explore_until <= 0:
            return 0.0
        return float(self.explore * max(0.0, 1.0 - n_labeled / (self.explore_until * max(n_classes, 1))))

    def _boundary(self, p, E, k, head, labeled_embeddings, labeled_y, prototypes, gen, density,
                  anchor_embeddings):
        """The boundary part of ``rank``. ``labeled_embeddings``: items to stay away from (labeled
        plus this batch's exploration picks); ``anchor_embeddings``: the labeled items only (they
        go with ``labeled_y``)."""
        n = len(p)
        if k <= 0 or n == 0:
            return np.zeros(0, dtype=np.int64)
        sample = p if n <= self.pair_sample else p[gen.choice(n, self.pair_sample, replace=False)]
        pairs = self._pairs(sample, k)
        margins = top2_margin(p)
        if density is not None and self.density_weight:
            # an item in the sparsest part of the collection counts as if its margin were
            # density_weight larger: at equal uncertainty, label the typical item, not the outlier
            margins = margins + self.density_weight * (1.0 - _percentile(density))
        labeled_y_anchor = labeled_y
        if n <= self.exhaustive_max:
            K = p.shape[1]
            top2 = np.argsort(-p, axis=1, kind="stable")[:, :2]
            code = np.minimum(top2[:, 0], top2[:, 1]) * K + np.maximum(top2[:, 0], top2[:, 1])

            def candidates_for(pair):
                idx = np.flatnonzero(code == pair.i * K + pair.j)
                return idx.tolist(), E[idx], margins[idx]
        else:
            anchors = class_anchors(p.shape[1], head, anchor_embeddings, labeled_y_anchor, prototypes)
            index = NumpyIndex(E)
            seen: set = set()

            def candidates_for(pair):
                return self._retrieve(pair, anchors, lambda q, m: index.search(q, m),
                                      lambda ks, V: margins[np.asarray(ks, dtype=np.int64)], head,
                                      anchor_embeddings, labeled_y_anchor, seen)
        keys = self._select(pairs, candidates_for, k, labeled_embeddings)
        picked = np.asarray(keys, dtype=np.int64)
        if len(picked) < k:  # too few candidates (tiny pools): fall back to global margin
            taken = set(picked.tolist())
            extra = [i for i in np.argsort(margins, kind="stable") if i not in taken]
            picked = np.concatenate([picked, np.asarray(dedupe(extra, E, k - len(picked),
                                                               self.dup_threshold), np.int64)])
            if len(picked) < k:
                taken = set(picked.tolist())
                picked = np.concatenate([picked, [i for i in np.argsort(margins) if i not in taken][:k - len(picked)]])
        return picked.astype(np.int64)

    def query(self, index: VectorIndex, head, k: int, sample_embeddings: np.ndarray,
              labeled_embeddings=None, labeled_y=None, labeled_ids=None, prototypes=None, rng=None) -> list:
        """Vector-store version: ids of the k items to label next. Reads only ``sample_embeddings``
        (a random sample of the unlabeled items, for the pair statistics) and the retrieved items,
        so its cost does not grow with the collection beyond the index's own search."""
        if head is None:
            raise ValueError("BoundaryRetrieval.query needs a fitted head")
        sample = np.asarray(head.predict_proba(np.asarray(sample_embeddings, np.float32)), np.float64)
        K = sample.shape[1]
        anchors = class_anchors(K, head, labeled_embeddings, labeled_y, prototypes)
        pairs = self._pairs(sample, k)
        exclude = set(labeled_ids or ())
        seen: set = set()

        def score(keys, V):
            return top2_margin(head.predict_proba(V))

        def candidates_for(pair):
            return self._retrieve(pair, anchors, lambda q, m: index.search(q, m, exclude), score, head,
                                  labeled_embeddings, labeled_y, seen)

        return self._select(pairs, candidates_for, k, labeled_embeddings)


STRATEGIES: dict[str, Callable[[], QueryStrategy]] = {
    "random": RandomSampling,
    "least_confidence": LeastConfidence,
    "margin": Margin,
    "entropy": Entropy,
    "boundary": BoundaryRetrieval,
    "cold_start": ColdStart,
}


def get_strategy(name: str, **kwargs) -> QueryStrategy:
    try:
        return STRATEGIES[name](**kwargs)
    except KeyError:
        raise ValueError(f"unknown strategy {name!r}; one of {', '.join(STRATEGIES)}") from None
