"""Sharing Label Studio politely: every request the backend makes goes through the Pacer of its
Label Studio (one per URL in this process), which

- retries an answer of 5xx or a refused connection after a backoff with jitter (the request never
  reached the database, or it rolled back: Label Studio runs each request in a transaction), so a
  briefly overloaded Label Studio loses nothing;
- sizes write chunks by time (rows_for / observe: a chunk aims at CHUNK_TARGET_S of Label Studio's
  time, whatever the project's size makes a row cost);
- keeps background work (the sweep, imports of new tasks, the review tab) behind a training run's
  batch: a background request waits while a foreground write is under way or just ended, and after
  each of its own writes leaves Label Studio idle for as long as the write took (half its write time
  at most), longer when latency rises above the usual.

On SQLite, Label Studio's default database, one writer at a time holds the database: an annotator's
/next waits behind our writes and answers 500 "database is locked" after its timeout. Short writes
with gaps between them are what lets the annotator in.
"""
from __future__ import annotations

import logging
import random
import threading
import time
from collections import Counter
from collections.abc import Callable
from contextlib import contextmanager
from typing import TypeVar

logger = logging.getLogger(__name__)

T = TypeVar("T")

CHUNK_TARGET_S = 2.0  # a write chunk aims at this many seconds of Label Studio's time
CHUNK_ROWS = (50, 1000)  # fewest (a default QUEUE_BATCH: the batch stays one import), most rows per write chunk
FIRST_ROWS = 100  # rows of a kind's first chunk
RETRIES = 6  # a request answered 5xx (or refused) is tried this many more times before it fails
BACKOFF_S = (0.5, 30.0)  # first, longest backoff after a failure (doubled each time, with jitter)
SLOW_FACTOR = 3.0  # a write this many times slower per row than usual: Label Studio is busy, back off
FOREGROUND_GRACE_S = 1.0  # background waits this long after a foreground write, so a batch goes in one piece
MAX_YIELD_S = 120.0  # background waits at most this long for foreground work (then goes: no starvation)

_local = threading.local()


def in_background() -> bool:
    return getattr(_local, "background", False)


@contextmanager
def background():
    """Mark this thread's Label Studio requests as background work (they yield to training runs)."""
    before = in_background()
    _local.background = True
    try:
        yield
    finally:
        _local.background = before


def status_of(exc: BaseException) -> int | None:
    """The HTTP status of a failed request (requests' HTTPError, label-studio-sdk's ApiError), or None."""
    status = getattr(exc, "status_code", None)
    if status is None:
        status = getattr(getattr(exc, "response", None), "status_code", None)
    return status if isinstance(status, int) else None


def retryable(exc: BaseException, write: bool) -> bool:
    """5xx and 429 answers and refused connections are retried; a timeout only for reads (a write that timed out
    may have been done: trying it again could do it twice)."""
    status = status_of(exc)
    if status is not None:
        return status >= 500 or status == 429
    name = type(exc).__name__
    if name in ("ConnectError", "ConnectionError", "RemoteProtocolError"):
        return "Timeout" not in name
    return not write and "Timeout" in name


