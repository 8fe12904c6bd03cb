"""POST /search (text query -> most similar unlabeled tasks), in process with the real MiniLM and
random-weight CLIP, and clip-backend-bulk-label against a real Label Studio (e2e)."""
import json
import subprocess
import sys
import time

import numpy as np
import pytest
import requests

import backend.embed.store as store_module
from backend.flows.search import query_embedding, search_target
from backend.web import create_app
from backend.config import Settings
from tests.helpers import DATA_DIR, backend_env, label_config

SMS_CONFIG = label_config("sms_spam.xml")
IMAGE_CONFIG = label_config("image_classification.xml")
SPAM_QUERY = "WINNER! claim your free prize, call now"
N_SPAM, N_HAM = 100, 400
# Measured with the real MiniLM on this sample (100 spam, 400 ham: 20% spam): 20/20 of the top 20
# are spam, also after the two best hits are labeled and left out. Asserted with margin.
MIN_SPAM_AT_20 = 16


@pytest.fixture(scope="module")
def app(tmp_path_factory):
    env = backend_env(tmp_path_factory.mktemp("search"), LOCAL_FILES_DOCUMENT_ROOT=DATA_DIR)
    return create_app(Settings.from_env(env))


@pytest.fixture(scope="module")
def client(app):
    return app.test_client()


@pytest.fixture(scope="module")
def sms_project(client, sms_messages):
    """Project 21: 100 spam and 400 ham messages, embedded through /predict. Returns {task id: truth}."""
    spam = [t for label, t in sms_messages if label == "spam"][:N_SPAM]
    ham = [t for label, t in sms_messages if label == "ham"][:N_HAM]
    texts = [("spam", t) for t in spam] + [("ham", t) for t in ham]
    order = np.random.default_rng(0).permutation(len(texts))  # spam and ham interleaved, ids say nothing
    tasks = [{"id": 1000 + i, "data": {"text": texts[j][1]}} for i, j in enumerate(order)]
    truth = {1000 + i: texts[j][0] for i, j in enumerate(order)}
    resp = client.post("/predict", json={"tasks": tasks, "project": "21", "label_config": SMS_CONFIG})
    assert resp.status_code == 200 and all(resp.json["results"])
    return {"truth": truth, "tasks": {t["id"]: t for t in tasks}}


def _search(client, **body):
    resp = client.post("/search", json=body)
    assert resp.status_code == 200, resp.json
    return resp.json


def _annotate(client, task, choice, annotation_id):
    result = [{"from_name": "label", "to_name": "text", "type": "choices", "value": {"choices": [choice]}}]
    resp = client.post("/webhook", json={
        "action": "ANNOTATION_CREATED", "project": {"id": 21, "label_config": SMS_CONFIG},
        "annotation": {"id": annotation_id, "task": task["id"], "result": result}, "task": task})
    assert resp.status_code == 201


def test_text_query_finds_spam_and_leaves_out_labeled_tasks(client, sms_project):
    truth = sms_project["truth"]
    found = _search(client, query=SPAM_QUERY, k=20, project="21", label_config=SMS_CONFIG)
    assert found["query"] == SPAM_QUERY and found["encoder"].startswith("st-") and found["to_name"] == "text"
    assert found["embedded"] == N_SPAM + N_HAM and "hint" not in found
    results = found["results"]
    assert len(results) == 20 and len({r["task"] for r in results}) == 20
    scores = [r["score"] for r in results]
    assert scores == sorted(scores, reverse=True) and all(-1.0 <= s <= 1.0 + 1e-6 for s in scores)
    spam_at_20 = sum(truth[r["task"]] == "spam" for r in results)
    print(f"\n[search] spam in the top 20 for {SPAM_QUERY!r}: {spam_at_20}/20 "
          f"(base rate {N_SPAM / (N_SPAM + N_HAM):.0%}), scores {scores[0]:.3f}..{scores[-1]:.3f}")
    assert spam_at_20 >= MIN_SPAM_AT_20

    # the cosine similarity is the real one: MiniLM embeds the query like an item
    model = client.application.extensions["runtime"].model("21", SMS_CONFIG)
    target = search_target(model)
    query = query_embedding(model, SPAM_QUERY, target)
    best = sms_project["tasks"][results[0]["task"]]
    item = model.embed(target, [best])[1][0]
    assert results[0]["score"] == pytest.approx(float(item @ query), abs=1e-4)

    # label the two best hits (webhooks, as Label Studio sends them): they are no longer offered
    for n, r in enumerate(results[:2]):
        _annotate(client, sms_project["tasks"][r["task"]], "spam", annotation_id=500 + n)
    again = _search(client, query=SPAM_QUERY, k=20, project="21")  # label_config known from the log
    assert [r["task"] for r in again["results"]][:18] == [r["task"] for r in results[2:]]
    assert len(again["results"]) == 20
    assert not {r["task"] for r in again["results"]} & {r["task"] for r in results[:2]}
    assert sum(truth[r["task"]] == "spam" for r in again["results"]) >= MIN_SPAM_AT_20

    # the same exclusion when there are too many labeled tasks for a Chroma filter (over-fetch path)
    old = store_module.MAX_NIN
    store_module.MAX_NIN = 1
    try:
        fetched = _search(client, query=SPAM_QUERY, k=20, project="21")
    finally:
        store_module.MAX_NIN = old
    assert [r["task"] for r in fetched["results"]] == [r["task"] for r in again["results"]]

    # k is respected; a ham-like query finds ham
    assert len(_search(client, query=SPAM_QUERY, k=3, project="21")["results"]) == 3
    hammy = _search(client, query="ok, see you at home later", k=10, project="21")["results"]
    assert sum(truth[r["task"]] == "ham" for r in hammy) >= 8


