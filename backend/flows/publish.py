"""Training run, stage 3b: publish. After a training run (and at cold start) the ranked batch (rank.py)
replaces the previous one in Label Studio, whose queue serves it first; the serving version's superseded
predictions go.

Label Studio holds at most about one prediction of ours per task (live or imported, current version)
plus the batch. The last batch is saved (the project's state: backend.state.project_state), so the next
run replaces exactly it and /predict of a batch task returns the score Label Studio sorts by.
"""
from __future__ import annotations

import logging
import threading
import time
from collections import defaultdict

import requests

from ..labelstudio.client import LabelStudioAPI
from ..labelstudio.protocol import UNCERTAINTY_SAMPLING, UNLABELED_FILTER
from ..model import BACKEND_VERSION, ClipClassifier
from ..state.project_state import ProjectState
from .rank import RankedBatch, next_batch

logger = logging.getLogger(__name__)


def publish_queue(api: LabelStudioAPI, model: ClipClassifier, labeled: set[int], anchors: dict,
                  audit_wanted: bool = True) -> dict | None:
    """Rank the next batch (rank.py) and publish it; the summary, or None when nothing was published (no
    store, nothing embedded yet, or Label Studio failing: the version serves anyway, the next run ranks
    again)."""
    project = model.project_id
    if model.primary.store is None:
        logger.warning("project %s: no embedding store (Chroma unavailable): the queue is not ranked", project)
        return None
    try:
        batch = next_batch(model, labeled, anchors, audit_wanted)
        if batch is None:
            logger.info("project %s: no unlabeled task embedded yet; nothing to rank", project)
            return None
        return publish_batch(api, model, batch)
    except Exception as exc:
        logger.warning("project %s: could not publish the queue batch to Label Studio: %s", project, exc)
        return None


def publish_batch(api: LabelStudioAPI, model: ClipClassifier, batch: RankedBatch) -> dict:
    """Write the batch to Label Studio in place of the previous one and make its queue serve it first.

    Versions (Label Studio 1.23.2): the project's model_version names our ML backend (its title, as
    Label Studio sets it on connecting), which makes Label Studio ask /predict live for any opened task
    without a prediction of the current version, so every task shows the current head. Uncertainty
    sampling only sees predictions of the project's model_version: the batch goes under that name with
    score = priority. Superseded predictions of our earlier versions are deleted; other models'
    predictions and bulk labels are never touched. Returns a summary."""
    started = time.perf_counter()
    project, queue = model.project_id, model.queue
    shown = api.project_model_version(int(project))
    tag = queue_tag(api, project, model, shown)
    changes = {}  # the project is set up first, so a project showing our version is fully set up
    if queue.view:
        changes["view"] = api.ensure_view(int(project), queue.view, ["tasks:predictions_score"], UNLABELED_FILTER)
    if queue.uncertainty_sampling:
        changes["sampling"] = switch_sampling_once(api, model.state)
    previous = model.state.ranking()
    stale, only_ours = {}, set()
    if previous is not None and previous.pushed_as == tag and previous.priorities:
        stale, only_ours = api.version_predictions(int(project), list(previous.priorities), tag)
    rows = [{"task": t, **p, "model_version": tag} for t, p in batch.predictions.items()]
    staying = {r["task"]: r for r in rows if stale.get(r["task"])}  # in both batches: updated in place
    fresh = [r for r in rows if r["task"] not in staying]
    leaving = {t: ids for t, ids in stale.items() if t not in staying}
    # the lock first, then the foreground (background requests wait until the batch is in): background
    # work holding the lock never waits for this batch
    with _push_locks[str(project)], api.pacer.foreground():
        pushes.push(api, project, fresh)  # the new tasks first: the queue never runs empty
        replaced = replace_previous(api, project, leaving, only_ours)
        for task, row in staying.items():  # a new score (order) and the current head's choice
            first, *extra = stale[task]
            pushes.update(api, first, row)
            replaced += 1 + api.delete_predictions(extra)
    model.state.save_ranking(batch.version, batch.strategy, batch.priorities, pushed_as=tag, audit=batch.audit)
    shows = tag if rows and (not shown or BACKEND_VERSION.match(shown)) else shown
    if shows != shown:
        api.set_model_version(int(project), shows)  # after the push: Label Studio refuses a version no prediction carries
    deleted = delete_superseded(api, project, batch.version, keep=tag, shown=shows)
    summary = {"model_version": batch.version, "queue_version": tag, "project_version": shows,
               "live": tag != batch.version,
               "strategy": batch.strategy, "ranked": len(rows), "audit": len(batch.audit),
               "audit_share": batch.audit_share, "replaced": replaced,
               "deleted": deleted, "sampled": batch.sampled, "seconds": round(time.perf_counter() - started, 3),
               **changes}
    logger.info("project %s: queue batch published: %s", project, summary)
    return summary


