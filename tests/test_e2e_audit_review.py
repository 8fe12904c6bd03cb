"""Honest numbers in a real Label Studio: audit items (drawn uniformly from the unlabeled pool) are served
in the queue and become the test set; a wrong annotation among consistent ones shows up in the
"Possible label errors" tab with the right suggestion, and its annotation is left as it was."""

import pytest
import requests

from tests.helpers import label_config, wait_until

pytestmark = pytest.mark.e2e

TITLE = "clip-al"
REVIEW_VIEW = "Possible label errors"


def _choice(label):
    return [{"from_name": "label", "to_name": "text", "type": "choices", "value": {"choices": [label]}}]


def _latest_report(backend, project_id, labels):
    def ready():
        training = requests.get(backend + "/status", timeout=5).json()["training"]
        reports = requests.get(backend + f"/reports?project={project_id}", timeout=5).json()["reports"]
        if reports and reports[-1]["labels"] == labels and not training["busy"]:
            return requests.get(backend + f"/reports/latest?project={project_id}&format=json", timeout=5).json()
        return None
    return wait_until(ready, timeout=240, step=0.5, what=f"a version trained on {labels} labels")


def test_audit_items_become_the_test_set_and_a_wrong_label_is_flagged_for_review(label_studio, backend,
                                                                                 sms_messages):
    ls = label_studio
    project_id = ls.create_project("audit e2e", label_config("sms_spam.xml"))
    spam = [m for m in sms_messages if m[0] == "spam"][400:440]
    ham = [m for m in sms_messages if m[0] == "ham"][400:440]
    ls.import_tasks(project_id, [{"text": text, "truth": label} for label, text in spam + ham])
    ls.connect_ml_backend(project_id, backend, title=TITLE)
    wait_until(lambda: ls.get(f"/api/projects/{project_id}/model-versions/").get(TITLE), timeout=180, step=0.5,
               what="the cold-start batch")
    # /status has the run's summary once the run ends, a moment after Label Studio shows the batch
    ranking = wait_until(lambda: requests.get(backend + "/status", timeout=5).json()["training"]["last_ranking"]
                         .get(str(project_id)), timeout=60, step=0.5, what="the cold-start run's summary")
    assert ranking["audit"] >= 1  # AUDIT_SHARE (0.1) of the batch of 12

    # the annotators label what the queue serves; audit items among them are not trained on
    tasks = {t["id"]: t for t in ls.list_tasks(project_id)}
    served = []
    for _ in range(12):
        task = ls.get(f"/api/projects/{project_id}/next/")
        served.append(task["id"])
        ls.create_annotation(task["id"], _choice(tasks[task["id"]]["data"]["truth"]))
    report = _latest_report(backend, project_id, 12)
    audit = report["audit"]
    assert 1 <= audit["n"] < 12 and audit["n"] == report["counts"]["test"]
    assert audit["accuracy"]["low"] <= audit["accuracy"]["value"] <= audit["accuracy"]["high"]
    assert not audit["enough"] and "too small" in audit["message"]

    # consistent labels plus one deliberately wrong one (an obvious spam labeled ham)
    rest = [t for t in tasks.values() if t["id"] not in served]
    consistent = [t for t in rest if t["data"]["truth"] == "spam"][:12] + [t for t in rest if t["data"]["truth"] == "ham"][:12]
    # an unmistakable spam (a prize or a free offer to claim), so any fitted head disagrees with "ham"
    spam_left = [t for t in rest if t["data"]["truth"] == "spam" and t not in consistent]
    wrong = next((t for t in spam_left if any(w in t["data"]["text"].lower() for w in ("prize", "free", "claim"))),
                 spam_left[0])
    for task in consistent:
        ls.create_annotation(task["id"], _choice(task["data"]["truth"]))
    wrong_annotation = ls.create_annotation(wrong["id"], _choice("ham"))
    report = _latest_report(backend, project_id, 12 + len(consistent) + 1)
    assert wrong["id"] in [e["task_id"] for e in report["label_errors"]]

    (view,) = [v for v in ls.get("/api/dm/views/", params={"project": project_id}) if v["data"].get("title") == REVIEW_VIEW]
    listed = ls.get("/api/tasks/", params={"project": project_id, "view": view["id"], "fields": "all"})
    listed = listed["tasks"] if isinstance(listed, dict) else listed
    flagged = {t["id"]: t for t in listed}
    assert wrong["id"] in flagged and len(flagged) <= 10
    suspicious_first = [e["task_id"] for e in report["label_errors"] if e["task_id"] in flagged]
    assert [t["id"] for t in listed] == suspicious_first  # the tab lists them most suspicious first
    (suggestion,) = [p for p in flagged[wrong["id"]]["predictions"] if p["model_version"].endswith("/label-review")]
    assert suggestion["result"][0]["value"]["choices"] == ["spam"] and suggestion["result"][0]["score"] > 0.5
    (annotation,) = flagged[wrong["id"]]["annotations"]  # the annotation itself is untouched
    assert annotation["id"] == wrong_annotation["id"] and annotation["result"][0]["value"]["choices"] == ["ham"]

    # re-annotated by a reviewer: the flag goes on the next run
    ls.update_annotation(wrong_annotation["id"], _choice("spam"))
    wait_until(lambda: not [p for p in ls.get_task(wrong["id"])["predictions"]
                            if p["model_version"].endswith("/label-review")], timeout=240, step=1,
               what="the flag to clear")
