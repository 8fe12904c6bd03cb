"""Which Label Studio gets our credentials and our annotation log's trust (issue 14, items 2, 3, 8):
the environment's key never goes to a host a request names, a project that reached its Label Studio
is not rebound by an anonymous /setup, a reconcile never wipes the log, /webhook works with basic
auth on, and what /setup taught survives a restart (never a token). Real sockets on 127.0.0.1."""
import base64
import sqlite3

import pytest

from backend.config import Settings, SettingsError
from backend.runtime.build import build_runtime
from backend.runtime.models import fetcher_kwargs
from backend.web import create_app
from tests.fake_label_studio import FakeLabelStudio, ls_task
from tests.helpers import backend_env, label_config, wait_for_training

SMS_CONFIG = label_config("sms_spam.xml")
URL_TEXT_CONFIG = """<View><Text name="text" value="$text" valueType="url"/>
  <Choices name="label" toName="text"><Choice value="ham"/><Choice value="spam"/></Choices></View>"""
ENV_PAT = "eyJhbGciOiJIUzI1NiJ9." + "e" * 60 + ".env-key-signature"  # a personal access token: exchanged
ENV_LEGACY_KEY = "e0e0e0e0e0e0e0e0e0e0e0e0e0e0e0e0e0e0e0e0"
SETUP_TOKEN = "5e705e705e705e705e705e705e705e705e705e70"
MESSAGES = [("ham", "ok see you at home"), ("spam", "WINNER! claim your cash prize now"),
            ("ham", "where are you? call me"), ("spam", "URGENT! You won a free cruise, text STOP"),
            ("ham", "love you, see you tonight"), ("spam", "Free entry: reply WIN to claim 1000")]


@pytest.fixture
def fake():
    server = FakeLabelStudio()
    yield server
    server.close()


def _event(project, i, label, text, action="ANNOTATION_CREATED"):
    return {"action": action, "project": {"id": project, "label_config": SMS_CONFIG},
            "task": {"id": 1000 + i, "data": {"text": text}},
            "annotation": {"id": 5000 + i, "task": 1000 + i, "was_cancelled": False,
                           "result": [{"from_name": "label", "to_name": "text", "type": "choices",
                                       "value": {"choices": [label]}}]}}


def _train(app, client, project):
    resp = client.post("/webhook", json={"action": "START_TRAINING", "project": {"id": project}})
    assert resp.status_code == 201
    wait_for_training(app, str(project), timeout=180)
    return app.extensions["runtime"].scheduler.loop


# -- item 2: the environment's key never goes to a URL from a request -----------------------------------
@pytest.mark.parametrize("env_key", [ENV_PAT, ENV_LEGACY_KEY], ids=["personal-access-token", "legacy-token"])
def test_env_key_never_goes_to_a_host_named_by_setup(tmp_path, fake, env_key):
    app = create_app(Settings.from_env(backend_env(tmp_path, LABEL_STUDIO_API_KEY=env_key, FETCH_TIMEOUT=2)))
    client = app.test_client()
    assert client.post("/setup", json={"project": "5.1700000000", "hostname": fake.url,
                                       "schema": URL_TEXT_CONFIG}).status_code == 200
    task = {"id": 1, "data": {"text": "/data/upload/5/x.txt"}}
    assert client.post("/predict", json={"tasks": [task], "project": "5", "label_config": URL_TEXT_CONFIG}).json[
        "results"] == [[]]  # the fake answers 404: no prediction, no crash
    _train(app, client, 5)
    assert fake.requests, "the download was attempted at the /setup host (without credentials)"
    assert fake.seen(env_key) == [] and fake.seen("e0e0e0e0") == []
    assert not [r for r in fake.requests if r["path"] == "/api/token/refresh/"]
    assert not [r for r in fake.requests if "Authorization" in r["headers"]]


