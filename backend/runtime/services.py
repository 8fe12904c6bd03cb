"""Per-process services: the one place where settings become components.

One `Services` per process (web worker or RQ worker): the embedding store, the annotation log, the
version store, the ProjectModels shared by request threads (models.py: bounded, warmed up on a small
pool), and what each project's /setup told us about its Label Studio (connections.py).
"""
from __future__ import annotations

import logging
import threading
from collections import Counter

from ..config import Settings
from ..embed.encoders import EncoderSpec
from ..embed.fetch import Fetcher
from ..embed.store import EmbeddingStore, open_store
from ..flows.predict import QueueOptions
from ..flows.project_model import ProjectModel
from ..flows.train import TrainingRun
from ..labelstudio.client import LabelStudioAPI, LabelStudioAuth
from ..labelstudio.labelconfig import parse_label_config
from ..state.annotations import AnnotationLog
from ..state.versions import VersionStore
from .connections import Connection, Connections
from .models import ModelCache, WarmUps

logger = logging.getLogger(__name__)


class UnknownConfig(ValueError):
    """No labeling config is known for the project: the request must send one, or /setup come first."""


def encoder_spec(settings: Settings) -> EncoderSpec:
    """The encoders a backend with these settings uses."""
    return EncoderSpec(clip_model=settings.clip_model, clip_pretrained=settings.clip_pretrained,
                       text_model=settings.text_model, device=settings.device, batch_size=settings.batch_size)


def queue_options(settings: Settings) -> QueueOptions:
    return QueueOptions(model_dir=settings.model_dir, strategy=settings.queue_strategy, batch=settings.queue_batch,
                        view=settings.queue_view, uncertainty_sampling=settings.uncertainty_sampling,
                        sample=settings.queue_sample, audit_share=settings.audit_share,
                        cold_start_sample=settings.cold_start_sample, full_reconcile_s=settings.full_reconcile_s)


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
            "ssl": settings.chroma_ssl, "auth_token": settings.chroma_auth_token}


class Services:
    def __init__(self, settings: Settings):
        self.settings = settings
        self.log = AnnotationLog(settings.model_dir / "annotations.sqlite3", settings.annotation_log_journal)
        self.versions = VersionStore(settings.model_dir)
        self.queue = queue_options(settings)
        self.connections = Connections(settings, self.log)
        self._store: EmbeddingStore | None = None
        self._models = ModelCache(self._build, settings.max_project_models, settings.project_model_idle_s)
        self._warm_ups = WarmUps()
        self._lock = threading.Lock()

    @property
    def store(self) -> EmbeddingStore | None:
        with self._lock:
            if self._store is None:
                try:
                    self._store = open_store(**store_kwargs(self.settings))
                except Exception as exc:
                    logger.error("cannot open the Chroma store (%s); serving without cache", exc)
                    return None
            return self._store

    # -- what /setup taught us -----------------------------------------------------------------
    def remember(self, project: str, label_config: str | None, url: str | None, token: str | None) -> None:
        """What /setup sent. Raises BindingConflict when the project already reached another Label Studio
        (connections.py), ConfigError for a config we cannot serve; a servable config is kept in the
        annotation log (served after a restart without another /setup)."""
        if label_config:
            parse_label_config(label_config, self.settings.max_choices)  # one we cannot serve changes nothing
        before = self.connection(project)
        self.connections.learn(project, url, token)
        connection = self.connection(project)
        if connection != before:  # models built earlier download with the new URL and token from now on
            for model in self._models.models(project):
                model.fetcher = Fetcher(**fetcher_kwargs(self.settings, connection))
        if label_config:
            self.model(project, label_config)  # built now: setup() warms it up next
            if label_config != self.log.generations(project)[2]:
                self.log.set_label_config(project, label_config)

    def connection(self, project: str) -> Connection:
        return self.connections.connection(str(project))

    def api(self, project: str) -> LabelStudioAPI | None:
        connection = self.connection(project)
        return LabelStudioAPI(connection.url, connection.token) if connection.complete else None

    # -- models --------------------------------------------------------------------------------
    def model(self, project: str, label_config: str | None = None) -> ProjectModel:
        """The shared ProjectModel of the project's labeling config (the request's, else the last known:
        /setup's or a webhook's, kept in the annotation log)."""
        label_config = label_config or self.log.generations(project)[2]
        if not label_config:
            raise UnknownConfig("label_config is missing and /setup was not called for this project")
        return self._models.get(project, label_config)

    def _build(self, project: str, label_config: str) -> ProjectModel:
        return ProjectModel(project, label_config, encoders=encoder_spec(self.settings), store=self.store,
                            fetcher=Fetcher(**fetcher_kwargs(self.settings, self.connection(project))),
                            versions=self.versions, fetch_workers=self.settings.fetch_workers,
                            max_choices=self.settings.max_choices)

    def warm_up(self, model: ProjectModel) -> bool:
        """Load the model's encoders and label prompts in the background (one small pool per process)."""
        return self._warm_ups.submit(model)

    def models(self) -> list[ProjectModel]:
        return self._models.models()

    def stats(self) -> dict:
        total: Counter = Counter(self._models.retired_stats)
        for model in self.models():
            total.update(model.stats)
        return dict(total)

    def serving(self) -> dict[str, str]:
        """The version this process serves per project (each gunicorn worker has its own)."""
        serving = {}
        for model in self.models():
            model.refresh()  # as /predict does: one small file read
            serving[model.project_id] = model.model_version
        return serving

    def training_run(self, project: str) -> TrainingRun:
        connection = self.connection(project)
        return TrainingRun(log=self.log, versions=self.versions, model_for=self.model, api=self.api(project),
                           queue=self.queue, bound_url=connection.url if connection.from_setup else None)