def test_empty_collection_gives_no_results_and_says_how_to_embed(client):
    found = _search(client, query="free prize", k=5, project="22", label_config=SMS_CONFIG)
    assert found["results"] == [] and found["embedded"] == 0
    assert "Retrieve predictions" in found["hint"] and "clip-backend-embed" in found["hint"]


@pytest.mark.parametrize("body, message", [
    ({"k": 5}, "'query' must be a non-empty string"),
    ({"query": "   "}, "'query' must be a non-empty string"),
    ({"query": 7}, "'query' must be a non-empty string"),
    ({"query": "x" * 2001}, "longer than 2000"),
    ({"query": "prize", "k": 0}, "'k' must be an integer from 1 to 1000"),
    ({"query": "prize", "k": 1001}, "'k' must be an integer from 1 to 1000"),
    ({"query": "prize", "k": "20"}, "'k' must be an integer"),
    ({"query": "prize", "k": True}, "'k' must be an integer"),
    ({"query": "prize", "k": 2.5}, "'k' must be an integer"),
    ({"query": "prize", "to_name": "image"}, "to_name 'image' is not an object tag"),
    ({"query": "prize", "to_name": 3}, "'to_name' must be"),
    ({"query": "prize", "project": None}, "'project' is required"),
    ({"query": "prize", "project": "777", "label_config": None}, "label_config is missing"),
])
def test_bad_search_requests_are_clear_400s(client, body, message):
    body = {"project": "22", "label_config": SMS_CONFIG, **body}
    body = {key: value for key, value in body.items() if value is not None}
    resp = client.post("/search", json=body)
    assert resp.status_code == 400, resp.json
    assert message in resp.json["error"], resp.json["error"]
    assert client.post("/search", data="nope", content_type="application/json").status_code == 400


def test_image_search_uses_clip_text_tower_on_stored_image_embeddings(client, cifar_images):
    paths = [p for cls in ("horse", "ship", "cat") for p in cifar_images[cls][:4]]
    tasks = [{"id": 1 + i, "data": {"image": str(p.relative_to(DATA_DIR))}} for i, p in enumerate(paths)]
    resp = client.post("/predict", json={"tasks": tasks, "project": "23", "label_config": IMAGE_CONFIG})
    assert resp.status_code == 200 and all(resp.json["results"])

    found = _search(client, query="horse", k=5, project="23", label_config=IMAGE_CONFIG, to_name="image")
    assert found["encoder"] == "clip-ViT-B-32-none" and found["model_version"].startswith("clip-ViT-B-32-none/")
    results = found["results"]
    assert len(results) == 5 and {r["task"] for r in results} <= {t["id"] for t in tasks}
    scores = [r["score"] for r in results]
    assert scores == sorted(scores, reverse=True)

    # random weights say nothing about quality, but the ranking must be exact cosine similarity
    # between the prompt-ensembled text query and the stored image embeddings
    model = client.application.extensions["runtime"].model("23", IMAGE_CONFIG)
    stored = model.store.collection("23", found["encoder"]).get(include=["embeddings", "metadatas"])
    ids = np.array([m["task_id"] for m in stored["metadatas"]])
    sims = np.asarray(stored["embeddings"], np.float32) @ query_embedding(model, "horse", search_target(model, "image"))
    best = np.argsort(-sims)[:5]
    assert [r["task"] for r in results] == ids[best].tolist()
    np.testing.assert_allclose(scores, sims[best], atol=1e-4)

    assert len(_search(client, query="horse", k=50, project="23", label_config=IMAGE_CONFIG)["results"]) == len(tasks)  # k > items


# -- clip-backend-bulk-label against a real Label Studio -------------------------------------------

