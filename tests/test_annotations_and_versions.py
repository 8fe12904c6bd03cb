"""Durable annotation log and atomic model versions."""
import os
import pickle

import pytest

from backend.labelstudio.protocol import annotation_fields, choices_from_result
from backend.state.annotations import AnnotationLog, AnnotationRecord
from backend.state.versions import VersionStore


def _ann(aid, task, choice, cancelled=False, from_name="label"):
    return ({"id": aid, "task": task, "was_cancelled": cancelled,
             "result": [{"from_name": from_name, "to_name": "text", "type": "choices", "value": {"choices": [choice]}}]},
            {"id": task, "data": {"text": f"task {task}"}})


def _rec(*args, **kwargs):
    """The record the log keeps of _ann's Label Studio (annotation, task) pair."""
    return AnnotationRecord(*annotation_fields(*_ann(*args, **kwargs)))


def test_choices_from_result_ignores_other_region_types():
    result = [{"from_name": "c", "type": "choices", "value": {"choices": ["a", "b"]}},
              {"from_name": "r", "type": "rectanglelabels", "value": {"rectanglelabels": ["x"]}},
              "garbage", {"type": "choices", "value": {}}]
    assert choices_from_result(result) == {"c": ["a", "b"]}
    assert choices_from_result(None) == {}


def test_latest_live_annotation_per_task_wins(tmp_path):
    log = AnnotationLog(tmp_path / "a.sqlite3")
    log.record("1", _rec(10, 100, "ham"))
    log.record("1", _rec(11, 100, "spam"))  # a second annotator, later: latest wins
    log.record("1", _rec(12, 101, "ham"))
    log.record("1", _rec(13, 102, "spam", cancelled=True))  # skipped tasks are not labels
    log.record("2", _rec(14, 100, "ham"))  # another project
    tasks = {t.task_id: t.labels["label"] for t in log.labeled_tasks("1")}
    assert tasks == {100: ["spam"], 101: ["ham"]}
    log.record("1", _rec(12, 101, "spam"))  # ANNOTATION_UPDATED replaces
    log.delete("1", [11])  # ANNOTATIONS_DELETED: the earlier annotation of task 100 is live again
    assert {t.task_id: t.labels["label"] for t in log.labeled_tasks("1")} == {100: ["ham"], 101: ["spam"]}


def test_generations_count_every_change_and_survive_reopen(tmp_path):
    log = AnnotationLog(tmp_path / "a.sqlite3")
    for i in range(5):
        log.record("7", _rec(i, i, "ham"), label_config="<View/>")
    generation, trained, config = log.generations("7")
    assert (generation, trained, config) == (5, 0, "<View/>")
    log.mark_trained("7", 3)
    assert log.projects_needing_training() == ["7"]
    reopened = AnnotationLog(tmp_path / "a.sqlite3")
    assert reopened.generations("7")[:2] == (5, 3) and len(reopened.labeled_tasks("7")) == 5
    reopened.mark_trained("7", 5)
    assert reopened.projects_needing_training() == []


def test_replace_all_reconciles_with_label_studio(tmp_path):
    log = AnnotationLog(tmp_path / "a.sqlite3")
    log.record("1", _rec(1, 1, "ham"))
    log.record("1", _rec(2, 2, "ham"))
    log.replace_all("1", [_rec(2, 2, "spam"), _rec(3, 3, "ham")])  # 1 was deleted in LS, 2 changed
    assert {t.task_id: t.labels["label"] for t in log.labeled_tasks("1")} == {2: ["spam"], 3: ["ham"]}


