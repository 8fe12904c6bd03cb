"""Webhooks → durable record → background training, against a real threaded HTTP server (no Label
Studio: labels come from the webhook payloads alone)."""
import statistics
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
import requests
from werkzeug.serving import make_server

from backend.web import create_app
from backend.config import Settings
from tests.helpers import backend_env, label_config, wait_for_training

SMS_CONFIG = label_config("sms_spam.xml")


def _event(i, label, text, action="ANNOTATION_CREATED"):
    return {
        "action": action,
        "project": {"id": 42, "label_config": SMS_CONFIG},
        "task": {"id": 1000 + i, "data": {"text": text}, "project": 42},
        "annotation": {"id": 5000 + i, "task": 1000 + i, "was_cancelled": False,
                       "result": [{"from_name": "label", "to_name": "text", "type": "choices",
                                   "value": {"choices": [label]}}]},
    }


class LiveServer:
    def __init__(self, tmp_path):
        self.app = create_app(Settings.from_env(backend_env(tmp_path)))
        self.server = make_server("127.0.0.1", 0, self.app, threaded=True)
        self.url = f"http://127.0.0.1:{self.server.server_port}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    @property
    def trainer(self):
        return self.app.extensions["runtime"].scheduler.loop

    def close(self):
        self.server.shutdown()


@pytest.fixture
def live(tmp_path):
    server = LiveServer(tmp_path)
    yield server
    wait_for_training(server.app, "42", timeout=120)
    server.close()


def test_burst_of_200_webhooks_is_acknowledged_and_trained_in_few_runs(live, sms_messages):
    spam = [m for m in sms_messages if m[0] == "spam"][:100]
    ham = [m for m in sms_messages if m[0] == "ham"][:100]
    events = [_event(i, label, text) for i, (label, text) in enumerate(spam + ham)]
    latencies = []

    def send(event):
        started = time.perf_counter()
        resp = requests.post(live.url + "/webhook", json=event, timeout=5)
        latencies.append((time.perf_counter() - started) * 1000)
        return resp.status_code

    started = time.perf_counter()
    with ThreadPoolExecutor(max_workers=8) as pool:
        codes = list(pool.map(send, events))
    burst_seconds = time.perf_counter() - started
    print(f"\n[webhooks] 200 events in {burst_seconds:.2f}s; ack p50 {statistics.median(latencies):.1f} ms, "
          f"max {max(latencies):.1f} ms")
    assert codes == [201] * 200

    assert wait_for_training(live.app, "42", timeout=180)
    versions = live.app.extensions["runtime"].versions
    latest = versions.latest("42")
    assert latest.meta["labels"] == 200  # every annotation was trained on
    runs = live.trainer.runs["42"]
    print(f"[webhooks] training runs for the burst: {runs}; versions: {len(versions.all('42'))}")
    assert 1 <= runs <= 5
    report = latest.report()
    assert report["counts"]["total"] == 200
    # served predictions now come from the trained version
    resp = requests.post(live.url + "/predict", json={"tasks": [{"id": 1, "data": {"text": "hi"}}], "project": "42",
                                                     "label_config": SMS_CONFIG}).json()
    assert resp["results"][0]["model_version"] == latest.name
    # the last run's phases, in seconds, for /status and Prometheus (no Label Studio here: nothing published)
    last = requests.get(live.url + "/status").json()["training"]["last_run"]["42"]
    assert last["version"] == latest.name and set(last["phases"]) == {"reconcile", "embed", "select", "save"}
    assert all(seconds >= 0 for seconds in last["phases"].values()) and last["phases"]["select"] > 0
    exposition = requests.get(live.url + "/metrics").text
    assert f'clip_backend_last_run_seconds{{phase="select",project="42"}} {last["phases"]["select"]}' in exposition


def _balanced_accuracy(live, tasks, truth) -> tuple[float, str]:
    """Balanced accuracy of the served version's /predict choices on tasks, and that version."""
    results: dict[int, dict] = {}
    for _ in range(20):  # a busy machine may answer part of a request within PREDICT_TIMEOUT: ask for the rest
        missing = [t for t in tasks if t["id"] not in results]
        if not missing:
            break
        for start in range(0, len(missing), 100):
            chunk = missing[start:start + 100]
            answer = requests.post(live.url + "/predict", json={"tasks": chunk, "project": "42",
                                                                "label_config": SMS_CONFIG}, timeout=120).json()
            results.update((t["id"], r) for t, r in zip(chunk, answer["results"]) if r)
    results = [results[t["id"]] for t in tasks]
    chosen = [r["result"][0]["value"]["choices"][0] for r in results]
    recalls = [np.mean([c == t for c, t in zip(chosen, truth) if t == label]) for label in ("spam", "ham")]
    return float(np.mean(recalls)), results[0]["model_version"]


def test_forty_balanced_labels_beat_zero_shot_on_held_out_items(live, sms_messages):
    """A new user labels 40 items (20 spam, 20 ham) and sends them as webhooks: the version trained on all of
    them must predict held-out messages better than zero-shot, not exactly like it (issue 19)."""
    spam = [m for m in sms_messages if m[0] == "spam"]
    ham = [m for m in sms_messages if m[0] == "ham"]
    held_out = spam[100:300] + ham[100:300]
    tasks = [{"id": 9000 + i, "data": {"text": text}} for i, (_, text) in enumerate(held_out)]
    truth = [label for label, _ in held_out]
    zero_shot, zero_shot_version = _balanced_accuracy(live, tasks, truth)
    assert "/zeroshot-" in zero_shot_version
    events = [_event(i, label, text) for i, (label, text) in enumerate(spam[:20] + ham[:20])]
    for event in events:
        assert requests.post(live.url + "/webhook", json=event).status_code == 201
    assert wait_for_training(live.app, "42", timeout=180)
    latest = live.app.extensions["runtime"].versions.latest("42")
    assert latest.meta["labels"] == 40 and latest.report()["counts"]["train"] == 40  # every label trains
    trained, version = _balanced_accuracy(live, tasks, truth)
    print(f"\n[40 labels] balanced accuracy on {len(tasks)} held-out messages: zero-shot {zero_shot:.3f}, "
          f"{latest.report()['head']} {trained:.3f}")
    assert version == latest.name
    assert trained >= zero_shot + 0.02


def test_annotations_arriving_during_training_are_trained_in_the_next_run(live, sms_messages):
    first = [_event(i, label, text) for i, (label, text) in enumerate(sms_messages[:40])]
    for event in first:
        assert requests.post(live.url + "/webhook", json=event).status_code == 201
    time.sleep(0.3)  # training has started on the first 40
    late = [_event(100 + i, label, text) for i, (label, text) in enumerate(sms_messages[40:50])]
    for event in late:
        assert requests.post(live.url + "/webhook", json=event).status_code == 201
    assert wait_for_training(live.app, "42", timeout=120)
    assert live.app.extensions["runtime"].versions.latest("42").meta["labels"] == 50


def test_bad_webhooks_get_clear_answers_and_lose_nothing(live):
    assert requests.post(live.url + "/webhook", data="{nope", headers={"Content-Type": "application/json"}).status_code == 400
    assert requests.post(live.url + "/webhook", json={"action": "ANNOTATION_CREATED"}).status_code == 400
    resp = requests.post(live.url + "/webhook", json={"action": "ANNOTATION_CREATED", "project": {"id": 42}})
    assert resp.status_code == 201 and resp.json()["result"]["recorded"] == 0  # unreadable: reconciled later
    assert requests.post(live.url + "/webhook", json={"action": "PROJECT_UPDATED", "project": {"id": 42}}).json()["status"] == "ignored"
