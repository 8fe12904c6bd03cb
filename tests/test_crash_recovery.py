"""kill -9 of the real backend (gunicorn) during training and during embedding writes, then restart:
the last good model serves, the store is consistent, and every recorded annotation is trained on."""
import signal
import threading
import time

import pytest
import requests

from backend.config import Settings
from backend.embed.encoders import encoder_id
from backend.embed.store import open_store
from tests.helpers import BackendProcess, backend_env, encoder_spec, label_config, store_kwargs, wait_until
from tests.ls_server import free_port

SMS_CONFIG = label_config("sms_spam.xml")


def _event(project, i, label, text):
    return {"action": "ANNOTATION_CREATED", "project": {"id": project, "label_config": SMS_CONFIG},
            "task": {"id": i, "data": {"text": text}},
            "annotation": {"id": i, "task": i, "result": [{"from_name": "label", "to_name": "text", "type": "choices",
                                                          "value": {"choices": [label]}}]}}


def _reports(url, project):
    return requests.get(f"{url}/reports?project={project}", timeout=5).json()["reports"]


@pytest.fixture
def server(tmp_path):
    backend = BackendProcess(backend_env(tmp_path), tmp_path / "backend.log", free_port()).start()
    yield backend
    backend.kill()


def test_kill_during_training_keeps_last_good_model_and_trains_everything_after_restart(server, sms_messages):
    for i, (label, text) in enumerate(sms_messages[:60]):
        assert requests.post(server.url + "/webhook", json=_event(77, i, label, text), timeout=5).status_code == 201
    first = wait_until(lambda: [r for r in _reports(server.url, 77) if r["labels"] == 60])[-1]

    for i, (label, text) in enumerate(sms_messages[60:200], start=60):
        assert requests.post(server.url + "/webhook", json=_event(77, i, label, text), timeout=5).status_code == 201
    wait_until(lambda: requests.get(server.url + "/status", timeout=5).json()["training"]["busy"], timeout=10, step=0.02)
    server.kill(signal.SIGKILL)  # mid-training

    server.start()
    probe = {"tasks": [{"id": 99999, "data": {"text": "hello"}}], "project": "77", "label_config": SMS_CONFIG}
    serving = requests.post(server.url + "/predict", json=probe, timeout=30).json()["results"][0]["model_version"]
    assert serving in [r["version"] for r in _reports(server.url, 77)]  # a complete version, never a torn one
    latest = wait_until(lambda: [r for r in _reports(server.url, 77) if r["labels"] == 200])[-1]
    assert latest["number"] > first["number"]
    wait_until(lambda: requests.post(server.url + "/predict", json=probe, timeout=30).json()["results"][0]["model_version"]
          == latest["version"])
    old = requests.get(f"{server.url}/reports/{first['number']}?project=77&format=json", timeout=5).json()
    assert old["version"] == first["version"]  # older versions stay readable


def test_kill_during_embedding_writes_leaves_a_consistent_store(server, tmp_path, sms_messages):
    tasks = [{"id": 10_000 + i, "data": {"text": text}} for i, (_, text) in enumerate(sms_messages[:400])]
    body = {"tasks": tasks, "project": "88", "label_config": SMS_CONFIG}
    def doomed_request():
        try:
            requests.post(server.url + "/predict", json=body, timeout=120)
        except requests.ConnectionError:
            pass  # the server is killed under it

    warm = {"tasks": [{"id": 1, "data": {"text": "warm up"}}], "project": "89", "label_config": SMS_CONFIG}
    assert requests.post(server.url + "/predict", json=warm, timeout=120).status_code == 200  # model loaded
    threading.Thread(target=doomed_request, daemon=True).start()
    time.sleep(2.5)  # some batches of 64 written to Chroma, more in flight
    server.kill(signal.SIGKILL)

    server.start()
    results = requests.post(server.url + "/predict", json=body, timeout=300).json()["results"]
    assert all(results) and len(results) == 400
    first = requests.get(server.url + "/status", timeout=5).json()["counters"]
    assert first["embeddings_cached"] + first["embeddings_computed"] == 400
    print(f"\n[crash] after kill -9: {first['embeddings_cached']} embeddings survived, "
          f"{first['embeddings_computed']} recomputed")
    requests.post(server.url + "/predict", json=body, timeout=120)
    again = requests.get(server.url + "/status", timeout=5).json()["counters"]
    assert again["embeddings_computed"] == first["embeddings_computed"]  # nothing missing any more
    server.kill()
    settings = Settings.from_env(backend_env(tmp_path))
    store = open_store(**store_kwargs(settings))
    assert store.count("88", encoder_id("text", encoder_spec(settings))) == 400  # no duplicates
