"""Annotations -> new version: reconcile with Label Studio -> train and select a head per target ->
save the version with its report -> re-rank the queue (publish.py).

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

from ..labelstudio.client import LabelStudioAPI
from ..labelstudio.labelconfig import Target
from ..learn.report import write_report
from ..learn.selection import train_and_select
from ..state.annotations import AnnotationLog, LabeledTask, ReconcileRefused
from ..state.rankings import ranked_version
from ..state.versions import ModelVersion, VersionStore
from .predict import QueueOptions
from .project_model import ProjectModel
from .publish import publish_ranking
from .record import annotation_record

logger = logging.getLogger(__name__)


@dataclass
class TrainingRun:
    """What a run needs; built per run by backend.runtime."""
    log: AnnotationLog
    versions: VersionStore
    model_for: Callable[[str, str | None], ProjectModel]  # (project, label_config) -> the shared model
    api: LabelStudioAPI | None  # None: Label Studio unknown, train on the log alone and rank nothing
    queue: QueueOptions
    bound_url: str | None = None  # a /setup URL to record as working once a reconcile through it succeeds


@dataclass
class RunResult:
    version: ModelVersion | None = None  # None: no usable labels yet, zero-shot keeps serving
    ranking: dict | None = None  # the queue re-ranking's summary, when one was published
    phases: dict[str, float] = field(default_factory=dict)  # reconcile, embed, select, save, publish: seconds


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
        unlabeled = reconcile(run, project, label_config)
    with _phase(result, "embed"):
        model = run.model_for(project, label_config)
        model.load()
        rows = run.log.labeled_tasks(project)
        data = {t.from_name: d for t in model.config.targets if (d := labeled_data(model, t, rows)) is not None}
    anchors = {name: (d.embeddings, d.first) for name, d in data.items()}
    if not data:
        logger.info("project %s: no usable labels yet; zero-shot keeps serving", project)
        if run.api is not None and ranked_version(run.queue.model_dir, project) != model.model_version:
            with _phase(result, "publish"):  # cold start: zero-shot + typicality
                result.ranking = _publish(run, project, model, unlabeled, anchors)
        return result
    with _phase(result, "select"):
        number = run.versions.next_number(project)
        heads, reports = {}, {}
        for target in model.config.targets:
            if target.from_name in data:
                heads[target.from_name], reports[target.from_name] = select_head(
                    run, project, model, target, data[target.from_name], model.version_name(number))
    with _phase(result, "save"):
        result.version = save_version(run, project, model, heads, reports, generation, len(rows), started)
        model.refresh()
    logger.info("project %s: trained %s on %d labeled tasks in %.1fs", project, result.version.name, len(rows),
                time.perf_counter() - started)
    if run.api is not None:
        with _phase(result, "publish"):
            result.ranking = _publish(run, project, model, unlabeled, anchors)
    return result


@contextmanager
def _phase(result: RunResult, name: str):
    """Time one phase of the run into result.phases (seconds), for /status and /metrics."""
    started = time.perf_counter()
    try:
        yield
    finally:
        result.phases[name] = round(time.perf_counter() - started, 3)


def reconcile(run: TrainingRun, project: str, label_config: str | None) -> list[dict]:
    """Make Label Studio's annotations the log's truth; returns the unlabeled tasks ([] without Label Studio).
    Raises ReconcileRefused, changing nothing, when Label Studio lists no task of a project with recorded
    annotations, or none of its recorded labels (replace_all): likely the wrong Label Studio, not a wipe."""
    if run.api is None:
        return []
    labeled_pairs, unlabeled = run.api.tasks(int(project))
    recorded = run.log.count(project)
    if recorded and not labeled_pairs and not unlabeled:
        raise ReconcileRefused(f"reconcile not applied: Label Studio lists no task of project {project}, which "
                               f"has {recorded} recorded annotations; is the project bound to the right Label "
                               "Studio? (LABEL_STUDIO_URL, /setup)")
    run.log.replace_all(project, [annotation_record(a, t) for a, t in labeled_pairs], label_config)
    if run.bound_url:
        run.log.mark_reached(project, run.bound_url)
    return unlabeled


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
                version: str):
    zero_shot = model.zero_shot_head(target)
    history = [r for v in run.versions.all(project) if (r := target_report(v, target.from_name))]
    return train_and_select(data.embeddings, data.y, [t["id"] for t in data.tasks], zero_shot.prototypes,
                            zero_shot.logit_scale, target.outputs, target.multiple, history=history,
                            version=version)


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


def _publish(run: TrainingRun, project: str, model: ProjectModel, unlabeled: list[dict], anchors: dict):
    try:
        return publish_ranking(run.api, project, model, unlabeled, anchors, run.queue)
    except Exception as exc:  # the version serves anyway; the next run ranks again
        logger.warning("project %s: could not re-rank the queue in Label Studio: %s", project, exc)
        return None
