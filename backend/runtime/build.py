"""The composition root: everything a process runs on is built here, from the settings, with its
collaborators passed in through constructors; nothing is wired after construction.

    build_runtime(settings)   the web app's process (web/app.py): threads, or RQ jobs with REDIS_URL
    worker_runtime()          an RQ training worker's process (worker.py), built once per process
    build_model(settings, ...)  one project's model on its own (clip-backend-embed, the benchmarks)
"""
from __future__ import annotations

import threading

from ..config import Settings
from ..embed.store import EmbeddingStore, open_store
from ..model import ClipClassifier
from ..state.annotations import AnnotationLog
from ..state.versions import VersionStore
from .connections import Connection, Connections
from .models import ModelCache, ModelFactory, ProjectModels, SharedStore, WarmUps, store_kwargs
from .preannotation import PreAnnotator
from .process import Runtime
from .redis_jobs import RedisScheduler
from .training import ThreadScheduler, TrainingLoop


def build_runtime(settings: Settings, preannotation: bool = True) -> Runtime:
    """The log, versions and connections of MODEL_DIR; the project models on the shared store; the
    background pre-annotation (which also runs the sweeps training asks for); the training loop and its
    scheduler (RQ jobs on REDIS_URL, else a thread per project). ``preannotation`` False: an RQ worker's."""
    log = AnnotationLog(settings.model_dir / "annotations.sqlite3", settings.annotation_log_journal)
    versions = VersionStore(settings.model_dir)
    connections = Connections(settings, log)
    factory = ModelFactory(settings, SharedStore(settings), versions, connections)
    cache = ModelCache(factory.build, settings.max_project_models, settings.project_model_idle_s)
    models = ProjectModels(cache, log, WarmUps())
    preannotator = PreAnnotator(models, connections, sweep_predictions=settings.sweep_predictions) \
        if preannotation else None
    loop = TrainingLoop(log, models, connections, sweeper=preannotator)
    scheduler = RedisScheduler(loop, settings) if settings.redis_url else ThreadScheduler(loop)
    return Runtime(settings, log, versions, connections, factory, models, scheduler, preannotator)


_worker: Runtime | None = None  # one per worker process: encoder weights load once, not per job
_worker_lock = threading.Lock()


def worker_runtime(settings: Settings | None = None) -> Runtime:
    """The RQ worker's runtime (RedisScheduler, no pre-annotation), built on first use."""
    global _worker
    with _worker_lock:
        if _worker is None:
            _worker = build_runtime(settings or Settings.from_env(), preannotation=False)
        return _worker


def build_model(settings: Settings, project: str, label_config: str, connection: Connection | None = None,
                store: EmbeddingStore | None = None) -> ClipClassifier:
    """One project's model as the backend builds it, outside a server: on ``store`` (default: the settings'
    store, opened now, so an unreachable Chroma is an error here), downloading through ``connection``
    (default: the environment's Label Studio)."""
    store = store if store is not None else open_store(**store_kwargs(settings))
    factory = ModelFactory(settings, SharedStore(settings, opened=store), VersionStore(settings.model_dir))
    return factory.build(project, label_config, connection)