def test_setup_url_goes_only_with_setups_own_token(tmp_path, fake):
    app = create_app(Settings.from_env(backend_env(tmp_path, LABEL_STUDIO_API_KEY=ENV_LEGACY_KEY, FETCH_TIMEOUT=2)))
    client = app.test_client()
    assert client.post("/setup", json={"project": "6", "hostname": fake.url, "access_token": SETUP_TOKEN,
                                       "schema": URL_TEXT_CONFIG}).status_code == 200
    client.post("/predict", json={"tasks": [{"id": 1, "data": {"text": "/data/upload/6/x.txt"}}], "project": "6",
                                  "label_config": URL_TEXT_CONFIG})
    assert fake.seen(f"Token {SETUP_TOKEN}") and fake.seen(ENV_LEGACY_KEY) == []


def test_connection_rule_pairs_keys_with_their_own_urls(tmp_path):
    key_only = build_runtime(Settings.from_env(backend_env(tmp_path / "a", LABEL_STUDIO_API_KEY=ENV_LEGACY_KEY)))
    key_only.remember("1", None, "http://127.0.0.1:9", None)
    connection = key_only.connection("1")
    assert (connection.url, connection.token, connection.source) == ("http://127.0.0.1:9", None, "setup")
    assert key_only.api("1") is None and fetcher_kwargs(key_only.settings, connection)["auth"] is None
    assert key_only.connections.taught("1") == ("http://127.0.0.1:9", None)  # kept in this process only
    both = build_runtime(Settings.from_env(backend_env(tmp_path / "b", LABEL_STUDIO_URL="http://ls.internal:8080",
                                                  LABEL_STUDIO_API_KEY=ENV_LEGACY_KEY)))
    both.remember("1", None, "http://127.0.0.1:9", SETUP_TOKEN)  # the environment's pair wins, whole
    assert (both.connection("1").url, both.connection("1").token) == ("http://ls.internal:8080", ENV_LEGACY_KEY)
    url_only = build_runtime(Settings.from_env(backend_env(tmp_path / "c", LABEL_STUDIO_URL="http://ls.internal:8080")))
    url_only.remember("1", None, "http://127.0.0.1:9", SETUP_TOKEN)
    assert (url_only.connection("1").url, url_only.connection("1").token) == ("http://ls.internal:8080", SETUP_TOKEN)


# -- item 3: no silent rebinding, no wiped log -------------------------------------------------------
@pytest.mark.parametrize("listed", ["no tasks", "other annotations"])
def test_reconcile_that_would_delete_every_recorded_annotation_is_refused(tmp_path, fake, listed):
    if listed == "other annotations":  # a Label Studio that knows none of ours: the wrong one
        fake.tasks = [ls_task(900 + i, 9000 + i, text, label) for i, (label, text) in enumerate(MESSAGES)]
    app = create_app(Settings.from_env(backend_env(tmp_path)))
    client = app.test_client()
    for i, (label, text) in enumerate(MESSAGES[:3]):
        assert client.post("/webhook", json=_event(32, i, label, text)).status_code == 201
    log = app.extensions["runtime"].log
    wait_for_training(app, "32", timeout=180)
    assert log.count("32") == 3
    assert client.post("/setup", json={"project": "32.1", "hostname": fake.url, "access_token": "x",
                                       "schema": SMS_CONFIG}).status_code == 200  # never reached: may bind
    loop = _train(app, client, 32)
    assert log.count("32") == 3 and len(log.labeled_tasks("32")) == 3  # nothing marked deleted
    assert "reconcile not applied" in loop.last_error["32"]
    assert log.binding("32").reached_at is None  # a refused reconcile does not make the binding "working"


