"""Annotation -> new version: one training run, stage by stage.

1. reconcile with Label Studio; before the first version, embed the cold-start sample (reconcile.py)
2. train and select a head per <Choices> tag, tested on the audit sample; save the version (train.py)
3. rank the next batch through the vector store and push it to Label Studio (rank.py, publish.py)
4. show suspected label errors in the review tab (review.py)

One call is one run on a snapshot of the annotation log; the caller (backend.runtime) marks the
generation trained when it returns, so annotations arriving meanwhile are trained on next time, and
queues the background sweep for tasks not embedded yet when the run reconciled in full.
"""
from __future__ import annotations

import logging
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Callable, Protocol

from ..labelstudio.client import LabelStudioAPI
from ..learn.audit import audit_wanted
from ..learn.result import TrainingResult
from ..model import ClipClassifier
from ..state.annotations import AnnotationLog
from ..state.versions import ModelVersion
from .publish import publish_queue
from .reconcile import cold_start_pool, full_reconcile_due, reconcile
from .review import review_due, show_review
from .train import audit_tasks, labeled_data, save_version, select_heads

logger = logging.getLogger(__name__)


class Models(Protocol):
    def get(self, project: str, label_config: str | None = None) -> ClipClassifier:
        """The shared model of the project's labeling config (the given one, else the last known)."""


@dataclass
class TrainingRun:
    """What a run needs; built per run by backend.runtime."""
    log: AnnotationLog
    models: Models
    api: LabelStudioAPI | None  # None: Label Studio unknown, train on the log alone and rank nothing
    bound_url: str | None = None  # a /setup URL to record as working once a reconcile through it succeeds
    # raises LockLost once this run no longer holds the project's training lock (RQ mode): checked before
    # the version is saved and before the batch is published, so a run that lost its lock publishes nothing
    fence: Callable[[], None] = lambda: None


class LockLost(RuntimeError):
    """Another worker may be training this project now: this run stops before it saves or publishes."""


@dataclass
class RunResult:
    version: ModelVersion | None = None  # None: no usable labels yet, zero-shot keeps serving
    ranking: dict | None = None  # the queue re-ranking's summary, when one was published
    phases: dict[str, float] = field(default_factory=dict)  # reconcile, embed, select, save, publish: seconds
    reconciled: dict = field(default_factory=dict)  # {"full": bool, "tasks": tasks listed by Label Studio}
    review: dict | None = None  # what the label-error review tab shows now (flows/review.py)
    full_reconcile: bool = False  # every annotated task was listed: sweep for tasks not embedded yet


def run_training(run: TrainingRun, project: str, generation: int, label_config: str | None) -> RunResult:
    """One run on the log as it is now (``generation``); raises when a stage fails (the last good version
    keeps serving). Publishing and the review tab need Label Studio (run.api)."""
    started = time.perf_counter()
    result = RunResult()
    with _phase(result, "reconcile"):
        full = reconcile(run.log, run.api, project, label_config, full=full_reconcile_due(run.log, run.api, project),
                         bound_url=run.bound_url, seen=result.reconciled)
    with _phase(result, "embed"):
        model = run.models.get(project, label_config)
        model.load()
        rows = run.log.labeled_tasks(project)
        labeled = {t.task_id for t in rows}
        if full and not model.trained:
            cold_start_pool(run.api, model, labeled)
        data = labeled_data(model, rows)
    anchors = {name: (d.embeddings, d.first) for name, d in data.items()}
    result.full_reconcile = full
    if not data:
        logger.info("project %s: no usable labels yet; zero-shot keeps serving", project)
        if run.api is not None and model.state.ranked_version() != model.model_version:
            run.fence()
            with _phase(result, "publish"):  # cold start: zero-shot + typicality
                result.ranking = publish_queue(run.api, model, labeled, anchors)
        return result
    with _phase(result, "select"):
        heads, trained = select_heads(model, data, audit_tasks(model.state, rows))
    with _phase(result, "save"):
        run.fence()
        result.version = save_version(model, heads, trained, generation, len(rows), started)
        model.refresh()
    logger.info("project %s: trained %s on %d labeled tasks in %.1fs", project, result.version.name, len(rows),
                time.perf_counter() - started)
    if run.api is not None:
        _publish_and_review(run, model, result, rows, anchors, trained, generation)
        if full_reconcile_due(run.log, run.api, project, every_s=model.queue.full_reconcile_s):
            with _phase(result, "full_reconcile"):  # after the batch is out: off the critical path
                result.full_reconcile = reconcile(run.log, run.api, project, label_config, full=True,
                                                  bound_url=run.bound_url, seen=result.reconciled)
    return result


def _publish_and_review(run: TrainingRun, model: ClipClassifier, result: RunResult, rows: list, anchors: dict,
                        trained: dict[str, TrainingResult], generation: int) -> None:
    """Stages 3 and 4 after a new version: the next batch (drawing audit items until the first trained
    tag's accuracy is known to +/- AUDIT_HALF_WIDTH), then the review tab when it is due."""
    first = next(iter(trained.values()))
    run.fence()
    with _phase(result, "publish"):
        result.ranking = publish_queue(run.api, model, {t.task_id for t in rows}, anchors,
                                       audit_wanted(first.audit, model.queue.audit_half_width))
    if result.ranking is not None:  # /status shows it: the accuracy with its interval and its message
        result.ranking["accuracy"] = first.accuracy
    if review_due(run.log, model.state, generation):
        with _phase(result, "review"):
            primary = trained.get(model.primary.from_name)
            errors = None if primary is None else primary.label_errors
            result.review = show_review(run.api, model, rows, errors, (result.ranking or {}).get("project_version"))


@contextmanager
def _phase(result: RunResult, name: str):
    """Time one phase of the run into result.phases (seconds), for /status and /metrics."""
    started = time.perf_counter()
    try:
        yield
    finally:
        result.phases[name] = round(time.perf_counter() - started, 3)
