"""Sharing Label Studio with its annotators, on its default database (SQLite, where one writer at a
time holds the whole database): while the backend sweeps a project of a few thousand tasks and
trains on what an annotator submits through Label Studio's own queue (/next), the annotator never
gets a 5xx, and the sweep embeds without writing predictions into Label Studio."""
import threading

import pytest
import requests

from tests.helpers import BackendProcess, backend_env, label_config, wait_until
from tests.ls_server import free_port

pytestmark = pytest.mark.e2e

TASKS = 1500
SAMPLE = 100  # the cold start embeds this many; the sweep the rest
BATCH = 12


class Annotator:
    """Labels through Label Studio's queue as a person does: GET /next, POST the true label; notes every
    answer's status."""

    def __init__(self, ls, project: int, truth: dict[str, str], pace_s: float = 0.25):
        self.ls, self.project, self.truth, self.pace_s = ls, project, truth, pace_s
        self.statuses: list[tuple[str, int]] = []
        self.labeled: list[int] = []
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._loop, daemon=True)

    def _loop(self):
        while not self.stop.is_set():
            nxt = requests.get(f"{self.ls.url}/api/projects/{self.project}/next/", headers=self.ls.headers,
                               timeout=120)
            self.statuses.append(("next", nxt.status_code))
            if nxt.status_code == 200:
                task = nxt.json()
                label = self.truth[task["data"]["text"]]
                result = [{"from_name": "label", "to_name": "text", "type": "choices", "value": {"choices": [label]}}]
                posted = requests.post(f"{self.ls.url}/api/tasks/{task['id']}/annotations/", headers=self.ls.headers,
                                       json={"result": result}, timeout=120)
                self.statuses.append(("annotate", posted.status_code))
                if posted.ok:
                    self.labeled.append(int(task["id"]))
            self.stop.wait(self.pace_s)

    def errors(self) -> list[tuple[str, int]]:
        return [s for s in self.statuses if s[1] >= 500]


@pytest.fixture(scope="module")
def sweeping_backend(label_studio, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("sharing-backend")
    env = backend_env(tmp, LABEL_STUDIO_URL=label_studio.url,
                      LABEL_STUDIO_API_KEY=label_studio.create_personal_access_token(),
                      COLD_START_SAMPLE=str(SAMPLE), QUEUE_BATCH=str(BATCH), UNCERTAINTY_SAMPLING="true")
    server = BackendProcess(env, tmp / "backend.log", free_port()).start()
    yield server.url
    server.kill()


def _connect(ls, project: int, backend: str) -> int | None:
    """Connect the backend; None when Label Studio gave up on its first /setup (3 s: the encoder was
    still loading on a busy machine)."""
    try:
        return ls.connect_ml_backend(project, backend, title="clip-al-sharing")
    except RuntimeError as exc:
        if "Read timed out" in str(exc):
            return None
        raise


def _status(backend: str) -> dict:
    return requests.get(backend + "/status", timeout=10).json()


def test_an_annotator_gets_no_error_while_the_backend_sweeps_and_trains(label_studio, sweeping_backend, sms_messages):
    ls, backend = label_studio, sweeping_backend
    messages = {text: label for label, text in sms_messages[:TASKS]}
    project = ls.create_project("sharing e2e", label_config("sms_spam.xml"))
    ls.import_tasks(project, [{"text": text} for text in messages])
    wait_until(lambda: _connect(ls, project, backend), timeout=300, step=5, what="Label Studio to accept the backend")
    annotator = Annotator(ls, project, messages)
    annotator.thread.start()
    try:
        def swept_and_trained():
            status = _status(backend)
            sweep = status["preannotation"].get(str(project), {})
            runs = status["training"]["runs"].get(str(project), 0)
            done = sweep.get("finished", 0) >= TASKS - SAMPLE - len(annotator.labeled) and sweep.get("pending") == 0
            return status if done and runs >= 3 else None

        status = wait_until(swept_and_trained, timeout=900, step=2, what="the sweep and three training runs")
    finally:
        annotator.stop.set()
        annotator.thread.join(150)
    sweep = status["preannotation"][str(project)]
    print(f"\n[sharing] {len(annotator.labeled)} annotations, {len(annotator.statuses)} answers to the annotator; "
          f"sweep {sweep}; runs {status['training']['runs'][str(project)]}; Label Studio pacing "
          f"{status['label_studio']}")
    assert annotator.errors() == []  # not one 5xx (SQLite's "database is locked") to the annotator
    assert len(annotator.labeled) >= 10
    assert sweep["embedded"] == sweep["queued"] and sweep["failed"] == 0
    # the sweep wrote nothing into Label Studio (a /predict past its deadline on a served task may import one)
    served = sum(1 for what, status in annotator.statuses if what == "next" and status == 200)
    assert sweep["pushed"] <= served
    held = ls.get(f"/api/projects/{project}/model-versions/")
    queue = {v: n for v, n in held.items() if not v.endswith("/label-review")}
    # what Label Studio holds of ours: the batch, and predictions asked for live (tasks the annotator was
    # served); never one per swept task
    assert sum(queue.values()) <= BATCH + len(annotator.labeled) + 1, held
