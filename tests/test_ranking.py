"""Queue priorities (ranking.py) in process: what /predict returns as the prediction score, before
and after training, and the saved ranking of a published version. Real MiniLM, SMS spam texts."""
import numpy as np
import pytest

from backend.flows.rank import rank_batch, sync_labeled
from backend.model import BACKEND_VERSION
from backend.web import create_app
from backend.config import Settings, SettingsError
from backend.queue.measures import top2_margin
from tests.helpers import backend_env, label_config, wait_for_training

SMS_CONFIG = label_config("sms_spam.xml")
BATCH = 8


@pytest.fixture(scope="module")
def app(tmp_path_factory):
    env = backend_env(tmp_path_factory.mktemp("ranking"), QUEUE_BATCH=BATCH)
    return create_app(Settings.from_env(env))


@pytest.fixture(scope="module")
def sms_tasks(sms_messages):
    spam = [m for m in sms_messages if m[0] == "spam"][:60]
    ham = [m for m in sms_messages if m[0] == "ham"][:60]
    return [{"id": 1 + i, "data": {"text": text}, "truth": label} for i, (label, text) in enumerate(spam + ham)]


def _predict(client, project, tasks):
    body = {"tasks": [{"id": t["id"], "data": t["data"]} for t in tasks], "project": project,
            "label_config": SMS_CONFIG}
    return client.post("/predict", json=body).json["results"]


def test_a_batch_is_ranked_cold_start_batch_first_and_diverse(app, sms_tasks):
    client = app.test_client()
    results = _predict(client, "21", sms_tasks[:40] + sms_tasks[60:100])
    scores = np.array([r["score"] for r in results])
    assert len(set(scores.round(6))) == len(scores)  # a strict order
    assert (scores < 0.5).sum() == BATCH  # the strategy's batch comes first, in query order
    assert all(0.5 <= r["result"][0]["score"] <= 1.0 for r in results)  # regions keep their confidence

    model = app.extensions["runtime"].model("21", SMS_CONFIG)
    first = [t for t, s in zip(sms_tasks[:40] + sms_tasks[60:100], scores) if s < 0.5]
    (inference,) = model.infer(first).values()
    similarity = inference.embeddings @ inference.embeddings.T
    assert similarity[np.triu_indices(len(first), 1)].max() <= 0.95  # no near-duplicates in the batch


def test_a_lone_task_gets_its_confidence(app, sms_tasks):
    (result,) = _predict(app.test_client(), "22", sms_tasks[:1])
    assert result["score"] == result["result"][0]["score"]


def test_after_training_the_boundary_comes_first(app, sms_tasks):
    runtime = app.extensions["runtime"]
    client = app.test_client()
    labeled = sms_tasks[:15] + sms_tasks[60:75]
    for i, task in enumerate(labeled):
        client.post("/webhook", json={
            "action": "ANNOTATION_CREATED", "project": {"id": 23, "label_config": SMS_CONFIG},
            "task": {"id": task["id"], "data": task["data"]},
            "annotation": {"id": 900 + i, "task": task["id"], "result": [
                {"from_name": "label", "to_name": "text", "type": "choices", "value": {"choices": [task["truth"]]}}]}})
    assert wait_for_training(app, "23", timeout=300)
    model = runtime.model("23", SMS_CONFIG)
    model.refresh()
    assert model.trained

    unlabeled = sms_tasks[15:60] + sms_tasks[75:120]
    inferred = model.infer(unlabeled)
    (inference,) = inferred.values()
    margins = top2_margin(inference.proba)
    (known,) = model.infer(labeled).values()  # what the training run embedded
    classes = [known.target.outputs.index(labeled[i]["truth"]) for i in known.indices]
    priorities = model.priorities(unlabeled, inferred, "boundary", BATCH,
                                  labeled={"label": (known.embeddings, np.array(classes))})
    p = np.array([priorities[t["id"]] for t in unlabeled])
    batch = p < 0.5
    assert batch.sum() == BATCH
    assert margins[batch].mean() < margins[~batch].mean()  # the batch sits on the decision boundary
    assert margins[np.argmin(p)] <= np.quantile(margins, 0.2)  # the next task is among the least sure
    # outside the batch, the order is by margin: the queue continues by uncertainty
    rest = np.flatnonzero(~batch)
    assert np.all(np.diff(margins[rest][np.argsort(p[rest])]) >= -1e-6)


