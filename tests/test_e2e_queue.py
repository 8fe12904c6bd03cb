"""Boundary-first queue in a real Label Studio: the backend ranks the queue at cold start and after
every training run, and Label Studio's labeling stream serves the lowest-score task next."""

import pytest
import requests

from tests.helpers import label_config, wait_until

pytestmark = pytest.mark.e2e

VIEW = "Boundary first"


def _queue(ls, project_id):
    """(model_version, {unlabeled task id: score of its prediction of that version}, tasks by id)."""
    version = ls.get_project(project_id)["model_version"]
    tasks = {t["id"]: t for t in ls.list_tasks(project_id)}
    scores = {}
    for task in tasks.values():
        if task["annotations"]:
            continue
        mine = [p["score"] for p in task["predictions"] if p["model_version"] == version]
        if mine:
            scores[task["id"]] = min(mine)
    return version, scores, tasks


def _ranked(ls, project_id, version_prefix, exclude_version=None):
    """Wait until every unlabeled task carries a prediction of the project's (new) version."""
    def ready():
        version, scores, tasks = _queue(ls, project_id)
        unlabeled = [t for t in tasks.values() if not t["annotations"]]
        if version.startswith(version_prefix) and version != exclude_version and len(scores) == len(unlabeled):
            return version, scores, tasks
        return None
    return wait_until(ready, timeout=180, step=0.5, what=f"a ranked queue of {version_prefix}*")


def _next_task(ls, project_id):
    return ls.get(f"/api/projects/{project_id}/next/")


def _choice(label):
    return [{"from_name": "label", "to_name": "text", "type": "choices", "value": {"choices": [label]}}]


def _confidence(task, version):
    (prediction,) = [p for p in task["predictions"] if p["model_version"] == version]
    return prediction["result"][0]["score"]


def test_label_studio_serves_the_lowest_score_task_first_at_cold_start_and_after_training(
        label_studio, backend, sms_messages):
    ls = label_studio
    project_id = ls.create_project("queue e2e", label_config("sms_spam.xml"))
    sample = [m for m in sms_messages if m[0] == "spam"][300:330] + [m for m in sms_messages if m[0] == "ham"][300:330]
    ls.import_tasks(project_id, [{"text": text, "truth": label} for label, text in sample])
    ls.connect_ml_backend(project_id, backend, title="clip-al")

    # cold start: /setup made the backend rank every task from zero-shot + typicality, in the background
    zero_shot, scores, tasks = _ranked(ls, project_id, "st-")
    assert "/zeroshot-" in zero_shot and len(scores) == 60
    assert len(set(scores.values())) == 60  # a strict order, no ties
    project = ls.get_project(project_id)
    assert project["sampling"] == "Uncertainty sampling"  # the backend fixture opts in (UNCERTAINTY_SAMPLING)
    views = [v for v in ls.get("/api/dm/views/", params={"project": project_id}) if v["data"].get("title") == VIEW]
    assert len(views) == 1 and views[0]["data"]["ordering"] == ["tasks:predictions_score"]
    assert _next_task(ls, project_id)["id"] == min(scores, key=scores.get)
    # another model's prediction on a task: the backend never touches it
    other = next(iter(scores))
    ls.post(f"/api/projects/{project_id}/import/predictions", json=[
        {"task": other, "model_version": "other-model", "score": 0.5, "result": _choice("spam")}])

    # annotators follow the queue; each submission fires a webhook and the backend retrains
    for _ in range(16):
        task = _next_task(ls, project_id)
        ls.create_annotation(task["id"], _choice(tasks[task["id"]]["data"]["truth"]))
    version, scores, tasks = _ranked(ls, project_id, "st-", exclude_version=zero_shot)
    assert "/v" in version and len(scores) == 60 - 16
    wait_until(lambda: not requests.get(backend + "/status", timeout=5).json()["training"]["busy"], timeout=180,
               step=0.5, what="idle training")
    version, scores, tasks = _queue(ls, project_id)  # the newest version after coalesced runs
    # predictions of the backend's earlier versions are gone; the other model's prediction stays
    held = ls.get(f"/api/projects/{project_id}/model-versions/")
    assert held == {version: 60 - 16, "other-model": 1}, held
    assert any(p["model_version"] == "other-model" for p in tasks[other]["predictions"])
    first = min(scores, key=scores.get)
    assert _next_task(ls, project_id)["id"] == first
    # boundary first: the task served next is one the new head is least sure about
    confidences = sorted(_confidence(tasks[t], version) for t in scores)
    assert _confidence(tasks[first], version) <= confidences[len(confidences) // 4]

    # a user's own sampling choice stands: the backend switched it once and never again
    ls.set_project(project_id, sampling="Sequential sampling")
    task = _next_task(ls, project_id)
    ls.create_annotation(task["id"], _choice(tasks[task["id"]]["data"]["truth"]))
    _ranked(ls, project_id, "st-", exclude_version=version)
    assert ls.get_project(project_id)["sampling"] == "Sequential sampling"
