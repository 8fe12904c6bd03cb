"""Odd input gets a 4xx or a per-item skip, never a 500, and heavy configs or /setup floods stay
bounded (issue 14, items 6, 7 and the XML declaration of 8)."""
import base64
import threading
from collections import Counter

import pytest
from hypothesis import HealthCheck, given, settings as hsettings, strategies as st
from requests.auth import _basic_auth_str  # how python-requests, so Label Studio, sends them: Latin-1

from backend.config import Settings
from backend.labelstudio.labelconfig import ConfigError, parse_label_config
from backend.labelstudio.protocol import MAX_ID, annotation_fields, label_studio_id, parse_webhook, task_id
from backend.runtime.models import ModelCache
from backend.state.annotations import AnnotationLog, AnnotationRecord
from backend.web import create_app
from tests.helpers import backend_env, label_config, wait_for_training

SMS_CONFIG = label_config("sms_spam.xml")
FUZZ_EXAMPLES = 100
fuzz = hsettings(max_examples=FUZZ_EXAMPLES, deadline=None, suppress_health_check=list(HealthCheck))
# ids as JSON can carry them: beyond 2**63, negative, non-integral, infinite, not numbers at all
odd_ids = (st.integers(min_value=-(2**70), max_value=2**70) | st.floats(allow_nan=True, allow_infinity=True)
           | st.sampled_from([2**63, 2**63 - 1, 2**64, -1, 10**30, "Infinity", "12", "1e3", "٣", [1], {"id": 1}, True])
           | st.text(max_size=8))


def _choices(n: int) -> str:
    options = "".join(f'<Choice value="label {i}"/>' for i in range(n))
    return f'<View><Text name="text" value="$text"/><Choices name="label" toName="text">{options}</Choices></View>'


@pytest.fixture(scope="module")
def app(tmp_path_factory):
    app = create_app(Settings.from_env(backend_env(tmp_path_factory.mktemp("odd"), MAX_PROJECT_MODELS=4)))
    yield app
    wait_for_training(app, "3", timeout=60)


@pytest.fixture(scope="module")
def client(app):
    return app.test_client()


