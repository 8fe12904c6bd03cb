"""Boundary retrieval: for the class pairs the head confuses most, find unlabeled items near the
pair's decision boundary with a vector search, rerank them by exact margin and keep the batch
diverse."""
from __future__ import annotations

import math
from typing import Callable, Protocol, Sequence

import numpy as np

from .base import QueryContext, QueryStrategy, as_rng
from .diversity import DUPLICATE_COSINE, dedupe, mmr_picks
from .geometry import Pair, allocate_slots, class_anchors, confused_pairs, crossing_point, unit
from .measures import as_proba, top2_margin

# candidates_for(pair) -> (keys, embeddings, margins) of the pair's candidate items
Candidates = Callable[[Pair], tuple]


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
        q = unit(np.asarray(direction, np.float32).ravel())
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


class _Batch:
    """The batch being built: keys in pick order with their embeddings and margins."""

    def __init__(self, labeled):
        self.labeled = None if labeled is None or not len(labeled) else np.asarray(labeled, np.float32)
        self.keys: list = []
        self.taken: set = set()
        self.vecs: list[np.ndarray] = []
        self.margins: list[float] = []
        self.pairs: list = []  # the pair (its slots) each pick was made for; None for top-up picks

    def add(self, key, vec: np.ndarray, margin: float, pair=None) -> None:
        self.keys.append(key)
        self.taken.add(key)
        self.vecs.append(vec)
        self.margins.append(margin)
        self.pairs.append(pair)

    def avoid(self) -> np.ndarray | None:
        """Embeddings a new pick must not nearly duplicate: the labeled items and the picks so far."""
        if not self.vecs:
            return self.labeled
        prior = np.asarray(self.vecs, np.float32)
        return prior if self.labeled is None else np.vstack([self.labeled, prior])

    def by_margin(self, k: int) -> list:
        order = np.argsort(np.asarray(self.margins), kind="stable")[:k]
        return [self.keys[o] for o in order]

    def prefix_diverse(self, k: int, lam: float) -> list:
        """The k smallest-margin picks, ordered so that every prefix is uncertain and diverse (greedy maximal
        marginal relevance, starting with the smallest margin): annotators take the top of a batch before the
        next run replaces it, so the top must not be k near-identical items from one pair."""
        margins = np.asarray(self.margins)
        first = np.argsort(margins, kind="stable")[:k]
        order = mmr_picks(first, 1.0 - margins[first], np.asarray(self.vecs, np.float32), len(first), lam=lam,
                          threshold=np.inf)
        return [self.keys[o] for o in order]

    def interleaved(self, k: int) -> list:
        """The pairs' picks interleaved so that every prefix shares its positions among the pairs as the batch
        does (at each position the pair furthest behind its share; within a pair, pick order), then the
        top-up picks by margin: a prefix is close to the batch the strategy would pick for that size."""
        queues: dict[int, list[int]] = {}
        slots: dict[int, int] = {}
        for n, pair in enumerate(self.pairs):
            if pair is not None:
                queues.setdefault(id(pair), []).append(n)
                slots[id(pair)] = pair.slots
        total = sum(slots.values())
        taken = dict.fromkeys(queues, 0)
        order: list[int] = []
        for position in range(1, sum(len(q) for q in queues.values()) + 1):
            live = [p for p in queues if taken[p] < len(queues[p])]
            p = max(live, key=lambda p: slots[p] * position / total - taken[p])  # ties: the heavier pair (first)
            order.append(queues[p][taken[p]])
            taken[p] += 1
        rest = [n for n in np.argsort(np.asarray(self.margins), kind="stable") if self.pairs[n] is None]
        return [self.keys[n] for n in (order + rest)[:k]]


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
       an exact numpy scan (NumpyIndex) or a vector store (backend.embed.store.CollectionIndex on
       a Chroma collection, HNSW: sub-linear).
    4. Rerank by the head's exact top-2 margin on the retrieved items, take a shortlist of
       ``shortlist_factor * slots`` per pair and pick from it by maximal marginal relevance
       ((1 - margin) - diversity * largest cosine to an item already picked: spreads the pair's
       slots over the boundary instead of one tight spot), never a near-duplicate (cosine > 0.95
       to a picked or labeled item); the batch is ordered by margin.

    ``rank`` runs this on in-memory arrays (below ``exhaustive_max`` items a pair's candidates are
    simply all items whose two top classes are that pair: the exact answer that steps 2-3
    approximate); ``query`` runs it on any VectorIndex and returns ids. Variants for tiny budgets
    (exploration, density weighting) live in bench.strategy_variants: they did not hold up on all
    benchmark datasets (docs/active_learning.md).
    """

    name = "boundary"
    diverse = True

    def __init__(self, overfetch: int = 10, min_candidates: int = 50, shortlist_factor: int = 3,
                 queries_per_pair: int = 3, direction: str = "crossing", pair_sample: int = 4000,
                 dup_threshold: float = DUPLICATE_COSINE, diversity: float = 0.5,
                 exhaustive_max: int = 50_000, pair_power: float = 1.0, order: str = "interleave"):
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
        if order not in ("interleave", "diverse", "margin"):
            raise ValueError("order must be 'interleave', 'diverse' or 'margin'")
        self.order = order

    def uncertainty(self, proba, embeddings=None, context: QueryContext = QueryContext()):
        return 1.0 - top2_margin(proba)

    # -- in memory --------------------------------------------------------------------------------
    def rank(self, proba, embeddings, k, context: QueryContext = QueryContext()):
        """In-memory version: indices into proba/embeddings.

        Up to ``exhaustive_max`` items the candidates of a pair are all items whose two top classes
        are that pair (the exact answer, from the probabilities already computed); above it, the
        pair's query points are searched by an exact numpy scan (NumpyIndex)."""
        p, E, k = self.prepare(proba, embeddings, k)
        if k <= 0:
            return np.zeros(0, dtype=np.int64)
        return self.boundary_rank(p, E, k, context, as_rng(context.rng), avoid=context.labeled_embeddings)

    @staticmethod
    def prepare(proba, embeddings, k: int) -> tuple[np.ndarray, np.ndarray | None, int]:
        """(proba as float64 rows, embeddings as float32, k capped at the item count)."""
        p = as_proba(proba)
        k = int(min(k, len(p)))
        if k > 0 and embeddings is None:
            raise ValueError("BoundaryRetrieval needs the embeddings of the unlabeled items")
        return p, None if embeddings is None else np.asarray(embeddings, np.float32), k

    def boundary_rank(self, p: np.ndarray, E: np.ndarray, k: int, context: QueryContext,
                      gen: np.random.Generator, avoid=None, margins: np.ndarray | None = None) -> np.ndarray:
        """The k boundary items of (p, E), as indices. ``avoid``: embeddings to stay away from;
        ``margins``: the per-item key the batch is ranked by (default: the top-2 margin). The class
        anchors come from the context's labeled items."""
        n = len(p)
        if k <= 0 or n == 0:
            return np.zeros(0, dtype=np.int64)
        sample = p if n <= self.pair_sample else p[gen.choice(n, self.pair_sample, replace=False)]
        pairs = self.pairs(sample, k)
        margins = top2_margin(p) if margins is None else margins
        if n <= self.exhaustive_max:
            candidates_for = self._exhaustive_candidates(p, E, margins)
        else:
            candidates_for = self._scanned_candidates(p, E, margins, context)
        picked = np.asarray(self.select(pairs, candidates_for, k, avoid), dtype=np.int64)
        if len(picked) < k:  # too few candidates (tiny pools): fall back to global margin
            taken = set(picked.tolist())
            extra = [i for i in np.argsort(margins, kind="stable") if i not in taken]
            picked = np.concatenate([picked, np.asarray(dedupe(extra, E, k - len(picked),
                                                               self.dup_threshold), np.int64)])
            if len(picked) < k:
                taken = set(picked.tolist())
                picked = np.concatenate([picked, [i for i in np.argsort(margins) if i not in taken][:k - len(picked)]])
        return picked.astype(np.int64)

    @staticmethod
    def _exhaustive_candidates(p: np.ndarray, E: np.ndarray, margins: np.ndarray) -> Candidates:
        K = p.shape[1]
        top2 = np.argsort(-p, axis=1, kind="stable")[:, :2]
        code = np.minimum(top2[:, 0], top2[:, 1]) * K + np.maximum(top2[:, 0], top2[:, 1])

        def candidates_for(pair):
            idx = np.flatnonzero(code == pair.i * K + pair.j)
            return idx.tolist(), E[idx], margins[idx]
        return candidates_for

    def _scanned_candidates(self, p: np.ndarray, E: np.ndarray, margins: np.ndarray,
                            context: QueryContext) -> Candidates:
        anchors = class_anchors(p.shape[1], context.head, context.labeled_embeddings, context.labeled_y,
                                context.prototypes)
        index = NumpyIndex(E)
        seen: set = set()

        def candidates_for(pair):
            return self.retrieve(pair, anchors, lambda q, m: index.search(q, m),
                                 lambda ks, V: margins[np.asarray(ks, dtype=np.int64)], context.head, context, seen)
        return candidates_for

    # -- vector store -----------------------------------------------------------------------------
    def query(self, index: VectorIndex, head, k: int, sample_embeddings: np.ndarray,
              context: QueryContext = QueryContext(), sample_keys: Sequence | None = None) -> list:
        """Vector-store version: ids of the k items to label next. Reads only ``sample_embeddings``
        (a random sample of the unlabeled items, for the pair statistics) and the retrieved items,
        so its cost does not grow with the collection beyond the index's own search. Ids in
        ``context.labeled_ids`` are never returned.

        Given ``sample_keys`` (the sample's ids in the index), a pair's candidates are the retrieved
        items plus the sample's own items of that pair: the searches add boundary items the sample
        missed, and the batch is never worse than the exact ranking of the sample (searches near the
        crossing points alone missed most low-margin items on AG News: 210 labels to 95% vs 60)."""
        if head is None:
            raise ValueError("BoundaryRetrieval.query needs a fitted head")
        S = np.asarray(sample_embeddings, np.float32)
        sample = np.asarray(head.predict_proba(S), np.float64)
        anchors = class_anchors(sample.shape[1], head, context.labeled_embeddings, context.labeled_y,
                                context.prototypes)
        pairs = self.pairs(sample, k)
        exclude = set(context.labeled_ids or ())
        seen: set = set()
        of_sample = None if sample_keys is None else self._exhaustive_candidates(sample, S, top2_margin(sample))

        def score(keys, V):
            return top2_margin(head.predict_proba(V))

        def candidates_for(pair):
            found = self.retrieve(pair, anchors, lambda q, m: index.search(q, m, exclude), score, head, context, seen)
            if of_sample is None:
                return found
            return self._with_sample(found, of_sample(pair), sample_keys, exclude, seen)

        return self.select(pairs, candidates_for, k, context.labeled_embeddings)

    @staticmethod
    def _with_sample(found, in_sample, sample_keys: Sequence, exclude: set, seen: set):
        """Retrieved candidates (keys, V, margins) joined by the sample's items of the same pair."""
        idx, V, margins = in_sample
        keep = [n for n, i in enumerate(idx) if sample_keys[i] not in exclude and sample_keys[i] not in seen]
        if not keep:
            return found
        keys = [sample_keys[idx[n]] for n in keep]
        seen.update(keys)
        if not found[0]:
            return keys, V[keep], margins[keep]
        return (found[0] + keys, np.concatenate([found[1], V[keep]]),
                np.concatenate([found[2], margins[keep]]))

    # -- shared steps -----------------------------------------------------------------------------
    def pairs(self, proba_sample, k: int) -> list[Pair]:
        """Step 1: the confused pairs of a sample, with their batch slots."""
        # scale the sample's pair weights up to the collection: only the shares matter
        return allocate_slots(confused_pairs(proba_sample), k, self.pair_power)

    def query_points(self, pair: Pair, anchors: np.ndarray, head=None, labeled_embeddings=None,
                     labeled_y=None) -> list[np.ndarray]:
        """Step 2: where to search for the pair's boundary items."""
        a, b = anchors[pair.i], anchors[pair.j]
        if np.isnan(a).any() or np.isnan(b).any():
            return []
        if self.direction == "bisector":
            return [unit(a + b)]
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

    def retrieve(self, pair: Pair, anchors: np.ndarray, search: Callable, score: Callable, head,
                 context: QueryContext, seen: set):
        """Step 3: candidates of one pair from the vector search, (keys, embeddings, margins);
        ``seen`` keys (retrieved for an earlier pair) are skipped."""
        points = self.query_points(pair, anchors, head, context.labeled_embeddings, context.labeled_y)
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

    def select(self, pairs: list[Pair], candidates_for: Candidates, k: int, avoid) -> list:
        """Step 4: per pair, shortlist by margin and pick by maximal marginal relevance; top up from
        all candidates; order the batch by margin. Returns the picked keys."""
        batch = _Batch(avoid)
        leftovers: list = []  # (margin, key, embedding) of candidates not picked, for the top-up
        for pair in pairs:
            keys, V, margins = candidates_for(pair)
            if not keys:
                continue
            fresh = np.asarray([n for n, key in enumerate(keys) if key not in batch.taken], dtype=np.int64)
            if not len(fresh):
                continue
            order = fresh[np.argsort(margins[fresh], kind="stable")]
            shortlist = order[:max(pair.slots * self.shortlist_factor, pair.slots)]
            picks = mmr_picks(shortlist, 1.0 - margins[shortlist], V, pair.slots, lam=self.diversity,
                              threshold=self.dup_threshold, avoid=batch.avoid())
            for p in picks:
                batch.add(keys[p], V[p], float(margins[p]), pair)
            taken = set(picks)
            leftovers.extend((float(margins[o]), keys[o], V[o]) for o in order[:4 * max(k, 1)] if o not in taken)
        if len(batch.keys) < k and leftovers:
            self._top_up(batch, leftovers, k)
        if self.order == "interleave":
            return batch.interleaved(k)
        return batch.prefix_diverse(k, self.diversity) if self.order == "diverse" else batch.by_margin(k)

    def _top_up(self, batch: _Batch, leftovers: list, k: int) -> None:
        """Fill the batch from everything retrieved, by margin, still without near-duplicates."""
        leftovers.sort(key=lambda t: t[0])
        rest = [t for t in leftovers if t[1] not in batch.taken]
        if not rest:
            return
        R = np.asarray([t[2] for t in rest], np.float32)
        for p in dedupe(range(len(rest)), R, k - len(batch.keys), self.dup_threshold, batch.avoid()):
            if rest[p][1] not in batch.taken:
                batch.add(rest[p][1], R[p], rest[p][0])
