"""One settings object, read from the environment and validated at start.

Names follow Label Studio's ML backend conventions where one exists
(LABEL_STUDIO_URL, LABEL_STUDIO_API_KEY, MODEL_DIR, BASIC_AUTH_USER/PASS, LOG_LEVEL).
"""
from __future__ import annotations

import dataclasses
import logging
import os
from pathlib import Path


class SettingsError(ValueError):
    """A configuration value is missing or malformed; the message says which and how to fix it."""


def _int(env, name: str, default: int, minimum: int = 0) -> int:
    raw = env.get(name)
    if raw in (None, ""):
        return default
    try:
        value = int(raw)
    except ValueError:
        raise SettingsError(f"{name}={raw!r} is not an integer") from None
    if value < minimum:
        raise SettingsError(f"{name}={value} must be >= {minimum}")
    return value


def _float(env, name: str, default: float, minimum: float = 0.0) -> float:
    raw = env.get(name)
    if raw in (None, ""):
        return default
    try:
        value = float(raw)
    except ValueError:
        raise SettingsError(f"{name}={raw!r} is not a number") from None
    if value < minimum:
        raise SettingsError(f"{name}={value} must be >= {minimum}")
    return value


def _bool(env, name: str, default: bool) -> bool:
    raw = (env.get(name) or "").strip().lower()
    if not raw:
        return default
    if raw in ("1", "true", "yes", "on"):
        return True
    if raw in ("0", "false", "no", "off"):
        return False
    raise SettingsError(f"{name}={raw!r} must be true or false")


