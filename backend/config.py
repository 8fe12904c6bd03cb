"""One settings object, validated at start: the only module that reads the environment.

Names follow Label Studio's ML backend conventions where one exists
(LABEL_STUDIO_URL, LABEL_STUDIO_API_KEY, MODEL_DIR, BASIC_AUTH_USER/PASS, LOG_LEVEL). Each field's
``validation_alias`` is its environment variable.

How the environment is read: ``Settings.from_env(env=None)`` is the only path. It takes the variables
the fields name from the given mapping (``os.environ`` when None), drops blank ones (blank = unset;
QUEUE_VIEW and CLIP_PRETRAINED are the exceptions, see BLANK_IS_A_VALUE) and validates them as keyword
arguments. pydantic-settings' own environment source is switched off (``settings_customise_sources``
keeps only the keyword arguments), so ``Settings(model_dir=...)`` in code never picks up a stray
variable of the process, and a dict in a test takes exactly the path os.environ takes in production.

Every validation failure is a SettingsError with one line per problem that names the variable.
"""
from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from pydantic import AliasChoices, Field, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict

# The query strategies QUEUE_STRATEGY may name (backend.queue's registry without cold_start, which
# only runs before the first trained head); a test checks that the two agree.
QUEUE_STRATEGIES = ("random", "least_confidence", "margin", "entropy", "boundary")
# Variables whose empty value means something: QUEUE_VIEW="" = no Data Manager tab,
# CLIP_PRETRAINED="" = no pretrained weights ("none").
BLANK_IS_A_VALUE = frozenset({"QUEUE_VIEW", "CLIP_PRETRAINED"})
CHECKPOINT_SUFFIXES = (".pt", ".pth", ".bin", ".safetensors")


class SettingsError(ValueError):
    """A configuration value is missing or malformed; the message says which and how to fix it."""


def _env(name: str, default: Any = None, **kwargs: Any) -> Any:
    return Field(default, validation_alias=name, **kwargs)