def test_an_incremental_reconcile_replaces_only_the_listed_tasks(tmp_path):
    log = AnnotationLog(tmp_path / "a.sqlite3")
    for n in (1, 2, 3):
        log.record("1", _rec(n, n, "ham"))
    # Label Studio changed tasks 1 (annotation deleted) and 2 (relabeled); task 3 was not listed
    log.apply_changes("1", [1, 2], [_rec(2, 2, "spam")])
    assert {t.task_id: t.labels["label"] for t in log.labeled_tasks("1")} == {2: ["spam"], 3: ["ham"]}
    assert log.reconcile_state("1") == (None, None, False)
    log.mark_reconciled("1", 100.0, full=True)
    log.want_full_reconcile("1")  # START_TRAINING
    assert log.reconcile_state("1") == (100.0, 100.0, True)
    log.mark_reconciled("1", 200.0, full=False)
    assert log.reconcile_state("1") == (200.0, 100.0, True)  # an incremental one does not satisfy the request
    log.mark_reconciled("1", 300.0, full=True)
    assert log.reconcile_state("1") == (300.0, 300.0, False)


def test_ground_truth_marks_and_webhook_times_are_kept(tmp_path):
    log = AnnotationLog(tmp_path / "a.sqlite3")
    log.record("1", _rec(1, 1, "ham")._replace(ground_truth=True))
    log.replace_all("1", [_rec(1, 1, "ham")._replace(ground_truth=True), _rec(2, 2, "spam")])
    rows = {t.task_id: t for t in log.labeled_tasks("1")}
    assert rows[1].ground_truth and not rows[2].ground_truth
    assert rows[1].event_at > 0 and rows[2].event_at == 0  # only a webhook counts as someone touching it


def test_versions_are_numbered_and_latest_survives_a_crash_mid_write(tmp_path):
    store = VersionStore(tmp_path)
    v1 = store.save("3", lambda n: f"enc/v{n}", {"label": "head-1"}, {"fingerprint": "f"})
    v2 = store.save("3", lambda n: f"enc/v{n}", {"label": "head-2"}, {"fingerprint": "f"})
    assert (v1.number, v2.number, v2.name) == (1, 2, "enc/v2")
    assert store.latest("3").load_heads() == {"label": "head-2"}

    def crash(directory, number):
        raise RuntimeError("killed mid-write")

    with pytest.raises(RuntimeError):
        store.save("3", lambda n: f"enc/v{n}", {"label": "head-3"}, {}, write_extras=crash)
    assert store.latest("3").name == "enc/v2"
    assert not [p for p in (tmp_path / "projects" / "3" / "versions").iterdir() if p.name.startswith(".tmp")]
    # a half-written directory (as after kill -9) and a LATEST pointing to it are ignored
    half = tmp_path / "projects" / "3" / "versions" / "0003"
    half.mkdir()
    (half / "heads.pkl").write_bytes(pickle.dumps({"label": "partial"})[:5])
    (tmp_path / "projects" / "3" / "versions" / "LATEST").write_text("3")
    assert store.latest("3").name == "enc/v2"
    assert [v.number for v in store.all("3")] == [1, 2]
    assert store.find("3", "enc/v1").number == 1 and store.find("3", "2").number == 2
    assert os.path.exists(v1.directory / "meta.json")


def test_rollback_journal_for_a_model_dir_shared_by_hosts(tmp_path):
    # ANNOTATION_LOG_JOURNAL=delete: no WAL (its shared-memory index needs one host); two handles
    # (two processes on two hosts) see each other's writes through the file alone
    web, worker = AnnotationLog(tmp_path / "a.sqlite3", "delete"), AnnotationLog(tmp_path / "a.sqlite3", "delete")
    web.record("1", _rec(1, 1, "ham"), label_config="<View/>")
    assert worker.generations("1")[:2] == (1, 0) and len(worker.labeled_tasks("1")) == 1
    worker.mark_trained("1", 1)
    assert web.projects_needing_training() == []
    assert web._db.execute("PRAGMA journal_mode").fetchone()[0] == "delete"
    assert not (tmp_path / "a.sqlite3-wal").exists()
    with pytest.raises(ValueError, match="journal_mode"):
        AnnotationLog(tmp_path / "b.sqlite3", "memory")