def _bulk_label(*args, stdin=None):
    cmd = [sys.executable, "-m", "backend.cli.bulk_label", *map(str, args)]
    proc = subprocess.run(cmd, capture_output=True, text=True, input=stdin, timeout=120)
    return proc


@pytest.mark.e2e
def test_bulk_label_imports_predictions_then_annotations(label_studio, backend, sms_messages):
    ls = label_studio
    started = time.perf_counter()
    project_id = ls.create_project("bulk label e2e", SMS_CONFIG)
    sample = [("spam", t) for label, t in sms_messages if label == "spam"][:20] + \
             [("ham", t) for label, t in sms_messages if label == "ham"][:60]
    ls.import_tasks(project_id, [{"text": text, "truth": label} for label, text in sample])
    ls.connect_ml_backend(project_id, backend, title="clip-al")
    ls.retrieve_predictions(project_id)  # embeds every task into the store
    truth = {t["id"]: t["data"]["truth"] for t in ls.list_tasks(project_id)}
    api_key = ls.create_personal_access_token()
    common = ["--backend", backend, "--label-studio", ls.url, "--api-key", api_key, "--project", project_id]

    # a label that is not a choice of the config is a clear error, nothing is imported
    bad = _bulk_label(*common, "--query", SPAM_QUERY, "--label", "junk")
    assert bad.returncode == 2 and "'junk' is not a choice" in bad.stderr and "spam" in bad.stderr

    # predictions: exactly the tasks /search returns, labeled spam, model_version "search:<query>"
    expected = requests.post(backend + "/search", json={"query": SPAM_QUERY, "k": 10, "project": str(project_id),
                                                        "label_config": SMS_CONFIG}, timeout=60).json()["results"]
    proc = _bulk_label(*common, "--query", SPAM_QUERY, "--label", "spam", "--k", 10)
    assert proc.returncode == 0, proc.stderr + proc.stdout
    print("\n" + proc.stdout)
    tasks = {t["id"]: t for t in ls.list_tasks(project_id)}
    version = f"search:{SPAM_QUERY}"
    predicted = {tid: p for tid, t in tasks.items() for p in t["predictions"] if p["model_version"] == version}
    assert set(predicted) == {r["task"] for r in expected} and len(predicted) == 10
    for r in expected:
        prediction = predicted[r["task"]]
        assert prediction["score"] == pytest.approx(r["score"], abs=1e-4)
        (region,) = prediction["result"]
        assert (region["from_name"], region["to_name"], region["value"]["choices"]) == ("label", "text", ["spam"])
        assert str(r["task"]) in proc.stdout  # the review table lists every match
    precision = sum(truth[r["task"]] == "spam" for r in expected) / len(expected)
    print(f"[bulk_label] spam among the 10 predicted tasks: {precision:.0%}")
    assert not any(t["annotations"] for t in tasks.values())

    # --accept --yes: annotations on the matches of a ham query; --min-score drops weaker ones
    query = "ok, see you at home later"
    expected = requests.post(backend + "/search", json={"query": query, "k": 5, "project": str(project_id)},
                             timeout=60).json()["results"]
    proc = _bulk_label(*common, "--query", query, "--label", "ham", "--k", 5, "--accept", "--yes")
    assert proc.returncode == 0, proc.stderr + proc.stdout
    annotated = {tid: t["annotations"] for tid, t in ((t["id"], t) for t in ls.list_tasks(project_id)) if t["annotations"]}
    assert set(annotated) == {r["task"] for r in expected}
    for annotations in annotated.values():
        (annotation,) = annotations
        assert annotation["result"][0]["value"]["choices"] == ["ham"]
    # the webhooks told the backend: the annotated tasks are no longer offered
    deadline = time.time() + 10
    while time.time() < deadline:
        again = requests.post(backend + "/search", json={"query": query, "k": 5, "project": str(project_id)},
                              timeout=60).json()["results"]
        if not {r["task"] for r in again} & set(annotated):
            break
        time.sleep(0.5)
    assert not {r["task"] for r in again} & set(annotated)

    # without --yes the script asks first; "n" creates nothing
    proc = _bulk_label(*common, "--query", query, "--label", "ham", "--k", 3, "--accept", stdin="n\n")
    assert proc.returncode == 1 and "aborted" in proc.stdout.lower()
    assert sum(bool(t["annotations"]) for t in ls.list_tasks(project_id)) == len(annotated)

    # --min-score above every match: nothing to do, nothing imported
    proc = _bulk_label(*common, "--query", query, "--label", "ham", "--min-score", 0.999)
    assert proc.returncode == 0 and "no match" in proc.stdout.lower()
    print(f"[bulk_label] e2e took {time.perf_counter() - started:.1f}s beyond Label Studio's start")
