"""The models a process serves: how they are built, bounded and warmed up.

ModelFactory: the one place a ClipClassifier is made, from the settings and the process's store,
versions and Label Studio connections (the web app, the RQ worker, clip-backend-embed and the
benchmarks all build through it; see build.py).

ModelCache: one model per (project, labeling config), built once however many request threads ask at
the same time; beyond MAX_PROJECT_MODELS the least recently used is dropped, and one unused for
PROJECT_MODEL_IDLE_S too (encoders are shared by all models and stay loaded; a dropped model is built
again on its next request). So a flood of /setup calls with distinct configs cannot keep them all.

WarmUps: loading encoders and encoding label prompts ahead of the first request, on one background
thread with a short queue, not a thread per /setup; when the queue is full the first request loads.

ProjectModels: what the rest of the process asks for a project's model (the request's labeling config,
else the project's last known one, kept in the annotation log).
"""
from __future__ import annotations

import hashlib
import logging
import queue
import threading
import time
from collections import Counter, OrderedDict
from typing import Callable

from ..config import Settings
from ..embed.encoders import EncoderSpec
from ..embed.fetch import Fetcher
from ..embed.store import EmbeddingStore, HnswParams, open_store
from ..labelstudio.client import LabelStudioAuth
from ..model import ClipClassifier, ModelLoadError, QueueOptions
from ..state.annotations import AnnotationLog
from ..state.project_state import ProjectState
from ..state.versions import VersionStore
from .connections import Connection, Connections

logger = logging.getLogger(__name__)

Key = tuple[str, str]


class UnknownConfig(ValueError):
    """No labeling config is known for the project: the request must send one, or /setup come first."""


# -- settings -> parts ------------------------------------------------------------------------------
def encoder_spec(settings: Settings) -> EncoderSpec:
    """The encoders a backend with these settings uses."""
    return EncoderSpec(clip_model=settings.clip_model, clip_pretrained=settings.clip_pretrained,
                       text_model=settings.text_model, device=settings.device, batch_size=settings.batch_size,
                       precision=settings.cuda_precision, gpu_decode=settings.gpu_decode)


def queue_options(settings: Settings) -> QueueOptions:
    return QueueOptions(strategy=settings.queue_strategy, batch=settings.queue_batch, view=settings.queue_view,
                        uncertainty_sampling=settings.uncertainty_sampling, sample=settings.queue_sample,
                        audit_share=settings.audit_share, cold_start_sample=settings.cold_start_sample,
                        full_reconcile_s=settings.full_reconcile_s)


def fetcher_kwargs(settings: Settings, connection: Connection | None = None) -> dict:
    """Fetcher(**fetcher_kwargs(...)): Label Studio's URL and token are the connection's (default: the
    environment's); a token only ever goes with the URL it came with (connections.py)."""
    connection = connection or Connection.environment(settings)
    url, token = connection.url, connection.token if connection.url else None
    return {"label_studio_url": url, "auth": LabelStudioAuth(url, token, settings.fetch_timeout_s) if token else None,
            "timeout_s": settings.fetch_timeout_s, "max_bytes": settings.fetch_max_bytes,
            "max_image_pixels": settings.max_image_pixels, "max_text_chars": settings.max_text_chars,
            "allowed_hosts": settings.allowed_fetch_hosts, "document_root": settings.local_files_document_root,
            "pool_size": max(8, settings.fetch_workers * 2), "deadline_s": settings.fetch_deadline_s,
            "max_pixels_in_flight": settings.decode_pixels_in_flight}


def store_kwargs(settings: Settings) -> dict:
    """open_store(**store_kwargs(settings)): a Chroma server when CHROMA_HOST is set, else embedded Chroma."""
    return {"path": settings.resolved_chroma_path, "host": settings.chroma_host, "port": settings.chroma_port,
            "ssl": settings.chroma_ssl, "auth_token": settings.chroma_auth_token,
            "namespace": settings.chroma_namespace, "timeout_s": settings.chroma_timeout_s,
            "hnsw": HnswParams(M=settings.chroma_hnsw_m, construction_ef=settings.chroma_hnsw_construction_ef,
                               search_ef=settings.chroma_hnsw_search_ef)}


