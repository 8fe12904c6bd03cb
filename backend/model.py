"""The model Label Studio talks to, shaped like label-studio-ml's LabelStudioMLBase:
predict(tasks, context) returns one prediction per task; fit(event, data) learns from annotations.

Data flow for predict: task data → fetch (fetch.py) → embed, cached in Chroma (pipeline.py, store.py)
→ head (heads.py: zero-shot until annotations train a better one) → Label Studio prediction with
score = confidence in the top choice.
"""
from __future__ import annotations

import logging
import threading
from collections import Counter
from dataclasses import dataclass

import numpy as np

from .encoders import encoder_id, get_encoder
from .fetch import Fetcher, FetchError
from .heads import ZeroShotHead
from .label_config import Target, parse_label_config
from .pipeline import Item, embed_items
from .prompts import label_prototypes, query_prompts
from .settings import Settings
from .store import EmbeddingStore
from .versions import VersionStore

logger = logging.getLogger(__name__)


class ModelLoadError(RuntimeError):
    """The encoder could not be loaded; the message says which setting to change."""


class SearchError(ValueError):
    """A search request the model cannot serve (e.g. an unknown object tag); the message says why."""


# Up to this many labeled task ids are excluded inside Chroma (a metadata `$nin` filter; SQLite caps
# the number of bound variables); more are dropped after an over-fetching query.
_MAX_NIN = 5000
SEARCH_HINT = ("only embedded tasks are searchable: in Label Studio select tasks → Actions → Retrieve "
               "predictions, or run scripts/embed_project.py for the project")


def _load_hint(modality: str, settings: Settings, exc: Exception) -> str:
    if modality == "image" or settings.text_model.lower() == "clip":
        what = f"CLIP model {settings.clip_model!r} with CLIP_PRETRAINED={settings.clip_pretrained!r}"
        fix = "set CLIP_PRETRAINED to a local checkpoint file when the model hub is unreachable"
    else:
        what = f"text model TEXT_MODEL={settings.text_model!r}"
        fix = "set TEXT_MODEL to a local sentence-transformers directory when the model hub is unreachable"
    return f"cannot load {what}: {type(exc).__name__}: {str(exc)[:300]}; {fix}"


