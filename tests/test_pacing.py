"""Sharing Label Studio politely (backend.labelstudio.pacing), against a Label Studio stand-in that
injects failures (5xx answers, slow imports): the backend backs off, tries again and loses nothing;
write chunks shrink when Label Studio is slow; background requests wait for a training run's batch.
The same with a real Label Studio under an annotator: test_e2e_sharing.py."""
import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from backend.labelstudio import pacing
from backend.labelstudio.client import LabelStudioAPI
from backend.labelstudio.pacing import Pacer, background, retryable


class FlakyLabelStudio:
    """Answers prediction imports (POST /api/projects/<id>/import/predictions): the first ``failures``
    with ``status``, then 201, each after ``seconds_per_row`` x rows; records what it accepted."""

    def __init__(self, failures: int = 0, status: int = 500, seconds_per_row: float = 0.0):
        self.failures, self.status, self.seconds_per_row = failures, status, seconds_per_row
        self.accepted: list[list[int]] = []  # task ids of each accepted import, in order
        self.refused = 0
        flaky = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                rows = json.loads(self.rfile.read(int(self.headers.get("Content-Length") or 0)) or b"[]")
                time.sleep(flaky.seconds_per_row * len(rows))
                if flaky.failures > 0:
                    flaky.failures -= 1
                    flaky.refused += 1
                    return self._answer(flaky.status, {"detail": "database is locked"})
                flaky.accepted.append([r["task"] for r in rows])
                self._answer(201, {"created": len(rows)})

            def _answer(self, status, body):
                data = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self):
        self.server.shutdown()


@pytest.fixture
def quick_backoff(monkeypatch):
    monkeypatch.setattr(pacing, "BACKOFF_S", (0.01, 0.05))


def _api(url: str) -> LabelStudioAPI:
    api = LabelStudioAPI(url, "0" * 40)
    api.pacer = Pacer()  # a fresh one per test (the process's is shared by URL)
    return api


def _rows(n: int) -> list[dict]:
    return [{"task": t, "result": [], "score": 0.5, "model_version": "v"} for t in range(n)]


def test_a_label_studio_answering_5xx_makes_the_backend_back_off_and_lose_nothing(quick_backoff):
    flaky = FlakyLabelStudio(failures=4, status=500)
    try:
        api = _api(flaky.url)
        assert api.push_predictions(1, _rows(250)) == 250
        imported = [t for chunk in flaky.accepted for t in chunk]
        assert imported == list(range(250))  # every row once, in order: none lost, none twice
        assert flaky.refused == 4 and api.pacer.counts["retries"] == 4
    finally:
        flaky.close()


def test_a_label_studio_failing_for_good_fails_the_write_after_its_retries(quick_backoff):
    flaky = FlakyLabelStudio(failures=10**6, status=503)
    try:
        api = _api(flaky.url)
        with pytest.raises(Exception) as failed:
            api.push_predictions(1, _rows(10))
        assert pacing.status_of(failed.value) == 503 and flaky.accepted == []  # said, not hidden
        assert api.pacer.counts["retries"] == pacing.RETRIES
    finally:
        flaky.close()


def test_slow_imports_are_cut_into_smaller_chunks(monkeypatch):
    monkeypatch.setattr(pacing, "CHUNK_TARGET_S", 0.1)
    monkeypatch.setattr(pacing, "CHUNK_ROWS", (5, 1000))
    flaky = FlakyLabelStudio(seconds_per_row=0.004)  # 100 rows: 0.4 s, four times the target
    try:
        api = _api(flaky.url)
        api.push_predictions(1, _rows(300))
        sizes = [len(chunk) for chunk in flaky.accepted]
        assert sizes[0] == pacing.FIRST_ROWS and max(sizes[1:]) < sizes[0]
        assert [t for chunk in flaky.accepted for t in chunk] == list(range(300))
        assert api.pacer.rows_for("import") < pacing.FIRST_ROWS
    finally:
        flaky.close()


def test_background_requests_wait_for_a_training_runs_batch():
    pacer, order = Pacer(), []
    batch_started, release = threading.Event(), threading.Event()

    def training_run():
        with pacer.foreground():
            batch_started.set()
            release.wait(10)
            order.append("batch written")

    def sweep():
        with background():
            batch_started.wait(10)
            pacer.call(lambda: order.append("background write"))

    threads = [threading.Thread(target=training_run), threading.Thread(target=sweep)]
    for thread in threads:
        thread.start()
    batch_started.wait(10)
    time.sleep(0.3)  # the background write had time to go, and did not
    assert order == []
    release.set()
    for thread in threads:
        thread.join(10)
    assert order == ["batch written", "background write"]
    assert pacer.counts["yielded"] >= 1


def test_only_failures_that_did_nothing_are_retried():
    class Answer(Exception):
        def __init__(self, status):
            self.status_code = status

    class ReadTimeout(Exception):
        pass

    assert retryable(Answer(500), write=True) and retryable(Answer(503), write=False)
    assert not retryable(Answer(400), write=True) and not retryable(Answer(404), write=False)
    # a write that timed out may have been done: not sent again; a read is
    assert not retryable(ReadTimeout(), write=True) and retryable(ReadTimeout(), write=False)
