"""One object tag's records in the embedding store: the (project, encoder, field) key bound once, task
ids in and out, so callers never rebuild record ids or pass the key around."""
from __future__ import annotations

import numpy as np

from .store import CollectionIndex, EmbeddingStore, record_id


class StoreView:
    def __init__(self, store: EmbeddingStore, project: str, encoder_id: str, field: str):
        self.store = store
        self.project = str(project)
        self.encoder_id = encoder_id
        self.field = field  # the object tag name, e.g. "image"

    def record_id(self, task_id) -> str:
        return record_id(task_id, self.field)

    @staticmethod
    def task_of(record: str) -> int:
        """The task id of a record id ("<task>:<field>")."""
        return int(str(record).split(":", 1)[0])

    def count(self) -> int:
        """Records in the collection (of every field stored with this encoder)."""
        return self.store.count(self.project, self.encoder_id)

    def field_count(self) -> int:
        """Records of this field (one id listing, no embeddings read)."""
        got = self.store.collection(self.project, self.encoder_id).get(where={"field": self.field}, include=[])
        return len(got["ids"])

    def missing(self, tasks: list[dict]) -> list[dict]:
        """The tasks ({"id", ...}) without a record of this field (one id lookup, no embeddings read)."""
        stored = self.store.existing(self.project, self.encoder_id, [self.record_id(t["id"]) for t in tasks])
        return [t for t in tasks if self.record_id(t["id"]) not in stored]

    def embeddings(self, task_ids: list[int]) -> dict[int, np.ndarray]:
        """{task id: embedding} of the tasks that have a record of this field."""
        found = self.store.embeddings(self.project, self.encoder_id, [self.record_id(t) for t in task_ids])
        return {t: found[self.record_id(t)] for t in task_ids if self.record_id(t) in found}

    def mark_labeled(self, task_ids, labeled: bool) -> None:
        self.store.mark_labeled(self.project, self.encoder_id, self.field, task_ids, labeled)

    def sample_unlabeled(self, n: int, rng: np.random.Generator, exclude: set[int] = frozenset(),
                         runs: int = 1) -> tuple[list[int], np.ndarray]:
        return self.store.sample_unlabeled(self.project, self.encoder_id, self.field, n, rng, exclude=exclude,
                                           runs=runs)

    def unlabeled_index(self, labeled: set[int] | None = None) -> CollectionIndex:
        return self.store.unlabeled_index(self.project, self.encoder_id, self.field, labeled)

    def nearest(self, vector: np.ndarray, k: int, exclude: set[int] = frozenset(),
                total: int | None = None) -> list[tuple[int, float]]:
        return self.store.nearest(self.project, self.encoder_id, vector, k, self.field, exclude, total=total)