class ClipClassifier:
    def __init__(self, project_id: str, label_config: str, settings: Settings,
                 store: EmbeddingStore | None = None, fetcher: Fetcher | None = None,
                 versions: VersionStore | None = None, trainer=None):
        self.project_id = str(project_id)
        self.settings = settings
        self.config = parse_label_config(label_config)  # raises ConfigError for configs we cannot serve
        self.store = store
        self.fetcher = fetcher or Fetcher(settings)
        self.versions = versions or VersionStore(settings.model_dir)
        self.trainer = trainer  # records annotations and retrains in the background (training.py)
        self.encoder_ids = {t.to_name: encoder_id(t.modality, settings) for t in self.config.targets}
        self._encoders: dict[str, object] = {}
        self._zero_shot: dict[str, ZeroShotHead] = {}
        self._trained: dict[str, object] = {}  # from_name -> head of the active version
        self._version = None  # the active trained ModelVersion, if any
        self._load_lock = threading.Lock()
        self.stats: Counter = Counter()  # embeddings_cached, embeddings_computed, items_failed
        self.refresh()

    # -- versions ----------------------------------------------------------------------------
    @property
    def _encoder_prefix(self) -> str:
        return "+".join(dict.fromkeys(self.encoder_ids.values()))

    def version_name(self, number: int) -> str:
        return f"{self._encoder_prefix}/v{number}-{self.config.fingerprint}"

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

    # -- encoders and heads --------------------------------------------------------------------
    def load(self) -> "ClipClassifier":
        """Load encoders and build zero-shot label prototypes (slow the first time: model weights)."""
        with self._load_lock:
            for target in self.config.targets:
                if target.from_name in self._zero_shot:
                    continue
                try:
                    encoder = get_encoder(target.modality, self.settings)
                except Exception as exc:  # missing weights, no network to the model hub, bad checkpoint...
                    raise ModelLoadError(_load_hint(target.modality, self.settings, exc)) from exc
                self._encoders[target.to_name] = encoder
                self._zero_shot[target.from_name] = ZeroShotHead(
                    label_prototypes(encoder, target.labels), encoder.logit_scale, multiple=target.multiple)
        return self

    def zero_shot_head(self, target: Target) -> ZeroShotHead:
        self.load()
        return self._zero_shot[target.from_name]

    @property
    def trained(self) -> bool:
        """True once a trained version serves (before: zero-shot)."""
        return self._version is not None

    def is_trained(self, target: Target) -> bool:
        return target.from_name in self._trained

    def head(self, target: Target):
        return self._trained.get(target.from_name) or self.zero_shot_head(target)

    # -- inference ---------------------------------------------------------------------------
    def embed(self, target: Target, tasks: list, progress=None) -> tuple[list[int], list[np.ndarray]]:
        """Embeddings of the target's item in each task (through the store); (task indices, vectors)."""
        self.load()
        indices, items, errors = self._items(tasks, target)
        for index, reason in errors.items():
            logger.warning("task %s: no %s embedding: %s", _task_id(tasks[index]), target.to_name, reason)
        if not items:
            self.stats.update(items_failed=len(errors))
            return [], []
        embedded = embed_items(items, self._encoders[target.to_name], lambda it: self._load(it, target),
                               self.store, self.project_id, workers=self.settings.fetch_workers, progress=progress)
        self.stats.update(embeddings_cached=embedded.cached, embeddings_computed=embedded.computed,
                          items_failed=len(errors) + len(embedded.errors))
        ok = [(i, e) for i, e in zip(indices, embedded.embeddings) if e is not None]
        return [i for i, _ in ok], [e for _, e in ok]

    def infer(self, tasks: list, progress=None) -> dict[str, "Inference"]:
        """Per target (from_name): which tasks have an item, their embeddings, the head and its probabilities."""
        self.refresh()
        out = {}
        for target in self.config.targets:
            indices, embeddings = self.embed(target, tasks, progress=progress)
            if not indices:
                continue
            head = self.head(target)
            E = np.stack(embeddings)
            out[target.from_name] = Inference(target, indices, E, head, head.predict_proba(E))
        return out

    def predict(self, tasks: list, context: dict | None = None, progress=None, **kwargs) -> list:
        """One entry per task, in order: a prediction dict, or [] when no prediction could be made.

        Each region's score is the head's confidence in its choice. The prediction's score, which
        Label Studio sorts the queue by (ascending), is the task's queue priority (ranking.py): from
        the last re-ranking of this version if the task was in it, else from ranking this batch
        ("Retrieve predictions" sends all selected tasks at once); a lone unranked task gets its
        lowest region confidence."""
        from .ranking import queue_priorities, saved_priorities

        inferred = self.infer(tasks, progress=progress)
        saved = saved_priorities(self.settings.model_dir, self.project_id, self.model_version)
        unranked = [t for t in tasks if _task_id(t) not in saved]
        batch = queue_priorities(self, tasks, inferred, None, self.settings.queue_strategy,
                                 self.settings.queue_batch) if len(unranked) > 1 else {}
        return self.to_predictions(tasks, inferred, {**batch, **saved})

    def to_predictions(self, tasks: list, inferred: dict[str, "Inference"], queue_scores: dict) -> list:
        version = self.model_version
        per_task_results: list[list[dict]] = [[] for _ in tasks]
        per_task_scores: list[list[float]] = [[] for _ in tasks]
        for inference in inferred.values():
            target, head = inference.target, inference.head
            for task_index, row in zip(inference.indices, inference.proba):
                confidence = float(head.score(row))
                per_task_results[task_index].append({
                    "from_name": target.from_name,
                    "to_name": target.to_name,
                    "type": "choices",
                    "value": {"choices": [target.labels[i].output for i in head.choose(row)]},
                    "score": confidence,
                })
                per_task_scores[task_index].append(confidence)
        predictions = []
        for task, results, scores in zip(tasks, per_task_results, per_task_scores):
            if not results:
                predictions.append([])
                continue
            score = queue_scores.get(_task_id(task))
            predictions.append({"result": results, "score": float(min(scores) if score is None else score),
                                "model_version": version})
        return predictions

    # -- search ------------------------------------------------------------------------------
    def search_target(self, to_name: str | None = None) -> Target:
        """The target whose items a search looks at: the one on object tag ``to_name``, else the first."""
        if to_name is None:
            return self.config.targets[0]
        for target in self.config.targets:
            if target.to_name == to_name:
                return target
        known = sorted({t.to_name for t in self.config.targets})
        raise SearchError(f"to_name {to_name!r} is not an object tag with <Choices> in the labeling config; "
                          f"known: {known}")

    def query_embedding(self, query: str, target: Target) -> np.ndarray:
        """The query as a unit vector in the target's embedding space. Images: CLIP's text tower, the
        query filled into CLIP's prompt templates ("a photo of a horse.", ...) plus the query itself,
        averaged; text: the project's text encoder embeds the query like an item. "a | b" averages both."""
        self.load()
        encoder = self._encoders[target.to_name]
        templates = encoder.templates if target.modality == "image" else ()
        prompts = query_prompts(query, templates)
        if not prompts:
            raise SearchError("the query is empty")
        mean = np.asarray(encoder.encode_prompts(prompts), dtype=np.float32).mean(axis=0)
        return mean / max(float(np.linalg.norm(mean)), 1e-12)

    def search(self, query: str, k: int = 20, exclude_task_ids=(), to_name: str | None = None) -> dict:
        """The k embedded tasks most similar to a text query, best first, leaving out exclude_task_ids
        (the labeled ones). Only items already in the store are searched (nothing is embedded here).

        Returns {"query", "model_version", "encoder", "to_name", "embedded", "results": [{"task",
        "score" (cosine similarity), "field"}]} and a "hint" when nothing could be found."""
        target = self.search_target(to_name)
        enc_id = self.encoder_ids[target.to_name]
        response = {"query": query, "model_version": self.model_version, "encoder": enc_id,
                    "to_name": target.to_name, "embedded": 0, "results": []}
        if self.store is None:
            response["hint"] = "the embedding store is unavailable (see the server log); nothing can be searched"
            return response
        collection = self.store.collection(self.project_id, enc_id)
        total = collection.count()  # records of every field stored with this encoder
        response["embedded"] = total
        if total == 0:
            response["hint"] = f"no task of project {self.project_id} is embedded yet; {SEARCH_HINT}"
            return response
        vector = self.query_embedding(query, target)
        exclude = {int(t) for t in exclude_task_ids}
        hits = _nearest(collection, vector, k, target.to_name, exclude, total)
        response["results"] = [{"task": task, "score": score, "field": target.to_name} for task, score in hits]
        if not hits:
            response["hint"] = f"every embedded task is labeled or none has a {target.to_name!r} item; {SEARCH_HINT}"
        self.stats.update(searches=1)
        return response

    # -- learning ----------------------------------------------------------------------------
    def fit(self, event: str, data: dict, **kwargs) -> dict:
        """A Label Studio event: record the annotation durably, retrain in the background, return at once."""
        if self.trainer is None:
            return {"status": "ignored", "reason": "no trainer configured"}
        return self.trainer.handle(self.project_id, event, data)

    def _items(self, tasks: list, target: Target):
        indices, items, errors = [], [], {}
        for index, task in enumerate(tasks):
            data = task.get("data") if isinstance(task, dict) else None
            if not isinstance(data, dict) or data.get(target.data_key) in (None, ""):
                errors[index] = f"task data has no {target.data_key!r}"
                continue
            task_id = task.get("id")
            indices.append(index)
            items.append(Item(task_id=task_id if isinstance(task_id, int) and not isinstance(task_id, bool) else None,
                              field=target.to_name, source=data[target.data_key]))
        return indices, items, errors

    def _load(self, item: Item, target: Target):
        if target.modality == "image":
            if not isinstance(item.source, str):
                raise FetchError(f"image reference is a {type(item.source).__name__}, not a URL")
            # JPEG draft decoding targets the encoder's input size (224 for ViT-B-32, more for larger models)
            size = getattr(self._encoders.get(target.to_name), "image_size", 224)
            return self.fetcher.load_image(item.source, task_id=item.task_id, target_size=size)
        return self.fetcher.load_text(item.source, is_url=target.value_is_url, task_id=item.task_id)