class SharedStore:
    """The process's embedding store, opened on first use; None while Chroma is unavailable (served
    without cache, tried again on the next use)."""

    def __init__(self, settings: Settings, opened: EmbeddingStore | None = None):
        self._settings = settings
        self._store = opened
        self._lock = threading.Lock()

    def get(self) -> EmbeddingStore | None:
        with self._lock:
            if self._store is None:
                try:
                    self._store = open_store(**store_kwargs(self._settings))
                except Exception as exc:
                    logger.error("cannot open the Chroma store (%s); serving without cache", exc)
                    return None
            return self._store


class ModelFactory:
    """Builds a project's ClipClassifier with the settings' encoders, queue options and limits, the shared
    store and versions, and a fetcher for the project's Label Studio connection (``connections``; without
    them, or given a ``connection``, that one or the environment's)."""

    def __init__(self, settings: Settings, store: SharedStore, versions: VersionStore,
                 connections: Connections | None = None):
        self.settings = settings
        self.store = store
        self.versions = versions
        self.connections = connections
        self.queue = queue_options(settings)

    def fetcher(self, connection: Connection | None = None) -> Fetcher:
        return Fetcher(**fetcher_kwargs(self.settings, connection))

    def build(self, project: str, label_config: str, connection: Connection | None = None) -> ClipClassifier:
        """ConfigError for a labeling config the backend cannot serve."""
        if connection is None and self.connections is not None:
            connection = self.connections.connection(project)
        settings = self.settings
        return ClipClassifier(project, label_config, encoders=encoder_spec(settings), store=self.store.get(),
                              fetcher=self.fetcher(connection), versions=self.versions,
                              state=ProjectState(settings.model_dir, project), queue=self.queue,
                              fetch_workers=settings.fetch_workers, max_choices=settings.max_choices)


class ModelCache:
    def __init__(self, build: Callable[[str, str], ClipClassifier], max_models: int, idle_s: float,
                 clock: Callable[[], float] = time.monotonic):
        self._build = build
        self.max_models = max_models
        self.idle_s = idle_s
        self._clock = clock
        self._models: OrderedDict[Key, ClipClassifier] = OrderedDict()  # least recently used first
        self._used: dict[Key, float] = {}
        self._building: dict[Key, threading.Lock] = {}
        self._lock = threading.Lock()
        self.retired_stats: Counter = Counter()  # counters of dropped models: /metrics stays monotonic

    def get(self, project: str, label_config: str) -> ClipClassifier:
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

    def models(self, project: str | None = None) -> list[ClipClassifier]:
        with self._lock:
            return [m for (p, _), m in self._models.items() if project is None or p == project]

    def _touch(self, key: Key) -> ClipClassifier | None:
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
        self._queue: queue.Queue[ClipClassifier] = queue.Queue(maxsize=max_pending)
        self._queued: set[int] = set()
        self._lock = threading.Lock()
        self._worker: threading.Thread | None = None

    def submit(self, model: ClipClassifier) -> bool:
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


def warm_up(model: ClipClassifier) -> None:
    """Load encoders and label prompts; failures are logged (the next request reports them)."""
    try:
        model.load()
    except ModelLoadError as exc:
        logger.error("project %s: %s", model.project_id, exc)
    except Exception:
        logger.exception("loading the model for project %s failed", model.project_id)


class ProjectModels:
    """The models this process serves, by project: built for the request's labeling config, else for the
    project's last known one (/setup's or a webhook's, kept in the annotation log)."""

    def __init__(self, cache: ModelCache, log: AnnotationLog, warm_ups: WarmUps):
        self.cache = cache
        self.log = log
        self.warm_ups = warm_ups

    def get(self, project: str, label_config: str | None = None) -> ClipClassifier:
        label_config = label_config or self.log.generations(project)[2]
        if not label_config:
            raise UnknownConfig("label_config is missing and /setup was not called for this project")
        return self.cache.get(project, label_config)

    def built(self, project: str | None = None) -> list[ClipClassifier]:
        """The models in memory (of one project, or all)."""
        return self.cache.models(project)

    def warm_up(self, model: ClipClassifier) -> bool:
        """Load the model's encoders and label prompts in the background (one small pool per process)."""
        return self.warm_ups.submit(model)

    def stats(self) -> dict:
        total: Counter = Counter(self.cache.retired_stats)
        for model in self.built():
            total.update(model.stats)
        return dict(total)

    def serving(self) -> dict[str, str]:
        """The version this process serves per project (each gunicorn worker has its own)."""
        serving = {}
        for model in self.built():
            model.refresh()  # as /predict does: one small file read
            serving[model.project_id] = model.model_version
        return serving
