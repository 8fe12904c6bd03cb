"""One project's labeling config, served: its encoders, zero-shot heads and the trained version in use.

Built once per (project, labeling config) and shared by request threads and training runs. It knows
how to turn tasks into per-target probabilities (embed -> head); what to do with them (predictions,
queue priorities, search) is in the other flows.
"""
from __future__ import annotations

import logging
import re
import threading
from collections import Counter
from dataclasses import dataclass

import numpy as np

from ..embed.encoders import EncoderSpec, encoder_id, get_encoder
from ..embed.fetch import Fetcher, FetchError
from ..embed.pipeline import Item, embed_items
from ..embed.prompts import label_prototypes
from ..embed.store import EmbeddingStore
from ..labelstudio.labelconfig import Target, parse_label_config
from ..labelstudio.protocol import task_id
from ..learn.heads import ZeroShotHead
from ..state.versions import VersionStore

logger = logging.getLogger(__name__)


# Every model_version this backend names: "<encoder id>[+<encoder id>]/zeroshot-<fingerprint>" or
# ".../v<number>-<fingerprint>" (version_name, model_version below); anything else is not ours.
BACKEND_VERSION = re.compile(r"^(?:clip|st)-[^/\s]*/(?:zeroshot|v\d+)-[0-9a-f]{10}$")


class ModelLoadError(RuntimeError):
    """The encoder could not be loaded; the message says which setting to change."""


@dataclass
class Inference:
    """What a head made of one target's items in a list of tasks."""
    target: Target
    indices: list[int]  # positions in the task list that have this target's item
    embeddings: np.ndarray  # (len(indices), d), L2-normalized
    head: object
    proba: np.ndarray  # (len(indices), K)


