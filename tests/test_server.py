"""The HTTP protocol, in process (Flask test client), with random-weight CLIP and the real MiniLM."""
import base64

import pytest

from backend.web import create_app
from backend.config import Settings
from tests.helpers import DATA_DIR, backend_env, label_config

IMAGE_CONFIG = label_config("image_classification.xml")
MULTI_CONFIG = label_config("image_multilabel.xml")
SMS_CONFIG = label_config("sms_spam.xml")


@pytest.fixture(scope="module")
def client(tmp_path_factory):
    env = backend_env(tmp_path_factory.mktemp("server"), LOCAL_FILES_DOCUMENT_ROOT=DATA_DIR)
    return create_app(Settings.from_env(env)).test_client()


def _image_tasks(paths, start=1):
    return [{"id": start + i, "data": {"image": str(p.relative_to(DATA_DIR))}} for i, p in enumerate(paths)]


def test_health(client):
    for path in ("/", "/health"):
        assert client.get(path).json == {"status": "UP", "model_class": "ClipClassifier"}


def test_setup_returns_stable_version_naming_encoder_and_head(client):
    first = client.post("/setup", json={"project": "3.1700000000", "schema": IMAGE_CONFIG})
    again = client.post("/setup", json={"project": "3.1700000000", "schema": IMAGE_CONFIG})
    assert first.status_code == 200
    version = first.json["model_version"]
    assert version == again.json["model_version"]
    assert version.startswith("clip-ViT-B-32-none/zeroshot-")
    text_version = client.post("/setup", json={"project": "4", "schema": SMS_CONFIG}).json["model_version"]
    assert text_version.startswith("st-all-MiniLM-L6-v2") or text_version.startswith("st-model-")


def test_setup_with_unservable_config_is_a_clear_400(client):
    resp = client.post("/setup", json={"project": "5", "schema": "<View><Image name='i' value='$i'/></View>"})
    assert resp.status_code == 400
    assert "unsupported labeling config" in resp.json["error"] and "Traceback" not in resp.text


def test_predict_one_result_per_task_in_order_and_bad_tasks_skipped(client, cifar_images):
    tasks = _image_tasks(cifar_images["cat"][:4])
    tasks.insert(1, {"id": 90, "data": {"image": "does/not/exist.jpg"}})
    tasks.insert(3, {"id": 91, "data": {"other": 1}})
    tasks.append("not a task")
    resp = client.post("/predict", json={"tasks": tasks, "project": "3.1700000000", "label_config": IMAGE_CONFIG})
    assert resp.status_code == 200
    results = resp.json["results"]
    assert len(results) == len(tasks)
    assert [bool(r) for r in results] == [True, False, True, False, True, True, False]
    version = client.post("/setup", json={"project": "3", "schema": IMAGE_CONFIG}).json["model_version"]
    outputs = {"airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"}
    for r in filter(None, results):
        assert r["model_version"] == version
        (region,) = r["result"]
        assert region["from_name"] == "choice" and region["to_name"] == "image" and region["type"] == "choices"
        (choice,) = region["value"]["choices"]
        assert choice in outputs
        assert 0.1 <= region["score"] <= 1.0  # confidence in the top of 10 choices is at least 1/10
        assert 0.0 <= r["score"] <= 1.0  # the task's queue priority (ranking.py)


def test_predict_multilabel_returns_top_choice_first(client, cifar_images):
    tasks = _image_tasks(cifar_images["truck"][:3])
    results = client.post("/predict", json={"tasks": tasks, "project": "6", "label_config": MULTI_CONFIG}).json["results"]
    for r in results:
        choices = r["result"][0]["value"]["choices"]
        assert 1 <= len(choices) <= 6 and len(set(choices)) == len(choices)


