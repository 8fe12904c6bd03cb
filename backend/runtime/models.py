"""The ProjectModels a process serves, bounded, and their warm-ups.

ModelCache: one ProjectModel per (project, labeling config), built once however many request threads
ask at the same time; beyond MAX_PROJECT_MODELS the least recently used is dropped, and one unused for
PROJECT_MODEL_IDLE_S too (encoders are shared by all models and stay loaded; a dropped model is built
again on its next request). So a flood of /setup calls with distinct configs cannot keep them all.

WarmUps: loading encoders and encoding label prompts ahead of the first request, on one background
thread with a short queue, not a thread per /setup; when the queue is full the first request loads.
"""
from __future__ import annotations

import hashlib
import logging
import queue
import threading
import time
from collections import Counter, OrderedDict
from typing import Callable

from ..flows.project_model import ModelLoadError, ProjectModel

logger = logging.getLogger(__name__)

Key = tuple[str, str]


class ModelCache:
    def __init__(self, build: Callable[[str, str], ProjectModel], max_models: int, idle_s: float,
                 clock: Callable[[], float] = time.monotonic):
        self._build = build
        self.max_models = max_models
        self.idle_s = idle_s
        self._clock = clock
        self._models: OrderedDict[Key, ProjectModel] = OrderedDict()  # least recently used first
        self._used: dict[Key, float] = {}
        self._building: dict[Key, threading.Lock] = {}
        self._lock = threading.Lock()
        self.retired_stats: Counter = Counter()  # counters of dropped models: /metrics stays monotonic

    def get(self, project: str, label_config: str) -> ProjectModel:
        """The shared model of this config; built here if needed (raises ConfigError for one we cannot serve)."""
        key = (project, hashlib.sha1(label_config.encode("utf-8", "surrogatepass")).hexdigest())
        with self._lock:
            model = self._touch(key)
            if model is not None:
                return model
            building = self._building.setdefault(key, threading.Lock())
        with building:  # concurrent first requests build the model once
            with self._lock:
                model = self._touch(key)
            if model is not None:
                return model
            try:
                model = self._build(project, label_config)
            finally:
                with self._lock:
                    self._building.pop(key, None)
            with self._lock:
                self._models[key] = model
                self._touch(key)
                self._evict()
            return model

    def models(self, project: str | None = None) -> list[ProjectModel]:
        with self._lock:
            return [m for (p, _), m in self._models.items() if project is None or p == project]

    def _touch(self, key: Key) -> ProjectModel | None:
        model = self._models.get(key)
        if model is not None:
            self._models.move_to_end(key)
            self._used[key] = self._clock()
        return model

    def _evict(self) -> None:
        now = self._clock()
        idle = [key for key, used in self._used.items() if now - used > self.idle_s]
        while len(self._models) - len(idle) > self.max_models:
            idle.append(next(key for key in self._models if key not in idle))
        for key in idle:
            model = self._models.pop(key)
            del self._used[key]
            self.retired_stats.update(model.stats)
            logger.info("project %s: dropped an unused model (%s) from memory", model.project_id, key[1][:10])


class WarmUps:
    """One worker thread at a time, started when work arrives and gone when the queue is empty (not a
    daemon: a process exiting lets the current warm-up finish instead of killing it inside torch)."""

    def __init__(self, max_pending: int = 8):
        self._queue: queue.Queue[ProjectModel] = queue.Queue(maxsize=max_pending)
        self._queued: set[int] = set()
        self._lock = threading.Lock()
        self._worker: threading.Thread | None = None

    def submit(self, model: ProjectModel) -> bool:
        """Load the model in the background; False if it is queued already or the queue is full."""
        with self._lock:
            if id(model) in self._queued:
                return False
            try:
                self._queue.put_nowait(model)
            except queue.Full:
                logger.info("project %s: warm-up queue full; the first request loads the model", model.project_id)
                return False
            self._queued.add(id(model))
            if self._worker is None:
                self._worker = threading.Thread(target=self._work, name="warm-up")
                self._worker.start()
        return True

    def pending(self) -> int:
        with self._lock:
            return len(self._queued)

    def _work(self) -> None:
        while True:
            with self._lock:
                try:
                    model = self._queue.get_nowait()
                except queue.Empty:
                    self._worker = None
                    return
            try:
                warm_up(model)
            finally:
                with self._lock:
                    self._queued.discard(id(model))


def warm_up(model: ProjectModel) -> None:
    """Load encoders and label prompts; failures are logged (the next request reports them)."""
    try:
        model.load()
    except ModelLoadError as exc:
        logger.error("project %s: %s", model.project_id, exc)
    except Exception:
        logger.exception("loading the model for project %s failed", model.project_id)
