"""Annotations -> new version: reconcile with Label Studio -> train and select a head per target (the
audit sample is the test set, never trained on) -> save the version with its report -> rank the next
batch (rank.py) -> push it (publish.py).

A run's Label Studio traffic does not grow with the project: annotations arrive by webhook (already in
the log), and a run only lists the tasks Label Studio changed since the last one. Every annotated task
is listed when asked (START_TRAINING), on a project's first run, and at most every FULL_RECONCILE_S
after the batch is published; the tasks without annotations are never listed on a run's path: before
the first batch a few random pages give the cold-start sample if the store lacks one, and the sweep
that finds every task not embedded yet runs in the background (pre-annotation).

One call is one training run on a snapshot of the annotation log; the caller (backend.runtime) marks
the generation trained when it returns, so annotations arriving meanwhile are trained on next time.
"""
from __future__ import annotations

import json
import logging
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Callable

import numpy as np

from ..embed.store import record_id
from ..labelstudio.client import LabelStudioAPI
from ..labelstudio.labelconfig import Target
from ..learn.audit import audit_wanted
from ..learn.report import write_report
from ..learn.selection import train_and_select
from ..state.annotations import AnnotationLog, LabeledTask, ReconcileRefused
from ..state.rankings import load_ids, load_state, ranked_version, save_ids, save_state
from ..state.versions import ModelVersion, VersionStore
from .predict import QueueOptions
from .project_model import ProjectModel
from .publish import publish_batch
from .rank import rank_batch, sync_labeled
from .review import publish_review, to_review
from .record import annotation_record

logger = logging.getLogger(__name__)

RECONCILE_SLACK_S = 5.0  # an incremental reconcile re-reads this much before the last one (clock skew)


@dataclass
class TrainingRun:
    """What a run needs; built per run by backend.runtime."""
    log: AnnotationLog
    versions: VersionStore
    model_for: Callable[[str, str | None], ProjectModel]  # (project, label_config) -> the shared model
    api: LabelStudioAPI | None  # None: Label Studio unknown, train on the log alone and rank nothing
    queue: QueueOptions
    bound_url: str | None = None  # a /setup URL to record as working once a reconcile through it succeeds
    # sweep_later(project, label_config): in the background, list every unannotated task and embed (and
    # pre-annotate) those not in the store yet
    sweep_later: Callable[[str, str | None], bool] | None = None


@dataclass
class RunResult:
    version: ModelVersion | None = None  # None: no usable labels yet, zero-shot keeps serving
    ranking: dict | None = None  # the queue re-ranking's summary, when one was published
    phases: dict[str, float] = field(default_factory=dict)  # reconcile, embed, select, save, publish: seconds
    reconciled: dict = field(default_factory=dict)  # {"full": bool, "tasks": tasks listed by Label Studio}
    review: dict | None = None  # what the label-error review tab shows now (flows/review.py)


@dataclass
class _Labeled:
    tasks: list[dict]
    embeddings: np.ndarray
    y: np.ndarray  # class indices, or an (n, K) indicator matrix for multiple choice
    first: np.ndarray  # the first chosen class index per item (anchors for the queue strategies)


