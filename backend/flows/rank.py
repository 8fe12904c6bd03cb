"""Training run, stage 3a: rank the next batch of the labeling queue, found through the vector store, so
that a run's cost does not grow with the project.

For the primary <Choices> tag:
1. tasks labeled (or unlabeled again) since the last run are flagged in the embedding store, so that
   the samples skip them (``sync_labeled``); the vector searches drop the labeled tasks from an
   over-fetched answer (an HNSW query with a metadata filter reads every record's metadata);
2. a sample of unlabeled records (``sample_size``) gives the class-pair statistics; with a trained
   single-choice head and the boundary strategy, ``BoundaryRetrieval.query`` then finds the batch by
   vector search near the head's class boundaries. Before a trained head (ColdStart) and for the other
   strategies the sample itself is ranked;
3. audit items (an unbiased test set, see flows/train.py) are drawn uniformly from the unlabeled
   records and take their share of the batch's first positions (queue/audit_slots.py): annotators take
   the top of a batch before the next run replaces it, and cannot tell audit items apart.

Reads O(sample + batch) records, never the whole collection. Pushing the batch is publish.py.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from ..learn.audit import effective_share
from ..model import ChoicesControl, ClipClassifier
from ..queue.audit_slots import audit_slots, place_audit
from ..queue.base import QueryContext
from ..queue.boundary import BoundaryRetrieval
from ..queue.measures import top2_margin
from ..queue.priorities import TargetScores, queue_priorities


@dataclass
class RankedBatch:
    version: str  # the serving model version that ranked it
    strategy: str
    priorities: dict[int, float]  # task id -> priority in (0, 1), lower = served first
    predictions: dict[int, dict] = field(default_factory=dict)  # task id -> prediction, score = priority
    audit: list[int] = field(default_factory=list)  # tasks of the batch in the audit sample
    sampled: int = 0  # unlabeled records read for the statistics
    audit_share: dict | None = None  # audit items among the labels so far (audit_slots.effective_share)


def next_batch(model: ClipClassifier, labeled: set[int], anchors: dict, audit_wanted: bool = True) -> RankedBatch | None:
    """The batch a training run publishes: labeled flags synced, audit items (those still unlabeled, then
    fresh draws while the audit is wanted) at the batch's first slots by the audit share and what the
    annotators owe (queue/audit_slots.py), the rest ranked by the strategy; the draws are remembered.
    None when no unlabeled task is embedded yet."""
    queue, state = model.queue, model.state
    sync_labeled(model, labeled)
    drawn = state.audit_draws()
    pending = sorted(drawn - labeled)
    audited = len(drawn & labeled)
    slots = audit_slots(queue.batch, queue.audit_share, audit_owed(state, len(labeled), audited, queue.audit_share,
                                                                   audit_wanted), at_least_one=audit_wanted)
    pending = pending[:len(slots)]
    new = max(0, len(slots) - len(pending)) if audit_wanted else 0
    batch = rank_batch(model, queue.batch, queue.strategy, anchors, pending, new, queue.sample, labeled=labeled,
                       slots=slots)
    if batch is not None:
        state.save_audit_draws(drawn | set(batch.audit))
        batch.audit_share = effective_share(audited, len(labeled), queue.audit_share)
    return batch


def audit_owed(state, labels: int, audited: int, share: float, drawing: bool) -> float:
    """Audit items the annotators owe: share x labels since the audit started (or resumed) - audit items
    labeled since. While the audit is not drawing, the origin follows the labels, so nothing is owed."""
    origin = state.audit_origin()
    if origin is None or not drawing:
        state.save_audit_origin(labels, audited)
        return 0.0
    return share * (labels - origin[0]) - (audited - origin[1])


def sync_labeled(model: ClipClassifier, labeled_ids: set[int]) -> int:
    """Flag the store's records of labeled tasks (and unflag tasks whose annotations went); returns how
    many tasks changed. Remembers the flagged set, so a run touches only the change."""
    flagged = model.state.labeled_flags()
    newly, gone = labeled_ids - flagged, flagged - labeled_ids
    if not newly and not gone:
        return 0
    for control in model.controls:
        control.store.mark_labeled(sorted(newly), True)
        control.store.mark_labeled(sorted(gone), False)
    model.state.save_labeled_flags(labeled_ids)
    return len(newly) + len(gone)


def rank_batch(model: ClipClassifier, k: int, strategy: str, anchors: dict, audit_pending: list[int],
               audit_new: int, sample_size: int = 4000, seed: int | None = None,
               labeled: set[int] | None = None, slots: list[int] | None = None) -> RankedBatch | None:
    """The next k tasks to label (including the still unlabeled ``audit_pending`` and ``audit_new``
    fresh audit draws, at positions ``slots``: by default their share of the batch's first positions);
    None when the store holds no unlabeled record of the primary target.
    ``anchors``: from_name -> (embeddings, class index) of the labeled items. ``labeled``: the labeled
    task ids, which the vector search then drops itself (faster than Chroma's metadata filter)."""
    rng = np.random.default_rng(seed)
    model.load()
    control = model.primary
    target, store = control.target, control.store
    sample_ids, sample = store.sample_unlabeled(sample_size, rng, runs=8)
    if not sample_ids:
        return None
    fresh_audit = store.sample_unlabeled(audit_new, rng, exclude=set(audit_pending))[0] if audit_new > 0 else []
    audit = list(audit_pending) + fresh_audit
    head, trained = control.head, control.trained_ is not None
    labeled_E, labeled_y = anchors.get(target.from_name, (None, None))
    k_queue = max(0, k - len(audit))
    prototypes = control.zero_shot.prototypes
    if trained and strategy == "boundary" and not target.multiple and k_queue:
        index = store.unlabeled_index(labeled)
        context = QueryContext(head=head, labeled_embeddings=labeled_E, labeled_y=labeled_y, prototypes=prototypes,
                               labeled_ids=[store.record_id(t) for t in audit])
        keys = BoundaryRetrieval().query(index, head, k_queue, sample, context,
                                         sample_keys=[store.record_id(t) for t in sample_ids])
        picked = [store.task_of(key) for key in keys]
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
    if slots is None:
        slots = audit_slots(k, len(audit) / k) if audit and k else []
    order = place_audit(picked, audit, slots)
    audit = [t for t in audit if t in set(order)]
    priorities = {t: round((i + 1) / (len(order) + 1), 6) for i, t in enumerate(order)}
    name = strategy if trained else "cold_start"
    batch = RankedBatch(model.model_version, name, priorities, audit=audit, sampled=len(sample_ids))
    batch.predictions = _predictions(model, control, order, priorities)
    return batch


def _predictions(model: ClipClassifier, control: ChoicesControl, order: list[int],
                 priorities: dict[int, float]) -> dict[int, dict]:
    """The serving head's prediction for each task of the batch, from its stored embedding."""
    found = control.store.embeddings(order)
    tasks = [t for t in order if t in found]
    if not tasks:
        return {}
    inference = model.infer_stored(control, np.stack([found[t] for t in tasks]))
    rows = model.predictions(tasks, {control.from_name: inference}, priorities)
    return {t: p for t, p in zip(tasks, rows) if p}
