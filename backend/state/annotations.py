"""Durable record of annotations, written before a webhook is acknowledged.

SQLite (WAL) in MODEL_DIR. Each project has a generation counter that every change bumps; a training
run trains on a snapshot and marks that generation trained, so changes that arrive during a run
(or before a crash) are trained on by the next one: nothing is lost.

Knows nothing of Label Studio's formats: callers pass AnnotationRecords (backend.labelstudio.protocol
reads them out of payloads).
"""
from __future__ import annotations

import json
import sqlite3
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

SCHEMA = """
CREATE TABLE IF NOT EXISTS annotations (
    project TEXT NOT NULL,
    annotation_id INTEGER NOT NULL,
    task_id INTEGER NOT NULL,
    task_data TEXT NOT NULL,
    labels TEXT NOT NULL,          -- {"<from_name>": ["choice", ...]}
    cancelled INTEGER NOT NULL DEFAULT 0,
    deleted INTEGER NOT NULL DEFAULT 0,
    updated_at REAL NOT NULL,
    PRIMARY KEY (project, annotation_id)
);
CREATE INDEX IF NOT EXISTS annotations_task ON annotations (project, task_id);
CREATE TABLE IF NOT EXISTS projects (
    project TEXT PRIMARY KEY,
    label_config TEXT,
    generation INTEGER NOT NULL DEFAULT 0,
    trained_generation INTEGER NOT NULL DEFAULT 0
);
"""
# Columns added after the first release: ALTER TABLE adds them to an older log on open.
PROJECT_COLUMNS = {
    "ls_url": "TEXT",  # the Label Studio URL /setup bound the project to (never a token)
    "ls_reached_at": "REAL",  # when a reconcile through ls_url last succeeded; NULL: never
    "reconciled_at": "REAL",  # when the last reconcile (full or incremental) started; NULL: never
    "full_reconciled_at": "REAL",  # when the last full reconcile started; NULL: never
    "full_reconcile_wanted": "INTEGER",  # 1: the next run lists every task (START_TRAINING asked)
}


ANNOTATION_COLUMNS = {
    "ground_truth": "INTEGER NOT NULL DEFAULT 0",  # marked as ground truth in Label Studio (a test item)
    "event_at": "REAL",  # when a webhook last wrote it (a reconcile does not): someone touched the annotation
}

# A newer write of the same annotation replaces it (and revives it if it was marked deleted).
UPSERT = (
    "INSERT INTO annotations (project, annotation_id, task_id, task_data, labels, cancelled, deleted, updated_at, "
    "ground_truth) VALUES (?, ?, ?, ?, ?, ?, 0, ?, ?) "
    "ON CONFLICT(project, annotation_id) DO UPDATE SET task_id=excluded.task_id, task_data=excluded.task_data, "
    "labels=excluded.labels, cancelled=excluded.cancelled, deleted=0, ground_truth=excluded.ground_truth, "
    "updated_at=MAX(updated_at, excluded.updated_at)"
)


class ReconcileRefused(ValueError):
    """A reconcile would have thrown away every recorded label: not applied; the message says why."""


class Binding(NamedTuple):
    """Which Label Studio URL a project is bound to, and whether that URL has answered."""
    url: str | None
    reached_at: float | None  # None: nothing has reached Label Studio through this URL yet


class AnnotationRecord(NamedTuple):
    """One annotation as the log stores it."""
    annotation_id: int
    task_id: int
    data: dict  # the task's data
    labels: dict  # from_name -> list of chosen outputs
    cancelled: bool  # a skipped task: kept, but not a label
    ground_truth: bool = False  # Label Studio's ground-truth mark: a test item, never trained on


def _row(project: str, record: AnnotationRecord, now: float) -> tuple:
    return (project, int(record.annotation_id), int(record.task_id), json.dumps(record.data or {}),
            json.dumps(record.labels), int(bool(record.cancelled)), now, int(bool(record.ground_truth)))


@dataclass(frozen=True)
class LabeledTask:
    task_id: int
    data: dict
    labels: dict  # from_name -> list of chosen outputs
    ground_truth: bool = False
    event_at: float = 0.0  # when a webhook last wrote the annotation (0: only reconciles did)


WAL_LIMIT_BYTES = 64 * 1024 * 1024  # the write-ahead file is cut back to this after each checkpoint


