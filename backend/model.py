"""The model Label Studio talks to, shaped like label-studio-ml's LabelStudioMLBase:
predict(tasks, context) returns one prediction per task; fit(event, data) learns from annotations.

Data flow for predict: task data → fetch (fetch.py) → embed, cached in Chroma (pipeline.py, store.py)
→ head (heads.py) → Label Studio prediction with score = confidence in the top choice.
"""
from __future__ import annotations

import logging
import threading
from collections import Counter

import numpy as np

from .encoders import encoder_id, get_encoder
from .fetch import Fetcher, FetchError
from .heads import ZeroShotHead, choose_labels
from .label_config import Target, parse_label_config
from .pipeline import Item, embed_items
from .prompts import label_prototypes
from .settings import Settings
from .store import EmbeddingStore

logger = logging.getLogger(__name__)


class ClipClassifier:
    def __init__(self, project_id: str, label_config: str, settings: Settings,
                 store: EmbeddingStore | None = None, fetcher: Fetcher | None = None):
        self.project_id = str(project_id)
        self.settings = settings
        self.config = parse_label_config(label_config)  # raises ConfigError for configs we cannot serve
        self.store = store
        self.fetcher = fetcher or Fetcher(settings)
        self.encoder_ids = {t.to_name: encoder_id(t.modality, settings) for t in self.config.targets}
        self._encoders: dict[str, object] = {}
        self._heads: dict[str, ZeroShotHead] = {}
        self._load_lock = threading.Lock()
        self.stats: Counter = Counter()  # embeddings_cached, embeddings_computed, items_failed

    @property
    def model_version(self) -> str:
        """Names encoder(s) and head; known before any model weights are loaded, so /setup is instant."""
        encoders = "+".join(dict.fromkeys(self.encoder_ids.values()))
        return f"{encoders}/zeroshot-{self.config.fingerprint}"

    def load(self) -> "ClipClassifier":
        """Load encoders and build label prototypes (slow the first time: model weights)."""
        with self._load_lock:
            for target in self.config.targets:
                if target.from_name in self._heads:
                    continue
                encoder = get_encoder(target.modality, self.settings)
                self._encoders[target.to_name] = encoder
                self._heads[target.from_name] = ZeroShotHead(label_prototypes(encoder, target.labels),
                                                             encoder.logit_scale)
        return self

    # -- inference ---------------------------------------------------------------------------
    def predict(self, tasks: list, context: dict | None = None, progress=None, **kwargs) -> list:
        """One entry per task, in order: a prediction dict, or [] when no prediction could be made."""
        self.load()
        per_task_results: list[list[dict]] = [[] for _ in tasks]
        per_task_scores: list[list[float]] = [[] for _ in tasks]
        for target in self.config.targets:
            indices, items, errors = self._items(tasks, target)
            for index, reason in errors.items():
                logger.warning("task %s: no %s prediction: %s", _task_id(tasks[index]), target.from_name, reason)
            if not items:
                continue
            embedded = embed_items(items, self._encoders[target.to_name], lambda it: self._load(it, target),
                                   self.store, self.project_id, workers=self.settings.fetch_workers,
                                   progress=progress)
            self.stats.update(embeddings_cached=embedded.cached, embeddings_computed=embedded.computed,
                              items_failed=len(errors) + len(embedded.errors))
            ok = [(i, e) for i, e in zip(indices, embedded.embeddings) if e is not None]
            if not ok:
                continue
            proba = self._heads[target.from_name].predict_proba(np.stack([e for _, e in ok]))
            for (task_index, _), row in zip(ok, proba):
                chosen = choose_labels(row, target.multiple)
                confidence = float(row[chosen[0]])
                per_task_results[task_index].append({
                    "from_name": target.from_name,
                    "to_name": target.to_name,
                    "type": "choices",
                    "value": {"choices": [target.labels[i].output for i in chosen]},
                    "score": confidence,
                })
                per_task_scores[task_index].append(confidence)
        version = self.model_version
        return [
            {"result": results, "score": min(scores), "model_version": version} if results else []
            for results, scores in zip(per_task_results, per_task_scores)
        ]

    def _items(self, tasks: list, target: Target):
        indices, items, errors = [], [], {}
        for index, task in enumerate(tasks):
            data = task.get("data") if isinstance(task, dict) else None
            if not isinstance(data, dict) or data.get(target.data_key) in (None, ""):
                errors[index] = f"task data has no {target.data_key!r}"
                continue
            task_id = task.get("id")
            indices.append(index)
            items.append(Item(task_id=task_id if isinstance(task_id, int) else None,
                              field=target.to_name, source=data[target.data_key]))
        return indices, items, errors

    def _load(self, item: Item, target: Target):
        if target.modality == "image":
            if not isinstance(item.source, str):
                raise FetchError(f"image reference is a {type(item.source).__name__}, not a URL")
            return self.fetcher.load_image(item.source, task_id=item.task_id)
        return self.fetcher.load_text(item.source, is_url=target.value_is_url, task_id=item.task_id)

    # -- learning ----------------------------------------------------------------------------
    def fit(self, event: str, data: dict, **kwargs) -> dict:
        """Annotation events are acknowledged; the retraining loop builds on this entry point."""
        logger.info("project %s: %s received", self.project_id, event)
        return {"model_version": self.model_version}


def _task_id(task) -> object:
    return task.get("id") if isinstance(task, dict) else None