def train_once(run: TrainingRun, project: str, generation: int, label_config: str | None) -> RunResult:
    started = time.perf_counter()
    result = RunResult()
    with _phase(result, "reconcile"):
        full = reconcile(run, project, label_config, full=_full_reconcile_due(run, project, at_start=True),
                         seen=result.reconciled)
    with _phase(result, "embed"):
        model = run.model_for(project, label_config)
        model.load()
        rows = run.log.labeled_tasks(project)
        if full and not model.trained:
            cold_start_pool(run, project, model, {t.task_id for t in rows})
        data = {t.from_name: d for t in model.config.targets if (d := labeled_data(model, t, rows)) is not None}
    anchors = {name: (d.embeddings, d.first) for name, d in data.items()}
    if not data:
        logger.info("project %s: no usable labels yet; zero-shot keeps serving", project)
        if run.api is not None and ranked_version(run.queue.model_dir, project) != model.model_version:
            with _phase(result, "publish"):  # cold start: zero-shot + typicality
                result.ranking = _publish(run, project, model, {t.task_id for t in rows}, anchors)
        if full:
            _sweep(run, project, label_config)
        return result
    audit = audit_tasks(run, project, rows)
    with _phase(result, "select"):
        number = run.versions.next_number(project)
        heads, reports = {}, {}
        for target in model.config.targets:
            if target.from_name in data:
                heads[target.from_name], reports[target.from_name] = select_head(
                    run, project, model, target, data[target.from_name], model.version_name(number), audit)
    with _phase(result, "save"):
        result.version = save_version(run, project, model, heads, reports, generation, len(rows), started)
        model.refresh()
    logger.info("project %s: trained %s on %d labeled tasks in %.1fs", project, result.version.name, len(rows),
                time.perf_counter() - started)
    if run.api is not None:
        with _phase(result, "publish"):
            result.ranking = _publish(run, project, model, {t.task_id for t in rows}, anchors,
                                      _audit_wanted(run, reports))
        if _review_due(run, project, generation):
            with _phase(result, "review"):
                result.review = _review(run, project, model, rows, reports,
                                        (result.ranking or {}).get("project_version"))
        if _full_reconcile_due(run, project, at_start=False):
            with _phase(result, "full_reconcile"):  # after the batch is out: off the critical path
                full = reconcile(run, project, label_config, full=True, seen=result.reconciled)
    if full:
        _sweep(run, project, label_config)
    return result


@contextmanager
def _phase(result: RunResult, name: str):
    """Time one phase of the run into result.phases (seconds), for /status and /metrics."""
    started = time.perf_counter()
    try:
        yield
    finally:
        result.phases[name] = round(time.perf_counter() - started, 3)


def _full_reconcile_due(run: TrainingRun, project: str, at_start: bool) -> bool:
    """At the start of a run: asked for (START_TRAINING) or never done. After it: older than FULL_RECONCILE_S."""
    if run.api is None:
        return False
    _, full_at, wanted = run.log.reconcile_state(project)
    if at_start:
        return wanted or full_at is None
    return time.time() - full_at > run.queue.full_reconcile_s


def reconcile(run: TrainingRun, project: str, label_config: str | None, full: bool,
              seen: dict | None = None) -> bool:
    """Make Label Studio's annotations the log's truth: of every annotated task (full: one listing as long
    as the project's annotated tasks), or of the tasks Label Studio changed since the last reconcile.
    Returns whether it was full. Raises ReconcileRefused, changing nothing, when Label Studio lists none of
    the recorded labels (replace_all): likely the wrong Label Studio, not a wipe."""
    if run.api is None:
        return False
    started = time.time()
    reconciled_at, _, _ = run.log.reconcile_state(project)
    full = full or reconciled_at is None
    if full:
        labeled_pairs = run.api.annotated_tasks(int(project))
        run.log.replace_all(project, [annotation_record(a, t) for a, t in labeled_pairs], label_config)
        listed = len(labeled_pairs)
    else:
        labeled_pairs, changed = run.api.changed_tasks(int(project), reconciled_at - RECONCILE_SLACK_S)
        run.log.apply_changes(project, changed, [annotation_record(a, t) for a, t in labeled_pairs])
        listed = len(changed)
    if seen is not None:
        seen.update(full=full, tasks=listed)
    run.log.mark_reconciled(project, started, full=full)
    if run.bound_url:
        run.log.mark_reached(project, run.bound_url)
    return full


COLD_START_PAGE = 100  # tasks per page of the cold-start sample: many small random pages, nearly uniform


