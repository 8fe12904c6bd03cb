"""The model: one project's labeling config, served.

``ClipClassifier`` holds one ``ChoicesControl`` per <Choices> tag (as Label Studio's yolo example holds a
model per control tag): its object tag's items embedded through the store (a StoreView), a zero-shot head
from its label prompts, and the trained head of the serving version (``trained_``, None before training).
The first <Choices> tag is the ``primary`` one: the queue is ranked, searched and reviewed by it.

``predict(tasks)`` is the path of a task: embed (fetch, encode, through the store) -> apply the heads ->
the queue priority of every task -> Label Studio predictions. The serving version (``version_``) is the
newest saved version trained for this labeling config; ``refresh()`` picks up a new one, which a training
run (backend.flows) fits and saves. Built once per (project, labeling config) by backend.runtime and
shared by request threads and training runs.
"""
from __future__ import annotations

import logging
import re
import threading
from collections import Counter
from dataclasses import dataclass

import numpy as np

from .embed.encoders import EncoderSpec, encoder_id, get_encoder
from .embed.fetch import Fetcher, ItemLoader
from .embed.pipeline import Item, embed_items
from .embed.prompts import label_prototypes
from .embed.store import EmbeddingStore
from .embed.store_view import StoreView
from .labelstudio.labelconfig import Target, parse_label_config
from .labelstudio.protocol import choice_region, prediction, task_id
from .learn.heads import ZeroShotHead
from .queue.priorities import TargetScores, queue_priorities
from .state.project_state import ProjectState
from .state.versions import ModelVersion, VersionStore

logger = logging.getLogger(__name__)

# Every model_version this backend names: "<encoder id>[+<encoder id>]/zeroshot-<fingerprint>" or
# ".../v<number>-<fingerprint>" (version_name, model_version below); anything else is not ours.
BACKEND_VERSION = re.compile(r"^(?:clip|st)-[^/\s]*/(?:zeroshot|v\d+)-[0-9a-f]{10}$")


class ModelLoadError(RuntimeError):
    """The encoder could not be loaded; the message says which setting to change."""


@dataclass(frozen=True)
class QueueOptions:
    """How the labeling queue is ranked and shown (QUEUE_* settings)."""
    strategy: str = "boundary"
    batch: int = 50
    view: str = "Boundary first"  # Data Manager tab ordered by our scores ("" = none)
    uncertainty_sampling: bool = False
    sample: int = 4000  # unlabeled records a run reads for its statistics (flows/rank.py)
    audit_share: float = 0.1  # share of each batch drawn uniformly from the unlabeled pool (the audit sample)
    audit_half_width: float = 0.03  # stop drawing audit items once accuracy is known to +/- this (95%)
    cold_start_sample: int = 2000  # tasks embedded before the first batch; the rest in the background
    full_reconcile_s: float = 86400.0  # a run lists every task at most this often (else only changes)


@dataclass
class Inference:
    """What a head made of one target's items in a list of tasks."""
    target: Target
    indices: list[int]  # positions in the task list that have this target's item
    embeddings: np.ndarray  # (len(indices), d), L2-normalized
    head: object
    proba: np.ndarray  # (len(indices), K)


class ChoicesControl:
    """One <Choices> tag served: its object tag's items, their store records, its heads."""

    def __init__(self, target: Target, encoder_id: str, store: StoreView | None):
        self.target = target
        self.encoder_id = encoder_id
        self.store = store  # None: Chroma unavailable
        self.encoder = None  # loaded by ClipClassifier.load()
        self.zero_shot: ZeroShotHead | None = None  # likewise
        self.trained_ = None  # the serving version's head; None: zero-shot serves

    @property
    def from_name(self) -> str:
        return self.target.from_name

    @property
    def to_name(self) -> str:
        return self.target.to_name

    @property
    def head(self):
        return self.trained_ or self.zero_shot

    def items(self, tasks: list) -> tuple[list[int], list[Item], dict[int, str]]:
        """This tag's item of each task that has one; reasons for those that do not."""
        indices, items, errors = [], [], {}
        key = self.target.data_key
        for index, task in enumerate(tasks):
            data = task.get("data") if isinstance(task, dict) else None
            if not isinstance(data, dict) or data.get(key) in (None, ""):
                errors[index] = f"task data has no {key!r}"
                continue
            indices.append(index)
            items.append(Item(task_id=task_id(task), field=self.to_name, source=data[key]))
        return indices, items, errors

    def loader(self, fetcher: Fetcher) -> ItemLoader:
        return ItemLoader(fetcher, self.target.modality, is_url=self.target.value_is_url,
                          image_size=getattr(self.encoder, "image_size", 224),
                          jpeg_passthrough=getattr(self.encoder, "decodes_jpeg", False))

    def infer(self, indices: list[int], embeddings) -> Inference:
        E = np.stack(embeddings)
        return Inference(self.target, list(indices), E, self.head, self.head.predict_proba(E))

    def scores(self, inference: Inference) -> TargetScores:
        """What the queue strategies rank this tag's items by."""
        return TargetScores(
            from_name=self.from_name, multiple=self.target.multiple, indices=inference.indices,
            embeddings=inference.embeddings, proba=inference.proba, head=inference.head,
            trained=self.trained_ is not None, prototypes=self.zero_shot.prototypes)


