"""Issue 23 item 8: webhook bodies limited per event type (a clear 413, nothing recorded) and an annotation
log that stays bounded: deleted annotations purged once trained on, the write-ahead file cut back."""
import json

import pytest

from backend.config import Settings
from backend.state.annotations import AnnotationLog, AnnotationRecord
from backend.web import create_app
from tests.helpers import backend_env, label_config
from tests.test_crash_recovery import _event

SMS_CONFIG = label_config("sms_spam.xml")


@pytest.fixture
def app(tmp_path):
    env = backend_env(tmp_path, WEBHOOK_MAX_BYTES=64 * 1024, WEBHOOK_TASKS_MAX_BYTES=1024 * 1024,
                      PREANNOTATE_IMPORTS="false")
    return create_app(Settings.from_env(env))


def _post(client, body):
    return client.post("/webhook", data=json.dumps(body), content_type="application/json")


def test_an_annotation_event_larger_than_its_type_needs_gets_413_and_records_nothing(app):
    client, log = app.test_client(), app.extensions["runtime"].log
    big = _event(5, 1, "spam", "x" * 200_000)  # 200 kB of task data in one annotation event
    answer = _post(client, big)
    assert answer.status_code == 413 and "WEBHOOK_MAX_BYTES" in answer.json["error"]
    assert log.generations("5") == (0, 0, None) and log.count("5") == 0
    assert _post(client, _event(5, 1, "spam", "a normal message")).status_code == 201
    assert log.count("5") == 1


def test_an_import_may_be_large_up_to_its_own_limit(app):
    client = app.test_client()
    tasks = [{"id": i, "data": {"text": "y" * 1000}} for i in range(300)]  # 300 kB: an import
    imported = {"action": "TASKS_CREATED", "project": {"id": 6, "label_config": SMS_CONFIG}, "tasks": tasks}
    assert _post(client, imported).status_code == 201
    imported["tasks"] = tasks * 4  # 1.2 MB: over WEBHOOK_TASKS_MAX_BYTES, refused before it is read
    answer = _post(client, imported)
    assert answer.status_code == 413


def test_deleted_annotations_are_purged_once_trained_and_the_wal_stays_bounded(tmp_path):
    limit = 512 * 1024
    log = AnnotationLog(tmp_path / "log.sqlite3", wal_limit_bytes=limit)
    for i in range(60):  # 60 x 100 kB
        log.record("1", AnnotationRecord(i, i, {"text": "z" * 100_000}, {"label": ["spam"]}, False))
    log.delete("1", list(range(50)))
    generation = log.generations("1")[0]
    log.mark_trained("1", generation)
    rows = log._db.execute("SELECT COUNT(*) FROM annotations").fetchone()[0]
    assert rows == 10 and log.count("1") == 10
    log.record("1", AnnotationRecord(3, 3, {"text": "back"}, {"label": ["ham"]}, False))  # revived by a new write
    assert {t.task_id for t in log.labeled_tasks("1")} == set(range(50, 60)) | {3}
    assert (tmp_path / "log.sqlite3-wal").stat().st_size <= limit
