"""Background pre-annotation and superseded predictions, without Label Studio (see
test_e2e_preannotation.py and test_e2e_queue.py for the same against a real one)."""
import time
import pytest

from backend.config import Settings
from backend.flows.publish import delete_superseded
from backend.web import create_app
from tests.helpers import backend_env, label_config, wait_until

SMS_CONFIG = label_config("sms_spam.xml")


@pytest.fixture(scope="module")
def app(tmp_path_factory):
    return create_app(Settings.from_env(backend_env(tmp_path_factory.mktemp("pre"), PREDICT_TIMEOUT="3")))


def _tasks(sms_messages, n, first_id=1):
    return [{"id": first_id + i, "data": {"text": text}} for i, (_, text) in enumerate(sms_messages[:n])]


def test_a_predict_past_its_timeout_answers_what_is_ready_and_embeds_the_rest(app, sms_messages):
    client = app.test_client()
    tasks = _tasks(sms_messages, 3000)
    # loading the encoder counts against the timeout too (Label Studio's clock runs): load it first
    client.post("/predict", json={"tasks": tasks[:1], "project": "30", "label_config": SMS_CONFIG})
    results = client.post("/predict", json={"tasks": tasks, "project": "31", "label_config": SMS_CONFIG}).json["results"]
    ready = sum(1 for r in results if r)
    assert len(results) == 3000 and 0 < ready < 3000  # 2 s of embedding cannot do 3,000 texts here
    assert all(results[:ready]) and not any(results[ready:])  # the leading tasks are the ready ones
    status = lambda: client.get("/status").json["preannotation"]["31"]  # noqa: E731
    wait_until(lambda: status()["pending"] == 0, timeout=300, what="background embedding")
    assert status()["queued"] == 3000 - ready and status()["embedded"] == 3000 - ready and status()["failed"] == 0
    # no Label Studio here: nothing imported, but everything is embedded now, so the next answer is whole
    again = client.post("/predict", json={"tasks": tasks, "project": "31", "label_config": SMS_CONFIG}).json
    assert all(again["results"])


def test_tasks_are_queued_once_and_odd_task_lists_are_refused(app, sms_messages):
    pre = app.extensions["runtime"].preannotator
    tasks = _tasks(sms_messages, 40, first_id=5000)
    first = pre.submit("32", SMS_CONFIG, tasks)
    again = pre.submit("32", SMS_CONFIG, tasks + [{"id": [1]}, {"id": 7, "data": "x"}, "junk"])
    assert first == 40 and again in (0, 40)  # pending ones are not queued twice (40 only if all had finished)
    body = {"action": "TASKS_CREATED", "project": {"id": 32, "label_config": SMS_CONFIG}, "tasks": 5}
    resp = app.test_client().post("/webhook", json=body)
    assert resp.status_code == 400 and "list of tasks" in resp.json["error"]


class FakeLabelStudio:
    def __init__(self, versions):
        self.versions, self.deleted = versions, []

    def model_versions(self, project):
        return self.versions

    def delete_model_version(self, project, version, shown=None):
        self.deleted.append(version)
        self.shown = shown
        return self.versions[version]


def test_only_this_backends_superseded_versions_are_deleted():
    current = "st-minilm/v3-0123456789"
    api = FakeLabelStudio({current: 10, "st-minilm/v2-0123456789": 10, "st-minilm/zeroshot-abcdef0123": 7,
                           "clip-ViT-B-32-x/v1-0123456789": 5,  # another backend (other encoder) on the project
                           "search:horse": 3, "other-model": 1})
    assert delete_superseded(api, "1", current, shown="clip-al") == 17
    assert api.shown == "clip-al"  # Label Studio clears the project's version on a deletion: it is set again
    assert sorted(api.deleted) == ["st-minilm/v2-0123456789", "st-minilm/zeroshot-abcdef0123"]


class SlowImports:
    """Label Studio whose prediction import costs ``import_s`` whatever its size (it reads every task id
    of the project) and whose single create costs ``single_s``: failure injection for the cost choice."""

    def __init__(self, import_s: float, single_s: float):
        self.import_s, self.single_s, self.calls = import_s, single_s, []

    def push_predictions(self, project, rows):
        time.sleep(self.import_s)
        self.calls.append(("import", len(rows)))

    def create_prediction(self, row):
        time.sleep(self.single_s)
        self.calls.append(("create", row["task"]))

    def update_prediction(self, prediction_id, row):
        time.sleep(self.single_s)


def test_a_batch_goes_one_by_one_where_an_import_costs_more():
    from backend.flows.publish import PushCost

    rows = [{"task": t, "score": 0.1, "result": [], "model_version": "clip-al"} for t in range(10)]
    big, small = SlowImports(import_s=0.3, single_s=0.005), SlowImports(import_s=0.01, single_s=0.005)
    cost = PushCost(first_guess_s=0.005)
    cost.push(big, "1", rows)  # nothing measured yet: one import
    cost.push(big, "1", rows)  # 10 creates (~0.05 s) beat an import (0.3 s)
    assert big.calls[0] == ("import", 10) and [c[0] for c in big.calls[1:]] == ["create"] * 10
    cost.push(small, "2", rows)
    cost.push(small, "2", rows)  # a small project: the import stays cheaper
    assert small.calls == [("import", 10), ("import", 10)]