@dataclass
class Inference:
    target: Target
    indices: list[int]  # positions in the task list that have this target's item
    embeddings: np.ndarray  # (len(indices), d), L2-normalized
    head: object
    proba: np.ndarray  # (len(indices), K)


def _task_id(task) -> object:
    return task.get("id") if isinstance(task, dict) else None


def _nearest(collection, vector: np.ndarray, k: int, field: str, exclude: set[int],
             total: int) -> list[tuple[int, float]]:
    """(task id, cosine similarity) of the k nearest records of ``field`` not in ``exclude``, best first.

    HNSW query in Chroma (cosine space: similarity = 1 - distance). Excluded tasks are filtered inside
    Chroma with ``$nin`` up to _MAX_NIN ids; beyond that, the query over-fetches (doubling) and drops them.
    """
    where: dict = {"field": field}
    inside = bool(exclude) and len(exclude) <= _MAX_NIN
    if inside:
        where = {"$and": [where, {"task_id": {"$nin": sorted(exclude)}}]}
    n = k if inside or not exclude else min(total, k + min(len(exclude), 4 * k))
    while True:
        n = max(1, min(n, total))
        res = collection.query(query_embeddings=[vector.tolist()], n_results=n, where=where,
                               include=["distances", "metadatas"])
        hits = []
        for meta, distance in zip(res["metadatas"][0], res["distances"][0]):
            task = int((meta or {}).get("task_id", -1))
            if task >= 0 and task not in exclude:
                hits.append((task, float(1.0 - distance)))
        if len(hits) >= k or n >= total or len(res["ids"][0]) < n:
            break
        n *= 2  # too many of the nearest were labeled: look further
    hits.sort(key=lambda hit: -hit[1])
    return hits[:k]