def test_setup_cannot_rebind_a_project_that_reached_label_studio(tmp_path, fake):
    fake.tasks = [ls_task(1000 + i, 5000 + i, text, label) for i, (label, text) in enumerate(MESSAGES)]
    attacker = FakeLabelStudio()
    try:
        app = create_app(Settings.from_env(backend_env(tmp_path)))
        client = app.test_client()
        setup = {"project": "32.1700000000", "hostname": fake.url, "access_token": SETUP_TOKEN, "schema": SMS_CONFIG}
        assert client.post("/setup", json=setup).status_code == 200
        _train(app, client, 32)
        log = app.extensions["runtime"].log
        assert log.count("32") == len(MESSAGES) and log.binding("32").url == fake.url
        assert log.binding("32").reached_at is not None
        resp = client.post("/setup", json={**setup, "hostname": attacker.url, "access_token": "x"})
        assert resp.status_code == 409 and "Not rebinding" in resp.json["error"] and fake.url not in resp.text
        assert client.post("/setup", json=setup).status_code == 200  # Label Studio's own /setup still works
        assert app.extensions["runtime"].connection("32").url == fake.url
        restarted = create_app(Settings.from_env(backend_env(tmp_path))).test_client()  # the binding is durable
        assert restarted.post("/setup", json={**setup, "hostname": attacker.url}).status_code == 409
        _train(app, client, 32)
        assert attacker.requests == [] and log.count("32") == len(MESSAGES)
    finally:
        attacker.close()


def test_label_studio_webhook_works_with_basic_auth_through_the_webhook_secret(tmp_path):
    """Label Studio's project webhook sends only its own `headers` (no basic auth): with BASIC_AUTH on,
    /webhook accepts the X-Webhook-Secret header configured there, and nothing else accepts it."""
    env = backend_env(tmp_path, BASIC_AUTH_USER="ls", BASIC_AUTH_PASS="s3cret", WEBHOOK_SECRET="hook-secret-1")
    app = create_app(Settings.from_env(env))
    client = app.test_client()
    event = _event(7, 0, "ham", "see you later")
    assert client.post("/webhook", json=event).status_code == 401  # what Label Studio sends by default
    assert client.post("/webhook", json=event, headers={"X-Webhook-Secret": "wrong"}).status_code == 401
    resp = client.post("/webhook", json=event, headers={"X-Webhook-Secret": "hook-secret-1"})
    assert resp.status_code == 201 and resp.json["result"]["recorded"] == 1
    basic = {"Authorization": "Basic " + base64.b64encode(b"ls:s3cret").decode()}
    assert client.post("/webhook", json={"action": "START_TRAINING", "project": 7}, headers=basic).status_code == 201
    for path in ("/setup", "/predict", "/status"):  # the webhook secret opens /webhook only
        assert client.post(path, json={}, headers={"X-Webhook-Secret": "hook-secret-1"}).status_code in (401, 405)
    with pytest.raises(SettingsError, match="WEBHOOK_SECRET"):
        Settings.from_env(backend_env(tmp_path, WEBHOOK_SECRET="x"))
    wait_for_training(app, "7", timeout=120)


# -- item 8: what /setup taught survives a restart; tokens do not -----------------------------------
def test_setup_config_and_url_survive_a_restart_but_never_the_token(tmp_path, fake):
    first = create_app(Settings.from_env(backend_env(tmp_path)))
    assert first.test_client().post("/setup", json={"project": "8", "schema": SMS_CONFIG, "hostname": fake.url,
                                                    "access_token": SETUP_TOKEN}).status_code == 200
    wait_for_training(first, "8", timeout=120)  # the cold start reaches the fake Label Studio
    app = create_app(Settings.from_env(backend_env(tmp_path)))  # a restart
    restarted = app.test_client()
    resp = restarted.post("/search", json={"query": "a prize", "project": "8"})
    assert resp.status_code == 200, resp.json
    resp = restarted.post("/predict", json={"tasks": [{"id": 1, "data": {"text": "WINNER! claim now"}}],
                                            "project": "8"})
    assert resp.status_code == 200 and resp.json["results"][0]["result"]
    connection = app.extensions["runtime"].connection("8")
    assert (connection.url, connection.token) == (fake.url, None)  # the URL, without a token until /setup
    db = tmp_path / "models" / "annotations.sqlite3"
    stored = b"".join(p.read_bytes() for p in db.parent.glob("annotations.sqlite3*"))
    assert SETUP_TOKEN.encode() not in stored
    with sqlite3.connect(db) as conn:
        assert conn.execute("SELECT ls_url FROM projects WHERE project = '8'").fetchone() == (fake.url,)