class AnnotationLog:
    """Bounded: one row per annotation (a newer write replaces it), deleted ones purged once trained on
    (compact), pages of purged rows reused, and the write-ahead file truncated to ``wal_limit_bytes``."""

    def __init__(self, path: Path, journal_mode: str = "wal", wal_limit_bytes: int = WAL_LIMIT_BYTES):
        path.parent.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(str(path), check_same_thread=False, isolation_level=None, timeout=30)
        self._db.execute("PRAGMA auto_vacuum=INCREMENTAL")  # takes effect on a new file only
        self._db.execute(f"PRAGMA journal_size_limit={int(wal_limit_bytes)}")
        # WAL is fastest but needs every process on one host (shared memory index); "delete" (a
        # rollback journal) works on a network filesystem with POSIX locks, for MODEL_DIR shared by hosts
        if journal_mode not in ("wal", "delete"):
            raise ValueError(f"journal_mode must be 'wal' or 'delete', not {journal_mode!r}")
        self._db.execute(f"PRAGMA journal_mode={journal_mode.upper()}")
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.executescript(SCHEMA)
        self._add_columns()
        self._lock = threading.Lock()

    def _add_columns(self) -> None:
        for table, columns in (("projects", PROJECT_COLUMNS), ("annotations", ANNOTATION_COLUMNS)):
            present = {row[1] for row in self._db.execute(f"PRAGMA table_info({table})")}
            for name, kind in columns.items():
                if name not in present:
                    try:
                        self._db.execute(f"ALTER TABLE {table} ADD COLUMN {name} {kind}")
                    except sqlite3.OperationalError:  # another process added it first
                        pass

    def _bump(self, project: str, label_config: str | None) -> None:
        self._db.execute(
            "INSERT INTO projects (project, label_config, generation) VALUES (?, ?, 1) "
            "ON CONFLICT(project) DO UPDATE SET generation = generation + 1, "
            "label_config = COALESCE(excluded.label_config, label_config)",
            (project, label_config),
        )

    @contextmanager
    def _transaction(self) -> Iterator[None]:
        """One write transaction; IMMEDIATE takes the write lock up front (other processes wait)."""
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                yield
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                raise

    def record(self, project: str, record: AnnotationRecord, label_config: str | None = None) -> None:
        """Store (or replace) one annotation from a webhook payload or the Label Studio API."""
        now = time.time()
        with self._transaction():
            self._db.execute(UPSERT, _row(project, record, now))
            self._db.execute("UPDATE annotations SET event_at = ? WHERE project = ? AND annotation_id = ?",
                             (now, project, int(record.annotation_id)))
            self._bump(project, label_config)

    def delete(self, project: str, annotation_ids: list[int], label_config: str | None = None) -> int:
        with self._transaction():
            cur = self._db.executemany(
                "UPDATE annotations SET deleted = 1, updated_at = ? WHERE project = ? AND annotation_id = ?",
                [(time.time(), project, int(a)) for a in annotation_ids],
            )
            self._bump(project, label_config)
        return cur.rowcount

    def request_training(self, project: str, label_config: str | None = None) -> None:
        with self._lock:
            self._bump(project, label_config)

    def replace_all(self, project: str, records: list[AnnotationRecord], label_config: str | None = None) -> None:
        """Reconcile with Label Studio: its annotations become the whole truth for the project. Raises
        ReconcileRefused (and changes nothing) when that would delete every recorded label: a Label
        Studio that knows none of them is more likely the wrong one than a project emptied unseen."""
        with self._transaction():
            labeled = {row[0] for row in self._db.execute(
                "SELECT annotation_id FROM annotations WHERE project = ? AND deleted = 0 AND cancelled = 0 "
                "AND labels != '{}'", (project,))}
            if labeled and labeled.isdisjoint(int(r.annotation_id) for r in records):
                raise ReconcileRefused(
                    f"reconcile not applied: Label Studio lists {len(records)} labeled tasks and none of the "
                    f"{len(labeled)} annotations recorded for project {project}; is the project bound to the "
                    "right Label Studio? (LABEL_STUDIO_URL, /setup)")
            self._db.execute("UPDATE annotations SET deleted = 1 WHERE project = ?", (project,))
            now = time.time()
            self._db.executemany(UPSERT, [_row(project, r, now) for r in records])
            if label_config:
                self._db.execute("UPDATE projects SET label_config = ? WHERE project = ?", (label_config, project))

    def apply_changes(self, project: str, task_ids: list[int], records: list[AnnotationRecord]) -> None:
        """An incremental reconcile: for these tasks (changed in Label Studio) its annotations replace
        the recorded ones; other tasks are left as they are."""
        with self._transaction():
            self._db.executemany("UPDATE annotations SET deleted = 1 WHERE project = ? AND task_id = ?",
                                 [(project, int(t)) for t in task_ids])
            now = time.time()
            self._db.executemany(UPSERT, [_row(project, r, now) for r in records])

    def want_full_reconcile(self, project: str, label_config: str | None = None) -> None:
        """The next run lists every task of the project (and a run is requested)."""
        with self._lock:
            self._bump(project, label_config)
            self._db.execute("UPDATE projects SET full_reconcile_wanted = 1 WHERE project = ?", (project,))

    def reconcile_state(self, project: str) -> tuple[float | None, float | None, bool]:
        """(reconciled_at, full_reconciled_at, full reconcile wanted)."""
        with self._lock:
            row = self._db.execute("SELECT reconciled_at, full_reconciled_at, full_reconcile_wanted FROM projects "
                                   "WHERE project = ?", (project,)).fetchone()
        return (row[0], row[1], bool(row[2])) if row else (None, None, False)

    def mark_reconciled(self, project: str, started: float, full: bool) -> None:
        with self._lock:
            if full:
                self._db.execute("UPDATE projects SET reconciled_at = ?, full_reconciled_at = ?, "
                                 "full_reconcile_wanted = 0 WHERE project = ?", (started, started, project))
            else:
                self._db.execute("UPDATE projects SET reconciled_at = ? WHERE project = ?", (started, project))

    def set_label_config(self, project: str, label_config: str) -> None:
        """The labeling config /setup sent: served after a restart without another /setup."""
        with self._lock:
            self._db.execute("INSERT INTO projects (project, label_config) VALUES (?, ?) ON CONFLICT(project) "
                             "DO UPDATE SET label_config = excluded.label_config", (project, label_config))

    def binding(self, project: str) -> Binding:
        with self._lock:
            row = self._db.execute("SELECT ls_url, ls_reached_at FROM projects WHERE project = ?",
                                   (project,)).fetchone()
        return Binding(*row) if row else Binding(None, None)

    def bind(self, project: str, url: str) -> None:
        """Bind the project to a Label Studio URL; a new URL has not reached Label Studio yet."""
        with self._lock:
            self._db.execute(
                "INSERT INTO projects (project, ls_url) VALUES (?, ?) ON CONFLICT(project) DO UPDATE SET "
                "ls_url = excluded.ls_url, ls_reached_at = CASE WHEN ls_url IS excluded.ls_url "
                "THEN ls_reached_at END", (project, url))

    def mark_reached(self, project: str, url: str) -> None:
        """A reconcile through this URL succeeded: the binding works. Only marks the binding the project
        still has (a /setup may have rebound it to another URL while the run was under way)."""
        with self._lock:
            self._db.execute(
                "INSERT INTO projects (project, ls_url, ls_reached_at) VALUES (?, ?, ?) ON CONFLICT(project) "
                "DO UPDATE SET ls_reached_at = excluded.ls_reached_at WHERE ls_url IS NULL OR ls_url = excluded.ls_url",
                (project, url, time.time()))

    def labeled_tasks(self, project: str) -> list[LabeledTask]:
        """The latest live, non-cancelled annotation of every task (one label set per task)."""
        with self._lock:
            rows = self._db.execute(
                "SELECT task_id, task_data, labels, ground_truth, COALESCE(event_at, 0) FROM annotations a WHERE project = ? "
                "AND deleted = 0 "
                "AND cancelled = 0 AND labels != '{}' AND updated_at = (SELECT MAX(updated_at) FROM annotations b "
                "WHERE b.project = a.project AND b.task_id = a.task_id AND b.deleted = 0 AND b.cancelled = 0 "
                "AND b.labels != '{}') GROUP BY task_id ORDER BY task_id",
                (project,),
            ).fetchall()
        return [LabeledTask(t, json.loads(d), json.loads(lab), bool(gt), at) for t, d, lab, gt, at in rows]

    def live_task_ids_from(self, project: str, first_id: int) -> set[int]:
        """Tasks with id >= first_id holding a live annotation in the log."""
        with self._lock:
            rows = self._db.execute("SELECT DISTINCT task_id FROM annotations WHERE project = ? AND deleted = 0 "
                                    "AND task_id >= ?", (project, int(first_id))).fetchall()
        return {int(task_id) for (task_id,) in rows}

    def count(self, project: str) -> int:
        with self._lock:
            return self._db.execute("SELECT COUNT(*) FROM annotations WHERE project = ? AND deleted = 0",
                                    (project,)).fetchone()[0]

    def generations(self, project: str) -> tuple[int, int, str | None]:
        """(generation, trained_generation, label_config)."""
        with self._lock:
            row = self._db.execute("SELECT generation, trained_generation, label_config FROM projects "
                                   "WHERE project = ?", (project,)).fetchone()
        return row if row else (0, 0, None)

    def mark_trained(self, project: str, generation: int) -> None:
        with self._lock:
            self._db.execute("UPDATE projects SET trained_generation = MAX(trained_generation, ?) WHERE project = ?",
                             (generation, project))
        self.compact(project)

    def compact(self, project: str) -> int:
        """Purge the project's deleted annotations (no run reads them; a later write of one inserts it
        again), give their pages back and checkpoint the write-ahead file; returns the rows purged."""
        with self._lock:
            purged = self._db.execute("DELETE FROM annotations WHERE project = ? AND deleted = 1",
                                      (project,)).rowcount
            if purged:
                self._db.execute("PRAGMA incremental_vacuum").fetchall()  # one page per step
            self._db.execute("PRAGMA wal_checkpoint(PASSIVE)")  # journal_size_limit cuts the file back
        return purged

    def projects_needing_training(self) -> list[str]:
        with self._lock:
            return [r[0] for r in self._db.execute(
                "SELECT project FROM projects WHERE generation > trained_generation").fetchall()]
