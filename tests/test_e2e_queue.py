"""Boundary-first queue in a real Label Studio: after every run (and at cold start) only the next batch
is written, under the project's model version (the backend's title), and Label Studio's labeling
stream serves it lowest score first; any task an annotator opens shows the current head's prediction."""

import pytest
import requests

from backend.model import BACKEND_VERSION
from tests.helpers import label_config, wait_until

pytestmark = pytest.mark.e2e

VIEW = "Boundary first"
TITLE = "clip-al"
BATCH = 12  # QUEUE_BATCH of the backend fixture


def _held(ls, project_id) -> dict:
    return ls.get(f"/api/projects/{project_id}/model-versions/")


def _batch(ls, project_id) -> dict:
    """{task id: score} of the unlabeled tasks' predictions under the backend's title (the queue)."""
    return {t["id"]: p["score"] for t in ls.list_tasks(project_id) if not t["annotations"]
            for p in t["predictions"] if p["model_version"] == TITLE}


def _current_version(backend, project_id) -> str:
    return requests.post(backend + "/setup", json={"project": str(project_id),
                                                   "schema": label_config("sms_spam.xml")}, timeout=30).json()["model_version"]


def _idle(backend):
    wait_until(lambda: not requests.get(backend + "/status", timeout=5).json()["training"]["busy"], timeout=180,
               step=0.5, what="idle training")


def _next_task(ls, project_id):
    return ls.get(f"/api/projects/{project_id}/next/")


def _choices(backend, project_id, tasks) -> dict:
    """{task id: chosen label} of the version the backend serves, asked as Label Studio asks when a task opens."""
    body = {"tasks": [{"id": t["id"], "data": t["data"]} for t in tasks], "project": str(project_id),
            "label_config": label_config("sms_spam.xml")}
    results = requests.post(backend + "/predict", json=body, timeout=120).json()["results"]
    return {t["id"]: r["result"][0]["value"]["choices"][0] for t, r in zip(tasks, results)}


def _choice(label):
    return [{"from_name": "label", "to_name": "text", "type": "choices", "value": {"choices": [label]}}]


def _connected_project(ls, backend, title: str, messages) -> int:
    """A project of these SMS messages, connected to the backend, once its cold-start batch is written."""
    project_id = ls.create_project(title, label_config("sms_spam.xml"))
    ls.import_tasks(project_id, [{"text": text, "truth": label} for label, text in messages])
    ls.connect_ml_backend(project_id, backend, title=TITLE)
    wait_until(lambda: _held(ls, project_id).get(TITLE), timeout=180, step=0.5, what="the cold-start batch")
    _idle(backend)
    return project_id


def _latest_report(backend, project_id) -> dict:
    return requests.get(backend + f"/reports/latest?project={project_id}&format=json", timeout=30).json()


