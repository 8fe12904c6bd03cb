"""Background pre-annotation in this process: newly imported tasks (TASKS_CREATED), the part of a
"Retrieve predictions" batch that did not fit in Label Studio's ML timeout, and the sweep for tasks not
embedded yet that a training run asks for after a full reconcile (embedded only, unless
SWEEP_PREDICTIONS=true). Its Label Studio requests are background work (labelstudio.pacing): paced,
behind a training run's batch.

One worker thread takes jobs in order, so background work never competes with itself for the
encoder; tasks that already hold a prediction of the serving version when their chunk is imported
(Label Studio asked us for them, or a training run ranked them, meanwhile) are skipped, so no task
gets two (flows.publish.push_new).
"""
from __future__ import annotations

import atexit
import logging
import queue
import threading
from collections import Counter, defaultdict

from ..flows.preannotate import preannotate, unembedded_tasks
from ..flows.publish import push_new
from ..labelstudio.pacing import background
from ..labelstudio.protocol import task_id
from .connections import Connections
from .models import ProjectModels

logger = logging.getLogger(__name__)

STAGES = ("queued", "embedded", "predicted", "pushed", "failed", "dropped", "finished")
SWEEP = object()  # a job that lists the project's unannotated tasks and pre-annotates those not embedded
MAX_PENDING = 1_000_000  # tasks waiting in all (memory: their ids and data)


class PreAnnotator:
    """The work lives in memory: tasks still pending at a restart are pre-annotated again the next
    time Label Studio asks (on open, "Retrieve predictions") or imports them."""

    def __init__(self, models: ProjectModels, connections: Connections, max_pending: int = MAX_PENDING,
                 sweep_predictions: bool = False):
        self.models = models
        self.sweep_predictions = sweep_predictions  # the sweep imports predictions too (SWEEP_PREDICTIONS)
        self.connections = connections
        self.max_pending = max_pending
        self._jobs: queue.SimpleQueue = queue.SimpleQueue()
        self._pending: set[tuple[str, int]] = set()  # (project, task id) queued and not finished
        self._sweeps: set[str] = set()  # projects with a sweep queued or under way
        self._lock = threading.Lock()
        self._worker: threading.Thread | None = None
        self._stopping = threading.Event()
        atexit.register(self.stop)
        self.progress: dict[str, Counter] = defaultdict(Counter)  # project -> queued, embedded, pushed, ...

    def submit(self, project: str, label_config: str | None, tasks: list) -> int:
        """Queue tasks ({"id", "data"}) for pre-annotation; returns how many were queued. A task already
        pending is not queued twice; beyond MAX_PENDING tasks in all, the rest is dropped (and counted)."""
        usable = [{"id": task_id(t), "data": t["data"]} for t in tasks
                  if isinstance(t, dict) and task_id(t) is not None and isinstance(t.get("data"), dict)]
        with self._lock:
            fresh = [t for t in {t["id"]: t for t in usable}.values() if (project, t["id"]) not in self._pending]
            room = max(0, self.max_pending - len(self._pending))
            fresh, dropped = fresh[:room], len(fresh) - min(len(fresh), room)
            self._pending.update((project, t["id"]) for t in fresh)
            self.progress[project]["queued"] += len(fresh)
            self.progress[project]["dropped"] += dropped
            if fresh:
                self._jobs.put((project, label_config, fresh))
                self._start()
        if dropped:
            logger.warning("project %s: %d tasks not queued for pre-annotation (MAX_PENDING=%d reached)", project,
                           dropped, self.max_pending)
        return len(fresh)

    def sweep(self, project: str, label_config: str | None) -> bool:
        """Queue a sweep of the project: list its unannotated tasks page by page (in the worker, so no
        training run waits for the listing) and pre-annotate those not in the store. One sweep per
        project is pending at a time; returns whether this one was queued."""
        with self._lock:
            if project in self._sweeps:
                return False
            self._sweeps.add(project)
            self._jobs.put((project, label_config, SWEEP))
            self._start()
        return True

    def _start(self) -> None:
        if self._worker is None or not self._worker.is_alive():
            # a daemon: pending work does not hold up a shutdown (it lives in memory only, see above)
            self._worker = threading.Thread(target=self._work, name="preannotate", daemon=True)
            self._worker.start()

    def stop(self, timeout_s: float = 60) -> None:
        """At exit: finish the chunk under way (a thread inside the encoder when the interpreter ends
        aborts the process), take nothing new."""
        self._stopping.set()
        if self._worker is not None and self._worker.is_alive():
            self._jobs.put(None)
            self._worker.join(timeout_s)

    def _work(self) -> None:
        with background():
            self._take_jobs()

    def _take_jobs(self) -> None:
        while not self._stopping.is_set():
            job = self._jobs.get()
            if job is None:
                return
            project, label_config, tasks = job
            if tasks is SWEEP:
                self._sweep(project, label_config)
            else:
                self._run_pending(project, label_config, tasks)

    def _run_pending(self, project: str, label_config: str | None, tasks: list, push: bool = True) -> None:
        """Pre-annotate tasks already marked pending (``push``: import their predictions too); they stop
        being pending however it ends."""
        try:
            self._run(project, label_config, tasks, push)
        finally:
            with self._lock:
                self._pending.difference_update((project, t["id"]) for t in tasks)
                self.progress[project]["finished"] += len(tasks)

    def _sweep(self, project: str, label_config: str | None) -> None:
        swept = 0
        try:
            model, api = self.models.get(project, label_config), self.connections.api(project)
            if api is None:
                return
            for missing in unembedded_tasks(api, model):
                if self._stopping.is_set():
                    return
                with self._lock:
                    fresh = [t for t in missing if (project, t["id"]) not in self._pending]
                    self._pending.update((project, t["id"]) for t in fresh)
                    self.progress[project]["queued"] += len(fresh)
                self._run_pending(project, label_config, fresh, push=self.sweep_predictions)
                swept += len(fresh)
        except Exception:  # the next full reconcile sweeps again; tasks opened meanwhile are predicted live
            logger.exception("project %s: the sweep for tasks not embedded yet failed", project)
        finally:
            with self._lock:
                self._sweeps.discard(project)
            logger.info("project %s: sweep done: %d tasks were not embedded yet", project, swept)

    def _run(self, project: str, label_config: str | None, tasks: list, push_wanted: bool = True) -> None:
        try:
            model = self.models.get(project, label_config)
            api = self.connections.api(project)
        except Exception:
            self._count(project, "failed", len(tasks))
            logger.exception("project %s: cannot pre-annotate %d tasks", project, len(tasks))
            return
        if api is None and push_wanted:
            logger.warning("project %s: Label Studio unknown (no LABEL_STUDIO_URL/API key, no /setup): "
                           "embedding %d tasks without importing predictions", project, len(tasks))

        def push(rows: list[dict]) -> int:  # rows carry the version they were predicted with
            return len(push_new(api, project, rows, rows[0]["model_version"])[0])

        preannotate(model, tasks, push if api is not None and push_wanted else None,
                    lambda what, n: self._count(project, what, n), stop=self._stopping.is_set)
        logger.info("project %s: pre-annotated %d tasks in the background", project, len(tasks))

    def _count(self, project: str, what: str, n: int) -> None:
        with self._lock:
            self.progress[project][what] += n

    def status(self) -> dict:
        """Per project: tasks queued, embedded, predicted, pushed, failed and still pending."""
        with self._lock:
            return {project: {**{stage: counts[stage] for stage in STAGES},
                              "pending": counts["queued"] - counts["finished"]}
                    for project, counts in self.progress.items()}
