"""Hostile and malformed input: every endpoint answers with a clear 4xx or a per-task skip, never a 500,
and secrets never reach the logs."""
import base64
import http.server
import logging
import threading

import pytest
from hypothesis import HealthCheck, given, settings as hsettings, strategies as st

from backend.web import create_app
from backend.config import Settings
from tests.helpers import backend_env, label_config, wait_for_training

SMS_CONFIG = label_config("sms_spam.xml")
IMAGE_CONFIG = label_config("image_classification.xml")
FUZZ_EXAMPLES = 150
fuzz_counter = {"cases": 0}

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=True) | st.text(max_size=40),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=10), children, max_size=4),
    max_leaves=12,
)
task_like = st.fixed_dictionaries({}, optional={
    "id": st.one_of(st.integers(-5, 10**12), st.text(max_size=5), st.none(), st.booleans()),
    "data": st.one_of(json_values, st.fixed_dictionaries({"text": json_values}),
                      st.fixed_dictionaries({"image": st.one_of(st.text(max_size=60), json_values)})),
})
bodies = {
    "/setup": st.fixed_dictionaries({}, optional={
        "project": json_values, "schema": st.one_of(st.just(SMS_CONFIG), st.just(IMAGE_CONFIG), json_values),
        "hostname": json_values, "access_token": json_values}),
    "/predict": st.fixed_dictionaries({}, optional={
        "tasks": st.one_of(st.lists(st.one_of(task_like, json_values), max_size=5), json_values),
        "project": st.one_of(st.just("4.123"), json_values),
        "label_config": st.one_of(st.just(SMS_CONFIG), st.just(IMAGE_CONFIG), json_values),
        "params": json_values}),
    "/webhook": st.fixed_dictionaries({}, optional={
        "action": st.sampled_from(["ANNOTATION_CREATED", "ANNOTATION_UPDATED", "ANNOTATIONS_DELETED",
                                   "START_TRAINING", "TASKS_CREATED"]) | json_values,
        "project": st.one_of(st.fixed_dictionaries({"id": st.integers(1, 5)}, optional={"label_config": json_values}),
                             json_values),
        "annotation": json_values, "task": json_values, "annotations": json_values}),
}


@pytest.fixture(scope="module")
def client(tmp_path_factory):
    env = backend_env(tmp_path_factory.mktemp("fuzz"), FETCH_TIMEOUT=0.5)
    app = create_app(Settings.from_env(env))
    yield app.test_client()
    wait_for_training(app, "1", timeout=60)


def _check(resp):
    assert resp.status_code < 500, resp.text[:500]
    if resp.status_code >= 400:
        assert "error" in resp.get_json() and "Traceback" not in resp.text


@pytest.mark.parametrize("endpoint", sorted(bodies))
def test_fuzz_json_bodies_never_500(client, endpoint):
    @hsettings(max_examples=FUZZ_EXAMPLES, deadline=None, suppress_health_check=list(HealthCheck))
    @given(body=bodies[endpoint] | json_values)
    def run(body):
        fuzz_counter["cases"] += 1
        _check(client.post(endpoint, json=body))

    run()


@hsettings(max_examples=FUZZ_EXAMPLES, deadline=None, suppress_health_check=list(HealthCheck))
@given(raw=st.binary(max_size=300), endpoint=st.sampled_from(["/setup", "/predict", "/webhook"]),
       content_type=st.sampled_from(["application/json", "text/plain", "application/x-www-form-urlencoded"]))
def test_fuzz_raw_bytes_never_500(client, raw, endpoint, content_type):
    fuzz_counter["cases"] += 1
    _check(client.post(endpoint, data=raw, content_type=content_type))


def test_fuzz_case_count_reported():
    print(f"\n[fuzz] {fuzz_counter['cases']} fuzz cases")
    assert fuzz_counter["cases"] >= 4 * FUZZ_EXAMPLES


def test_unknown_routes_and_methods_are_json_4xx(client):
    for resp in (client.get("/nope"), client.get("/predict"), client.delete("/setup")):
        assert resp.status_code in (404, 405) and "error" in resp.get_json()


def test_oversized_and_non_utf8_text_tasks_are_handled(client):
    tasks = [{"id": 1, "data": {"text": "spam " * 200_000}}, {"id": 2, "data": {"text": "caf\udce9 ok"}},
             {"id": 3, "data": {"text": "\x00\x01 binary-ish \ufffd"}}]
    resp = client.post("/predict", json={"tasks": tasks, "project": "1", "label_config": SMS_CONFIG})
    assert resp.status_code == 200 and all(r for r in resp.get_json()["results"])


SECRETS = ("ls-api-key-0123456789abcdef0123456789ab", "basic-pass-s3cr3t", "setup-token-fedcba9876543210fedcba98")


def test_secrets_never_logged_even_at_debug(tmp_path, caplog, capfd):
    seen_auth = []

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            seen_auth.append(self.headers.get("Authorization"))
            self.send_response(404)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    ls_url = f"http://127.0.0.1:{server.server_address[1]}"
    env = backend_env(tmp_path, LOG_LEVEL="DEBUG", LABEL_STUDIO_URL=ls_url, LABEL_STUDIO_API_KEY=SECRETS[0],
                      BASIC_AUTH_USER="ls", BASIC_AUTH_PASS=SECRETS[1])
    caplog.set_level(logging.DEBUG)
    app = create_app(Settings.from_env(env))
    client = app.test_client()
    auth = {"Authorization": "Basic " + base64.b64encode(f"ls:{SECRETS[1]}".encode()).decode()}
    assert client.post("/setup", json={"project": "9", "schema": IMAGE_CONFIG, "access_token": SECRETS[2],
                                       "hostname": ls_url}, headers=auth).status_code == 200
    resp = client.post("/predict", headers=auth, json={
        "tasks": [{"id": 1, "data": {"image": "/data/upload/9/x.jpg"}}], "project": "9", "label_config": IMAGE_CONFIG})
    assert resp.status_code == 200 and resp.get_json()["results"] == [[]]  # 404 from "Label Studio": skipped
    assert seen_auth and seen_auth[-1] == f"Token {SECRETS[0]}"  # the key was used...
    client.post("/setup", json={"project": "9", "schema": "<bad"}, headers={"Authorization": "Basic " + base64.b64encode(f"ls:{SECRETS[1]}x".encode()).decode()})
    wait_for_training(app, "9", timeout=30)
    server.shutdown()
    out, err = capfd.readouterr()
    text = caplog.text + out + err + repr(app.extensions["runtime"].settings)
    assert "DEBUG" in caplog.text or caplog.records  # debug logging really was on
    for secret in SECRETS:  # ...but never written anywhere
        assert secret not in text
