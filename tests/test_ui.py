"""The search page's server side without Label Studio: the ranking it pages through is /search's, "more
like this" leaves the task itself out, labeled tasks drop out; the page and every write sit behind
basic auth, writes also behind the CSRF checks; text from the labeling config is escaped."""
import base64

import numpy as np
import pytest

from backend.config import Settings
from backend.web import create_app
from backend.web.ui.overview import curve_chart
from tests.helpers import DATA_DIR, backend_env, label_config

SMS_CONFIG = label_config("sms_spam.xml")
QUERY = "free prize, call now"
USER, PASSWORD = "page-user", "page-pass"
AUTH = {"Authorization": "Basic " + base64.b64encode(f"{USER}:{PASSWORD}".encode()).decode()}


@pytest.fixture(scope="module")
def app(tmp_path_factory):
    env = backend_env(tmp_path_factory.mktemp("ui"), LOCAL_FILES_DOCUMENT_ROOT=DATA_DIR,
                      BASIC_AUTH_USER=USER, BASIC_AUTH_PASS=PASSWORD, PREDICT_TIMEOUT=900)
    return create_app(Settings.from_env(env))


@pytest.fixture(scope="module")
def client(app):
    return app.test_client()


@pytest.fixture(scope="module")
def sms(client, sms_messages):
    """Project 31: 40 spam and 160 ham messages embedded through /predict; {task id: truth}."""
    texts = [m for m in sms_messages if m[0] == "spam"][:40] + [m for m in sms_messages if m[0] == "ham"][:160]
    order = np.random.default_rng(1).permutation(len(texts))
    tasks = [{"id": 3000 + i, "data": {"text": texts[j][1]}} for i, j in enumerate(order)]
    assert client.post("/setup", json={"project": "31", "schema": SMS_CONFIG}, headers=AUTH).status_code == 200
    resp = client.post("/predict", json={"tasks": tasks, "project": "31", "label_config": SMS_CONFIG}, headers=AUTH)
    assert resp.status_code == 200 and all(resp.json["results"])
    return {"truth": {3000 + i: texts[j][0] for i, j in enumerate(order)}, "tasks": tasks}


def _page(client, **params):
    resp = client.get("/ui/api/31/search", query_string=params, headers=AUTH)
    assert resp.status_code == 200, resp.json
    return resp.json


def test_pages_are_prefixes_of_the_search_ranking(client, sms):
    reference = client.post("/search", json={"query": QUERY, "k": 50, "project": "31"}, headers=AUTH).json["results"]
    first, second = _page(client, q=QUERY, limit=25), _page(client, q=QUERY, offset=25, limit=25)
    paged = first["results"] + second["results"]
    assert [r["task"] for r in paged] == [r["task"] for r in reference]
    assert [r["score"] for r in paged] == pytest.approx([r["score"] for r in reference], abs=1e-3)
    assert first["more"] and first["embedded"] == 200 and first["offset"] == 0
    spam = sum(sms["truth"][r["task"]] == "spam" for r in first["results"][:20])
    print(f"\n[ui] spam among the page's top 20 for {QUERY!r}: {spam}/20 (base rate 20%), "
          f"{first['took_ms']} ms")
    assert spam >= 15
    # no Label Studio connection: the texts cannot be read, the ranking still can
    assert all(r["text"] is None for r in first["results"])

    # "more like this": the task's neighbours, itself left out, best first
    seed = first["results"][0]["task"]
    like = _page(client, like=seed, limit=20)["results"]
    assert seed not in {r["task"] for r in like} and len(like) == 20
    assert [r["score"] for r in like] == sorted((r["score"] for r in like), reverse=True)
    assert sum(sms["truth"][r["task"]] == "spam" for r in like) >= 12


def test_labeled_tasks_leave_the_results(client, sms):
    top = _page(client, q=QUERY, limit=10)["results"]
    by_id = {t["id"]: t for t in sms["tasks"]}
    task = by_id[top[0]["task"]]
    result = [{"from_name": "label", "to_name": "text", "type": "choices", "value": {"choices": ["spam"]}}]
    resp = client.post("/webhook", headers=AUTH, json={
        "action": "ANNOTATION_CREATED", "project": {"id": 31, "label_config": SMS_CONFIG},
        "annotation": {"id": 9001, "task": task["id"], "result": result}, "task": task})
    assert resp.status_code == 201
    again = _page(client, q=QUERY, limit=9)["results"]
    assert [r["task"] for r in again] == [r["task"] for r in top[1:]]