@dataclasses.dataclass(frozen=True)
class Settings:
    # Label Studio connection (for relative /data/... URLs)
    label_studio_url: str | None = None
    label_studio_api_key: str | None = dataclasses.field(default=None, repr=False)
    # server
    port: int = 9090
    basic_auth_user: str | None = None
    basic_auth_pass: str | None = dataclasses.field(default=None, repr=False)
    log_level: str = "INFO"
    # storage
    model_dir: Path = Path("./models")
    chroma_path: Path | None = None
    chroma_host: str | None = None
    chroma_port: int = 8000
    chroma_ssl: bool = False
    annotation_log_journal: str = "wal"  # "delete" when MODEL_DIR is on a network filesystem shared by hosts
    chroma_auth_token: str | None = dataclasses.field(default=None, repr=False)  # sent as a bearer token
    # training jobs on Redis + RQ (jobs.py); without REDIS_URL training runs in in-process threads
    redis_url: str | None = dataclasses.field(default=None, repr=False)  # may hold a password
    rq_queue: str = "clip-backend"
    training_watchdog_s: float = 10.0  # how often the web app re-queues projects whose worker died
    training_lock_ttl_s: float = 30.0  # a killed worker's per-project training lock expires after this
    # encoders
    clip_model: str = "ViT-B-32"
    clip_pretrained: str = "laion2b_s34b_b79k"
    text_model: str = "sentence-transformers/all-MiniLM-L6-v2"
    device: str = "auto"
    batch_size: int = 64
    # fetching task data
    local_files_document_root: Path | None = None
    fetch_timeout_s: float = 10.0
    fetch_max_bytes: int = 50 * 1024 * 1024
    max_image_pixels: int = 64_000_000
    fetch_workers: int = 8
    max_text_chars: int = 20_000
    # hosts task URLs may point to, besides Label Studio's own ("*" = any, "*.example.com" = subdomains)
    allowed_fetch_hosts: tuple[str, ...] = ()
    # labeling queue (ranking.py)
    queue_strategy: str = "boundary"
    queue_batch: int = 50
    queue_view: str = "Boundary first"  # Data Manager tab ordered by our scores ("" = none)
    uncertainty_sampling: bool = False  # opt-in: switch the project's sampling to "Uncertainty sampling"

    @property
    def resolved_chroma_path(self) -> Path:
        return self.chroma_path or (self.model_dir / "chroma")

    @classmethod
    def from_env(cls, env=None) -> "Settings":
        env = os.environ if env is None else env
        log_level = (env.get("LOG_LEVEL") or "INFO").upper()
        if log_level not in logging.getLevelNamesMapping():
            raise SettingsError(f"LOG_LEVEL={log_level!r} is not one of DEBUG, INFO, WARNING, ERROR")
        url = (env.get("LABEL_STUDIO_URL") or env.get("LABEL_STUDIO_HOST") or "").rstrip("/") or None
        if url and not url.startswith(("http://", "https://")):
            raise SettingsError(f"LABEL_STUDIO_URL={url!r} must start with http:// or https://")
        user, password = env.get("BASIC_AUTH_USER") or None, env.get("BASIC_AUTH_PASS") or None
        if bool(user) != bool(password):
            raise SettingsError("set both BASIC_AUTH_USER and BASIC_AUTH_PASS, or neither")
        device = (env.get("DEVICE") or "auto").lower()
        if device not in ("auto", "cpu") and not device.startswith(("cuda", "mps")):
            raise SettingsError(f"DEVICE={device!r} must be auto, cpu, cuda[:N] or mps")
        pretrained = env.get("CLIP_PRETRAINED", cls.clip_pretrained)
        if pretrained.endswith((".pt", ".pth", ".bin", ".safetensors")) and not Path(pretrained).is_file():
            raise SettingsError(f"CLIP_PRETRAINED={pretrained!r} looks like a checkpoint path but no such file exists")
        root = env.get("LOCAL_FILES_DOCUMENT_ROOT")
        redis_url = env.get("REDIS_URL") or None
        if redis_url and not redis_url.startswith(("redis://", "rediss://", "unix://")):
            raise SettingsError("REDIS_URL must start with redis://, rediss:// or unix://")  # no echo: may hold a password
        queue = (env.get("RQ_QUEUE") or "clip-backend").strip()
        if not queue.replace("-", "").replace("_", "").replace(".", "").isalnum():
            raise SettingsError(f"RQ_QUEUE={queue!r} may contain only letters, digits, '-', '_' and '.'")
        journal = (env.get("ANNOTATION_LOG_JOURNAL") or "wal").strip().lower()
        if journal not in ("wal", "delete"):
            raise SettingsError(f"ANNOTATION_LOG_JOURNAL={journal!r} must be wal (one host) or delete "
                                "(MODEL_DIR on a network filesystem shared by several hosts)")
        from .strategies import STRATEGIES

        strategy = (env.get("QUEUE_STRATEGY") or "boundary").lower().replace("-", "_")
        if strategy not in STRATEGIES or strategy == "cold_start":
            choices = ", ".join(s for s in STRATEGIES if s != "cold_start")
            raise SettingsError(f"QUEUE_STRATEGY={strategy!r} must be one of {choices}")
        return cls(
            label_studio_url=url,
            label_studio_api_key=env.get("LABEL_STUDIO_API_KEY") or None,
            port=_int(env, "PORT", 9090, 1),
            basic_auth_user=user,
            basic_auth_pass=password,
            log_level=log_level,
            model_dir=Path(env.get("MODEL_DIR") or "./models"),
            chroma_path=Path(env["CHROMA_PATH"]) if env.get("CHROMA_PATH") else None,
            chroma_host=env.get("CHROMA_HOST") or None,
            chroma_port=_int(env, "CHROMA_PORT", 8000, 1),
            chroma_ssl=_bool(env, "CHROMA_SSL", False),
            annotation_log_journal=journal,
            chroma_auth_token=env.get("CHROMA_AUTH_TOKEN") or None,
            redis_url=redis_url,
            rq_queue=queue,
            training_watchdog_s=_float(env, "TRAINING_WATCHDOG_S", 10.0, 0.1),
            training_lock_ttl_s=_float(env, "TRAINING_LOCK_TTL_S", 30.0, 1.0),
            clip_model=env.get("CLIP_MODEL") or cls.clip_model,
            clip_pretrained=pretrained or "none",
            text_model=env.get("TEXT_MODEL") or cls.text_model,
            device=device,
            batch_size=_int(env, "BATCH_SIZE", 64, 1),
            local_files_document_root=Path(root).resolve() if root else None,
            fetch_timeout_s=_float(env, "FETCH_TIMEOUT", 10.0, 0.1),
            fetch_max_bytes=_int(env, "FETCH_MAX_BYTES", 50 * 1024 * 1024, 1),
            max_image_pixels=_int(env, "MAX_IMAGE_PIXELS", 64_000_000, 1),
            fetch_workers=_int(env, "FETCH_WORKERS", 8, 1),
            max_text_chars=_int(env, "MAX_TEXT_CHARS", 20_000, 1),
            queue_strategy=strategy,
            queue_batch=_int(env, "QUEUE_BATCH", 50, 1),
            queue_view=env.get("QUEUE_VIEW", "Boundary first").strip(),
            uncertainty_sampling=_bool(env, "UNCERTAINTY_SAMPLING", False),
            allowed_fetch_hosts=tuple(h.strip().lower() for h in (env.get("ALLOWED_FETCH_HOSTS") or "").split(",")
                                      if h.strip()),
        )
