"""Rank -> push: after a training run (and at cold start, from zero-shot) every unlabeled task gets a
prediction whose score is its queue priority, and Label Studio is told to serve tasks in that order.

Priorities come from a query strategy (backend.queue): before any trained head ColdStart, after it
QUEUE_STRATEGY. The last ranking is saved (backend.state.rankings), so /predict of a ranked task
returns the score Label Studio already sorts by.
"""
from __future__ import annotations

import logging
import threading
import time
from collections import defaultdict

from ..labelstudio.client import LabelStudioAPI
from ..labelstudio.protocol import UNCERTAINTY_SAMPLING, UNLABELED_FILTER
from ..queue.cold_start import ColdStart
from ..state.rankings import sampling_marker_exists, save_ranking, write_sampling_marker
from .predict import QueueOptions, priorities, to_predictions
from .project_model import BACKEND_VERSION, ProjectModel

logger = logging.getLogger(__name__)


def publish_ranking(api: LabelStudioAPI, project: str, model: ProjectModel, unlabeled: list[dict],
                    labeled: dict, queue: QueueOptions) -> dict:
    """Rank the unlabeled tasks, push them as predictions of the serving version, make Label Studio
    order the queue by them. Returns a summary."""
    started = time.perf_counter()
    version = model.model_version
    inferred = model.infer(unlabeled)
    ranked = priorities(model, unlabeled, inferred, queue.strategy, queue.batch, labeled)
    predictions = to_predictions(unlabeled, inferred, ranked, version)
    rows = [{"task": task["id"], **p} for task, p in zip(unlabeled, predictions) if p]
    strategy = queue.strategy if model.trained else ColdStart.name
    changes = {}  # the project is set up first, so a project showing our version is fully set up
    if queue.view:
        changes["view"] = api.ensure_view(int(project), queue.view, ["tasks:predictions_score"], UNLABELED_FILTER)
    if queue.uncertainty_sampling:
        changes["sampling"] = switch_sampling_once(api, project, queue)
    pushed, already = push_new(api, project, rows, version)
    save_ranking(queue.model_dir, project, version, strategy, {t: p for t, p in ranked.items() if t in pushed})
    deleted = 0
    if pushed or already:  # Label Studio refuses a model_version that no prediction carries (empty project)
        # uncertainty sampling and the score column only look at predictions of the project's model_version
        api.set_model_version(int(project), version)
        deleted = delete_superseded(api, project, version)
    summary = {"model_version": version, "strategy": strategy, "ranked": len(pushed), "skipped": len(already),
               "deleted": deleted, "seconds": round(time.perf_counter() - started, 3), **changes}
    logger.info("project %s: queue re-ranked: %s", project, summary)
    return summary


_push_locks: dict[str, threading.Lock] = defaultdict(threading.Lock)


def push_new(api: LabelStudioAPI, project: str, rows: list[dict], version: str) -> tuple[set[int], set[int]]:
    """Import prediction rows of ``version``, leaving out tasks that hold one already ("Retrieve
    predictions" or background pre-annotation got there first: Label Studio would show two).
    Returns (task ids imported, task ids skipped). The look and the import are one step per project
    within this process, so a training run and background pre-annotation never import the same task."""
    with _push_locks[str(project)]:
        already = api.tasks_with_prediction(int(project), [r["task"] for r in rows], version)
        fresh = [r for r in rows if r["task"] not in already]
        api.push_predictions(int(project), fresh)
    return {r["task"] for r in fresh}, already


def delete_superseded(api: LabelStudioAPI, project: str, current: str) -> int:
    """Delete the predictions of this backend's earlier versions (every unlabeled task now holds one of
    ``current``), so Label Studio holds about one of ours per task instead of one per version and run.
    Only versions named by the same encoders are ours: predictions of other models, of a backend with
    other encoders and bulk labels ("search:<query>") are never touched."""
    deleted, encoders = 0, current.split("/", 1)[0] + "/"
    try:
        for version in api.model_versions(int(project)):
            if version != current and version.startswith(encoders) and BACKEND_VERSION.match(version):
                deleted += api.delete_model_version(int(project), version)
    except Exception as exc:  # the queue is ranked anyway; the next run tries again
        logger.warning("project %s: could not delete superseded predictions: %s", project, exc)
    return deleted


def switch_sampling_once(api: LabelStudioAPI, project: str, queue: QueueOptions) -> str:
    """Opt-in (UNCERTAINTY_SAMPLING=true): switch the project to uncertainty sampling once. If a
    user later picks another sampling in Label Studio, that choice stands."""
    current = api.sampling(int(project))
    if sampling_marker_exists(queue.model_dir, project):
        return current or "unknown"
    if current != UNCERTAINTY_SAMPLING:
        api.set_sampling(int(project), UNCERTAINTY_SAMPLING)
        logger.info("project %s: sampling %r -> %r (UNCERTAINTY_SAMPLING=true)", project, current,
                    UNCERTAINTY_SAMPLING)
    write_sampling_marker(queue.model_dir, project, current)
    return UNCERTAINTY_SAMPLING