# -- non-ASCII credentials ------------------------------------------------------------------------
def _basic(user: str, password: str) -> dict:
    return {"Authorization": "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()}


@pytest.fixture(scope="module")
def guarded(tmp_path_factory):
    env = backend_env(tmp_path_factory.mktemp("auth"), BASIC_AUTH_USER="ľudmila", BASIC_AUTH_PASS="pässwörd✓")
    return create_app(Settings.from_env(env)).test_client()


def test_non_ascii_credentials_are_compared_not_crashed(guarded, tmp_path):
    assert guarded.get("/status", headers=_basic("ľudmila", "pässwörd✓")).status_code == 200
    for user, password in [("ľudmila", "wrong"), ("ls", "pässwörd✓"), ("ls", "x"), ("ľudmila", "")]:
        assert guarded.get("/status", headers=_basic(user, password)).status_code == 401
    ascii_config = create_app(Settings.from_env(backend_env(tmp_path, BASIC_AUTH_USER="ls", BASIC_AUTH_PASS="pw")))
    assert ascii_config.test_client().get("/status", headers=_basic("ľs", "pw✓")).status_code == 401
    latin_env = backend_env(tmp_path / "latin", BASIC_AUTH_USER="ls", BASIC_AUTH_PASS="pässwört")
    latin = create_app(Settings.from_env(latin_env))
    for header in (_basic_auth_str("ls", "pässwört"), _basic("ls", "pässwört")["Authorization"]):  # Latin-1, UTF-8
        assert latin.test_client().get("/status", headers={"Authorization": header}).status_code == 200


@fuzz
@given(raw=st.binary(max_size=24), scheme=st.sampled_from(["Basic", "basic", "Bearer", ""]))
def test_fuzz_raw_authorization_headers_never_500(guarded, raw, scheme):
    header = f"{scheme} {base64.b64encode(raw).decode()}"
    assert guarded.get("/status", headers={"Authorization": header}).status_code in (200, 401)


@fuzz
@given(user=st.text(max_size=12).filter(lambda u: ":" not in u), password=st.text(max_size=12))
def test_fuzz_non_ascii_credentials_never_500(guarded, user, password):
    assert guarded.get("/status", headers=_basic(user, password)).status_code in (200, 401)


# -- labeling configs -----------------------------------------------------------------------------
def test_choices_on_several_objects_is_refused_at_setup_not_a_500_on_predict(client):
    config = """<View><Text name="t1" value="$a"/><Text name="t2" value="$b"/>
      <Choices name="c" toName="t1,t2"><Choice value="x"/><Choice value="y"/></Choices></View>"""
    with pytest.raises(ConfigError, match="several objects"):
        parse_label_config(config)
    resp = client.post("/setup", json={"project": "20", "schema": config})
    assert resp.status_code == 400 and "several objects" in resp.json["error"]
    resp = client.post("/predict", json={"project": "20", "label_config": config,
                                         "tasks": [{"id": 1, "data": {"a": "hi", "b": "yo"}}]})
    assert resp.status_code == 400 and "several objects" in resp.json["error"]


def test_xml_declaration_is_accepted(client):
    declared = '<?xml version="1.0" encoding="UTF-8"?>\n' + SMS_CONFIG
    assert parse_label_config(declared).fingerprint == parse_label_config(SMS_CONFIG).fingerprint
    assert parse_label_config("\ufeff" + declared).targets == parse_label_config(SMS_CONFIG).targets
    assert client.post("/setup", json={"project": "21", "schema": declared}).status_code == 200


def test_too_many_choices_is_a_clear_400(client):
    resp = client.post("/setup", json={"project": "22", "schema": _choices(101)})
    assert resp.status_code == 400 and "MAX_CHOICES=100" in resp.json["error"]
    assert len(parse_label_config(_choices(101), max_choices=200).targets[0].labels) == 101


# -- ids --------------------------------------------------------------------------------------------
def test_one_odd_id_does_not_fail_its_batch(client, app):
    log = app.extensions["runtime"].log
    for i in (1, 2, 3):
        event = {"action": "ANNOTATION_CREATED", "project": {"id": 3, "label_config": SMS_CONFIG},
                 "annotation": {"id": i, "task": 10 + i, "result": []}, "task": {"id": 10 + i, "data": {"text": "x"}}}
        assert client.post("/webhook", json=event).json["result"]["recorded"] == 1
    # a task whose own id is a list or overflows: the annotation's task id is used
    for i, odd in ((4, [14]), (5, 2**64)):
        event = {"action": "ANNOTATION_CREATED", "project": {"id": 3}, "annotation": {"id": i, "task": 10 + i},
                 "task": {"id": odd, "data": {"text": "x"}}}
        assert client.post("/webhook", json=event).json["result"]["recorded"] == 1
    body = ('{"action": "ANNOTATIONS_DELETED", "project": {"id": 3}, "annotations": '
            '[{"id": 1}, {"id": [2]}, {"id": 18446744073709551616}, {"id": Infinity}, {"id": 1e300}, {"id": 3}]}')
    resp = client.post("/webhook", data=body, content_type="application/json")
    assert resp.status_code == 201 and resp.json["result"]["recorded"] == 2  # 1 and 3; the odd ones skipped
    assert "4 entries" in resp.json["result"]["warning"]
    assert log.count("3") == 3
    tasks = [{"id": [1], "data": {"text": "hi"}}, {"id": 2**64, "data": {"text": "free prize"}},
             {"id": True, "data": {"text": "call me"}}, {"id": 4, "data": {"text": "WINNER"}}]
    resp = client.post("/predict", json={"tasks": tasks, "project": "3", "label_config": SMS_CONFIG})
    assert resp.status_code == 200 and all(resp.json["results"])


@fuzz
@given(value=odd_ids)
def test_fuzz_ids_are_label_studio_ids_or_none(value):
    found = label_studio_id(value)
    assert found is None or (type(found) is int and 0 <= found <= MAX_ID)
    assert task_id({"id": value}) in (None, value)


@fuzz
@given(annotation_id=odd_ids, task_ref=odd_ids, own_id=odd_ids)
def test_fuzz_overflowing_ids_never_escape_as_overflow(tmp_path_factory, annotation_id, task_ref, own_id):
    """annotation_fields raises only KeyError/ValueError, and what it returns the log can store."""
    try:
        fields = annotation_fields({"id": annotation_id, "task": task_ref}, {"id": own_id})
    except (KeyError, ValueError):
        return
    log = _fuzz_log(tmp_path_factory)
    log.record("1", AnnotationRecord(*fields))
    event = parse_webhook({"action": "ANNOTATIONS_DELETED", "project": 1, "annotations": [{"id": annotation_id}]})
    log.delete("1", event.deleted_ids)


_logs: dict = {}


def _fuzz_log(factory) -> AnnotationLog:
    if "log" not in _logs:
        _logs["log"] = AnnotationLog(factory.mktemp("fuzzlog") / "a.sqlite3")
    return _logs["log"]


# -- deep JSON ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("endpoint", ["/setup", "/predict", "/webhook", "/search"])
@pytest.mark.parametrize("depth", [100, 1000, 100_000])
def test_deeply_nested_json_is_a_400(client, endpoint, depth):
    resp = client.post(endpoint, data="[" * depth + "]" * depth, content_type="application/json")
    assert resp.status_code == 400 and "error" in resp.json  # nested too deeply, or not a JSON object
    body = '{"tasks": ' + '{"a": ' * depth + "1" + "}" * depth + "}"
    resp = client.post(endpoint, data=body, content_type="application/json")
    assert resp.status_code == 400 and "nested more than 64 levels" in resp.json["error"]


@fuzz
@given(depth=st.integers(1, 3000), kind=st.sampled_from(["[", '{"k":']),
       endpoint=st.sampled_from(["/setup", "/predict", "/webhook"]))
def test_fuzz_nesting_never_500(client, depth, kind, endpoint):
    close = "]" if kind == "[" else "}"
    body = '{"project": 1, "tasks": ' + kind * depth + "0" * (kind != "[") + close * depth + "}"
    assert client.post(endpoint, data=body, content_type="application/json").status_code < 500


# -- /setup floods ----------------------------------------------------------------------------------
def test_setup_flood_keeps_threads_and_models_bounded(client, app):
    before = {t.ident for t in threading.enumerate()}
    peak = 0
    for i in range(40):  # distinct configs, as an anonymous flood sends them
        config = SMS_CONFIG.replace('value="spam"', f'value="spam {i}"')
        assert client.post("/setup", json={"project": f"{100 + i}", "schema": config}).status_code == 200
        peak = max(peak, len([t for t in threading.enumerate() if t.ident not in before]))
    runtime = app.extensions["runtime"]
    assert peak <= 2, f"{peak} new threads"  # one warm-up worker (+ a training thread at most)
    assert len(runtime.models.built()) <= 4  # MAX_PROJECT_MODELS


def test_model_cache_drops_least_recently_used_and_idle_models_keeping_their_counters():
    now = [0.0]

    class Model:
        def __init__(self, project, config):
            self.project_id, self.stats = project, Counter(embeddings_computed=1)

    cache = ModelCache(Model, max_models=2, idle_s=100, clock=lambda: now[0])
    a = cache.get("1", "<a/>")
    assert cache.get("1", "<a/>") is a
    cache.get("2", "<b/>")
    cache.get("1", "<a/>")  # a is now the most recently used
    cache.get("3", "<c/>")  # drops b
    assert [m.project_id for m in cache.models()] == ["1", "3"]
    now[0] = 150.0
    cache.get("4", "<d/>")  # a and c idle for 150 s: dropped
    assert [m.project_id for m in cache.models()] == ["4"]
    assert cache.retired_stats["embeddings_computed"] == 3
    assert cache.models("4") and not cache.models("1")