class ProjectModel:
    def __init__(self, project_id: str, label_config: str, *, encoders: EncoderSpec,
                 store: EmbeddingStore | None, fetcher: Fetcher, versions: VersionStore, fetch_workers: int = 8,
                 max_choices: int | None = None):
        self.project_id = str(project_id)
        self.config = parse_label_config(label_config, max_choices)  # ConfigError for configs we cannot serve
        self.encoder_spec = encoders
        self.store = store
        self.fetcher = fetcher
        self.versions = versions
        self.fetch_workers = fetch_workers
        self.encoder_ids = {t.to_name: encoder_id(t.modality, encoders) for t in self.config.targets}
        self.encoders: dict[str, object] = {}  # to_name -> loaded encoder
        self._zero_shot: dict[str, ZeroShotHead] = {}
        self._trained: dict[str, object] = {}  # from_name -> head of the serving version
        self._version = None  # the serving trained ModelVersion, if any
        self._load_lock = threading.Lock()
        self.stats: Counter = Counter()  # embeddings_cached, embeddings_computed, items_failed, searches
        self.refresh()

    # -- versions ----------------------------------------------------------------------------
    def version_name(self, number: int) -> str:
        return f"{self._encoder_prefix}/v{number}-{self.config.fingerprint}"

    @property
    def _encoder_prefix(self) -> str:
        return "+".join(dict.fromkeys(self.encoder_ids.values()))

    @property
    def model_version(self) -> str:
        """Names encoder(s) and head; known before any weights load, so /setup answers at once."""
        if self._version is not None:
            return self._version.name
        return f"{self._encoder_prefix}/zeroshot-{self.config.fingerprint}"

    def refresh(self) -> None:
        """Serve the newest saved version trained for this labeling config (cheap when nothing changed)."""
        number = self.versions.latest_number(self.project_id)
        if number is None or (self._version is not None and self._version.number == number):
            return
        with self._load_lock:
            version = self.versions.latest(self.project_id)
            if version is None or version.meta.get("fingerprint") != self.config.fingerprint:
                return  # trained for another config (labels changed): zero-shot until retrained
            try:
                heads = version.load_heads()
            except Exception:
                logger.exception("project %s: cannot load %s; keeping %s", self.project_id, version.name,
                                 self.model_version)
                return
            self._trained, self._version = heads, version
            logger.info("project %s: serving %s", self.project_id, version.name)

    @property
    def trained(self) -> bool:
        """True once a trained version serves (before: zero-shot)."""
        return self._version is not None

    # -- encoders and heads --------------------------------------------------------------------
    def load(self) -> "ProjectModel":
        """Load encoders and build zero-shot label prototypes (slow the first time: model weights)."""
        with self._load_lock:
            for target in self.config.targets:
                if target.from_name in self._zero_shot:
                    continue
                try:
                    encoder = get_encoder(target.modality, self.encoder_spec)
                except Exception as exc:  # missing weights, no network to the model hub, bad checkpoint...
                    raise ModelLoadError(_load_hint(target.modality, self.encoder_spec, exc)) from exc
                self.encoders[target.to_name] = encoder
                self._zero_shot[target.from_name] = ZeroShotHead(
                    label_prototypes(encoder, target.labels), encoder.logit_scale, multiple=target.multiple)
        return self

    def zero_shot_head(self, target: Target) -> ZeroShotHead:
        self.load()
        return self._zero_shot[target.from_name]

    def is_trained(self, target: Target) -> bool:
        return target.from_name in self._trained

    def head(self, target: Target):
        return self._trained.get(target.from_name) or self.zero_shot_head(target)

    # -- inference ---------------------------------------------------------------------------
    def embed(self, target: Target, tasks: list, progress=None) -> tuple[list[int], list[np.ndarray]]:
        """Embeddings of the target's item in each task (through the store); (task indices, vectors)."""
        self.load()
        indices, items, errors = _items(tasks, target)
        for index, reason in errors.items():
            logger.warning("task %s: no %s embedding: %s", task_id(tasks[index]), target.to_name, reason)
        if not items:
            self.stats.update(items_failed=len(errors))
            return [], []
        embedded = embed_items(items, self.encoders[target.to_name], lambda it: self._load_item(it, target),
                               self.store, self.project_id, workers=self.fetch_workers, progress=progress)
        self.stats.update(embeddings_cached=embedded.cached, embeddings_computed=embedded.computed,
                          items_failed=len(errors) + len(embedded.errors))
        ok = [(i, e) for i, e in zip(indices, embedded.embeddings) if e is not None]
        return [i for i, _ in ok], [e for _, e in ok]

    def embed_tasks(self, tasks: list, progress=None) -> dict[str, tuple[list[int], list[np.ndarray]]]:
        """Per target (from_name): the positions of the tasks that have its item, and their embeddings."""
        self.refresh()
        return {target.from_name: self.embed(target, tasks, progress=progress) for target in self.config.targets}

    def infer_embedded(self, embedded: dict[str, tuple[list[int], list[np.ndarray]]]) -> dict[str, Inference]:
        """Apply the serving heads to embeddings from embed_tasks."""
        out = {}
        for target in self.config.targets:
            indices, embeddings = embedded.get(target.from_name, ([], []))
            if not indices:
                continue
            head = self.head(target)
            E = np.stack(embeddings)
            out[target.from_name] = Inference(target, list(indices), E, head, head.predict_proba(E))
        return out

    def infer(self, tasks: list, progress=None) -> dict[str, Inference]:
        """Per target (from_name): which tasks have an item, their embeddings, the head and its probabilities."""
        return self.infer_embedded(self.embed_tasks(tasks, progress=progress))

    def _load_item(self, item: Item, target: Target):
        if target.modality == "image":
            if not isinstance(item.source, str):
                raise FetchError(f"image reference is a {type(item.source).__name__}, not a URL")
            # JPEG draft decoding targets the encoder's input size (224 for ViT-B-32, more for larger models)
            size = getattr(self.encoders.get(target.to_name), "image_size", 224)
            return self.fetcher.load_image(item.source, task_id=item.task_id, target_size=size)
        return self.fetcher.load_text(item.source, is_url=target.value_is_url, task_id=item.task_id)


def _items(tasks: list, target: Target) -> tuple[list[int], list[Item], dict[int, str]]:
    """The target's item of each task that has one; reasons for those that do not."""
    indices, items, errors = [], [], {}
    for index, task in enumerate(tasks):
        data = task.get("data") if isinstance(task, dict) else None
        if not isinstance(data, dict) or data.get(target.data_key) in (None, ""):
            errors[index] = f"task data has no {target.data_key!r}"
            continue
        indices.append(index)
        items.append(Item(task_id=task_id(task), field=target.to_name, source=data[target.data_key]))
    return indices, items, errors


def _load_hint(modality: str, spec: EncoderSpec, exc: Exception) -> str:
    if modality == "image" or spec.text_model.lower() == "clip":
        what = f"CLIP model {spec.clip_model!r} with CLIP_PRETRAINED={spec.clip_pretrained!r}"
        fix = "set CLIP_PRETRAINED to a local checkpoint file when the model hub is unreachable"
    else:
        what = f"text model TEXT_MODEL={spec.text_model!r}"
        fix = "set TEXT_MODEL to a local sentence-transformers directory when the model hub is unreachable"
    return f"cannot load {what}: {type(exc).__name__}: {str(exc)[:300]}; {fix}"
