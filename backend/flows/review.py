"""Label-error review inside Label Studio: after a run, the annotations the chosen head most doubts
(out-of-fold confident learning, backend.learn.label_errors) are shown in a Data Manager tab,
"Possible label errors", most suspicious first, each with the model's suggested label and its
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
from ..labelstudio.protocol import choice_region, prediction
from ..state.annotations import LabeledTask
from ..state.rankings import load_state, save_state

logger = logging.getLogger(__name__)

REVIEW_VIEW = "Possible label errors"
REVIEW_MAX = 50  # flagged tasks shown per run (one request each: the order is made by creating them in turn)


def review_version(model_version: str) -> str:
    """The model_version of review predictions: named by the encoders, never one of our serving versions."""
    return model_version.split("/", 1)[0] + "/label-review"


def _labels(row: LabeledTask) -> str:
    return json.dumps(row.labels, sort_keys=True)


def to_review(model_dir, project: str, rows: list[LabeledTask], errors: list[dict]) -> list[dict]:
    """The report's suspected errors minus the ones a person has reviewed since they were flagged;
    remembers what is flagged now."""
    state = load_state(model_dir, project, "review")
    flagged, reviewed = state.get("flagged", {}), state.get("reviewed", {})
    by_task = {str(row.task_id): row for row in rows}
    for task, flagged_at in flagged.items():
        row = by_task.get(task)
        if row is not None and row.event_at > float(flagged_at):
            reviewed[task] = _labels(row)
    keep = [e for e in errors if str(e["task_id"]) in by_task
            and reviewed.get(str(e["task_id"])) != _labels(by_task[str(e["task_id"])])][:REVIEW_MAX]
    now = time.time()
    save_state(model_dir, project, "review", {"flagged": {str(e["task_id"]): now for e in keep},
                                              "reviewed": {t: v for t, v in reviewed.items() if t in by_task}})
    return keep


def publish_review(api: LabelStudioAPI, project: str, target: Target, model_version: str,
                   flagged: list[dict], shown: str | None = None) -> dict:
    """Replace the review predictions with this run's flags and make sure the tab exists. ``shown``:
    the project's model version (the queue's), kept through the deletion."""
    version = review_version(model_version)
    if shown is None:  # no batch published this run: read it
        shown = api.project_model_version(int(project))
    removed = api.delete_model_version(int(project), version, shown=shown)
    # created one at a time, least suspicious first: each touches its task's updated_at, which orders the tab
    for entry in reversed(flagged):
        region = choice_region(target.from_name, target.to_name, [entry["suggested"]], entry["confidence"])
        api.create_prediction({"task": int(entry["task_id"]),
                               **prediction([region], float(entry["suspicion"]), version)})
    # "contains" takes a list of versions (Label Studio iterates over the value)
    filters = {"conjunction": "and", "items": [{"filter": "filter:tasks:predictions_model_versions",
                                                "operator": "contains", "type": "List", "value": [version]}]}
    view = api.ensure_view(int(project), REVIEW_VIEW, ["-tasks:updated_at"], filters)
    summary = {"flagged": len(flagged), "removed": removed, "view": view, "model_version": version}
    logger.info("project %s: label review: %s", project, summary)
    return summary
