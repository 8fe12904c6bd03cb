"""/predict within PREDICT_TIMEOUT: Label Studio waits ML_TIMEOUT_PREDICT (100 s) and then gives up while
still reporting success, so /predict answers within a deadline with the tasks embedded by then, predicted
and ranked together (ClipClassifier.predict), and leaves the rest to background pre-annotation
(preannotate.py).

Embedding is the slow part (fetch, decode, encode), so "what is ready" is the leading tasks embedded
before the deadline (in growing chunks); their embeddings are kept, so nothing is fetched twice.
"""
from __future__ import annotations

import time
from typing import Callable

from ..model import ClipClassifier

FIRST_CHUNK = 16  # tasks; chunks double while there is time, so a slow start cannot overrun the deadline
MAX_CHUNK = 128  # one chunk cannot be interrupted: keep it short


def predict_in_time(model: ClipClassifier, tasks: list, timeout_s: float) -> tuple[list, list]:
    """(one entry per task, the tasks left for the background). Everything ready within ``timeout_s``
    is predicted and ranked together, exactly as model.predict() would; the rest gets [] here."""
    if not tasks:
        return [], []
    started = time.monotonic()
    model.load()  # loading weights (first request only) must not be mistaken for the pace of embedding
    margin = max(1.0, 0.2 * timeout_s)  # predicting the ready part (ranking) comes after
    # a chunk whose downloads all stall ends at FETCH_DEADLINE (plus a second), not one deadline per round
    # of FETCH_WORKERS downloads; the response never waits for store writes (a full backlog drops them)
    stall = getattr(model.fetcher, "deadline_s", None)
    done, embedded = embed_until(model, tasks, deadline=started + timeout_s - margin,
                                 stall_s=None if stall is None else stall + 1.0, writes="drop")
    ready = model.predict(tasks[:done], inferred=model.infer_embedded(embedded))
    unserved = [t for t, r in zip(tasks[:done], ready) if not r]  # cut by the deadline (or failed): try again
    return ready + [[] for _ in tasks[done:]], unserved + tasks[done:]


def embed_until(model: ClipClassifier, tasks: list, deadline: float | None = None,
                progress: Callable[[int], None] | None = None,
                stop: Callable[[], bool] | None = None, stall_s: float | None = None,
                writes: str = "behind") -> tuple[int, dict]:
    """Embed the tasks in growing chunks until all are done or the next chunk would end after
    ``deadline`` (time.monotonic()). Returns (how many leading tasks are done, their embeddings per
    control as model.embed_tasks gives them), so nothing is fetched or read from the store twice.
    ``writes`` (embed.pipeline): "behind" by default, so chunks never wait for the store's writes, but a full
    backlog holds the next chunk back (bulk imports keep memory bounded)."""
    done, size, per_task = 0, FIRST_CHUNK, 0.0
    embedded: dict[str, tuple[list[int], list]] = {c.from_name: ([], []) for c in model.controls}
    while done < len(tasks):
        chunk = tasks[done:done + size]
        if deadline is not None and time.monotonic() + per_task * len(chunk) * 1.5 > deadline:
            break
        if stop is not None and stop():
            break
        started, worked = time.monotonic(), _worked(model)
        # a chunk runs to its end (the pre-check above keeps it inside the deadline) unless its loads stall
        for name, (indices, vectors) in model.embed_tasks(chunk, stall_s=stall_s, writes=writes).items():
            embedded[name][0].extend(done + i for i in indices)
            embedded[name][1].extend(vectors)
        # the pace of items that had to be fetched (cached ones cost next to nothing), as if the next
        # chunk had to fetch all of its items
        fresh = _worked(model) - worked
        per_task = max(per_task * 0.5, (time.monotonic() - started) / max(fresh, 1) if fresh else 0.0)
        done += len(chunk)
        if progress is not None:
            progress(len(chunk))
        size = min(MAX_CHUNK, size * 2)
    return done, embedded


def _worked(model: ClipClassifier) -> int:
    """Items fetched so far: embedded or failed (not read from the store)."""
    return model.stats["embeddings_computed"] + model.stats["items_failed"]