class Settings(BaseSettings):
    model_config = SettingsConfigDict(frozen=True, validate_by_name=True, validate_by_alias=True, extra="forbid")

    # Label Studio connection (for relative /data/... URLs)
    label_studio_url: str | None = Field(None, validation_alias=AliasChoices("LABEL_STUDIO_URL", "LABEL_STUDIO_HOST"))
    label_studio_api_key: str | None = _env("LABEL_STUDIO_API_KEY", repr=False)
    # server
    port: int = _env("PORT", 9090, ge=1)
    basic_auth_user: str | None = _env("BASIC_AUTH_USER")
    basic_auth_pass: str | None = _env("BASIC_AUTH_PASS", repr=False)
    # accepted on /webhook instead of basic auth, in an X-Webhook-Secret header (Label Studio's webhooks
    # carry no basic auth: add the header to the project's webhook); needs BASIC_AUTH_USER
    webhook_secret: str | None = _env("WEBHOOK_SECRET", repr=False)
    log_level: str = _env("LOG_LEVEL", "INFO")
    # storage
    model_dir: Path = _env("MODEL_DIR", Path("./models"))
    chroma_path: Path | None = _env("CHROMA_PATH")
    chroma_host: str | None = _env("CHROMA_HOST")
    chroma_port: int = _env("CHROMA_PORT", 8000, ge=1)
    chroma_ssl: bool = _env("CHROMA_SSL", False)
    # "delete" when MODEL_DIR is on a network filesystem shared by hosts
    annotation_log_journal: str = _env("ANNOTATION_LOG_JOURNAL", "wal")
    chroma_auth_token: str | None = _env("CHROMA_AUTH_TOKEN", repr=False)  # sent as a bearer token
    # prefix of this deployment's Chroma collections: several deployments share one Chroma server safely
    chroma_namespace: str = _env("CHROMA_NAMESPACE", "")
    chroma_timeout_s: float = _env("CHROMA_TIMEOUT", 10.0, gt=0)  # every call to a Chroma server
    # the HNSW index of new collections (Chroma's defaults); at ~1M records recall needs a larger graph
    chroma_hnsw_m: int = _env("CHROMA_HNSW_M", 16, ge=2, le=512)
    chroma_hnsw_construction_ef: int = _env("CHROMA_HNSW_CONSTRUCTION_EF", 100, ge=1)
    chroma_hnsw_search_ef: int = _env("CHROMA_HNSW_SEARCH_EF", 100, ge=1)  # existing collections too
    # training jobs on Redis + RQ; without REDIS_URL training runs in in-process threads
    redis_url: str | None = _env("REDIS_URL", repr=False)  # may hold a password
    rq_queue: str = _env("RQ_QUEUE", "clip-backend")
    training_watchdog_s: float = _env("TRAINING_WATCHDOG_S", 10.0, ge=0.1)  # how often dead workers are noticed
    training_lock_ttl_s: float = _env("TRAINING_LOCK_TTL_S", 30.0, ge=1.0)  # a killed worker's lock expires after this
    # webhook bodies: an annotation event is small; an import (TASKS_CREATED) or a bulk delete may be large
    webhook_max_bytes: int = _env("WEBHOOK_MAX_BYTES", 2 * 1024 * 1024, ge=1024)
    webhook_tasks_max_bytes: int = _env("WEBHOOK_TASKS_MAX_BYTES", 64 * 1024 * 1024, ge=1024)
    # encoders
    clip_model: str = _env("CLIP_MODEL", "ViT-B-32")
    clip_pretrained: str = _env("CLIP_PRETRAINED", "laion2b_s34b_b79k")
    text_model: str = _env("TEXT_MODEL", "sentence-transformers/all-MiniLM-L6-v2")
    device: str = _env("DEVICE", "auto")
    batch_size: int | None = _env("BATCH_SIZE", None, ge=1)  # unset: 256 on CUDA, 64 elsewhere (encoders.py)
    cuda_precision: str = _env("CUDA_PRECISION", "fp16")  # fp16, bf16 or fp32 (CPU always runs fp32)
    gpu_decode: bool = _env("GPU_DECODE", True)  # on CUDA: plain JPEGs decoded and resized on the GPU
    # heavy configs: options per <Choices> (each is encoded from several prompts when a model loads), and
    # the models (project, config) a process keeps: the least recently used and the idle ones are dropped
    max_choices: int = _env("MAX_CHOICES", 100, ge=2)
    max_project_models: int = _env("MAX_PROJECT_MODELS", 32, ge=1)
    project_model_idle_s: float = _env("PROJECT_MODEL_IDLE_S", 6 * 3600.0, ge=1.0)
    # fetching task data
    local_files_document_root: Path | None = _env("LOCAL_FILES_DOCUMENT_ROOT")
    fetch_timeout_s: float = _env("FETCH_TIMEOUT", 10.0, ge=0.1)
    fetch_max_bytes: int = _env("FETCH_MAX_BYTES", 50 * 1024 * 1024, ge=1)
    fetch_deadline_s: float = _env("FETCH_DEADLINE", 30.0, ge=0.1)  # a whole download, however slowly it trickles
    # pixels a decode may produce (after JPEG draft scaling): 4000x4000 is far more than CLIP looks at
    max_image_pixels: int = _env("MAX_IMAGE_PIXELS", 16_000_000, ge=1)
    decode_pixels_in_flight: int = _env("DECODE_PIXELS_IN_FLIGHT", 64_000_000, ge=1)  # decoded at once, per process
    fetch_workers: int = _env("FETCH_WORKERS", 8, ge=1)
    max_text_chars: int = _env("MAX_TEXT_CHARS", 20_000, ge=1)
    # hosts task URLs may point to, besides Label Studio's own ("*" = any, "*.example.com" = subdomains)
    allowed_fetch_hosts: tuple[str, ...] = _env("ALLOWED_FETCH_HOSTS", ())
    # /predict and /search at once per worker process (default THREADS - 2, at least 1), so that /health
    # and /webhook always find a free gunicorn thread; a request that waits PREDICT_SLOT_WAIT s gets 503
    threads: int = _env("THREADS", 8, ge=1)
    predict_concurrency: int | None = _env("PREDICT_CONCURRENCY", None, ge=1)
    predict_slot_wait_s: float = _env("PREDICT_SLOT_WAIT", 1.0, ge=0.0)
    # labeling queue
    queue_strategy: str = _env("QUEUE_STRATEGY", "boundary")
    queue_batch: int = _env("QUEUE_BATCH", 50, ge=1)
    queue_view: str = _env("QUEUE_VIEW", "Boundary first")  # Data Manager tab ordered by our scores ("" = none)
    queue_sample: int = _env("QUEUE_SAMPLE", 4000, ge=100)  # unlabeled records a run reads for its statistics
    audit_share: float = _env("AUDIT_SHARE", 0.1, ge=0.0, le=0.5)  # of each batch, drawn uniformly: the test set
    cold_start_sample: int = _env("COLD_START_SAMPLE", 2000, ge=50)  # tasks embedded before the first batch
    full_reconcile_s: float = _env("FULL_RECONCILE_S", 86400.0, ge=0)  # list every task at most this often
    uncertainty_sampling: bool = _env("UNCERTAINTY_SAMPLING", False)  # opt-in: switch to "Uncertainty sampling"
    # pre-annotation: /predict answers within this many seconds (Label Studio gives up after its
    # ML_TIMEOUT_PREDICT, 100 s by default); what is not done by then is imported in the background
    predict_timeout_s: float = _env("PREDICT_TIMEOUT", 80.0, ge=1.0)
    preannotate_imports: bool = _env("PREANNOTATE_IMPORTS", True)  # TASKS_CREATED -> predictions, no user action
    # the first-connect sweep embeds every task; importing a prediction for each holds Label Studio's database
    sweep_predictions: bool = _env("SWEEP_PREDICTIONS", False)

    def __init__(self, **values: Any) -> None:
        try:
            super().__init__(**values)
        except ValidationError as exc:
            raise SettingsError(_message(exc)) from None  # from None: the input (a password?) stays out

    @classmethod
    def settings_customise_sources(
        cls, settings_cls: type[BaseSettings], init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource, dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        return (init_settings,)  # the environment is read by from_env only (module docstring)

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Settings:
        """Settings from ``env`` alone (a test's dict), or from os.environ when None."""
        env = os.environ if env is None else env
        values = {}
        for name in env_names():
            raw = env.get(name)
            if raw is not None and (raw != "" or name in BLANK_IS_A_VALUE):
                values[name] = raw
        return cls(**values)

    @property
    def resolved_chroma_path(self) -> Path:
        return self.chroma_path or (self.model_dir / "chroma")

    # -- validation (values arrive as env strings or as typed values from code) --------------------
    @field_validator("label_studio_url", mode="before")
    @classmethod
    def _url(cls, value: Any) -> str | None:
        url = str(value or "").rstrip("/") or None
        if url and not url.startswith(("http://", "https://")):
            raise ValueError(f"LABEL_STUDIO_URL={url!r} must start with http:// or https://")
        return url

    @field_validator("log_level", mode="before")
    @classmethod
    def _log_level(cls, value: Any) -> str:
        level = str(value or "INFO").upper()
        if level not in logging.getLevelNamesMapping():
            raise ValueError(f"LOG_LEVEL={level!r} is not one of DEBUG, INFO, WARNING, ERROR")
        return level

    @field_validator("chroma_ssl", "uncertainty_sampling", mode="before")
    @classmethod
    def _strip_bool(cls, value: Any) -> Any:
        return value.strip().lower() if isinstance(value, str) else value

    @field_validator("annotation_log_journal", mode="before")
    @classmethod
    def _journal(cls, value: Any) -> str:
        journal = str(value or "wal").strip().lower()
        if journal not in ("wal", "delete"):
            raise ValueError(f"ANNOTATION_LOG_JOURNAL={journal!r} must be wal (one host) or delete "
                             "(MODEL_DIR on a network filesystem shared by several hosts)")
        return journal

    @field_validator("redis_url", mode="before")
    @classmethod
    def _redis_url(cls, value: Any) -> str | None:
        if value and not str(value).startswith(("redis://", "rediss://", "unix://")):
            raise ValueError("REDIS_URL must start with redis://, rediss:// or unix://")  # no echo: may hold a password
        return value or None

    @field_validator("rq_queue", mode="before")
    @classmethod
    def _rq_queue(cls, value: Any) -> str:
        queue = str(value or "clip-backend").strip()
        if not queue.replace("-", "").replace("_", "").replace(".", "").isalnum():
            raise ValueError(f"RQ_QUEUE={queue!r} may contain only letters, digits, '-', '_' and '.'")
        return queue

    @field_validator("chroma_namespace", mode="before")
    @classmethod
    def _namespace(cls, value: Any) -> str:
        namespace = str(value or "").strip()
        if namespace and not (len(namespace) <= 40 and namespace.isascii()
                              and namespace.replace("-", "").replace("_", "").isalnum()):
            raise ValueError(f"CHROMA_NAMESPACE={namespace!r} may contain only up to 40 ASCII letters, digits, "
                             "'-' and '_'")
        return namespace

    @field_validator("clip_pretrained", mode="before")
    @classmethod
    def _pretrained(cls, value: Any) -> str:
        pretrained = str(value)
        if pretrained.endswith(CHECKPOINT_SUFFIXES) and not Path(pretrained).is_file():
            raise ValueError(f"CLIP_PRETRAINED={pretrained!r} looks like a checkpoint path but no such file exists")
        return pretrained or "none"

    @field_validator("cuda_precision", mode="before")
    @classmethod
    def _precision(cls, value: Any) -> str:
        precision = str(value).lower()
        if precision not in ("fp16", "bf16", "fp32"):
            raise ValueError(f"CUDA_PRECISION={value!r} must be fp16, bf16 or fp32")
        return precision

    @field_validator("device", mode="before")
    @classmethod
    def _device(cls, value: Any) -> str:
        device = str(value or "auto").lower()
        if device not in ("auto", "cpu") and not device.startswith(("cuda", "mps")):
            raise ValueError(f"DEVICE={device!r} must be auto, cpu, cuda[:N] or mps")
        return device

    @field_validator("local_files_document_root", mode="after")
    @classmethod
    def _document_root(cls, value: Path | None) -> Path | None:
        return value.resolve() if value else None

    @field_validator("allowed_fetch_hosts", mode="before")
    @classmethod
    def _hosts(cls, value: Any) -> tuple[str, ...]:
        hosts = value.split(",") if isinstance(value, str) else value
        return tuple(h.strip().lower() for h in hosts if h.strip())

    @field_validator("queue_strategy", mode="before")
    @classmethod
    def _strategy(cls, value: Any) -> str:
        strategy = str(value or "boundary").lower().replace("-", "_")
        if strategy not in QUEUE_STRATEGIES:
            raise ValueError(f"QUEUE_STRATEGY={strategy!r} must be one of {', '.join(QUEUE_STRATEGIES)}")
        return strategy

    @field_validator("queue_view", mode="before")
    @classmethod
    def _view(cls, value: Any) -> str:
        return str(value).strip()

    @model_validator(mode="after")
    def _basic_auth_pair(self) -> Settings:
        if bool(self.basic_auth_user) != bool(self.basic_auth_pass):
            raise ValueError("set both BASIC_AUTH_USER and BASIC_AUTH_PASS, or neither")
        if self.webhook_secret and not self.basic_auth_user:
            raise ValueError("WEBHOOK_SECRET is accepted on /webhook in place of basic auth: set BASIC_AUTH_USER "
                             "and BASIC_AUTH_PASS too (without them every endpoint is open)")
        return self


def env_names() -> list[str]:
    """Every environment variable Settings reads, in field order (aliases of a field included)."""
    names = []
    for field in Settings.model_fields.values():
        alias = field.validation_alias
        names.extend(alias.choices if isinstance(alias, AliasChoices) else [alias])
    return names


def _env_name(field: str) -> str:
    """The variable to name in a message: loc is the alias when validated from the environment,
    the field name when constructed in code."""
    info = Settings.model_fields.get(field)
    if info is None:
        return field
    alias = info.validation_alias
    return alias.choices[0] if isinstance(alias, AliasChoices) else alias


def _describe(error: dict) -> str:
    """One pydantic error as one line that names the variable; raw input is echoed only for
    numbers and booleans (a secret never fails those)."""
    kind, value = error["type"], error.get("input")
    name = _env_name(str(error["loc"][0])) if error["loc"] else ""
    if kind == "value_error":
        return str(error["ctx"]["error"])
    if kind in ("int_parsing", "int_from_float", "int_type"):
        return f"{name}={value!r} is not an integer"
    if kind in ("float_parsing", "float_type"):
        return f"{name}={value!r} is not a number"
    if kind in ("bool_parsing", "bool_type"):
        return f"{name}={value!r} must be true or false"
    if kind == "greater_than_equal":
        return f"{name}={value} must be >= {error['ctx']['ge']}"
    return f"{name}: {error['msg']}" if name else error["msg"]


def _message(exc: ValidationError) -> str:
    return "; ".join(_describe(error) for error in exc.errors())
