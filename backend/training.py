"""The learning loop: annotations recorded → retrain heads → evaluate → save a version → push
predictions for unlabeled tasks to Label Studio and make the new version the project's.

One background thread per project runs training; events arriving meanwhile only bump the project's
generation, and the thread runs again until every generation is trained (a burst of events becomes
one or a few runs). A failed run leaves the last good version serving and is retried on the next event.
"""
from __future__ import annotations

import logging
import threading
import time
from collections import Counter

import numpy as np

from .annotations import AnnotationLog
from .evaluation import train_and_select, write_report
from .label_config import ConfigError, parse_label_config
from .label_studio import LabelStudioAPI
from .ranking import publish_ranking, ranked_version
from .settings import Settings
from .versions import VersionStore

logger = logging.getLogger(__name__)


class Trainer:
    def __init__(self, settings: Settings, registry, log: AnnotationLog, versions: VersionStore):
        self.settings = settings
        self.registry = registry
        self.log = log
        self.versions = versions
        self.runs: Counter = Counter()  # project -> finished training runs
        self.failures: Counter = Counter()
        self.last_error: dict[str, str] = {}
        self.last_ranking: dict[str, dict] = {}  # project -> summary of the last queue re-ranking
        self._threads: dict[str, threading.Thread] = {}
        self._lock = threading.Lock()
        self.jobs = None  # with REDIS_URL, RQ workers train instead of threads (jobs.py)
        if settings.redis_url:
            from .jobs import RedisJobs

            self.jobs = RedisJobs(settings, registry.connection)

    # -- events ------------------------------------------------------------------------------
    def handle(self, project: str, event: str, payload: dict) -> dict:
        """Record what a webhook says (durably, before acknowledging) and schedule training.

        A payload we cannot read still schedules a run: with Label Studio reachable, the run
        reconciles with its API, so the annotation is not lost."""
        project_info = payload.get("project") if isinstance(payload.get("project"), dict) else {}
        label_config = project_info.get("label_config")
        try:  # keep only a config we can serve: a garbled payload must not replace a good one
            parse_label_config(label_config)
        except ConfigError:
            label_config = None
        recorded = 0
        try:
            if event in ("ANNOTATION_CREATED", "ANNOTATION_UPDATED"):
                annotation, task = payload.get("annotation"), payload.get("task")
                if not isinstance(annotation, dict) or "id" not in annotation:
                    raise ValueError("payload has no annotation with an id")
                task = task if isinstance(task, dict) else {"id": annotation.get("task")}
                self.log.record(project, annotation, task, label_config)
                recorded = 1
            elif event == "ANNOTATIONS_DELETED":
                ids = [a["id"] for a in payload.get("annotations") or [] if isinstance(a, dict) and "id" in a]
                recorded = self.log.delete(project, ids, label_config)
            else:  # START_TRAINING
                self.log.request_training(project, label_config)
        except (ValueError, TypeError, KeyError) as exc:
            logger.warning("project %s: unreadable %s payload (%s); reconciling on the next run", project, event, exc)
            self.log.request_training(project, label_config)
            self.notify(project)
            return {"status": "accepted", "recorded": 0, "warning": str(exc)}
        self.notify(project)
        return {"status": "accepted", "recorded": recorded}

    # -- scheduling --------------------------------------------------------------------------
    def notify(self, project: str) -> None:
        """Make sure a training thread will see the latest generation of this project."""
        if self.jobs is not None:
            self.jobs.enqueue(project)
            return
        with self._lock:
            thread = self._threads.get(project)
            if thread is not None and thread.is_alive():
                return  # the running loop re-checks the generation before it exits
            thread = threading.Thread(target=self._loop, args=(project,), name=f"train-{project}", daemon=True)
            self._threads[project] = thread
            thread.start()

    def resume(self) -> list[str]:
        """After a restart: train every project whose recorded annotations are not all trained on."""
        pending = self.log.projects_needing_training()
        for project in pending:
            self.notify(project)
        if self.jobs is not None:  # workers elsewhere may die mid-run: keep checking
            self.jobs.start_watchdog(self.log)
        return pending

    def busy(self, project: str | None = None) -> bool:
        if self.jobs is not None:
            return self.jobs.busy(project)
        with self._lock:
            threads = [self._threads.get(project)] if project else list(self._threads.values())
        return any(t is not None and t.is_alive() for t in threads)

    def wait(self, project: str, timeout: float = 300) -> bool:
        """Block until training of the project is idle; True if every recorded change is trained on."""
        deadline = time.time() + timeout
        while time.time() < deadline:
            if not self.busy(project):  # idle: either all trained, or the last run failed
                generation, trained, _ = self.log.generations(project)
                return trained >= generation
            time.sleep(0.1)
        return False

    def _loop(self, project: str) -> bool:
        """Train until every recorded generation is trained on; False if a run failed."""
        time.sleep(0.2)  # let a burst of webhook events land before the first run
        while True:
            generation, trained, label_config = self.log.generations(project)
            if generation <= trained:
                return True
            try:
                self.train_once(project, generation, label_config)
            except Exception as exc:
                self.failures[project] += 1
                self.last_error[project] = f"{type(exc).__name__}: {exc}"
                if isinstance(exc, ValueError):  # e.g. no labeling config known yet: say so, no traceback
                    logger.warning("project %s: cannot train yet: %s", project, exc)
                else:
                    logger.exception("project %s: training failed; the last good version keeps serving", project)
                return False  # retried on the next event or restart
            self.log.mark_trained(project, generation)
            self.runs[project] += 1

    # -- one run -----------------------------------------------------------------------------
    def train_once(self, project: str, generation: int, label_config: str | None):
        started = time.perf_counter()
        api = self._api(project)
        unlabeled = None
        if api is not None:
            labeled_pairs, unlabeled = api.tasks(int(project))
            self.log.replace_all(project, labeled_pairs, label_config)
        model = self.registry.get(project, label_config)
        model.load()
        rows = self.log.labeled_tasks(project)
        heads, reports = {}, {}
        labeled = {}  # from_name -> (embeddings, first class index) of the labeled items, for re-ranking
        for target in model.config.targets:
            position = {out: i for i, out in enumerate(target.outputs)}
            tasks, targets = [], []
            for row in rows:
                chosen = [position[c] for c in row.labels.get(target.from_name, []) if c in position]
                if chosen:
                    tasks.append({"id": row.task_id, "data": row.data})
                    targets.append(chosen)
            indices, embeddings = model.embed(target, tasks)
            if not indices:
                continue
            E = np.stack(embeddings)
            first = np.array([targets[i][0] for i in indices], dtype=np.int64)
            labeled[target.from_name] = (E, first)
            if target.multiple:
                y = np.zeros((len(indices), len(target.labels)), dtype=np.int64)
                for row_index, i in enumerate(indices):
                    y[row_index, targets[i]] = 1
            else:
                y = first
            zero_shot = model.zero_shot_head(target)
            history = [r for v in self.versions.all(project) if (r := _target_report(v, target.from_name))]
            head, report = train_and_select(
                E, y, [tasks[i]["id"] for i in indices], zero_shot.prototypes,
                zero_shot.logit_scale, target.outputs, target.multiple, history=history,
                version=model.version_name(self.versions.next_number(project)),
            )
            heads[target.from_name] = head
            reports[target.from_name] = report
        if not heads:
            logger.info("project %s: no usable labels yet; zero-shot keeps serving", project)
            if api is not None and ranked_version(self.settings.model_dir, project) != model.model_version:
                self._publish(api, project, model, unlabeled or [], labeled)  # cold start: zero-shot + typicality
            return None

        primary = next(iter(reports))

        def write_reports(directory, number):
            for from_name, report in reports.items():
                report.update(project=project, from_name=from_name,
                              training_seconds=round(time.perf_counter() - started, 3))
                write_report(report, directory if from_name == primary else directory / from_name)

        version = self.versions.save(
            project, model.version_name, heads,
            meta={"fingerprint": model.config.fingerprint, "encoders": model.encoder_ids,
                  "labels": len(rows), "generation": generation,
                  "heads": {k: type(h).__name__ for k, h in heads.items()}},
            write_extras=write_reports,
        )
        model.refresh()
        logger.info("project %s: trained %s on %d labeled tasks in %.1fs", project, version.name, len(rows),
                    time.perf_counter() - started)
        if api is not None:
            self._publish(api, project, model, unlabeled or [], labeled)
        return version

    def _publish(self, api: LabelStudioAPI, project: str, model, unlabeled: list[dict], labeled: dict) -> None:
        """Re-rank the queue with the serving version: predictions for every unlabeled task with
        score = queue priority, pushed to Label Studio, project switched to the version (ranking.py)."""
        try:
            self.last_ranking[project] = publish_ranking(api, project, model, unlabeled, labeled, self.settings)
        except Exception as exc:
            logger.warning("project %s: could not re-rank the queue in Label Studio: %s", project, exc)

    def _api(self, project: str) -> LabelStudioAPI | None:
        url, key = self.registry.connection(project)
        if not (url and key):
            return None
        return LabelStudioAPI(url, key)


def _target_report(version, from_name: str) -> dict | None:
    report = version.report()
    if report and report.get("from_name", from_name) == from_name:
        return report
    path = version.directory / from_name / "report.json"
    if path.exists():
        import json

        return json.loads(path.read_text())
    return None
