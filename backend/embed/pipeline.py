"""Items → embeddings, through the store.

Cached items (same task, field and content hash) are read back from the store in one query. The rest
stream through three overlapping stages:

1. fetch + decode + prepare (resize/crop to uint8 pixels) in a thread pool, with a bounded look-ahead
   window so memory stays flat for imports of any size; results are taken in completion order, so
   one slow download never stalls the encoder;
2. encode batches of BATCH_SIZE in the calling thread (one batched normalize, one model call); the
   first batches are smaller (1/8, 1/4, 1/2 of it), so the encoder starts after a few decodes;
3. hand each batch's embeddings to the store's write-behind (write_behind.py): background threads
   write them in large upserts, so the encoder never waits on Chroma. ``writes`` says what the caller
   waits for: "wait" (the default: bulk runs and callers that read the store next) waits for its records
   before returning, also when interrupted, so a re-run skips them; "behind" (imports, the sweep) returns
   at once but waits for room when the backlog is full (bounded memory); "drop" (/predict) never waits:
   a full backlog drops the records, which are embedded again when next needed.

Embeddings come back aligned with the input items, whatever order they completed in.
"""
from __future__ import annotations

import logging
import queue
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from itertools import islice
from typing import Any, Callable, Iterator

import numpy as np

from .errors import BadItems
from .fetch import FetchError
from .store import EmbeddingStore, StoredItem, content_hash, record_id
from .write_behind import for_store

WRITE_MODES = ("wait", "behind", "drop")

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
    deadline: float | None = None,
    stall_s: float | None = None,
    writes: str = "wait",
) -> EmbedResult:
    """Embed items, reading and writing the store. progress.update(n) is called as items settle:
    cached ones at once, computed or failed ones batch by batch. ``deadline`` (time.monotonic()): items
    not loaded by then fail with that reason, and their downloads are not waited for (each ends at its own
    FETCH_DEADLINE in the background); DNS lookups and token refreshes are inside it too. ``stall_s``: the
    same once no item has finished loading for that long (every download stalled; encoding does not count).
    ``writes``: see the module docstring."""
    if writes not in WRITE_MODES:
        raise ValueError(f"writes={writes!r}: one of {WRITE_MODES}")
    result = EmbedResult(embeddings=[None] * len(items), errors={})
    todo = _read_cache(items, encoder, store, project, result)
    if progress is not None and result.cached:
        progress.update(result.cached)
    if not todo:
        return result

    window = max(encoder.batch_size * 2, workers * 4)  # bounded look-ahead: memory stays flat for huge imports
    writer = _StoreWriter(store, project, encoder.id, writes) if store is not None else None
    prefetch = _Prefetcher(items, encoder, load, workers=min(workers, len(todo)))
    try:
        _encode_as_ready(prefetch.completed(todo, window, deadline, stall_s), items, encoder, writer, result, progress)
    finally:
        prefetch.close(wait=not prefetch.cut)  # on interrupt: drop queued work, finish running items
        if writer is not None:
            writer.close()  # "wait": everything encoded so far is stored, also when interrupted
    for index in todo:
        if result.embeddings[index] is None and index not in result.errors:
            result.errors[index] = "not loaded before the request's deadline (FETCH_DEADLINE, PREDICT_TIMEOUT)"
    return result


class _Prefetcher:
    """load + encoder.prepare in a thread pool, at most `window` items ahead; results come back in
    completion order, so one slow download never stalls the encoder."""

    def __init__(self, items: list[Item], encoder, load: Callable[[Item], Any], workers: int):
        self.items, self.encoder, self.load = items, encoder, load
        self._done: queue.SimpleQueue = queue.SimpleQueue()
        self._pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="fetch")
        self.cut = False  # the deadline passed with items still loading

    def _load_and_prepare(self, index: int) -> None:
        try:
            prepared = self.encoder.prepare(self.load(self.items[index]))
        except FetchError as exc:
            prepared = exc
        except Exception as exc:  # a decoder or transform bug on one item must not fail the batch
            logger.exception("unexpected error preparing task %s", self.items[index].task_id)
            prepared = FetchError(f"{type(exc).__name__}: {exc}")
        self._done.put((index, prepared))

    def completed(self, todo: list[int], window: int, deadline: float | None = None,
                  stall_s: float | None = None) -> Iterator[tuple[int, Any, int]]:
        """(index, prepared item or FetchError, items still in flight) as items finish: 0 on the last;
        stops early (``cut``) at the deadline, or when no item finished loading for ``stall_s``."""
        todo_iter = iter(todo)
        in_flight, loaded_at = 0, time.monotonic()  # failures at their FETCH_DEADLINE are not progress
        for index in islice(todo_iter, window):
            self._pool.submit(self._load_and_prepare, index)
            in_flight += 1
        while in_flight:
            try:
                now = time.monotonic()
                waits = [max(0.0, w) for w in (None if deadline is None else deadline - now,
                                               None if stall_s is None else loaded_at + stall_s - now) if w is not None]
                index, prepared = self._done.get(timeout=min(waits, default=None))
            except queue.Empty:
                self.cut = True
                return
            if not isinstance(prepared, FetchError):
                loaded_at = time.monotonic()
            in_flight -= 1
            nxt = next(todo_iter, None)
            if nxt is not None:
                self._pool.submit(self._load_and_prepare, nxt)
                in_flight += 1
            yield index, prepared, in_flight

    def close(self, wait: bool = True) -> None:
        self._pool.shutdown(wait=wait, cancel_futures=True)


