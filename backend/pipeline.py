"""Items → embeddings, through the store: cached items are read back, the rest are fetched,
decoded and prepared in worker threads while the encoder runs on full batches."""
from __future__ import annotations

import logging
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Callable

import numpy as np

from .fetch import FetchError
from .store import EmbeddingStore, StoredItem, content_hash, record_id

logger = logging.getLogger(__name__)


@dataclass
class Item:
    task_id: int | None  # None: not cached (no stable key)
    field: str  # object tag name, e.g. "image"
    source: Any  # the task data value: URL, data URI or text

    @property
    def hash(self) -> str:
        return content_hash(self.source)


@dataclass
class EmbedResult:
    embeddings: list[np.ndarray | None]  # aligned with the input items
    errors: dict[int, str]  # item index -> reason
    cached: int = 0
    computed: int = 0


def embed_items(
    items: list[Item],
    encoder,
    load: Callable[[Item], Any],
    store: EmbeddingStore | None,
    project: str,
    workers: int = 8,
    progress=None,
) -> EmbedResult:
    result = EmbedResult(embeddings=[None] * len(items), errors={})
    todo = _read_cache(items, encoder, store, project, result)

    batch_size = encoder.batch_size
    window = max(batch_size * 2, workers * 4)  # bounded look-ahead: memory stays flat for huge imports

    def load_and_prepare(index: int):
        try:
            return encoder.prepare(load(items[index]))
        except FetchError as exc:
            return exc
        except Exception as exc:  # a decoder or transform bug on one item must not fail the batch
            logger.exception("unexpected error preparing task %s", items[index].task_id)
            return FetchError(f"{type(exc).__name__}: {exc}")

    ready_idx, ready = [], []
    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="fetch") as pool:
        pending: deque = deque()
        todo_iter = iter(todo)
        for index in todo_iter:
            pending.append((index, pool.submit(load_and_prepare, index)))
            if len(pending) >= window:
                break
        while pending:
            index, future = pending.popleft()
            nxt = next(todo_iter, None)
            if nxt is not None:
                pending.append((nxt, pool.submit(load_and_prepare, nxt)))
            prepared = future.result()
            if isinstance(prepared, FetchError):
                result.errors[index] = str(prepared)
                logger.warning("task %s: no prediction: %s", items[index].task_id, prepared)
            else:
                ready_idx.append(index)
                ready.append(prepared)
            if len(ready) >= batch_size or (not pending and ready):
                _encode(ready_idx, ready, items, encoder, store, project, result)
                if progress is not None:
                    progress.update(len(ready))
                ready_idx, ready = [], []
    return result


def _read_cache(items, encoder, store, project, result) -> list[int]:
    keyed = [(i, it) for i, it in enumerate(items) if it.task_id is not None]
    found = {}
    if store is not None and keyed:
        try:
            found = store.get_many(project, encoder.id, [(it.task_id, it.field, it.hash) for _, it in keyed])
        except Exception as exc:  # a store outage slows us down; it must not stop predictions
            logger.warning("embedding store read failed (%s); embedding without cache", exc)
    todo = []
    for i, it in enumerate(items):
        emb = found.get(record_id(it.task_id, it.field)) if it.task_id is not None else None
        if emb is None:
            todo.append(i)
        else:
            result.embeddings[i] = emb
            result.cached += 1
    return todo


def _encode(indices, prepared, items, encoder, store, project, result) -> None:
    try:
        emb = encoder.encode_batch(prepared)
    except Exception:
        logger.exception("encoder failed on a batch of %d; retrying one by one", len(prepared))
        emb = None
    if emb is None:  # isolate the bad item(s)
        rows = []
        for index, p in zip(indices, prepared):
            try:
                rows.append(encoder.encode_batch([p])[0])
            except Exception as exc:
                result.errors[index] = f"encoder failed: {type(exc).__name__}"
                rows.append(None)
    else:
        rows = list(emb)
    to_store = []
    for index, row in zip(indices, rows):
        if row is None:
            continue
        result.embeddings[index] = row
        result.computed += 1
        it = items[index]
        if it.task_id is not None:
            to_store.append(StoredItem(it.task_id, it.field, it.hash, row))
    if store is not None and to_store:
        try:
            store.put_many(project, encoder.id, to_store)
        except Exception as exc:
            logger.warning("embedding store write failed (%s); predictions still served", exc)
