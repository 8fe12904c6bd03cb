"""Label Studio's wire formats, as pure functions: project and task ids, annotation results, the
prediction dicts we send, webhook payloads. No HTTP and no Flask: the web layer turns a
ProtocolError into a 400 response."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, NamedTuple

from .labelconfig import ConfigError, parse_label_config

# the project sampling that serves tasks by ascending prediction score
UNCERTAINTY_SAMPLING = "Uncertainty sampling"
# Data Manager filter: tasks nobody annotated yet
UNLABELED_FILTER = {"conjunction": "and", "items": [
    {"filter": "filter:tasks:total_annotations", "operator": "equal", "type": "Number", "value": 0}]}
# webhook events that change what a training run sees
MAX_ID = 2**63 - 1  # the largest id SQLite (INTEGER) and the vector store (int metadata) keep
TRAIN_EVENTS = frozenset({"ANNOTATION_CREATED", "ANNOTATION_UPDATED", "ANNOTATIONS_DELETED", "START_TRAINING"})
TASKS_CREATED = "TASKS_CREATED"  # imported tasks: pre-annotated in the background


class ProtocolError(ValueError):
    """A request does not have the shape Label Studio sends; the message says what is wrong."""


class IgnoredEvent(ProtocolError):
    """A webhook event we do not act on (acknowledge it, do not fail it)."""


# -- ids ------------------------------------------------------------------------------------------
def project_id(raw: Any) -> str:
    """The project id Label Studio sends as "<id>.<created-at timestamp>" (or a bare id); the id part
    names the project. None or "" is the "default" project. Only ASCII digits, as Label Studio makes
    them: str.isdigit() also takes "１" or "²", which int() reads as another project's id."""
    if raw is None or raw == "":
        return "default"
    if isinstance(raw, bool) or not isinstance(raw, (str, int)):
        raise ProtocolError(f"project {raw!r} is not a Label Studio project id")
    text = str(raw).split(".", 1)[0].strip()
    if not (text.isascii() and text.isdigit()) or len(text) > 19:  # a directory, a collection name, an int
        raise ProtocolError(f"project {raw!r} is not a Label Studio project id")
    return str(int(text))  # "007" is project 7


def task_id(task: Any) -> int | None:
    """A task's integer id; None for a task without one (e.g. sent inline to /predict) or whose id no
    store can keep (a list, a bool, a number outside 0..2**63-1)."""
    found = task.get("id") if isinstance(task, dict) else None
    return found if isinstance(found, int) and label_studio_id(found) is not None else None


def label_studio_id(value: Any) -> int | None:
    """An id as Label Studio sends it (an integer; an integral float or a digit string also) within
    what SQLite and the vector store keep (0..2**63-1); None for anything else (bool, inf, 1e300, [1])."""
    if isinstance(value, bool):
        return None
    if isinstance(value, float):
        value = int(value) if value.is_integer() else None  # inf and nan are not integers
    elif isinstance(value, str):
        text = value.strip()
        value = int(text) if text.isascii() and text.isdigit() and len(text) <= 19 else None
    return value if isinstance(value, int) and 0 <= value <= MAX_ID else None


# -- annotations ------------------------------------------------------------------------------------
def choices_from_result(result: Any) -> dict[str, list[str]]:
    """{from_name: [choices]} from a Label Studio annotation result list; other region types are ignored."""
    labels: dict[str, list[str]] = {}
    for region in result if isinstance(result, list) else []:
        if not isinstance(region, dict) or region.get("type", "choices") != "choices":
            continue
        value = region.get("value")
        choices = value.get("choices") if isinstance(value, dict) else None
        if isinstance(choices, list) and region.get("from_name"):
            labels.setdefault(region["from_name"], []).extend(str(c) for c in choices)
    return labels


class AnnotationFields(NamedTuple):
    annotation_id: int
    task_id: int
    data: dict
    labels: dict  # from_name -> list of chosen outputs
    cancelled: bool
    ground_truth: bool = False  # marked as ground truth in Label Studio: part of the test set


def annotation_fields(annotation: dict, task: dict) -> AnnotationFields:
    """What the annotation log keeps of an annotation and its task (from a webhook or the API).
    Raises KeyError or ValueError on a payload without usable ids."""
    annotation_number = label_studio_id(annotation["id"])
    if annotation_number is None:
        raise ValueError("the annotation's id is not a Label Studio id (an integer from 0 to 2**63-1)")
    task_number = label_studio_id(task.get("id"))
    task_number = label_studio_id(annotation.get("task")) if task_number is None else task_number
    if task_number is None:
        raise ValueError("neither the task nor the annotation carries a Label Studio task id")
    return AnnotationFields(annotation_number, task_number, task.get("data") or {},
                            choices_from_result(annotation.get("result")), bool(annotation.get("was_cancelled")),
                            annotation.get("ground_truth") is True)


# -- predictions ------------------------------------------------------------------------------------
def choice_region(from_name: str, to_name: str, choices: list[str], score: float) -> dict:
    """One <Choices> result of a prediction; score is the head's confidence in these choices."""
    return {"from_name": from_name, "to_name": to_name, "type": "choices", "value": {"choices": list(choices)},
            "score": float(score)}


def prediction(results: list[dict], score: float, model_version: str) -> dict:
    """A task's prediction; Label Studio sorts the queue by its score (ascending)."""
    return {"result": results, "score": float(score), "model_version": model_version}


# -- webhooks ---------------------------------------------------------------------------------------
@dataclass(frozen=True)
class WebhookEvent:
    """A webhook payload as read: the fields are what Label Studio sent, not yet validated (a
    garbled annotation still requests a training run, which reconciles through the API)."""
    action: str
    project: str
    label_config: str | None = None  # only a config we can serve: a garbled one must not replace a good one
    annotation: Any = None  # ANNOTATION_CREATED / ANNOTATION_UPDATED
    task: Any = None
    annotations: Any = None  # ANNOTATIONS_DELETED
    tasks: Any = None  # TASKS_CREATED: the imported tasks, with their data

    @property
    def deleted_ids(self) -> list[int]:
        """Ids of the deleted annotations (entries without a Label Studio id are skipped, the others
        still count); raises TypeError if ``annotations`` is not a list."""
        ids = (label_studio_id(a.get("id")) for a in self.annotations or [] if isinstance(a, dict))
        return [i for i in ids if i is not None]


def parse_webhook(body: Any) -> WebhookEvent:
    """Read a webhook payload. Raises IgnoredEvent for an event that changes nothing we train on,
    ProtocolError for a payload without a usable project."""
    if not isinstance(body, dict):
        raise ProtocolError("the request body must be a JSON object")
    action = body.get("action")
    if not isinstance(action, str) or action not in TRAIN_EVENTS | {TASKS_CREATED}:
        raise IgnoredEvent(f"unknown event {action!r}")
    project = body.get("project")
    if project in (None, ""):
        raise ProtocolError("webhook payload has no project")
    info = project if isinstance(project, dict) else {"id": project}
    return WebhookEvent(action=action, project=project_id(info.get("id")),
                        label_config=_servable(info.get("label_config")), annotation=body.get("annotation"),
                        task=body.get("task"), annotations=body.get("annotations"), tasks=body.get("tasks"))


def _servable(label_config: Any) -> str | None:
    try:
        parse_label_config(label_config)
    except ConfigError:
        return None
    return label_config