def test_label_studio_serves_the_batch_first_and_every_opened_task_shows_the_current_head(
        label_studio, backend, sms_messages):
    ls = label_studio
    project_id = ls.create_project("queue e2e", label_config("sms_spam.xml"))
    # a slice where zero-shot errs on a third of the spam (pool accuracy ~0.7), so learning has room to show
    sample = [m for m in sms_messages if m[0] == "spam"][180:210] + [m for m in sms_messages if m[0] == "ham"][180:210]
    ls.import_tasks(project_id, [{"text": text, "truth": label} for label, text in sample])
    ls.connect_ml_backend(project_id, backend, title=TITLE)

    # cold start: /setup made the backend rank a first batch in the background; only the batch is written
    held = wait_until(lambda: (h := _held(ls, project_id)).get(TITLE) and h, timeout=180, step=0.5,
                      what="the cold-start batch")
    assert held == {TITLE: BATCH}, held
    project = ls.get_project(project_id)
    assert project["model_version"] == TITLE  # live: Label Studio asks the backend for any task it opens
    assert project["sampling"] == "Uncertainty sampling"  # the backend fixture opts in (UNCERTAINTY_SAMPLING)
    views = [v for v in ls.get("/api/dm/views/", params={"project": project_id}) if v["data"].get("title") == VIEW]
    assert len(views) == 1 and views[0]["data"]["ordering"] == ["tasks:predictions_score"]
    batch = _batch(ls, project_id)
    assert len(set(batch.values())) == BATCH  # a strict order
    served = _next_task(ls, project_id)
    assert served["id"] == min(batch, key=batch.get)
    zero_shot = _current_version(backend, project_id)
    assert "/zeroshot-" in zero_shot
    assert [p["model_version"] for p in served["predictions"]] == [zero_shot]  # the editor shows the live head
    # another model's prediction on a task: the backend never touches it
    other = next(t for t in batch if t != served["id"])
    ls.post(f"/api/projects/{project_id}/import/predictions", json=[
        {"task": other, "model_version": "other-model", "score": 0.5, "result": _choice("spam")}])

    # annotators follow the queue; each submission fires a webhook and the backend retrains
    tasks = {t["id"]: t for t in ls.list_tasks(project_id)}
    zero_shot_choices = _choices(backend, project_id, list(tasks.values()))
    labeled = set()
    for _ in range(16):
        task = _next_task(ls, project_id)
        ls.create_annotation(task["id"], _choice(tasks[task["id"]]["data"]["truth"]))
        labeled.add(task["id"])
    wait_until(lambda: "/v" in _current_version(backend, project_id), timeout=180, step=0.5, what="a trained version")
    _idle(backend)
    version = _current_version(backend, project_id)
    # the served version predicts the tasks nobody labeled yet better than zero-shot did (issue 19)
    pool = [t for i, t in tasks.items() if i not in labeled]
    trained_choices = _choices(backend, project_id, pool)

    def pool_accuracy(choices):
        return sum(choices[t["id"]] == t["data"]["truth"] for t in pool) / len(pool)
    print(f"\n[queue e2e] pool accuracy on {len(pool)} unlabeled tasks: zero-shot {pool_accuracy(zero_shot_choices):.3f}, "
          f"{version} {pool_accuracy(trained_choices):.3f}")
    served_report = _latest_report(backend, project_id)
    assert served_report["version"] == version
    if served_report["head"] == "zero-shot":
        # with ~15 labels cross-validation can keep zero-shot (1 of 5 full runs here, log loss 0.54 against
        # the heads trained on 15 items): then the served head is zero-shot, and its report says why
        assert "cross-validat" in served_report["selection"], served_report["selection"]
        assert trained_choices == {i: zero_shot_choices[i] for i in trained_choices}
    else:
        assert pool_accuracy(trained_choices) > pool_accuracy(zero_shot_choices)
    held = _held(ls, project_id)
    # deleting a version clears a live project's model version in Label Studio: the backend sets it again
    assert ls.get_project(project_id)["model_version"] == TITLE
    # one batch under the title; our earlier versions' predictions are gone; the other model's stays
    assert held.get(TITLE) == BATCH and held.get("other-model") == 1, held
    assert not [v for v in held if BACKEND_VERSION.match(v) and v != version], held
    assert any(p["model_version"] == "other-model" for p in ls.get_task(other)["predictions"])
    batch = _batch(ls, project_id)
    assert len(batch) == BATCH
    status = requests.get(backend + "/status", timeout=5).json()["training"]
    last = status["last_run"][str(project_id)]
    # incremental: only what Label Studio changed since the last look (annotated, opened, batch replaced),
    # never the tasks imported just before connecting (60 of 60 here in one of four full runs, and 13,000
    # of 13,000 in bench.loop's run 1, while new unannotated tasks were listed)
    assert last["reconciled"]["full"] is False and last["reconciled"]["tasks"] < len(tasks)
    assert status["last_ranking"][str(project_id)]["ranked"] == BATCH
    served = _next_task(ls, project_id)
    assert served["id"] == min(batch, key=batch.get)
    assert version in [p["model_version"] for p in served["predictions"]]

    # a task outside the batch, opened through the labeling stream, shows the current head too
    ls.set_project(project_id, sampling="Sequential sampling")  # a user's own choice: it stands
    served = _next_task(ls, project_id)
    assert [p["model_version"] for p in served["predictions"] if BACKEND_VERSION.match(p["model_version"])] == [version]
    # (not the task holding the other model's prediction: Label Studio predicts on open only without any)
    outside = next(t for t in tasks if t not in batch and t not in (served["id"], other)
                   and not ls.get_task(t)["annotations"])
    opened = ls.get_task(outside)  # opening it from the Data Manager
    assert [p["model_version"] for p in opened["predictions"]] == [version]
    ls.create_annotation(served["id"], _choice(tasks[served["id"]]["data"]["truth"]))
    wait_until(lambda: _current_version(backend, project_id) != version, timeout=180, step=0.5, what="next version")
    _idle(backend)
    assert ls.get_project(project_id)["sampling"] == "Sequential sampling"


