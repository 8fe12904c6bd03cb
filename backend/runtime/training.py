"""Who trains when: a training loop per project, driven by a scheduler.

The loop trains until every recorded generation of the project is trained: events arriving during a
run only bump the generation, so a burst of events becomes one or a few runs. A failed run leaves the
last good version serving and is retried on the next event (or by RQ's retry, see redis_jobs.py).

Schedulers: `ThreadScheduler` (one background thread per project, in this process) and
`RedisScheduler` (redis_jobs.py: RQ jobs on REDIS_URL, trained by `python -m backend.runtime.worker`).
"""
from __future__ import annotations

import logging
import threading
import time
from collections import Counter
from typing import Protocol

from ..flows.training_run import LockLost, TrainingRun, run_training
from ..state.annotations import AnnotationLog
from .connections import Connections
from .models import ProjectModels
from .preannotation import PreAnnotator

logger = logging.getLogger(__name__)


class TrainingLoop:
    """Trains a project until it is current, and keeps this process's counters for /status. ``sweeper``:
    where the sweep for tasks not embedded yet goes after a full reconcile (None: no sweep here)."""

    def __init__(self, log: AnnotationLog, models: ProjectModels, connections: Connections,
                 sweeper: PreAnnotator | None = None):
        self.log = log
        self.models = models
        self.connections = connections
        self.sweeper = sweeper
        self.runs: Counter = Counter()  # project -> finished training runs
        self.failures: Counter = Counter()
        self.last_error: dict[str, str] = {}
        self.last_ranking: dict[str, dict] = {}  # project -> summary of the last queue re-ranking
        self.last_run: dict[str, dict] = {}  # project -> version, generation, seconds per phase of the last run

    def training_run(self, project: str, fence=None) -> TrainingRun:
        connection = self.connections.connection(project)
        return TrainingRun(log=self.log, models=self.models, api=self.connections.api(project),
                           bound_url=connection.url if connection.from_setup else None,
                           **({"fence": fence} if fence else {}))

    def run(self, project: str, fence=None) -> bool:
        """Train until every recorded generation is trained on; False if a run failed. ``fence``: raises
        LockLost when this process no longer holds the project's lock (the run then stops, unpublished)."""
        log = self.log
        while True:
            generation, trained, label_config = log.generations(project)
            if generation <= trained:
                return True
            try:
                result = run_training(self.training_run(project, fence), project, generation, label_config)
                if result.full_reconcile and self.sweeper is not None:
                    self.sweeper.sweep(project, label_config)  # listed and embedded in the background
            except LockLost as exc:
                logger.warning("project %s: %s", project, exc)
                self.last_error[project] = f"LockLost: {exc}"
                return True  # not a failure: the lock's new holder trains this generation
            except Exception as exc:
                self.failures[project] += 1
                self.last_error[project] = f"{type(exc).__name__}: {exc}"
                if isinstance(exc, ValueError):  # e.g. no labeling config known yet: say so, no traceback
                    logger.warning("project %s: cannot train yet: %s", project, exc)
                else:
                    logger.exception("project %s: training failed; the last good version keeps serving", project)
                return False  # retried on the next event or restart
            if result.ranking is not None:
                self.last_ranking[project] = {**result.ranking, "review": result.review}
            self.last_run[project] = {"generation": generation, "phases": result.phases, "reconciled": result.reconciled,
                                      "seconds": round(sum(result.phases.values()), 3),
                                      "version": result.version.name if result.version else None}
            log.mark_trained(project, generation)
            self.runs[project] += 1


class Scheduler(Protocol):
    loop: TrainingLoop

    def notify(self, project: str) -> None:
        """Make sure the project's latest generation will be trained."""

    def busy(self, project: str | None = None) -> bool:
        """Whether a run of the project (of any project) is under way or queued."""

    def start(self) -> list[str]:
        """At start-up: schedule every project with untrained changes; returns them."""

    def status(self) -> dict:
        """The "training" section of /status."""


class ThreadScheduler:
    """One background thread per project in this process."""

    burst_wait_s = 0.2  # let a burst of webhook events land before the first run

    def __init__(self, loop: TrainingLoop):
        self.loop = loop
        self._threads: dict[str, threading.Thread] = {}
        self._lock = threading.Lock()

    def notify(self, project: str) -> None:
        with self._lock:
            thread = self._threads.get(project)
            if thread is not None and thread.is_alive():
                return  # the running loop re-checks the generation before it exits
            thread = threading.Thread(target=self._train, args=(project,), name=f"train-{project}", daemon=True)
            self._threads[project] = thread
            thread.start()

    def _train(self, project: str) -> None:
        time.sleep(self.burst_wait_s)
        self.loop.run(project)

    def busy(self, project: str | None = None) -> bool:
        with self._lock:
            threads = [self._threads.get(project)] if project else list(self._threads.values())
        return any(t is not None and t.is_alive() for t in threads)

    def start(self) -> list[str]:
        pending = self.loop.log.projects_needing_training()
        for project in pending:
            self.notify(project)
        return pending

    def status(self) -> dict:
        loop = self.loop
        return {"runs": dict(loop.runs), "failures": dict(loop.failures), "last_error": loop.last_error,
                "busy": self.busy(), "last_ranking": loop.last_ranking, "last_run": loop.last_run}

