"""The learning loop end to end: annotations submitted in a real Label Studio reach the backend by
webhook, a new model version is trained and evaluated, and Label Studio shows its predictions."""
import re
import time

import pytest
import requests

from tests.helpers import label_config
from tests.test_e2e_label_studio import connect_and_retrieve, only_prediction

pytestmark = pytest.mark.e2e


def _wait_for_version(backend, project_id, labels, timeout=180):
    """The newest report of the project once it covers `labels` labeled tasks and training is idle."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        metrics = requests.get(backend + "/status", timeout=5).json()
        reports = requests.get(backend + f"/reports?project={project_id}", timeout=5).json()["reports"]
        if reports and reports[-1]["labels"] == labels and not metrics["training"]["busy"]:
            return reports[-1]
        time.sleep(0.5)
    raise AssertionError(f"no version with {labels} labels; metrics: {metrics['training']}, reports: {reports}")


def _choice(label):
    return [{"from_name": "label", "to_name": "text", "type": "choices", "value": {"choices": [label]}}]


def test_annotations_train_a_new_version_that_label_studio_shows(label_studio, backend, sms_messages):
    ls = label_studio
    project_id = ls.create_project("sms learning", label_config("sms_spam.xml"))
    sample = [m for m in sms_messages if m[0] == "spam"][200:240] + [m for m in sms_messages if m[0] == "ham"][200:240]
    ls.import_tasks(project_id, [{"text": text, "truth": label} for label, text in sample])
    zero_shot_version, _ = connect_and_retrieve(ls, project_id, backend)
    tasks = ls.list_tasks(project_id)
    assert len(tasks) == 80

    # annotators label 15 spam and 15 ham through Label Studio; each submission fires a webhook
    by_truth = {"spam": [t for t in tasks if t["data"]["truth"] == "spam"],
                "ham": [t for t in tasks if t["data"]["truth"] == "ham"]}
    labeled = by_truth["spam"][:15] + by_truth["ham"][:15]
    annotations = {t["id"]: ls.create_annotation(t["id"], _choice(t["data"]["truth"]))["id"] for t in labeled}

    report = _wait_for_version(backend, project_id, labels=30)
    version = report["version"]
    assert version != zero_shot_version and re.search(r"/v\d+-", version)  # runs coalesce: v1, v2 or v3

    full = requests.get(backend + f"/reports/latest?project={project_id}&format=json", timeout=5).json()
    assert full["version"] == version
    assert full["counts"]["total"] == 30
    assert full["head"] in [c["name"] for c in full["candidates"]]
    accuracy = full["test"]["accuracy"]
    assert accuracy is None or 0.0 <= accuracy <= 1.0
    assert "audit" in full  # the annotators labeled tasks of their own choosing: no audit items among them
    html = requests.get(backend + f"/reports/latest?project={project_id}", timeout=5)
    assert html.headers["Content-Type"].startswith("text/html") and html.text.count("data:image/png;base64,") >= 2

    # the project's model version names the backend (live), so any unlabeled task opened shows the new head
    assert ls.get_project(project_id)["model_version"] == "clip-al"
    unlabeled = [t for t in ls.list_tasks(project_id) if t["id"] not in annotations]
    assert len(unlabeled) == 50
    outside_batch = [t for t in unlabeled if not any(p["model_version"] == "clip-al" for p in t["predictions"])]
    assert len(outside_batch) == 50 - 12  # QUEUE_BATCH of the backend fixture
    for task in outside_batch[::8]:
        newest = [p for p in ls.get_task(task["id"])["predictions"] if p["model_version"] == version]
        assert len(newest) == 1 and 0.0 <= newest[0]["score"] <= 1.0
        assert 0.5 <= newest[0]["result"][0]["score"] <= 1.0  # confidence in one of two choices
    # /setup reports the new version too, so "Retrieve predictions" asks for it
    assert requests.post(backend + "/setup", json={"project": str(project_id),
                                                   "schema": label_config("sms_spam.xml")}).json()["model_version"] == version

    # an updated and a deleted annotation produce the next version, trained on 29 labels
    first, second = labeled[0]["id"], labeled[1]["id"]
    ls.update_annotation(annotations[first], _choice("ham"))
    ls.delete_annotation(annotations[second])
    report2 = _wait_for_version(backend, project_id, labels=29)
    assert report2["number"] > report["number"]
    assert requests.post(backend + "/setup", json={"project": str(project_id), "schema": label_config(
        "sms_spam.xml")}).json()["model_version"] == report2["version"]
    curve = requests.get(backend + f"/reports/latest?project={project_id}&format=json").json()["learning_curve"]
    assert [point["n_labels"] for point in curve][-2:] == [30, 29]