@pytest.mark.parametrize("params, message", [
    ({}, "give a text query"), ({"q": "x" * 2001}, "longer than"), ({"q": "a", "limit": 0}, "'limit'"),
    ({"q": "a", "offset": "two"}, "'offset'"), ({"like": 999999}, "not embedded")])
def test_bad_searches_are_clear_400s(client, sms, params, message):
    resp = client.get("/ui/api/31/search", query_string=params, headers=AUTH)
    assert resp.status_code == 400 and message in resp.json["error"]


def test_page_needs_auth_and_writes_need_the_page_token_from_the_page_origin(client, sms):
    assert client.get("/").status_code == 200  # the public health answer stays public
    for path in ("/ui", "/ui/projects/31", "/ui/api/31/search?q=a", "/ui/api/31/thumb/3000", "/ui/static/ui.js"):
        assert client.get(path).status_code == 401, path
    html = client.get("/ui/projects/31", headers=AUTH).get_data(as_text=True)
    token = html.split('name="csrf-token" content="', 1)[1].split('"', 1)[0]
    body = {"label": "spam", "mode": "predictions", "items": [{"task": 3001, "score": 0.5}]}
    cases = {
        "no token": ({}, 403, "X-CSRF-Token"),
        "wrong token": ({"X-CSRF-Token": "0" * 64}, 403, "X-CSRF-Token"),
        "another site": ({"X-CSRF-Token": token, "Origin": "http://evil.example"}, 403, "cross-origin"),
        "cross-site fetch": ({"X-CSRF-Token": token, "Sec-Fetch-Site": "cross-site"}, 403, "cross-site"),
        # past the checks: refused only because this test's backend has no Label Studio to write to
        "the page": ({"X-CSRF-Token": token, "Origin": "http://localhost"}, 400, "no Label Studio connection"),
    }
    for name, (headers, status, message) in cases.items():
        resp = client.post("/ui/api/31/apply", json=body, headers={**AUTH, **headers})
        assert (resp.status_code, message in resp.json["error"]) == (status, True), (name, resp.json)
    form = client.post("/ui/api/31/apply", data={"label": "spam"}, headers={**AUTH, "X-CSRF-Token": token})
    assert form.status_code == 403  # an HTML form cannot send JSON
    other = base64.b64encode(b"someone:else").decode()  # the token is bound to the credentials it was served to
    assert client.post("/ui/api/31/view", json={"tasks": [3001]},
                       headers={"Authorization": f"Basic {other}", "X-CSRF-Token": token}).status_code == 401


def test_labeling_config_text_is_escaped_on_the_page(client):
    config = ('<View><Text name="text" value="$text"/><Choices name="label" toName="text">'
              '<Choice value="&lt;img src=x onerror=alert(1)&gt;"/><Choice value="ham"/></Choices></View>')
    resp = client.post("/setup", json={"project": "32", "schema": config}, headers=AUTH)
    assert resp.status_code == 200
    html = client.get("/ui/projects/32", headers=AUTH).get_data(as_text=True)
    assert "&lt;img src=x onerror=alert(1)&gt;" in html and "<img src=x" not in html


def test_learning_curve_chart_draws_audit_intervals_and_leaves_out_unaudited_versions():
    # a version measured only on its test split (labels people chose, not an unbiased sample) is no point
    chart = curve_chart([{"n_labels": 10, "test_accuracy": 0.6},
                         {"n_labels": 20, "audit_accuracy": 0.7, "audit_low": 0.4, "audit_high": 0.9},
                         {"n_labels": 40, "audit_accuracy": 0.8, "audit_low": 0.7, "audit_high": 0.9}])
    first, second = chart["marks"]
    assert "20 labels: 0.70 (0.40-0.90, audit)" == first["label"]
    assert second["y_high"] < second["y"] < second["y_low"]  # SVG y grows downwards
    assert second["x"] == chart["width"] - chart["pad"] and first["x"] == chart["pad"] + (chart["width"] - 2 * chart["pad"]) / 2
    assert curve_chart([{"n_labels": 10, "test_accuracy": 0.6}]) is None
    assert curve_chart([]) is None