def _encode_as_ready(completed, items, encoder, writer, result: EmbedResult, progress) -> None:
    """Collects prepared items into batches and encodes each as soon as it is full (or nothing is left)."""
    batch_size = encoder.batch_size
    ready_idx: list[int] = []
    ready: list = []
    failed = 0
    # Ramp up: the first batch is small (the encoder starts after a few decodes instead of a full
    # batch's worth), then each batch doubles up to BATCH_SIZE while the fetch threads run ahead.
    target = max(1, batch_size // 8)
    for index, prepared, in_flight in completed:
        if isinstance(prepared, FetchError):
            result.errors[index] = str(prepared)
            failed += 1
            logger.warning("task %s: no prediction: %s", items[index].task_id, prepared)
        else:
            ready_idx.append(index)
            ready.append(prepared)
        if len(ready) >= target or (not in_flight and ready):
            _encode(ready_idx, ready, items, encoder, writer, result)
            target = min(batch_size, target * 2)
            if progress is not None:
                progress.update(len(ready) + failed)
            ready_idx, ready, failed = [], [], 0
    if ready:  # the deadline cut the items still loading: encode those that are ready
        _encode(ready_idx, ready, items, encoder, writer, result)
    if progress is not None and (failed or ready):
        progress.update(failed + len(ready))


class _StoreWriter:
    """This call's side of the store's write-behind: puts each batch, and on close waits for its records
    when the mode is "wait"."""

    def __init__(self, store: EmbeddingStore, project: str, encoder_id: str, writes: str):
        self.behind = for_store(store)
        self.project, self.encoder_id, self.writes = project, encoder_id, writes
        self.ids: set[str] = set()

    def put(self, records: list[StoredItem]) -> None:
        queued = self.behind.put(self.project, self.encoder_id, records, block=self.writes != "drop")
        if self.writes == "wait":
            self.ids.update(record_id(r.task_id, r.field) for r in records[:queued])

    def close(self) -> None:
        if self.ids:
            self.behind.flush(keys=(self.project, self.encoder_id, self.ids))


def _read_cache(items, encoder, store, project, result) -> list[int]:
    keyed = [(i, it) for i, it in enumerate(items) if it.task_id is not None]
    found = {}
    if store is not None and keyed:
        try:
            found = store.get_many(project, encoder.id, [(it.task_id, it.field, it.hash) for _, it in keyed])
        except Exception as exc:  # a store outage slows us down; it must not stop predictions
            logger.warning("embedding store read failed (%s); embedding without cache", exc)
        # records still waiting in the write-behind are as good as stored (same hash only)
        waiting = for_store(store).pending(project, encoder.id, [record_id(it.task_id, it.field) for _, it in keyed])
        for _, it in keyed:
            rec = waiting.get(record_id(it.task_id, it.field))
            if rec is not None and rec.hash == it.hash:
                found[record_id(it.task_id, it.field)] = rec.embedding
    todo = []
    for i, it in enumerate(items):
        emb = found.get(record_id(it.task_id, it.field)) if it.task_id is not None else None
        if emb is None:
            todo.append(i)
        else:
            result.embeddings[i] = emb
            result.cached += 1
    return todo


def _encode(indices, prepared, items, encoder, writer, result) -> None:
    try:
        emb = encoder.encode_batch(prepared)
    except BadItems as bad:  # undecodable images found in the batch: the rest goes on without them
        for position, reason in bad.reasons.items():
            result.errors[indices[position]] = reason
            logger.warning("task %s: no prediction: %s", items[indices[position]].task_id, reason)
        keep = [k for k in range(len(prepared)) if k not in bad.reasons]
        if keep:
            _encode([indices[k] for k in keep], [prepared[k] for k in keep], items, encoder, writer, result)
        return
    except Exception:
        logger.exception("encoder failed on a batch of %d; retrying one by one", len(prepared))
        emb = None
    if emb is None:  # isolate the bad item(s)
        rows = []
        for index, p in zip(indices, prepared):
            try:
                rows.append(encoder.encode_batch([p])[0])
            except Exception as exc:
                result.errors[index] = str(exc) if isinstance(exc, FetchError) else f"encoder failed: {type(exc).__name__}"
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
    if writer is not None:
        writer.put(to_store)
