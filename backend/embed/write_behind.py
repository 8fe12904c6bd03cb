"""Write-behind for the embedding store: encoded batches go to Chroma from background threads, in large
coalesced upserts, under a bound on the records waiting in memory.

Why: a Chroma upsert costs ~0.4 ms a record on 2 cores (2,000-2,900 records/s, more per call at larger
batches), while a GPU encodes 10,000+ images/s. A response must not wait for that, and a bulk run must
not hold an unbounded backlog. So:

- ``put(..., block=True)`` (bulk embedding: imports, the sweep, clip-backend-embed) waits while the
  backlog is full: memory stays bounded and the store is honestly the limit of a sustained run;
- ``put(..., block=False)`` (/predict) never waits: when the backlog is full the records are dropped
  (counted in ``dropped``) and embedded again when next needed;
- records waiting in the backlog are served by ``pending()``, so a task predicted a moment ago is a
  cache hit even before its record reaches Chroma;
- ``flush()`` waits until everything put so far is written (the CLI at its end, tests, shutdown).

A crash (kill -9) loses at most the backlog: embeddings, which the next run embeds again because they
are not in the store. Predictions and annotations never pass through here.

One WriteBehind per store object (``for_store``); its writer threads start on demand and exit when idle.
"""
from __future__ import annotations

import atexit
import logging
import threading
import time
import weakref
from collections import OrderedDict
from dataclasses import dataclass, field

from .store import StoredItem, record_id

logger = logging.getLogger(__name__)

MAX_PENDING = 16_384  # records waiting at most (512-d float32: 32 MiB)
MAX_BATCH = 2_048  # records per upsert: Chroma writes ~2x faster per record at 1,024-2,048 than at 64
IDLE_EXIT_S = 5.0  # a writer thread with nothing to write this long exits (a later put starts one)
EXIT_FLUSH_S = 60.0  # at a normal exit (SIGTERM, end of a CLI run) the backlog is written for up to this long


@dataclass
class _Backlog:
    """Records of one collection waiting to be written, by record id (a newer put replaces an older one)."""
    records: OrderedDict = field(default_factory=OrderedDict)
    busy: bool = False  # a writer is writing a batch of this collection (one writer per collection at a time)


class WriteBehind:
    def __init__(self, store, max_pending: int = MAX_PENDING, max_batch: int = MAX_BATCH, writers: int = 1):
        self.store = store
        self.max_pending, self.max_batch, self.writers = max_pending, max_batch, writers
        self._backlogs: dict[tuple[str, str], _Backlog] = {}
        self._in_flight: dict[tuple[str, str], dict[str, StoredItem]] = {}
        self._pending = 0  # records in backlogs and in flight
        self._cond = threading.Condition()
        self._threads: list[threading.Thread] = []
        self.written = self.dropped = self.failed = 0

    # -- producers -------------------------------------------------------------------------------
    def put(self, project: str, encoder_id: str, records: list[StoredItem], block: bool = True) -> int:
        """Queue records for writing; returns how many were queued (the rest dropped: block=False, full)."""
        if not records:
            return 0
        key = (str(project), encoder_id)
        with self._cond:
            if block:
                self._cond.wait_for(lambda: self._pending + len(records) <= self.max_pending
                                    or self._pending == 0)
            room = len(records) if block else max(0, self.max_pending - self._pending)
            taken = records[:room]
            if len(taken) < len(records):
                self.dropped += len(records) - len(taken)
                logger.warning("embedding store backlog full (%d records): %d embeddings not stored now",
                               self.max_pending, len(records) - len(taken))
            backlog = self._backlogs.setdefault(key, _Backlog())
            for rec in taken:
                rid = record_id(rec.task_id, rec.field)
                if rid not in backlog.records:
                    self._pending += 1
                backlog.records[rid] = rec
            self._start_writers()
            self._cond.notify_all()
        return len(taken)

    def pending(self, project: str, encoder_id: str, ids) -> dict[str, StoredItem]:
        """Those of these record ids whose records are not in the store yet (waiting or being written)."""
        key = (str(project), encoder_id)
        with self._cond:
            if not self._pending:
                return {}
            flying = self._in_flight.get(key, {})
            backlog = self._backlogs.get(key)
            waiting = backlog.records if backlog is not None else {}
            return {rid: rec for rid in ids if (rec := waiting.get(rid) or flying.get(rid)) is not None}

    def flush(self, timeout: float | None = None, keys: tuple[str, str, set[str]] | None = None) -> bool:
        """Wait until every record put so far is written (or failed), or only those of ``keys`` =
        (project, encoder id, record ids); False on timeout."""
        def done() -> bool:
            return self._pending == 0 if keys is None else not self.pending(*keys)
        with self._cond:
            return self._cond.wait_for(done, timeout)

    @property
    def backlog(self) -> int:
        with self._cond:
            return self._pending

    # -- writers ---------------------------------------------------------------------------------
    def _start_writers(self) -> None:
        self._threads = [t for t in self._threads if t.is_alive()]
        while len(self._threads) < self.writers:
            thread = threading.Thread(target=self._run, name="store-writer", daemon=True)
            self._threads.append(thread)
            thread.start()

    def _take(self) -> tuple[tuple[str, str], list[StoredItem]] | None:
        """The largest waiting batch of a collection no other writer is writing (called under the lock)."""
        ready = [(k, b) for k, b in self._backlogs.items() if b.records and not b.busy]
        if not ready:
            return None
        key, backlog = max(ready, key=lambda kb: len(kb[1].records))
        batch = {}
        while backlog.records and len(batch) < self.max_batch:
            rid, rec = backlog.records.popitem(last=False)
            batch[rid] = rec
        backlog.busy = True
        self._in_flight[key] = batch
        return key, list(batch.values())

    def _run(self) -> None:
        me = threading.current_thread()
        while True:
            with self._cond:
                idle_until = time.monotonic() + IDLE_EXIT_S
                while (taken := self._take()) is None:
                    left = idle_until - time.monotonic()
                    if left <= 0:
                        self._threads = [t for t in self._threads if t is not me]
                        return
                    self._cond.wait(left)
            key, batch = taken
            ok = self._write(key, batch)
            with self._cond:
                self._backlogs[key].busy = False
                self._in_flight.pop(key, None)
                self._pending -= len(batch)
                self.written += len(batch) if ok else 0
                self.failed += 0 if ok else len(batch)
                self._cond.notify_all()

    def _write(self, key: tuple[str, str], batch: list[StoredItem]) -> bool:
        try:
            self.store.put_many(key[0], key[1], batch)
            return True
        except Exception as exc:  # the records are embeddings: a later request embeds them again
            logger.warning("embedding store write of %d records failed (%s); predictions still served",
                           len(batch), exc)
            time.sleep(0.1)  # a failing store is not hammered in a tight loop
            return False


_registry: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
_registry_lock = threading.Lock()


def for_store(store) -> WriteBehind:
    """The store's one WriteBehind (created on first use)."""
    with _registry_lock:
        writer = _registry.get(store)
        if writer is None:
            writer = _registry[store] = WriteBehind(store)
        return writer


def flush_all(timeout: float | None = None) -> bool:
    """Wait for every store's backlog (the CLI before it exits, benchmarks, tests)."""
    with _registry_lock:
        writers = list(_registry.values())
    return all(w.flush(timeout) for w in writers)


atexit.register(flush_all, EXIT_FLUSH_S)  # daemon writer threads still run while atexit handlers do