class ClipClassifier:
    def __init__(self, project_id: str, label_config: str, *, encoders: EncoderSpec, store: EmbeddingStore | None,
                 fetcher: Fetcher, versions: VersionStore, state: ProjectState, queue: QueueOptions,
                 fetch_workers: int = 8, max_choices: int | None = None):
        self.project_id = str(project_id)
        self.config = parse_label_config(label_config, max_choices)  # ConfigError for configs we cannot serve
        self.encoder_spec = encoders
        self.store = store
        self.fetcher = fetcher  # replaced when the project's Label Studio connection changes
        self.versions = versions
        self.state = state  # the project's queue state (rankings, audit draws, labeled flags, review flags)
        self.queue = queue
        self.fetch_workers = fetch_workers
        self.controls = [self._control(target) for target in self.config.targets]
        self.version_: ModelVersion | None = None  # the serving trained version; None: zero-shot
        self._load_lock = threading.Lock()
        self.stats: Counter = Counter()  # embeddings_cached, embeddings_computed, items_failed, searches
        self.refresh()

    def _control(self, target: Target) -> ChoicesControl:
        encoder = encoder_id(target.modality, self.encoder_spec)
        view = StoreView(self.store, self.project_id, encoder, target.to_name) if self.store is not None else None
        return ChoicesControl(target, encoder, view)

    @property
    def primary(self) -> ChoicesControl:
        """The first <Choices> tag: the one the queue is ranked, searched and reviewed by."""
        return self.controls[0]

    @property
    def encoder_ids(self) -> dict[str, str]:
        """Object tag (to_name) -> encoder id."""
        return {c.to_name: c.encoder_id for c in self.controls}

    # -- versions ----------------------------------------------------------------------------
    def version_name(self, number: int) -> str:
        return f"{self._encoder_prefix}/v{number}-{self.config.fingerprint}"

    @property
    def _encoder_prefix(self) -> str:
        return "+".join(dict.fromkeys(self.encoder_ids.values()))

    @property
    def model_version(self) -> str:
        """Names encoder(s) and head; known before any weights load, so /setup answers at once."""
        if self.version_ is not None:
            return self.version_.name
        return f"{self._encoder_prefix}/zeroshot-{self.config.fingerprint}"

    @property
    def trained(self) -> bool:
        """True once a trained version serves (before: zero-shot)."""
        return self.version_ is not None

    def refresh(self) -> None:
        """Serve the newest saved version trained for this labeling config (cheap when nothing changed)."""
        number = self.versions.latest_number(self.project_id)
        if number is None or (self.version_ is not None and self.version_.number == number):
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
            for control in self.controls:
                control.trained_ = heads.get(control.from_name)
            self.version_ = version
            logger.info("project %s: serving %s", self.project_id, version.name)

    # -- encoders and zero-shot heads ------------------------------------------------------------
    def load(self) -> "ClipClassifier":
        """Load encoders and build zero-shot label prototypes (slow the first time: model weights)."""
        with self._load_lock:
            for control in self.controls:
                if control.zero_shot is not None:
                    continue
                target = control.target
                try:
                    encoder = get_encoder(target.modality, self.encoder_spec)
                except Exception as exc:  # missing weights, no network to the model hub, bad checkpoint...
                    raise ModelLoadError(_load_hint(target.modality, self.encoder_spec, exc)) from exc
                control.encoder = encoder
                control.zero_shot = ZeroShotHead(label_prototypes(encoder, target.labels), encoder.logit_scale,
                                                 multiple=target.multiple)
        return self

    # -- task -> prediction ----------------------------------------------------------------------
    def predict(self, tasks: list, inferred: dict[str, Inference] | None = None, progress=None) -> list:
        """One entry per task, in order: a prediction whose score is the task's queue priority, or [].
        The priority is the last saved ranking's if the task was in it (for this version), else from
        ranking these tasks together; a lone unranked task gets its lowest region confidence.
        ``inferred``: the tasks' inferences when the caller has them already (infer_embedded)."""
        if inferred is None:
            inferred = self.infer(tasks, progress=progress)
        saved = self.state.saved_priorities(self.model_version)
        unranked = [t for t in tasks if task_id(t) not in saved]
        batch = self.priorities(tasks, inferred, self.queue.strategy, self.queue.batch) if len(unranked) > 1 else {}
        return self.predictions([task_id(t) for t in tasks], inferred, {**batch, **saved})

    def embed(self, control: ChoicesControl, tasks: list, progress=None, deadline: float | None = None,
              stall_s: float | None = None, writes: str = "wait") -> tuple[list[int], list[np.ndarray]]:
        """Embeddings of the control's item in each task (through the store); (task indices, vectors).
        writes: what to wait for of the store writes (embed.pipeline: "wait", "behind" or "drop")."""
        self.load()
        indices, items, errors = control.items(tasks)
        for index, reason in errors.items():
            logger.warning("task %s: no %s embedding: %s", task_id(tasks[index]), control.to_name, reason)
        if not items:
            self.stats.update(items_failed=len(errors))
            return [], []
        embedded = embed_items(items, control.encoder, control.loader(self.fetcher), self.store, self.project_id,
                               workers=self.fetch_workers, progress=progress, deadline=deadline,
                               stall_s=stall_s, writes=writes)
        self.stats.update(embeddings_cached=embedded.cached, embeddings_computed=embedded.computed,
                          items_failed=len(errors) + len(embedded.errors))
        ok = [(i, e) for i, e in zip(indices, embedded.embeddings) if e is not None]
        return [i for i, _ in ok], [e for _, e in ok]

    def embed_tasks(self, tasks: list, progress=None, deadline: float | None = None, stall_s: float | None = None,
                    writes: str = "wait") -> dict[str, tuple[list[int], list[np.ndarray]]]:
        """Per control (from_name): the positions of the tasks that have its item, and their embeddings
        (items not loaded by ``deadline``, time.monotonic(), or stalled ``stall_s``, are left out)."""
        self.refresh()
        return {control.from_name: self.embed(control, tasks, progress=progress, deadline=deadline, stall_s=stall_s,
                                              writes=writes)
                for control in self.controls}

    def infer_embedded(self, embedded: dict[str, tuple[list[int], list[np.ndarray]]]) -> dict[str, Inference]:
        """Apply the serving heads to embeddings from embed_tasks."""
        self.load()
        out = {}
        for control in self.controls:
            indices, embeddings = embedded.get(control.from_name, ([], []))
            if indices:
                out[control.from_name] = control.infer(indices, embeddings)
        return out

    def infer(self, tasks: list, progress=None) -> dict[str, Inference]:
        """Per control (from_name): which tasks have an item, their embeddings, the head and its probabilities."""
        return self.infer_embedded(self.embed_tasks(tasks, progress=progress))

    def infer_stored(self, control: ChoicesControl, embeddings: np.ndarray) -> Inference:
        """The serving head on embeddings read from the store (rows are the positions)."""
        self.load()
        return control.infer(range(len(embeddings)), embeddings)

    def priorities(self, tasks: list, inferred: dict[str, Inference], strategy: str, batch: int,
                   labeled: dict | None = None, seed: int = 0) -> dict[int, float]:
        """{task id: queue priority in [0, 1]} of the tasks; ``labeled`` maps from_name -> (embeddings,
        class index) of the annotated items (class anchors for the strategies, near-duplicates to avoid)."""
        by_name = {c.from_name: c for c in self.controls}
        scores = [by_name[name].scores(inference) for name, inference in inferred.items()]
        return queue_priorities([task_id(t) for t in tasks], scores, strategy, batch, labeled=labeled, seed=seed)

    def predictions(self, task_ids: list, inferred: dict[str, Inference], queue_scores: dict) -> list:
        """Label Studio prediction dicts of this version, one per task id ([] where no control had an item);
        the score is the task's queue score, else its lowest region confidence."""
        regions: list[list[dict]] = [[] for _ in task_ids]
        confidences: list[list[float]] = [[] for _ in task_ids]
        for inference in inferred.values():
            target, head = inference.target, inference.head
            for index, row in zip(inference.indices, inference.proba):
                confidence = float(head.score(row))
                choices = [target.labels[i].output for i in head.choose(row)]
                regions[index].append(choice_region(target.from_name, target.to_name, choices, confidence))
                confidences[index].append(confidence)
        out = []
        for task, results, scores in zip(task_ids, regions, confidences):
            if not results:
                out.append([])
                continue
            score = queue_scores.get(task)
            out.append(prediction(results, float(min(scores) if score is None else score), self.model_version))
        return out


def _load_hint(modality: str, spec: EncoderSpec, exc: Exception) -> str:
    if modality == "image" or spec.text_model.lower() == "clip":
        what = f"CLIP model {spec.clip_model!r} with CLIP_PRETRAINED={spec.clip_pretrained!r}"
        fix = "set CLIP_PRETRAINED to a local checkpoint file when the model hub is unreachable"
    else:
        what = f"text model TEXT_MODEL={spec.text_model!r}"
        fix = "set TEXT_MODEL to a local sentence-transformers directory when the model hub is unreachable"
    return f"cannot load {what}: {type(exc).__name__}: {str(exc)[:300]}; {fix}"