def test_predict_uses_config_from_setup_and_data_uris(client, cifar_images):
    client.post("/setup", json={"project": "11", "schema": IMAGE_CONFIG})
    uri = "data:image/jpeg;base64," + base64.b64encode(cifar_images["frog"][0].read_bytes()).decode()
    resp = client.post("/predict", json={"tasks": [{"id": 1, "data": {"image": uri}}], "project": "11"})
    assert resp.status_code == 200 and resp.json["results"][0]["result"]


def test_text_predictions_with_real_minilm(client):
    tasks = [{"id": 1, "data": {"text": "WINNER!! You have won a 1000 cash prize. Call 09061701461 to claim now"}},
             {"id": 2, "data": {"text": "ok, see you at home later. love you"}}]
    results = client.post("/predict", json={"tasks": tasks, "project": "4", "label_config": SMS_CONFIG}).json["results"]
    assert [r["result"][0]["value"]["choices"] for r in results] == [["spam"], ["ham"]]
    assert all(0.5 <= r["result"][0]["score"] <= 1 for r in results)  # confidence of a 2-way choice


@pytest.mark.parametrize("body, message", [
    ("not json", "JSON object"),
    ([1, 2], "JSON object"),
    ({"tasks": "x", "label_config": IMAGE_CONFIG}, "tasks"),
    ({"tasks": [], "project": "999"}, "label_config is missing"),
    ({"tasks": [], "project": "../../etc", "label_config": IMAGE_CONFIG}, "not a Label Studio project id"),
    ({"tasks": [], "label_config": 5}, "label_config"),
])
def test_malformed_predict_requests_are_400(client, body, message):
    resp = client.post("/predict", data=body, content_type="application/json") if isinstance(body, str) \
        else client.post("/predict", json=body)
    assert resp.status_code == 400 and message in resp.json["error"]


def test_webhook_acknowledges_training_events_and_ignores_others(client):
    project = {"id": 3, "label_config": IMAGE_CONFIG}
    ok = client.post("/webhook", json={"action": "ANNOTATION_CREATED", "project": project, "annotation": {"id": 1}})
    assert ok.status_code == 201 and ok.json["status"] == "ok"
    assert client.post("/webhook", json={"action": "PROJECT_UPDATED", "project": project}).json["status"] == "ignored"


def test_metrics_count_tasks_and_failures(client):
    counters = client.get("/status").json["counters"]
    assert counters["tasks"] >= counters["predictions"] > 0 and counters["tasks_failed"] >= 3


def test_basic_auth_protects_everything_but_health(tmp_path):
    env = backend_env(tmp_path, BASIC_AUTH_USER="ls", BASIC_AUTH_PASS="s3cret")
    client = create_app(Settings.from_env(env)).test_client()
    assert client.get("/health").status_code == 200
    assert client.post("/setup", json={"project": "1", "schema": IMAGE_CONFIG}).status_code == 401
    good = {"Authorization": "Basic " + base64.b64encode(b"ls:s3cret").decode()}
    bad = {"Authorization": "Basic " + base64.b64encode(b"ls:wrong").decode()}
    assert client.post("/setup", json={"project": "1", "schema": IMAGE_CONFIG}, headers=bad).status_code == 401
    assert client.post("/setup", json={"project": "1", "schema": IMAGE_CONFIG}, headers=good).status_code == 200
    assert client.get("/metrics", headers=good).status_code == 200


def test_unloadable_model_is_a_clear_503_not_a_traceback(tmp_path):
    env = backend_env(tmp_path, CLIP_PRETRAINED="no_such_tag")
    client = create_app(Settings.from_env(env)).test_client()
    assert client.post("/setup", json={"project": "1", "schema": IMAGE_CONFIG}).status_code == 200  # answers at once
    resp = client.post("/predict", json={"tasks": [{"id": 1, "data": {"image": "x.jpg"}}], "project": "1",
                                         "label_config": IMAGE_CONFIG})
    assert resp.status_code == 503
    assert "CLIP_PRETRAINED='no_such_tag'" in resp.json["error"] and "local checkpoint" in resp.json["error"]
    assert client.get("/health").status_code == 200  # still serving