class Pacer:
    def __init__(self, sleep: Callable[[float], None] = time.sleep, rng: Callable[[], float] = random.random,
                 clock: Callable[[], float] = time.monotonic):
        self._sleep, self._rng, self._clock = sleep, rng, clock
        self._cond = threading.Condition()
        self._foreground = 0  # foreground requests under way
        self._foreground_until = 0.0  # background waits until then
        self._not_before = 0.0  # background requests wait until then (their own pacing)
        self._per_row: dict[str, float] = {}  # kind of write -> usual seconds per row (EWMA)
        self._rows: dict[str, int] = {}  # kind of write -> rows of its next chunk
        self.counts: Counter = Counter()  # requests, retries, backoffs, slow, yielded

    # -- requests --------------------------------------------------------------------------------
    def call(self, fn: Callable[[], T], write: bool = True, kind: str | None = None, rows: int = 1) -> T:
        """fn() (one request), retried on 5xx after a backoff with jitter; ``kind``/``rows``: what the
        write was, for chunk sizing and the slowness check."""
        background_work = in_background()
        for attempt in range(RETRIES + 1):
            if background_work:
                self._wait_turn()
            else:
                self._enter_foreground()
            started = self._clock()
            try:
                result = fn()
            except Exception as exc:
                if attempt == RETRIES or not retryable(exc, write):
                    raise
                self.counts["retries"] += 1
                delay = self._backoff(attempt)
                logger.warning("Label Studio answered %s; trying again in %.1fs",
                               status_of(exc) or type(exc).__name__, delay)
                self._sleep(delay)
                continue
            finally:
                if not background_work:
                    self._leave_foreground()
            self.counts["requests"] += 1
            if write:
                self._observe(self._clock() - started, kind or "write", rows, background_work)
            return result
        raise AssertionError("unreachable")

    def wait_turn(self) -> None:
        """Background work: wait until Label Studio is ours to use (no-op in the foreground)."""
        if in_background():
            self._wait_turn()

    def rows_for(self, kind: str) -> int:
        """Rows for the next chunk of this kind of write: as many as take about CHUNK_TARGET_S."""
        with self._cond:
            return self._rows.get(kind, FIRST_ROWS)

    @contextmanager
    def foreground(self):
        """A training run's batch: background requests wait until it is written."""
        self._enter_foreground()
        try:
            yield
        finally:
            self._leave_foreground()

    # -- internals ---------------------------------------------------------------------------------
    def _backoff(self, attempt: int) -> float:
        base = min(BACKOFF_S[1], BACKOFF_S[0] * 2 ** attempt)
        return base * (0.5 + self._rng())  # jitter: several backends do not come back in step

    def _observe(self, seconds: float, kind: str, rows: int, background_work: bool) -> None:
        rows = max(int(rows), 1)
        per_row = seconds / rows
        with self._cond:
            usual = self._per_row.get(kind)
            self._per_row[kind] = per_row if usual is None else 0.8 * usual + 0.2 * per_row
            if seconds > CHUNK_TARGET_S:  # too long a hold on Label Studio: smaller chunks
                self._rows[kind] = max(CHUNK_ROWS[0], int(rows * CHUNK_TARGET_S / seconds))
            elif seconds < CHUNK_TARGET_S / 2 and rows >= self._rows.get(kind, FIRST_ROWS):
                self._rows[kind] = min(CHUNK_ROWS[1], rows * 2)
            pause = seconds  # background: Label Studio idle at least as long as our write held it
            if usual is not None and per_row > SLOW_FACTOR * usual:  # latency rising: back off further
                self.counts["slow"] += 1
                pause = max(pause, self._backoff(1)) * (1 + self._rng())
            if background_work:
                self._not_before = max(self._not_before, self._clock() + pause)

    def _wait_turn(self) -> None:
        deadline = self._clock() + MAX_YIELD_S
        with self._cond:
            while True:
                now = self._clock()
                if now >= deadline:
                    return
                if self._foreground:
                    self.counts["yielded"] += 1
                    self._cond.wait(timeout=min(1.0, deadline - now))
                    continue
                wait = max(self._foreground_until, self._not_before) - now
                if wait <= 0:
                    return
                self._cond.wait(timeout=min(wait, deadline - now))

    def _enter_foreground(self) -> None:
        with self._cond:
            self._foreground += 1

    def _leave_foreground(self) -> None:
        with self._cond:
            self._foreground -= 1
            self._foreground_until = self._clock() + FOREGROUND_GRACE_S
            self._cond.notify_all()

    def status(self) -> dict:
        with self._cond:
            return {**self.counts, "chunk_rows": dict(self._rows),
                    "seconds_per_row": {k: round(v, 4) for k, v in self._per_row.items()}}


_pacers: dict[str, Pacer] = {}
_pacers_lock = threading.Lock()


def pacer_for(url: str) -> Pacer:
    """The process's Pacer of this Label Studio (every project on it shares its database)."""
    with _pacers_lock:
        return _pacers.setdefault(url.rstrip("/"), Pacer())


def pacing_status() -> dict:
    with _pacers_lock:
        return {url: pacer.status() for url, pacer in _pacers.items()}
