"""Background pre-annotation: newly imported tasks and the part of a "Retrieve predictions" batch that did
not fit in /predict's deadline (predict.py) are embedded, predicted and imported into Label Studio, a chunk
at a time; the sweep that finds every unannotated task not embedded yet after a full reconcile only embeds
them (Label Studio asks /predict live for an opened task without a prediction: importing one for every
task would buy the annotator nothing and hold Label Studio's database), unless SWEEP_PREDICTIONS=true.
"""
from __future__ import annotations

import logging
from typing import Callable, Iterator

from ..labelstudio.client import LabelStudioAPI
from ..model import ClipClassifier
from .predict import embed_until

logger = logging.getLogger(__name__)

PUSH_CHUNK = 1000  # predict and import this many tasks at a time (bounded memory)
SWEEP_PAGE = 500  # unannotated tasks listed per page by the sweep


def preannotate(model: ClipClassifier, tasks: list, push: Callable[[list[dict]], int] | None,
                progress: Callable[[str, int], None], stop: Callable[[], bool] = lambda: False) -> None:
    """Embed, predict and import the tasks, PUSH_CHUNK at a time. ``push`` imports prediction rows into
    Label Studio (None: no connection known, only embed); ``progress(what, n)`` counts "embedded",
    "predicted" and "pushed" tasks; ``stop()`` true ends the work early (shutdown)."""
    for start in range(0, len(tasks), PUSH_CHUNK):
        if stop():
            return
        chunk = tasks[start:start + PUSH_CHUNK]
        try:
            done, embedded = embed_until(model, chunk, progress=lambda n: progress("embedded", n), stop=stop)
            chunk = chunk[:done]
            if push is None:
                continue
            results = model.predict(chunk, inferred=model.infer_embedded(embedded))
            rows = [{"task": task["id"], **p} for task, p in zip(chunk, results) if p]
            progress("predicted", len(rows))
            progress("pushed", push(rows) if rows else 0)
        except Exception:  # Label Studio or the store briefly failing: the next chunks still go
            logger.exception("project %s: background pre-annotation of %d tasks failed", model.project_id,
                             len(chunk))
            progress("failed", len(chunk))


def unembedded_tasks(api: LabelStudioAPI, model: ClipClassifier, page_size: int = SWEEP_PAGE) -> Iterator[list[dict]]:
    """The sweep: the unannotated tasks whose primary item is not in the store, page by page (lists of
    {"id", "data"}), for pre-annotation."""
    store = model.primary.store
    if store is None:
        return
    tasks_in_project = getattr(api.project(int(model.project_id)), "task_number", None)
    if isinstance(tasks_in_project, int) and store.field_count() >= tasks_in_project:
        # every task is embedded already (deleted tasks' records count too: a task imported since comes
        # through TASKS_CREATED, or is predicted live when opened)
        logger.info("project %s: the store holds all %d tasks: no sweep", model.project_id, tasks_in_project)
        return
    for tasks in api.unannotated_tasks(int(model.project_id), page_size):
        missing = model.primary.store.missing(tasks)
        if missing:
            yield missing