def cold_start_pool(run: TrainingRun, project: str, model: ProjectModel, labeled: set[int]) -> int:
    """Before the first trained version the first batch is ranked from the store: unless it holds
    COLD_START_SAMPLE unlabeled records already, embed up to that many unannotated tasks from random pages
    of Label Studio's listing (a few requests, whatever the project's size). Returns how many were embedded."""
    if model.store is None or run.api is None:  # Chroma unavailable: tasks are embedded when Label Studio asks
        return 0
    target = model.config.targets[0]
    encoder, wanted = model.encoder_ids[target.to_name], run.queue.cold_start_sample
    if model.store.count(model.project_id, encoder) - len(labeled) >= wanted:
        return 0
    first, total = run.api.unannotated_page(int(project), 1, COLD_START_PAGE)
    pages = -(-total // COLD_START_PAGE)
    rng = np.random.default_rng(int(project) if str(project).isdigit() else 0)
    picked: dict[int, dict] = {}
    for page in rng.permutation(pages)[:4 * -(-wanted // COLD_START_PAGE)] + 1:
        tasks = first if page == 1 else run.api.unannotated_page(int(project), int(page), COLD_START_PAGE)[0]
        picked.update((t["id"], t) for t in not_embedded(model, tasks))
        if len(picked) >= wanted:
            break
    now = list(picked.values())[:wanted]
    if now:
        model.embed_tasks(now)
    return len(now)


def _sweep(run: TrainingRun, project: str, label_config: str | None) -> None:
    """After a full reconcile: every task not embedded yet is embedded and pre-annotated in the background,
    so every task can reach the queue (the listing runs there too, off the run's path)."""
    if run.sweep_later is not None and run.api is not None:
        run.sweep_later(project, label_config)


def sweep_unembedded(api: LabelStudioAPI, model: ProjectModel, page_size: int = 500):
    """The unannotated tasks not in the store, page by page (lists of {"id", "data"}): what the background
    sweep embeds and pre-annotates."""
    if model.store is None:
        return
    for tasks in api.unannotated_tasks(int(model.project_id), page_size):
        missing = not_embedded(model, tasks)
        if missing:
            yield missing


def not_embedded(model: ProjectModel, tasks: list[dict]) -> list[dict]:
    """The tasks whose primary target has no record in the store (one id lookup, no embeddings read)."""
    target = model.config.targets[0]
    stored = model.store.existing(model.project_id, model.encoder_ids[target.to_name],
                                  [record_id(t["id"], target.to_name) for t in tasks])
    return [t for t in tasks if record_id(t["id"], target.to_name) not in stored]


def labeled_data(model: ProjectModel, target: Target, rows: list[LabeledTask]) -> _Labeled | None:
    """The target's labeled items, embedded, with their classes (None when none is usable)."""
    position = {out: i for i, out in enumerate(target.outputs)}
    tasks, chosen = [], []
    for row in rows:
        classes = [position[c] for c in row.labels.get(target.from_name, []) if c in position]
        if classes:
            tasks.append({"id": row.task_id, "data": row.data})
            chosen.append(classes)
    indices, embeddings = model.embed(target, tasks)
    if not indices:
        return None
    first = np.array([chosen[i][0] for i in indices], dtype=np.int64)
    y = first
    if target.multiple:
        y = np.zeros((len(indices), len(target.labels)), dtype=np.int64)
        for row_index, i in enumerate(indices):
            y[row_index, chosen[i]] = 1
    return _Labeled([tasks[i] for i in indices], np.stack(embeddings), y, first)


def select_head(run: TrainingRun, project: str, model: ProjectModel, target: Target, data: _Labeled,
                version: str, audit: set[int]):
    zero_shot = model.zero_shot_head(target)
    history = [r for v in run.versions.all(project) if (r := target_report(v, target.from_name))]
    return train_and_select(data.embeddings, data.y, [t["id"] for t in data.tasks], zero_shot.prototypes,
                            zero_shot.logit_scale, target.outputs, target.multiple, history=history,
                            version=version, audit_ids=audit,
                            previous=model.head(target) if model.is_trained(target) else None)


def save_version(run: TrainingRun, project: str, model: ProjectModel, heads: dict, reports: dict,
                 generation: int, n_labels: int, started: float) -> ModelVersion:
    primary = next(iter(reports))

    def write_reports(directory, number):
        for from_name, report in reports.items():
            report.update(project=project, from_name=from_name,
                          training_seconds=round(time.perf_counter() - started, 3))
            write_report(report, directory if from_name == primary else directory / from_name)

    return run.versions.save(
        project, model.version_name, heads,
        meta={"fingerprint": model.config.fingerprint, "encoders": model.encoder_ids, "labels": n_labels,
              "generation": generation, "heads": {k: type(h).__name__ for k, h in heads.items()}},
        write_extras=write_reports,
    )


def target_report(version: ModelVersion, from_name: str) -> dict | None:
    """A version's report for one target (the first target's is at the top of the version directory)."""
    report = version.report()
    if report and report.get("from_name", from_name) == from_name:
        return report
    path = version.directory / from_name / "report.json"
    return json.loads(path.read_text()) if path.exists() else None


def audit_tasks(run: TrainingRun, project: str, rows: list[LabeledTask]) -> set[int]:
    """The test set: labeled tasks of the audit sample (drawn uniformly by earlier runs, flows/rank.py)
    and annotations Label Studio marks as ground truth."""
    drawn = load_ids(run.queue.model_dir, project, "audit")
    return {row.task_id for row in rows if row.task_id in drawn or row.ground_truth}


REVIEW_MAX_AGE_S = 60.0  # while annotations keep arriving, the review tab is refreshed at least this often


def _review_due(run: TrainingRun, project: str, generation: int) -> bool:
    """After every run when labeling pauses; while annotations are waiting for the next run (which comes
    right away), only when the tab is older than REVIEW_MAX_AGE_S, so the queue's runs come faster."""
    waiting = run.log.generations(project)[0] > generation
    return not waiting or time.time() - float(load_state(run.queue.model_dir, project, "review_shown")
                                              .get("at", 0)) > REVIEW_MAX_AGE_S


def _review(run: TrainingRun, project: str, model: ProjectModel, rows: list[LabeledTask], reports: dict,
            shown: str | None):
    """Show the primary target's suspected label errors in Label Studio's review tab (``shown``: the
    project's model version, which the review's deletion must not clear)."""
    target = model.config.targets[0]
    report = reports.get(target.from_name)
    if report is None:
        return None
    try:
        flagged = to_review(run.queue.model_dir, project, rows, report.get("label_errors") or [])
        summary = publish_review(run.api, project, target, model.model_version, flagged, shown)
        save_state(run.queue.model_dir, project, "review_shown", {"at": time.time()})
        return summary
    except Exception as exc:  # the version serves anyway; the next run shows the review again
        logger.warning("project %s: could not update the label review in Label Studio: %s", project, exc)
        return None


def _audit_wanted(run: TrainingRun, reports: dict) -> bool:
    """Keep drawing audit items until the primary target's accuracy is known to +/- audit_half_width."""
    return audit_wanted((next(iter(reports.values()), None) or {}).get("audit"), run.queue.audit_half_width)


def _publish(run: TrainingRun, project: str, model: ProjectModel, labeled: set[int], anchors: dict,
             audit_wanted: bool = True):
    queue = run.queue
    if model.store is None:
        logger.warning("project %s: no embedding store (Chroma unavailable): the queue is not ranked", project)
        return None
    try:
        sync_labeled(model, queue.model_dir, labeled)
        drawn = load_ids(queue.model_dir, project, "audit")
        pending = sorted(drawn - labeled)
        new = max(0, round(queue.batch * queue.audit_share) - len(pending)) if audit_wanted else 0
        batch = rank_batch(model, queue.batch, queue.strategy, anchors, pending, new, queue.sample, labeled=labeled)
        if batch is None:
            logger.info("project %s: no unlabeled task embedded yet; nothing to rank", project)
            return None
        save_ids(queue.model_dir, project, "audit", drawn | set(batch.audit))
        return publish_batch(run.api, project, model, batch, queue)
    except Exception as exc:  # the version serves anyway; the next run ranks again
        logger.warning("project %s: could not publish the queue batch to Label Studio: %s", project, exc)
        return None
