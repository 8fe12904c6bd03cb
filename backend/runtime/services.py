"""Per-process services: the one place where settings become components.

One `Services` per process (web worker or RQ worker): the embedding store, the annotation log, the
version store, one ProjectModel per (project, labeling config) shared by request threads, and what
each project's /setup told us about its Label Studio.
"""
from __future__ import annotations

import hashlib
import logging
import threading
from collections import Counter, defaultdict

from ..config import Settings
from ..embed.encoders import EncoderSpec
from ..embed.fetch import Fetcher
from ..embed.store import EmbeddingStore, open_store
from ..flows.predict import QueueOptions
from ..flows.project_model import ProjectModel
from ..flows.train import TrainingRun
from ..labelstudio.client import LabelStudioAPI, LabelStudioAuth
from ..state.annotations import AnnotationLog
from ..state.versions import VersionStore

logger = logging.getLogger(__name__)


class UnknownConfig(ValueError):
    """No labeling config is known for the project: the request must send one, or /setup come first."""


def encoder_spec(settings: Settings) -> EncoderSpec:
    """The encoders a backend with these settings uses."""
    return EncoderSpec(clip_model=settings.clip_model, clip_pretrained=settings.clip_pretrained,
                       text_model=settings.text_model, device=settings.device, batch_size=settings.batch_size)


def queue_options(settings: Settings) -> QueueOptions:
    return QueueOptions(model_dir=settings.model_dir, strategy=settings.queue_strategy, batch=settings.queue_batch,
                        view=settings.queue_view, uncertainty_sampling=settings.uncertainty_sampling)


def fetcher_kwargs(settings: Settings, url: str | None = None, token: str | None = None) -> dict:
    """Fetcher(**fetcher_kwargs(...)): Label Studio's URL and token are the environment's, else /setup's."""
    url = url or settings.label_studio_url
    token = token or settings.label_studio_api_key
    return {"label_studio_url": url, "auth": LabelStudioAuth(url, token, settings.fetch_timeout_s) if token else None,
            "timeout_s": settings.fetch_timeout_s, "max_bytes": settings.fetch_max_bytes,
            "max_image_pixels": settings.max_image_pixels, "max_text_chars": settings.max_text_chars,
            "allowed_hosts": settings.allowed_fetch_hosts, "document_root": settings.local_files_document_root,
            "pool_size": max(8, settings.fetch_workers * 2)}


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
        self._store: EmbeddingStore | None = None
        self._models: dict[tuple[str, str], ProjectModel] = {}
        self._configs: dict[str, str] = {}  # project -> last label_config seen (from /setup)
        self._connections: dict[str, tuple[str | None, str | None]] = {}  # project -> (url, token) from /setup
        self._lock = threading.Lock()
        self._building: dict[tuple[str, str], threading.Lock] = defaultdict(threading.Lock)

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
        with self._lock:
            if label_config:
                self._configs[project] = label_config
            if url or token:
                self._connections[project] = (url, token)

    def connection(self, project: str) -> tuple[str | None, str | None]:
        """Label Studio URL and token: the environment's, else what /setup sent for this project."""
        url, token = self._connections.get(str(project), (None, None))
        return self.settings.label_studio_url or url, self.settings.label_studio_api_key or token

    def api(self, project: str) -> LabelStudioAPI | None:
        url, key = self.connection(project)
        return LabelStudioAPI(url, key) if url and key else None

    # -- models --------------------------------------------------------------------------------
    def model(self, project: str, label_config: str | None = None) -> ProjectModel:
        """The shared ProjectModel of the project's labeling config (the request's, else the last known)."""
        label_config = label_config or self._configs.get(project) or self.log.generations(project)[2]
        if not label_config:
            raise UnknownConfig("label_config is missing and /setup was not called for this project")
        key = (project, hashlib.sha1(label_config.encode()).hexdigest())
        if key in self._models:
            return self._models[key]
        with self._building[key]:  # concurrent first requests build the model once
            if key not in self._models:
                self._models[key] = ProjectModel(
                    project, label_config, encoders=encoder_spec(self.settings), store=self.store,
                    fetcher=Fetcher(**fetcher_kwargs(self.settings, *self.connection(project))), versions=self.versions,
                    fetch_workers=self.settings.fetch_workers)
            return self._models[key]

    def models(self) -> list[ProjectModel]:
        return list(self._models.values())

    def stats(self) -> dict:
        total: Counter = Counter()
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
        return TrainingRun(log=self.log, versions=self.versions, model_for=self.model, api=self.api(project),
                           queue=self.queue)