def test_an_import_after_connecting_is_not_listed_by_the_next_run(label_studio, backend, sms_messages):
    """New tasks carry nothing to reconcile: the run after an import lists what changed (an annotation,
    the batch it replaced), not every imported task with its annotations and predictions (Label Studio's
    slowest listing; 13,000 tasks took 26 s of bench.loop's first run)."""
    ls = label_studio
    project_id = _connected_project(ls, backend, "import e2e", sms_messages[300:340])
    imported = ls.import_tasks(project_id, [{"text": text, "truth": label} for label, text in sms_messages[400:700]])
    assert len(imported) == 300

    def last_run():
        return requests.get(backend + "/status", timeout=10).json()["training"]["last_run"].get(str(project_id))
    before = (last_run() or {}).get("generation")
    task = _next_task(ls, project_id)
    ls.create_annotation(task["id"], _choice(task["data"]["truth"]))
    wait_until(lambda: (run := last_run()) and run.get("generation") != before and run, timeout=180, step=0.5,
               what="the run after the annotation")
    _idle(backend)
    reconciled = last_run()["reconciled"]
    print(f"\n[import e2e] the run after importing 300 tasks listed {reconciled['tasks']} tasks")
    assert reconciled["full"] is False
    # the annotated task and the batch the run replaced (12 + 12 at most), none of the 300 imported
    assert 1 <= reconciled["tasks"] <= 2 * BATCH + 1, reconciled


def _labels_trained_on(backend, project_id):
    return (_latest_report(backend, project_id).get("counts") or {}).get("total")


def test_a_label_deleted_while_webhooks_were_off_leaves_the_training_set_on_the_next_run(
        label_studio, backend, sms_messages):
    """The reconcile is the net under missed webhooks: a task imported after connecting is labeled (the
    webhook records it), then its annotation is deleted while Label Studio's webhook is off; the next run
    re-reads it and trains without that label."""
    ls = label_studio
    project_id = _connected_project(ls, backend, "missed webhook e2e", sms_messages[700:740])
    label, text = sms_messages[800]
    (new_task,) = ls.import_tasks(project_id, [{"text": text, "truth": label}])
    annotation = ls.create_annotation(new_task, _choice(label))
    wait_until(lambda: _labels_trained_on(backend, project_id) == 1, timeout=180, step=0.5, what="a run on 1 label")
    _idle(backend)

    hooks = ls.list_webhooks(project_id)
    assert hooks
    for hook in hooks:
        ls.patch(f"/api/webhooks/{hook['id']}/", {"is_active": False})
    ls.delete_annotation(annotation["id"])  # Label Studio tells nobody
    for hook in hooks:
        ls.patch(f"/api/webhooks/{hook['id']}/", {"is_active": True})

    before = _latest_report(backend, project_id)["version"]
    task = _next_task(ls, project_id)
    assert task["id"] != new_task
    ls.create_annotation(task["id"], _choice(task["data"]["truth"]))
    wait_until(lambda: _latest_report(backend, project_id).get("version") != before, timeout=180, step=0.5,
               what="the next run's version")
    _idle(backend)
    # that run trained on the new annotation alone: the deleted label was found and dropped
    assert _labels_trained_on(backend, project_id) == 1
    assert requests.get(backend + "/status", timeout=5).json()["training"]["last_run"][str(project_id)][
        "reconciled"]["full"] is False
