"""Training run, stage 4: label-error review inside Label Studio. After a run, the annotations the chosen head most doubts
(out-of-fold confident learning, backend.learn.label_errors) are shown in a Data Manager tab,
"Possible label errors (<count>)", most suspicious first, each with the model's suggested label and its
confidence as a prediction under "<encoders>/label-review". Annotations are never touched.

A flagged task that someone re-annotates (a webhook for its annotation after it was flagged) counts as
reviewed: it is not flagged again while its label stays what the reviewer left.
"""
from __future__ import annotations

import json
import logging
import time

from ..labelstudio.client import LabelStudioAPI
from ..labelstudio.labelconfig import Target
from ..labelstudio.pacing import background
from ..labelstudio.protocol import choice_region, prediction
from ..model import ClipClassifier
from ..state.annotations import AnnotationLog, LabeledTask
from ..state.project_state import ProjectState, ReviewFlags

logger = logging.getLogger(__name__)

REVIEW_VIEW = "Possible label errors"
REVIEW_MAX = 50  # flagged tasks shown per run (one request each: the order is made by creating them in turn)
REVIEW_MAX_AGE_S = 60.0  # while annotations keep arriving, the review tab is refreshed at least this often


def review_due(log: AnnotationLog, state: ProjectState, generation: int) -> bool:
    """After every run when labeling pauses; while annotations are waiting for the next run (which comes
    right away), only when the tab is older than REVIEW_MAX_AGE_S, so the queue's runs come faster."""
    waiting = log.generations(state.project)[0] > generation
    return not waiting or time.time() - state.review_shown_at() > REVIEW_MAX_AGE_S


def show_review(api: LabelStudioAPI, model: ClipClassifier, rows: list[LabeledTask], label_errors: list[dict] | None,
                shown: str | None) -> dict | None:
    """Show the primary tag's suspected label errors (its report's; None: it was not trained this run) in
    Label Studio's review tab. ``shown``: the project's model version, which the review's deletion must
    not clear. Returns the summary, or None when nothing was shown."""
    if label_errors is None:
        return None
    project = model.project_id
    try:
        flagged = to_review(model.state, rows, label_errors)
        with background():  # behind any training run's batch, paced (labelstudio.pacing)
            summary = publish_review(api, project, model.primary.target, model.model_version, flagged, shown,
                                     model.state.review_shown())
        model.state.mark_review_shown(time.time(), summary.pop("shows"))
        return summary
    except Exception as exc:  # the version serves anyway; the next run shows the review again
        logger.warning("project %s: could not update the label review in Label Studio: %s", project, exc)
        return None


def review_title(flagged: int) -> str:
    """The tab's title says how many tasks it holds: "Possible label errors (12)"."""
    return f"{REVIEW_VIEW} ({flagged})"


def review_version(model_version: str) -> str:
    """The model_version of review predictions: named by the encoders, never one of our serving versions."""
    return model_version.split("/", 1)[0] + "/label-review"


def _labels(row: LabeledTask) -> str:
    return json.dumps(row.labels, sort_keys=True)


def to_review(state: ProjectState, rows: list[LabeledTask], errors: list[dict]) -> list[dict]:
    """The report's suspected errors minus the ones a person has reviewed since they were flagged;
    remembers what is flagged now."""
    flags = state.review_flags()
    by_task = {row.task_id: row for row in rows}
    for task, flagged_at in flags.flagged.items():
        row = by_task.get(task)
        if row is not None and row.event_at > flagged_at:
            flags.reviewed[task] = _labels(row)
    keep = [e for e in errors if int(e["task_id"]) in by_task
            and flags.reviewed.get(int(e["task_id"])) != _labels(by_task[int(e["task_id"])])][:REVIEW_MAX]
    now = time.time()
    state.save_review_flags(ReviewFlags(flagged={int(e["task_id"]): now for e in keep},
                                        reviewed={t: v for t, v in flags.reviewed.items() if t in by_task}))
    return keep


def publish_review(api: LabelStudioAPI, project: str, target: Target, model_version: str,
                   flagged: list[dict], shown: str | None = None, before: list | None = None) -> dict:
    """Replace the review predictions with this run's flags and make sure the tab exists. ``shown``:
    the project's model version (the queue's), kept through the deletion. ``before``: what the tab was
    last written with; the same flags in the same order under the same version are not written again
    (one request per flag, each a write on Label Studio's database)."""
    version = review_version(model_version)
    shows = [[version, int(e["task_id"]), json.dumps(e["suggested"])] for e in flagged]
    removed, written = 0, 0
    if shows != before or api.model_versions(int(project)).get(version, 0) != len(flagged):
        if shown is None:  # no batch published this run: read it
            shown = api.project_model_version(int(project))
        removed = api.delete_model_version(int(project), version, shown=shown)
        # created one at a time, least suspicious first: each touches its task's updated_at, which orders the tab
        for entry in reversed(flagged):
            region = choice_region(target.from_name, target.to_name, [entry["suggested"]], entry["confidence"])
            api.create_prediction({"task": int(entry["task_id"]),
                                   **prediction([region], float(entry["suspicion"]), version)})
            written += 1
    # "contains" takes a list of versions (Label Studio iterates over the value)
    filters = {"conjunction": "and", "items": [{"filter": "filter:tasks:predictions_model_versions",
                                                "operator": "contains", "type": "List", "value": [version]}]}
    title = review_title(len(flagged))
    view = api.ensure_view(int(project), title, ["-tasks:updated_at"], filters, renames=REVIEW_VIEW)
    summary = {"flagged": len(flagged), "removed": removed, "written": written, "view": view, "title": title,
               "model_version": version, "shows": shows}
    logger.info("project %s: label review: %s", project, {k: v for k, v in summary.items() if k != "shows"})
    return summary
