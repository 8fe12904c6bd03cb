"""Rank: the next batch of the labeling queue, found through the vector store, so that a run's cost
does not grow with the project.

For the primary target (the first Choices tag):
1. tasks labeled (or unlabeled again) since the last run are flagged in the embedding store, so that
   the samples skip them (``sync_labeled``); the vector searches drop the labeled tasks from an
   over-fetched answer (an HNSW query with a metadata filter reads every record's metadata);
2. a sample of unlabeled records (``sample_size``) gives the class-pair statistics; with a trained
   single-choice head and the boundary strategy, ``BoundaryRetrieval.query`` then finds the batch by
   vector search near the head's class boundaries. Before a trained head (ColdStart) and for the other
   strategies the sample itself is ranked;
3. audit items (an unbiased test set, see flows/train.py) are drawn uniformly from the unlabeled
   records and spread through the batch, so annotators cannot tell them apart.

Reads O(sample + batch) records, never the whole collection.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from ..embed.store import record_id
from ..queue.base import QueryContext
from ..queue.boundary import BoundaryRetrieval
from ..queue.measures import top2_margin
from ..queue.priorities import TargetScores, queue_priorities
from ..state.rankings import load_ids, save_ids
from .predict import to_predictions
from .project_model import Inference, ProjectModel


@dataclass
class RankedBatch:
    version: str  # the serving model version that ranked it
    strategy: str
    priorities: dict[int, float]  # task id -> priority in (0, 1), lower = served first
    predictions: dict[int, dict] = field(default_factory=dict)  # task id -> prediction, score = priority
    audit: list[int] = field(default_factory=list)  # tasks of the batch in the audit sample
    sampled: int = 0  # unlabeled records read for the statistics


def sync_labeled(model: ProjectModel, model_dir, labeled_ids: set[int]) -> int:
    """Flag the store's records of labeled tasks (and unflag tasks whose annotations went); returns how
    many tasks changed. Remembers the flagged set, so a run touches only the change."""
    project = model.project_id
    flagged = load_ids(model_dir, project, "labeled")
    newly, gone = labeled_ids - flagged, flagged - labeled_ids
    if not newly and not gone:
        return 0
    for target in model.config.targets:
        encoder = model.encoder_ids[target.to_name]
        model.store.mark_labeled(project, encoder, target.to_name, sorted(newly), True)
        model.store.mark_labeled(project, encoder, target.to_name, sorted(gone), False)
    save_ids(model_dir, project, "labeled", labeled_ids)
    return len(newly) + len(gone)


def rank_batch(model: ProjectModel, k: int, strategy: str, anchors: dict, audit_pending: list[int],
               audit_new: int, sample_size: int = 4000, seed: int | None = None,
               labeled: set[int] | None = None) -> RankedBatch | None:
    """The next k tasks to label (including the still unlabeled ``audit_pending`` and ``audit_new``
    fresh audit draws); None when the store holds no unlabeled record of the primary target.
    ``anchors``: from_name -> (embeddings, class index) of the labeled items. ``labeled``: the labeled
    task ids, which the vector search then drops itself (faster than Chroma's metadata filter)."""
    rng = np.random.default_rng(seed)
    target = model.config.targets[0]
    project, encoder, field_name = model.project_id, model.encoder_ids[target.to_name], target.to_name
    store = model.store
    sample_ids, sample = store.sample_unlabeled(project, encoder, field_name, sample_size, rng, runs=8)
    if not sample_ids:
        return None
    fresh_audit = store.sample_unlabeled(project, encoder, field_name, audit_new, rng,
                                         exclude=set(audit_pending))[0] if audit_new > 0 else []
    audit = list(audit_pending) + fresh_audit
    head, trained = model.head(target), model.is_trained(target)
    labeled_E, labeled_y = anchors.get(target.from_name, (None, None))
    k_queue = max(0, k - len(audit))
    prototypes = model.zero_shot_head(target).prototypes
    if trained and strategy == "boundary" and not target.multiple and k_queue:
        index = store.unlabeled_index(project, encoder, field_name, labeled)
        context = QueryContext(head=head, labeled_embeddings=labeled_E, labeled_y=labeled_y, prototypes=prototypes,
                               labeled_ids=[record_id(t, field_name) for t in audit])
        keys = BoundaryRetrieval().query(index, head, k_queue, sample, context)
        picked = [int(str(key).split(":", 1)[0]) for key in keys]
        if len(picked) < k_queue:  # the searches found too few distinct items: the sample's least certain
            taken = set(picked) | set(audit)
            margins = top2_margin(head.predict_proba(sample))
            picked += [t for t in (sample_ids[i] for i in np.argsort(margins, kind="stable"))
                       if t not in taken][:k_queue - len(picked)]
    else:
        scores = TargetScores(target.from_name, target.multiple, range(len(sample_ids)), sample,
                              head.predict_proba(sample), head, trained, prototypes)
        ranked = queue_priorities(sample_ids, [scores], strategy, k_queue, labeled=anchors, seed=int(rng.integers(1 << 30)))
        taken = set(audit)
        picked = [t for t in sorted(ranked, key=ranked.get) if t not in taken][:k_queue]
    order = _spread(picked, audit)
    priorities = {t: round((i + 1) / (len(order) + 1), 6) for i, t in enumerate(order)}
    name = strategy if trained else "cold_start"
    batch = RankedBatch(model.model_version, name, priorities, audit=audit, sampled=len(sample_ids))
    batch.predictions = _predictions(model, target, order, priorities)
    return batch


def _spread(picked: list[int], audit: list[int]) -> list[int]:
    """The queue's picks in order with the audit items spread evenly among them."""
    keyed = [((i + 0.5) / max(len(picked), 1), 0, t) for i, t in enumerate(picked)]
    keyed += [((j + 0.5) / len(audit), 1, t) for j, t in enumerate(audit) if t not in set(picked)]
    return [t for _, _, t in sorted(keyed)]


def _predictions(model: ProjectModel, target, order: list[int], priorities: dict[int, float]) -> dict[int, dict]:
    """The serving head's prediction for each task of the batch, from its stored embedding."""
    found = model.store.embeddings(model.project_id, model.encoder_ids[target.to_name],
                                   [record_id(t, target.to_name) for t in order])
    tasks = [t for t in order if record_id(t, target.to_name) in found]
    if not tasks:
        return {}
    E = np.stack([found[record_id(t, target.to_name)] for t in tasks])
    head = model.head(target)
    inferred = {target.from_name: Inference(target, list(range(len(tasks))), E, head, head.predict_proba(E))}
    rows = to_predictions([{"id": t} for t in tasks], inferred, priorities, model.model_version)
    return {t: p for t, p in zip(tasks, rows) if p}
