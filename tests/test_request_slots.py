"""Stuck /predict work never takes every thread: a slow-drip task image ends at FETCH_DEADLINE, /predict
beyond PREDICT_CONCURRENCY gets a 503 with a JSON error and Retry-After, and /health and /webhook keep
answering. A real threaded HTTP server on 127.0.0.1, a real slow-drip server."""
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest
import requests
from werkzeug.serving import make_server

from backend.config import Settings
from backend.web import create_app
from backend.web.limits import RequestSlots, slots_for
from bench.hostile import HostileServer
from tests.helpers import backend_env, label_config, wait_until

IMAGE_CONFIG = label_config("image_classification.xml")


@pytest.fixture
def hostile():
    with HostileServer() as server:
        yield server


@pytest.fixture
def backend_url(tmp_path):
    env = backend_env(tmp_path, THREADS=3, PREDICT_SLOT_WAIT=0.2, FETCH_TIMEOUT=1, FETCH_DEADLINE=3,
                      ALLOWED_FETCH_HOSTS="127.0.0.1")
    server = make_server("127.0.0.1", 0, create_app(Settings.from_env(env)), threaded=True)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_port}"
    server.shutdown()


def _predict(url: str, image: str, task: int = 1, timeout: float = 120) -> requests.Response:
    body = {"tasks": [{"id": task, "data": {"image": image}}], "project": "5", "label_config": IMAGE_CONFIG}
    return requests.post(url + "/predict", json=body, timeout=timeout)


def test_stuck_predict_leaves_health_and_webhook_answering(backend_url, hostile):
    assert _predict(backend_url, hostile.url + "/ok.jpg").json()["results"][0]  # model built and warm
    with ThreadPoolExecutor(1) as pool:
        started = time.monotonic()
        stuck = pool.submit(_predict, backend_url, hostile.url + "/drip?bytes=400&every=0.5", 2)
        wait_until(lambda: any(path.startswith("/drip") for path, _ in hostile.seen), 30, what="the slow fetch")
        busy = _predict(backend_url, hostile.url + "/ok.jpg", 3, timeout=10)  # THREADS=3: one slot, taken
        assert busy.status_code == 503 and busy.headers["Retry-After"].isdigit()
        assert "PREDICT_CONCURRENCY" in busy.json()["error"]
        assert requests.get(backend_url + "/health", timeout=2).json()["status"] == "UP"
        event = {"action": "PROJECT_UPDATED", "project": {"id": 5}}
        assert requests.post(backend_url + "/webhook", json=event, timeout=2).status_code < 300
        result = stuck.result(timeout=30)
    assert result.status_code == 200 and result.json()["results"] == [[]]  # the slow item: skipped at the deadline
    assert time.monotonic() - started < 10  # FETCH_DEADLINE=3, not the drip's 200 s
    assert _predict(backend_url, hostile.url + "/ok.jpg", 4).status_code == 200  # the slot is free again


def test_slots_default_to_threads_minus_two():
    assert slots_for(Settings.from_env({})) == 6
    assert slots_for(Settings.from_env({"THREADS": "2"})) == 1
    assert slots_for(Settings.from_env({"THREADS": "16", "PREDICT_CONCURRENCY": "4"})) == 4
    slots = RequestSlots(1, wait_s=0.05)
    assert slots.acquire() and not slots.acquire() and slots.refused == 1
    slots.release()
    assert slots.acquire() and slots.busy == 1