class PushCost:
    """Chooses, per project, between one import of all rows and one request per row, by measured cost.
    Label Studio 1.23.2's prediction import reads every task id of the project (13-15 s per import at
    100,000 tasks, ~1 s at 2,000), a single create or update is about 0.1-0.3 s whatever the size."""

    def __init__(self, first_guess_s: float = 0.25):
        self.import_s: dict[str, float] = {}  # project -> seconds of its last import
        self.single_s = first_guess_s  # seconds per single create/update (all projects: same server)
        self._lock = threading.Lock()

    def push(self, api: LabelStudioAPI, project: str, rows: list[dict]) -> None:
        if not rows:
            return
        one_by_one = str(project) in self.import_s and self.single_s * len(rows) < self.import_s[str(project)]
        started = time.perf_counter()
        if one_by_one:
            for row in rows:
                api.create_prediction(row)
            self._single(time.perf_counter() - started, len(rows))
        else:
            api.push_predictions(int(project), rows)
            with self._lock:
                self.import_s[str(project)] = time.perf_counter() - started

    def update(self, api: LabelStudioAPI, prediction_id: int, row: dict) -> None:
        started = time.perf_counter()
        try:
            api.update_prediction(prediction_id, row)
        except requests.HTTPError as exc:
            if exc.response is None or exc.response.status_code != 404:
                raise
            api.create_prediction(row)  # deleted meanwhile (by a user, say): the task still needs its row
        self._single(time.perf_counter() - started, 1)

    def _single(self, seconds: float, n: int) -> None:
        with self._lock:
            self.single_s = 0.7 * self.single_s + 0.3 * seconds / max(n, 1)


pushes = PushCost()


def replace_previous(api: LabelStudioAPI, project: str, stale: dict[int, list[int]], bulk: set[int]) -> int:
    """Delete the previous batch's predictions on tasks leaving it (``stale``: task -> prediction ids
    listed before the push). The ``bulk`` tasks (holding nothing but that prediction when listed) lose
    theirs in one request; the rest go one by one, so other models' predictions are never touched.
    Returns how many went."""
    bulk = {t for t in bulk if t in stale}
    expected = sum(len(stale[t]) for t in bulk)
    deleted = api.delete_task_predictions(int(project), sorted(bulk))
    if deleted > expected:  # a prediction reached one of these tasks during the push (rare): say so
        logger.warning("project %s: replacing the queue batch also deleted %d prediction(s) that arrived "
                       "meanwhile on its tasks", project, deleted - expected)
    return min(deleted, expected) + api.delete_predictions([i for t, ids in stale.items() if t not in bulk
                                                            for i in ids])


def queue_tag(api: LabelStudioAPI, project: str, model: ClipClassifier, shown: str | None) -> str:
    """The model_version the batch goes under: the title of our ML backend (found by the version its
    /setup answered, or the project's only backend) when the project shows (``shown``) that title, no
    version, or one of our own version names (an earlier release set those); the project is then
    switched to the title. A project showing another model's version keeps it (the user chose it): the
    batch goes under our version, out of the queue's sight. Without a backend: our version."""
    backends = api.ml_backends(int(project))
    prefix = model.model_version.split("/", 1)[0] + "/"
    ours = [b for b in backends if str(b.get("model_version") or "").startswith(prefix)] or \
        (backends if len(backends) == 1 else [])
    titles = [b["title"] for b in ours if b.get("title")]
    if shown and shown in titles:
        return shown
    if titles and (not shown or BACKEND_VERSION.match(shown)):
        return titles[0]
    return model.model_version


_push_locks: dict[str, threading.Lock] = defaultdict(threading.Lock)


def push_new(api: LabelStudioAPI, project: str, rows: list[dict], version: str) -> tuple[set[int], set[int]]:
    """Import prediction rows of ``version``, leaving out tasks that hold one already ("Retrieve
    predictions" or background pre-annotation got there first: Label Studio would show two).
    Returns (task ids imported, task ids skipped). The look and the import are one step per project
    within this process, so a training run and background pre-annotation never import the same task.
    A chunk (sized by time, labelstudio.pacing) at a time, each waiting for its turn outside the lock:
    a training run's batch waits for one chunk at most."""
    imported, skipped, start = set(), set(), 0
    while start < len(rows):
        chunk = rows[start:start + api.pacer.rows_for("import")]
        start += len(chunk)
        api.pacer.wait_turn()
        with _push_locks[str(project)]:
            already = api.tasks_with_prediction(int(project), [r["task"] for r in chunk], version)
            fresh = [r for r in chunk if r["task"] not in already]
            api.push_predictions(int(project), fresh)
        imported.update(r["task"] for r in fresh)
        skipped.update(already)
    return imported, skipped


def delete_superseded(api: LabelStudioAPI, project: str, current: str, keep: str | None = None,
                      shown: str | None = None) -> int:
    """Delete the predictions of this backend's earlier versions (every unlabeled task now holds one of
    ``current``), so Label Studio holds about one of ours per task instead of one per version and run.
    Only versions named by the same encoders are ours: predictions of other models, of a backend with
    other encoders and bulk labels ("search:<query>") are never touched. ``shown``: the project's
    model version, kept through the deletions (Label Studio would clear it)."""
    deleted, encoders = 0, current.split("/", 1)[0] + "/"
    try:
        for version in api.model_versions(int(project)):
            if version not in (current, keep) and version.startswith(encoders) and BACKEND_VERSION.match(version):
                deleted += api.delete_model_version(int(project), version, shown=shown)
    except Exception as exc:  # the queue is ranked anyway; the next run tries again
        logger.warning("project %s: could not delete superseded predictions: %s", project, exc)
    return deleted


def switch_sampling_once(api: LabelStudioAPI, state: ProjectState) -> str:
    """Opt-in (UNCERTAINTY_SAMPLING=true): switch the project to uncertainty sampling once. If a
    user later picks another sampling in Label Studio, that choice stands."""
    project = state.project
    current = api.sampling(int(project))
    if state.sampling_switched():
        return current or "unknown"
    if current != UNCERTAINTY_SAMPLING:
        api.set_sampling(int(project), UNCERTAINTY_SAMPLING)
        logger.info("project %s: sampling %r -> %r (UNCERTAINTY_SAMPLING=true)", project, current,
                    UNCERTAINTY_SAMPLING)
    state.mark_sampling_switched(current)
    return UNCERTAINTY_SAMPLING
