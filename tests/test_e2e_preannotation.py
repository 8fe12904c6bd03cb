"""Pre-annotation that never times out, with a real Label Studio 1.23.2: imported tasks get
predictions without any user action, and a "Retrieve predictions" batch too big for the backend's
PREDICT_TIMEOUT ends with every task predicted once (the rest is imported in the background)."""
import time

import pytest
import requests

from backend.model import BACKEND_VERSION
from tests.helpers import BackendProcess, backend_env, label_config, wait_until
from tests.ls_server import free_port

pytestmark = pytest.mark.e2e


def _ours(task):
    return [p for p in task["predictions"] if BACKEND_VERSION.match(p["model_version"])]


def _all_predicted(ls, project_id, n):
    """(the backend's version, tasks) once each of the n tasks holds a prediction of the backend."""
    tasks = ls.list_tasks(project_id)
    if len(tasks) == n and all(_ours(t) for t in tasks):
        (version,) = {p["model_version"] for t in tasks for p in _ours(t)}  # one version for all
        return version, tasks
    return None


@pytest.fixture(scope="module")
def slow_backend(label_studio, tmp_path_factory):
    """A backend that must answer /predict within 2 s and leaves imports alone (only "Retrieve
    predictions" asks it for predictions), so the timeout path is what the test sees."""
    yield from _backend(label_studio, tmp_path_factory.mktemp("slow-backend"), PREDICT_TIMEOUT="2",
                        PREANNOTATE_IMPORTS="false", QUEUE_VIEW="")


def _backend(label_studio, tmp, **settings):
    env = backend_env(tmp, LABEL_STUDIO_URL=label_studio.url, LABEL_STUDIO_API_KEY=label_studio.create_personal_access_token(),
                      **settings)
    server = BackendProcess(env, tmp / "backend.log", free_port()).start()
    yield server.url
    server.kill()


def test_tasks_imported_after_connecting_get_predictions_without_user_action(label_studio, backend, sms_messages):
    ls = label_studio
    project_id = ls.create_project("imports e2e", label_config("sms_spam.xml"))
    ls.connect_ml_backend(project_id, backend, title="clip-al")
    wait_until(lambda: ls.get_project(project_id)["model_version"], timeout=120, what="the backend's version")
    ls.import_tasks(project_id, [{"text": text} for _, text in sms_messages[1000:1030]])
    version, tasks = wait_until(lambda: _all_predicted(ls, project_id, 30), timeout=180, step=1,
                                what="predictions on every imported task")
    assert all(len(_ours(t)) == 1 for t in tasks)  # exactly one each
    # the imports were queued by the TASKS_CREATED webhook; what the cold-start ranking imported first
    # (it races with them right after connecting) is not imported twice
    wait_until(lambda: requests.get(backend + "/status", timeout=5).json()["preannotation"][str(project_id)]
               ["pending"] == 0, timeout=60, what="idle pre-annotation")
    status = requests.get(backend + "/status", timeout=5).json()["preannotation"][str(project_id)]
    assert status["queued"] == 30 and status["embedded"] == 30 and status["failed"] == 0


def test_retrieve_predictions_beyond_the_timeout_ends_with_every_task_predicted(label_studio, slow_backend,
                                                                                cifar_images):
    ls = label_studio
    project_id = ls.create_project("timeout e2e", label_config("image_classification.xml"))
    ls.connect_ml_backend(project_id, slow_backend, title="clip-al-slow")
    wait_until(lambda: ls.get_project(project_id)["model_version"], timeout=120, what="the backend's version")
    images = [p for paths in cifar_images.values() for p in paths[:25]]  # 250 images: far more than 2 s of work
    for start in range(0, len(images), 100):  # Label Studio takes at most 100 files per upload
        ls.import_files(project_id, images[start:start + 100])
    started = time.perf_counter()
    ls.retrieve_predictions(project_id)
    answered = time.perf_counter() - started
    stored_at_once = sum(1 for t in ls.list_tasks(project_id) if t["predictions"])
    version, tasks = wait_until(lambda: _all_predicted(ls, project_id, len(images)), timeout=300, step=1,
                                what="predictions on every task")
    print(f"\n[timeout] /predict answered in {answered:.1f}s with {stored_at_once}/{len(images)} stored; "
          f"the rest imported in the background")
    assert answered < 60  # far inside Label Studio's 100 s
    assert stored_at_once < len(images)  # the timeout path was taken
    assert all(len(_ours(t)) == 1 for t in tasks)  # every task once: none lost, none twice


@pytest.fixture(scope="module")
def small_sample_backend(label_studio, tmp_path_factory):
    """A backend whose cold start embeds at most 50 tasks before the first batch, and whose sweep imports
    predictions too (SWEEP_PREDICTIONS=true: by default it only embeds, test_e2e_sharing.py)."""
    yield from _backend(label_studio, tmp_path_factory.mktemp("sample-backend"), COLD_START_SAMPLE="50",
                        QUEUE_BATCH="12", UNCERTAINTY_SAMPLING="true", SWEEP_PREDICTIONS="true")


def test_a_project_bigger_than_the_cold_start_sample_is_swept_in_the_background(label_studio, small_sample_backend,
                                                                               sms_messages):
    """Tasks imported before connecting: the first batch comes from a random sample of 50 embedded at
    once; the background sweep finds the other 70, embeds them and (opted in) imports their predictions, none twice
    (the sampled tasks outside the batch get theirs live, when opened)."""
    ls, backend, title = label_studio, small_sample_backend, "clip-al-sweep"
    project_id = ls.create_project("sweep e2e", label_config("sms_spam.xml"))
    ls.import_tasks(project_id, [{"text": text} for _, text in sms_messages[2000:2120]])
    ls.connect_ml_backend(project_id, backend, title=title)

    def swept():
        counts = requests.get(backend + "/status", timeout=5).json()["preannotation"].get(str(project_id), {})
        return counts if counts.get("finished") == 70 and counts.get("pending") == 0 else None

    counts = wait_until(swept, timeout=300, step=1, what="the sweep")
    assert counts["queued"] == 70 and counts["embedded"] == 70 and counts["failed"] == 0  # 120 - the 50 sampled
    held = wait_until(lambda: sum((h := ls.get(f"/api/projects/{project_id}/model-versions/")).values()) == 82 and h,
                      timeout=60, step=1, what="the swept predictions")
    assert held.pop(title) == 12 and list(held.values()) == [70], held  # the batch; the swept tasks
    tasks = ls.list_tasks(project_id)
    ours = [[p for p in t["predictions"] if p["model_version"] == title or BACKEND_VERSION.match(p["model_version"])]
            for t in tasks]
    assert len(tasks) == 120 and max(len(p) for p in ours) == 1  # the batch's tasks were not swept again
