"""Pre-annotation that never times out: /predict answers within a deadline with what is embedded by
then, and the rest (like newly imported tasks) is embedded, predicted and imported into Label Studio
in the background.

Embedding is the slow part (fetch, decode, encode), so "what is ready" is the leading tasks embedded
before the deadline (in growing chunks); their embeddings are kept and predicted and ranked together.
"""
from __future__ import annotations

import time
from typing import Callable

from .predict import QueueOptions, predict
from .project_model import ProjectModel

FIRST_CHUNK = 16  # tasks; chunks double while there is time, so a slow start cannot overrun the deadline
MAX_CHUNK = 512
PUSH_CHUNK = 1000  # background: predict and import this many tasks at a time (bounded memory)


def embed_until(model: ProjectModel, tasks: list, deadline: float | None = None,
                progress: Callable[[int], None] | None = None) -> tuple[int, dict]:
    """Embed the tasks in growing chunks until all are done or the next chunk would end after
    ``deadline`` (time.monotonic()). Returns (how many leading tasks are done, their embeddings per
    target as model.embed_tasks gives them), so nothing is fetched or read from the store twice."""
    done, size, per_task = 0, FIRST_CHUNK, 0.0
    embedded: dict[str, tuple[list[int], list]] = {t.from_name: ([], []) for t in model.config.targets}
    while done < len(tasks):
        chunk = tasks[done:done + size]
        if deadline is not None and done and time.monotonic() + per_task * len(chunk) * 1.5 > deadline:
            break
        started = time.monotonic()
        for name, (indices, vectors) in model.embed_tasks(chunk).items():
            embedded[name][0].extend(done + i for i in indices)
            embedded[name][1].extend(vectors)
        per_task = (time.monotonic() - started) / len(chunk)  # the latest pace: caches warm up as it goes
        done += len(chunk)
        if progress is not None:
            progress(len(chunk))
        size = min(MAX_CHUNK, size * 2)
    return done, embedded


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
                push: Callable[[list[dict]], int] | None, progress: Callable[[str, int], None]) -> None:
    """Background: embed, predict and import the tasks, PUSH_CHUNK at a time. ``push`` imports
    prediction rows into Label Studio (None: no connection known, only embed); ``progress(what, n)``
    counts "embedded", "predicted" and "pushed" tasks."""
    for start in range(0, len(tasks), PUSH_CHUNK):
        chunk = tasks[start:start + PUSH_CHUNK]
        _, embedded = embed_until(model, chunk, progress=lambda n: progress("embedded", n))
        if push is None:
            continue
        results = predict(model, chunk, queue, inferred=model.infer_embedded(embedded))
        rows = [{"task": task["id"], **p} for task, p in zip(chunk, results) if p]
        progress("predicted", len(rows))
        progress("pushed", push(rows))
