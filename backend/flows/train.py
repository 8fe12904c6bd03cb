"""Training run, stage 2: train and select. The labeled items of each <Choices> tag are embedded (through
the store), a head is selected per tag on validation and tested on the audit sample (drawn uniformly by
earlier runs, flows/rank.py: never trained on), and the heads are saved as a new version with their
evaluation reports.
"""
from __future__ import annotations

import json
import time
from dataclasses import dataclass

import numpy as np

from ..learn.report import write_report
from ..learn.result import TrainingResult
from ..learn.selection import train_and_select
from ..model import ChoicesControl, ClipClassifier
from ..state.annotations import LabeledTask
from ..state.project_state import ProjectState
from ..state.versions import ModelVersion


@dataclass
class LabeledData:
    """One control's labeled items, embedded."""
    tasks: list[dict]
    embeddings: np.ndarray
    y: np.ndarray  # class indices, or an (n, K) indicator matrix for multiple choice
    first: np.ndarray  # the first chosen class index per item (anchors for the queue strategies)


def labeled_data(model: ClipClassifier, rows: list[LabeledTask]) -> dict[str, LabeledData]:
    """Per control (from_name) with usable labels: its labeled items, embedded, with their classes."""
    return {c.from_name: data for c in model.controls if (data := control_data(model, c, rows)) is not None}


def control_data(model: ClipClassifier, control: ChoicesControl, rows: list[LabeledTask]) -> LabeledData | None:
    """The control's labeled items, embedded, with their classes (None when none is usable)."""
    target = control.target
    position = {out: i for i, out in enumerate(target.outputs)}
    tasks, chosen = [], []
    for row in rows:
        classes = [position[c] for c in row.labels.get(target.from_name, []) if c in position]
        if classes:
            tasks.append({"id": row.task_id, "data": row.data})
            chosen.append(classes)
    indices, embeddings = model.embed(control, tasks)
    if not indices:
        return None
    first = np.array([chosen[i][0] for i in indices], dtype=np.int64)
    y = first
    if target.multiple:
        y = np.zeros((len(indices), len(target.labels)), dtype=np.int64)
        for row_index, i in enumerate(indices):
            y[row_index, chosen[i]] = 1
    return LabeledData([tasks[i] for i in indices], np.stack(embeddings), y, first)


def audit_tasks(state: ProjectState, rows: list[LabeledTask]) -> set[int]:
    """The test set: labeled tasks of the audit sample (drawn uniformly by earlier runs, flows/rank.py)
    and annotations Label Studio marks as ground truth."""
    drawn = state.audit_draws()
    return {row.task_id for row in rows if row.task_id in drawn or row.ground_truth}


def select_heads(model: ClipClassifier, data: dict[str, LabeledData],
                 audit: set[int]) -> tuple[dict, dict[str, TrainingResult]]:
    """(heads, results) per control with labeled data (from_name), for the next version."""
    version = model.version_name(model.versions.next_number(model.project_id))
    heads, results = {}, {}
    for control in model.controls:
        if control.from_name in data:
            heads[control.from_name], report = select_head(model, control, data[control.from_name], version, audit)
            results[control.from_name] = TrainingResult.from_report(report)
    return heads, results


def select_head(model: ClipClassifier, control: ChoicesControl, data: LabeledData, version: str, audit: set[int]):
    zero_shot, target = control.zero_shot, control.target
    history = [r for v in model.versions.all(model.project_id) if (r := target_report(v, target.from_name))]
    return train_and_select(data.embeddings, data.y, [t["id"] for t in data.tasks], zero_shot.prototypes,
                            zero_shot.logit_scale, target.outputs, target.multiple, history=history,
                            version=version, audit_ids=audit,
                            previous=control.trained_)


def save_version(model: ClipClassifier, heads: dict, results: dict[str, TrainingResult], generation: int,
                 n_labels: int, started: float) -> ModelVersion:
    """Save the heads as the project's next version, with their reports (the first one at the top of the
    version directory, the others under <from_name>/)."""
    project, primary = model.project_id, next(iter(results))

    def write_reports(directory, number):
        for from_name, result in results.items():
            result.report.update(project=project, from_name=from_name,
                                 training_seconds=round(time.perf_counter() - started, 3))
            write_report(result.report, directory if from_name == primary else directory / from_name)

    return model.versions.save(
        project, model.version_name, heads,
        meta={"fingerprint": model.config.fingerprint, "encoders": model.encoder_ids, "labels": n_labels,
              "generation": generation, "heads": {k: type(h).__name__ for k, h in heads.items()}},
        write_extras=write_reports,
    )


def target_report(version: ModelVersion, from_name: str) -> dict | None:
    """A version's report for one control (the first one's is at the top of the version directory)."""
    report = version.report()
    if report and report.get("from_name", from_name) == from_name:
        return report
    path = version.directory / from_name / "report.json"
    return json.loads(path.read_text()) if path.exists() else None
