"""Pre-annotation that never times out: /predict answers within a deadline with what is embedded by
then, and the rest (like newly imported tasks) is embedded, predicted and imported into Label Studio
in the background.

Embedding is the slow part (fetch, decode, encode), so "what is ready" is the leading tasks embedded
before the deadline (in growing chunks); their embeddings are kept and predicted and ranked together.
"""
from __future__ import annotations

import logging
import time
from typing import Callable

from .predict import QueueOptions, predict
from .project_model import ProjectModel

logger = logging.getLogger(__name__)

FIRST_CHUNK = 16  # tasks; chunks double while there is time, so a slow start cannot overrun the deadline
MAX_CHUNK = 128  # one chunk cannot be interrupted: keep it short
PUSH_CHUNK = 1000  # background: predict and import this many tasks at a time (bounded memory)


def embed_until(model: ProjectModel, tasks: list, deadline: float | None = None,
                progress: Callable[[int], None] | None = None,
                stop: Callable[[], bool] | None = None) -> tuple[int, dict]:
    """Embed the tasks in growing chunks until all are done or the next chunk would end after
    ``deadline`` (time.monotonic()). Returns (how many leading tasks are done, their embeddings per
    target as model.embed_tasks gives them), so nothing is fetched or read from the store twice."""
    done, size, per_task = 0, FIRST_CHUNK, 0.0
    embedded: dict[str, tuple[list[int], list]] = {t.from_name: ([], []) for t in model.config.targets}
    while done < len(tasks):
        chunk = tasks[done:done + size]
        if deadline is not None and time.monotonic() + per_task * len(chunk) * 1.5 > deadline:
            break
        if stop is not None and stop():
            break
        started, worked = time.monotonic(), _worked(model)
        for name, (indices, vectors) in model.embed_tasks(chunk).items():
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


def _worked(model: ProjectModel) -> int:
    """Items fetched so far: embedded or failed (not read from the store)."""
    return model.stats["embeddings_computed"] + model.stats["items_failed"]


def predict_in_time(model: ProjectModel, tasks: list, queue: QueueOptions, timeout_s: float) -> tuple[list, list]:
    """(one entry per task, the tasks left for the background). Everything ready within ``timeout_s``
    is predicted and ranked together, exactly as predict() would; the rest gets [] here."""
    if not tasks:
        return [], []
    started = time.monotonic()
    model.load()  # loading weights (first request only) must not be mistaken for the pace of embedding
    margin = max(1.0, 0.2 * timeout_s)  # predicting the ready part (ranking) comes after
    done, embedded = embed_until(model, tasks, deadline=started + timeout_s - margin)
    ready = predict(model, tasks[:done], queue, inferred=model.infer_embedded(embedded))
    return ready + [[] for _ in tasks[done:]], tasks[done:]


def preannotate(model: ProjectModel, tasks: list, queue: QueueOptions,
                push: Callable[[list[dict]], int] | None, progress: Callable[[str, int], None],
                stop: Callable[[], bool] = lambda: False) -> None:
    """Background: embed, predict and import the tasks, PUSH_CHUNK at a time. ``push`` imports
    prediction rows into Label Studio (None: no connection known, only embed); ``progress(what, n)``
    counts "embedded", "predicted" and "pushed" tasks; ``stop()`` true ends the work early (shutdown)."""
    for start in range(0, len(tasks), PUSH_CHUNK):
        if stop():
            return
        chunk = tasks[start:start + PUSH_CHUNK]
        try:
            done, embedded = embed_until(model, chunk, progress=lambda n: progress("embedded", n), stop=stop)
            chunk = chunk[:done]
            if push is None:
                continue
            results = predict(model, chunk, queue, inferred=model.infer_embedded(embedded))
            rows = [{"task": task["id"], **p} for task, p in zip(chunk, results) if p]
            progress("predicted", len(rows))
            progress("pushed", push(rows) if rows else 0)
        except Exception:  # Label Studio or the store briefly failing: the next chunks still go
            logger.exception("project %s: background pre-annotation of %d tasks failed", model.project_id,
                             len(chunk))
            progress("failed", len(chunk))
