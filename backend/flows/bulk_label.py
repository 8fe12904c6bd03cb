"""One label for many tasks: as predictions for review (model_version "search:<query>", score = the
similarity) or as annotations. Shared by clip-backend-bulk-label and the search page (backend.web.ui).

Tasks that hold annotations in Label Studio are skipped, and so are tasks already holding the same
prediction; what Label Studio stored is read back from its API (``stored``), never taken from the request.
Annotations are created one by one through Label Studio's API, so each reaches the backend's webhook
like an annotator's and the learning loop trains on it.
"""
from __future__ import annotations

import json

from ..labelstudio.labelconfig import ConfigError, Target, parse_label_config

IDS_PER_LISTING = 200  # task ids per listing (they travel in the URL)


class BulkLabelError(ValueError):
    """A request the user can fix (unknown label, several <Choices>...); the message says how."""


def choose_target(label_config: str, from_name: str | None, label: str) -> tuple[Target, str]:
    """(target, output): the <Choices> to fill and the exact choice value Label Studio stores."""
    try:
        targets = parse_label_config(label_config).targets
    except ConfigError as exc:
        raise BulkLabelError(f"the project's labeling config cannot be used: {exc}") from None
    return choose_among(targets, from_name, label)


def choose_among(targets, from_name: str | None, label: str) -> tuple[Target, str]:
    """choose_target on a parsed config's targets."""
    known = [t.from_name for t in targets]
    if from_name:
        targets = [t for t in targets if t.from_name == from_name]
        if not targets:
            raise BulkLabelError(f"--from-name {from_name!r} is not a <Choices> of the project; known: {known}")
    elif len(set(known)) > 1:
        raise BulkLabelError(f"the config has several <Choices>; pick one with --from-name: {sorted(set(known))}")
    target = targets[0]
    for choice in target.labels:  # the stored value (alias, else value); value and alias also match
        if label == choice.output or label in choice.names:
            return target, choice.output
    lowered = [c for c in target.labels if label.lower() in {n.lower() for n in (c.output, *c.names)}]
    if len(lowered) == 1:  # "Horse" for "horse"
        return target, lowered[0].output
    raise BulkLabelError(f"label {label!r} is not a choice of <Choices name={target.from_name!r}>; "
                         f"choices: {target.outputs}")


def choice_result(target: Target, output: str) -> list[dict]:
    return [{"from_name": target.from_name, "to_name": target.to_name, "type": "choices",
             "value": {"choices": [output]}}]


def fetch_tasks(client, task_ids, project: int | None = None, fields: str = "all") -> dict[int, object]:
    """The Label Studio tasks (with annotations and predictions; fields="task_only": without) of these
    ids; missing ones (deleted, or of another project) are left out. With the project: one listing per
    IDS_PER_LISTING ids."""
    ids = [int(t) for t in task_ids]
    if project is None:
        return _one_by_one(client, ids)
    tasks = {}
    for start in range(0, len(ids), IDS_PER_LISTING):
        query = json.dumps({"selectedItems": {"all": False, "included": ids[start:start + IDS_PER_LISTING]}})
        for task in client.tasks.list(project=int(project), fields=fields, query=query, page_size=IDS_PER_LISTING):
            tasks[int(task.id)] = task
    return tasks


def _one_by_one(client, ids: list[int]) -> dict[int, object]:
    from label_studio_sdk.core.api_error import ApiError

    tasks = {}
    for task in ids:
        try:
            tasks[task] = client.tasks.get(id=str(task))
        except ApiError as exc:
            if exc.status_code != 404:
                raise
    return tasks


def reviewable(client, hits: list[dict], output: str, accept: bool, version: str,
               project: int | None = None) -> tuple[list, dict]:
    """(rows, skipped): the (hit, task) pairs to label, and how many hits were left out and why.
    hits: [{"task", "score"}]."""
    tasks = fetch_tasks(client, [h["task"] for h in hits], project)
    rows, skipped = [], {"not in the project": 0, "annotated": 0, "already predicted": 0}
    for hit in hits:
        task = tasks.get(int(hit["task"]))
        if task is None:
            skipped["not in the project"] += 1
        elif getattr(task, "annotations", None):
            skipped["annotated"] += 1
        elif not accept and any(_get(p, "model_version") == version and choices_of(p) == [output]
                                for p in getattr(task, "predictions", None) or []):
            skipped["already predicted"] += 1
        else:
            rows.append((hit, task))
    return rows, skipped


def create_annotations(client, task_ids, result: list[dict]) -> int:
    """One annotation per task (each one fires Label Studio's webhook to the backend); returns how many."""
    created = 0
    for task in task_ids:
        client.annotations.create(id=int(task), result=result, was_cancelled=False)
        created += 1
    return created


def import_predictions(client, project: int, hits: list[dict], result: list[dict], version: str,
                       chunk: int = 1000) -> int:
    predictions = [{"task": int(h["task"]), "model_version": version, "score": float(h["score"]),
                    "result": result} for h in hits]
    for start in range(0, len(predictions), chunk):
        client.projects.import_predictions(id=int(project), request=predictions[start:start + chunk])
    return len(predictions)


def stored(client, project: int, task_ids, output: str, version: str | None) -> dict:
    """What Label Studio holds now on these tasks: how many carry an annotation choosing ``output``
    (and how many annotations in all), and how many a prediction of ``version`` choosing it."""
    tasks = fetch_tasks(client, task_ids, project)
    annotated = sum(1 for t in tasks.values() if any(choices_of(a) == [output] and not _get(a, "was_cancelled")
                                                     for a in getattr(t, "annotations", None) or []))
    predicted = sum(1 for t in tasks.values() if version and any(
        _get(p, "model_version") == version and choices_of(p) == [output] for p in getattr(t, "predictions", None) or []))
    return {"tasks": len(tasks), "annotated": annotated, "predicted": predicted,
            "annotations": sum(len(getattr(t, "annotations", None) or []) for t in tasks.values())}


def _get(obj, key):
    return obj.get(key) if isinstance(obj, dict) else getattr(obj, key, None)


def choices_of(region_holder) -> list:
    """The choices of an annotation's or prediction's result regions."""
    result = _get(region_holder, "result") or []
    return [c for region in result for c in ((_get(region, "value") or {}).get("choices") or [])]
