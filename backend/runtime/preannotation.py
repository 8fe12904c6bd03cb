"""Background pre-annotation in this process: newly imported tasks (TASKS_CREATED) and the part of
a "Retrieve predictions" batch that did not fit in Label Studio's ML timeout.

One worker thread takes jobs in order, so background work never competes with itself for the
encoder; tasks that already hold a prediction of the serving version when their chunk is imported
(Label Studio asked us for them, or a training run ranked them, meanwhile) are skipped, so no task
gets two (flows.publish.push_new).
"""
from __future__ import annotations

import logging
import threading
from collections import Counter, defaultdict
from concurrent.futures import ThreadPoolExecutor

from ..flows.preannotate import preannotate
from ..flows.publish import push_new
from ..labelstudio.protocol import task_id
from .services import Services

logger = logging.getLogger(__name__)

STAGES = ("queued", "embedded", "predicted", "pushed", "failed", "finished")


class PreAnnotator:
    def __init__(self, services: Services):
        self.services = services
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="preannotate")
        self._lock = threading.Lock()
        self.progress: dict[str, Counter] = defaultdict(Counter)  # project -> queued, embedded, pushed, ...

    def submit(self, project: str, label_config: str | None, tasks: list) -> int:
        """Queue tasks ({"id", "data"}) for pre-annotation; returns how many were usable."""
        usable = [{"id": task_id(t), "data": t["data"]} for t in tasks
                  if isinstance(t, dict) and task_id(t) is not None and isinstance(t.get("data"), dict)]
        if usable:
            self._count(project, "queued", len(usable))
            self._pool.submit(self._run, project, label_config, usable)
        return len(usable)

    def _run(self, project: str, label_config: str | None, tasks: list) -> None:
        try:
            model = self.services.model(project, label_config)
            api = self.services.api(project)
            if api is None:
                logger.warning("project %s: Label Studio unknown (no LABEL_STUDIO_URL/API key, no /setup): "
                               "embedding %d tasks without importing predictions", project, len(tasks))

            def push(rows: list[dict]) -> int:
                return len(push_new(api, project, rows, model.model_version)[0])

            preannotate(model, tasks, self.services.queue, push if api is not None else None,
                        lambda what, n: self._count(project, what, n))
            logger.info("project %s: pre-annotated %d tasks in the background", project, len(tasks))
        except Exception:
            self._count(project, "failed", len(tasks))
            logger.exception("project %s: background pre-annotation of %d tasks failed", project, len(tasks))
        finally:
            self._count(project, "finished", len(tasks))

    def _count(self, project: str, what: str, n: int) -> None:
        with self._lock:
            self.progress[project][what] += n

    def status(self) -> dict:
        """Per project: tasks queued, embedded, predicted, pushed, failed and still pending."""
        with self._lock:
            return {project: {**{stage: counts[stage] for stage in STAGES},
                              "pending": counts["queued"] - counts["finished"]}
                    for project, counts in self.progress.items()}

    def busy(self, project: str | None = None) -> bool:
        status = self.status()
        return any(s["pending"] > 0 for p, s in status.items() if project in (None, p))
