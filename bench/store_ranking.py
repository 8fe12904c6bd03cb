"""The queue's batch retrieved through Chroma, as the server does it (``backend.flows.rank.rank_batch``):
the pool's embeddings in a real embedded Chroma collection (the backend's EmbeddingStore, cosine HNSW),
labeled tasks skipped by over-fetching (``EmbeddingStore.unlabeled_index(labeled=...)``), the batch from
``BoundaryRetrieval.query`` on that index with the sample's own items as candidates too, topped up by the
sample's smallest margins when the searches find too few. The ablation's "through the store" row compares it with the exact in-memory ranking."""
from __future__ import annotations

import itertools

import numpy as np

from backend.embed.store import EmbeddingStore, StoredItem, record_id
from backend.queue.base import QueryContext
from backend.queue.boundary import BoundaryRetrieval
from backend.queue.measures import top2_margin

ENCODER_ID = "bench"
FIELD = "text"
_names = itertools.count()


class StoreRanking:
    """One pool's records in an in-process Chroma collection of their own (one per loop)."""

    def __init__(self, embeddings: np.ndarray, task_ids: np.ndarray):
        import chromadb

        self.store = EmbeddingStore(chromadb.EphemeralClient())
        self.project = f"bench{next(_names)}"
        self.pool_of = {int(t): i for i, t in enumerate(task_ids)}
        self.store.put_many(self.project, ENCODER_ID, [StoredItem(int(t), FIELD, "", e)
                                                       for t, e in zip(task_ids, np.asarray(embeddings, np.float32))])

    def batch(self, head, k: int, sample: np.ndarray, labeled_tasks: set[int], labeled_E, labeled_y,
              prototypes, sample_tasks: list[int] | None = None) -> list[int]:
        """Pool indices of the k items the server's batch would hold (sample: the unlabeled embeddings,
        of ``sample_tasks``)."""
        index = self.store.unlabeled_index(self.project, ENCODER_ID, FIELD, labeled_tasks)
        context = QueryContext(head=head, labeled_embeddings=labeled_E, labeled_y=labeled_y, prototypes=prototypes,
                               labeled_ids=[])
        keys = BoundaryRetrieval().query(index, head, k, sample, context, sample_keys=None if sample_tasks is None
                                         else [record_id(t, FIELD) for t in sample_tasks])
        picked = [self.pool_of[int(str(key).split(":")[0])] for key in keys]
        return picked[:k]

    def drop(self) -> None:
        self.store.client.delete_collection(self.store.collection(self.project, ENCODER_ID).name)


def with_store_batch(ranking: StoreRanking, queue: list[int], head, k: int, sample: np.ndarray, unlabeled: np.ndarray,
                     task_ids: np.ndarray, labeled_idx: list[int], labeled_E, labeled_y, prototypes) -> list[int]:
    """The serving order with the store's batch first (as the server publishes it), then ``queue``'s order.
    A batch short of k is topped up with the sample's smallest margins, as rank_batch does."""
    picked = ranking.batch(head, k, sample, {int(task_ids[i]) for i in labeled_idx}, labeled_E, labeled_y, prototypes,
                           sample_tasks=[int(t) for t in task_ids[unlabeled]])
    if len(picked) < k:
        taken = set(picked)
        margins = top2_margin(head.predict_proba(sample))
        picked += [int(i) for i in unlabeled[np.argsort(margins, kind="stable")] if int(i) not in taken][:k - len(picked)]
    first = set(picked)
    return picked + [i for i in queue if i not in first]