def test_the_next_batch_is_found_through_the_vector_store(app, sms_tasks):
    """Project 23 is trained (above): the batch comes from Chroma, labeled tasks are flagged there."""
    model = app.extensions["runtime"].model("23", SMS_CONFIG)
    model.refresh()
    labeled, unlabeled = sms_tasks[:15] + sms_tasks[60:75], sms_tasks[15:60] + sms_tasks[75:120]
    labeled_ids = {t["id"] for t in labeled}
    model.embed_tasks(unlabeled)
    assert sync_labeled(model, labeled_ids) in (0, 30)  # the training run may have flagged them
    assert sync_labeled(model, labeled_ids) == 0  # a run touches only what changed
    (known,) = model.infer(labeled).values()
    classes = np.array([known.target.outputs.index(labeled[i]["truth"]) for i in known.indices])
    batch = rank_batch(model, BATCH, "boundary", {"label": (known.embeddings, classes)}, audit_pending=[],
                       audit_new=2, sample_size=100, seed=1)
    order = sorted(batch.priorities, key=batch.priorities.get)
    assert len(order) == BATCH and not set(order) & labeled_ids and batch.strategy == "boundary"
    assert len(batch.audit) == 2 and set(batch.audit) <= set(order)
    assert order[0] not in batch.audit and order[-1] not in batch.audit  # spread through the batch
    (inference,) = model.infer(unlabeled).values()
    margin = dict(zip([unlabeled[i]["id"] for i in inference.indices], top2_margin(inference.proba)))
    picked = [t for t in order if t not in batch.audit]
    assert np.mean([margin[t] for t in picked]) < np.mean(list(margin.values()))  # near the boundary
    assert {t: p["score"] for t, p in batch.predictions.items()} == batch.priorities
    # an annotation deleted: the task is back in the store's pool
    assert sync_labeled(model, labeled_ids - {labeled[0]["id"]}) == 1


def test_predict_serves_the_saved_ranking_of_its_version_only(app, sms_tasks, tmp_path):
    client = app.test_client()
    model = app.extensions["runtime"].model("24", SMS_CONFIG)
    model.state.save_ranking(model.model_version, "cold_start", {sms_tasks[0]["id"]: 0.0123})
    assert _predict(client, "24", sms_tasks[:1])[0]["score"] == pytest.approx(0.0123)
    model.state.save_ranking("another-version", "cold_start", {sms_tasks[0]["id"]: 0.0123})
    (result,) = _predict(client, "24", sms_tasks[:1])
    assert result["score"] == result["result"][0]["score"]


@pytest.mark.parametrize("env, message", [
    ({"QUEUE_STRATEGY": "best"}, "QUEUE_STRATEGY"),
    ({"QUEUE_STRATEGY": "cold_start"}, "QUEUE_STRATEGY"),
    ({"QUEUE_BATCH": "0"}, "QUEUE_BATCH"),
    ({"UNCERTAINTY_SAMPLING": "maybe"}, "UNCERTAINTY_SAMPLING"),
])
def test_queue_settings_are_validated(env, message):
    with pytest.raises(SettingsError, match=message):
        Settings.from_env(env)


def test_queue_settings_defaults_and_aliases():
    settings = Settings.from_env({"QUEUE_STRATEGY": "least-confidence", "UNCERTAINTY_SAMPLING": "yes"})
    assert settings.queue_strategy == "least_confidence" and settings.uncertainty_sampling
    default = Settings.from_env({})
    assert (default.queue_strategy, default.queue_batch, default.queue_view, default.uncertainty_sampling) == \
        ("boundary", 50, "Boundary first", False)


def test_every_version_name_of_the_backend_is_recognised_as_its_own(app):
    model = app.extensions["runtime"].model("25", SMS_CONFIG)
    for name in (model.model_version, model.version_name(1), model.version_name(1234)):
        assert BACKEND_VERSION.match(name), name
    for other in ("search:horse", "other-model", "yolo-v8", model.model_version + "-copy"):
        assert not BACKEND_VERSION.match(other), other
