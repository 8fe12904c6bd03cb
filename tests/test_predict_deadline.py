"""Issue 23 item 9: a /predict whose items all stall (a server sending a byte a second) ends within
FETCH_DEADLINE plus a small margin, not one FETCH_DEADLINE per round of FETCH_WORKERS downloads; the
stalled tasks go on in the background."""
import time

from backend.config import Settings
from backend.web import create_app
from bench.hostile import HostileServer
from tests.helpers import backend_env, label_config

IMAGE_CONFIG = label_config("image_classification.xml")


def test_predict_whose_items_all_stall_ends_within_the_fetch_deadline(tmp_path):
    deadline_s = 3
    env = backend_env(tmp_path, FETCH_DEADLINE=deadline_s, FETCH_TIMEOUT=2, FETCH_WORKERS=2,
                      ALLOWED_FETCH_HOSTS="127.0.0.1")
    app = create_app(Settings.from_env(env))
    client = app.test_client()
    with HostileServer() as server:
        warm = {"tasks": [{"id": 1, "data": {"image": server.url + "/ok.jpg"}}], "project": "5",
                "label_config": IMAGE_CONFIG}
        client.post("/predict", json=warm)  # the weights load (slow on a busy machine) outside the measure
        stalled = [{"id": 10 + i, "data": {"image": f"{server.url}/drip?bytes=5000&every=1&n={i}"}}
                   for i in range(12)]  # 6 rounds of 2 downloads: 18 s if each round waited its deadline
        started = time.monotonic()
        answer = client.post("/predict", json={"tasks": stalled, "project": "5", "label_config": IMAGE_CONFIG})
        elapsed = time.monotonic() - started
    assert answer.status_code == 200 and answer.json["results"] == [[] for _ in stalled]
    assert elapsed < 3 * deadline_s  # FETCH_DEADLINE + a margin (not 6 rounds of it)
    assert app.extensions["runtime"].preannotator.status()  # the stalled tasks were handed to the background
