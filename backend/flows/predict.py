"""Task -> prediction: embed (through the store), apply the serving head, and give every task the
score Label Studio sorts its queue by.

The prediction's score is the task's queue priority (lower = label first): from the last saved
ranking of this version if the task was in it, else from ranking this batch ("Retrieve predictions"
sends all selected tasks at once); a lone unranked task gets its lowest region confidence. Each
region's own score is the head's confidence in its choice.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from ..labelstudio.protocol import choice_region, prediction, task_id
from ..queue.priorities import TargetScores, queue_priorities
from ..state.rankings import saved_priorities
from .project_model import Inference, ProjectModel


@dataclass(frozen=True)
class QueueOptions:
    """How the labeling queue is ranked and shown (QUEUE_* settings)."""
    model_dir: Path
    strategy: str = "boundary"
    batch: int = 50
    view: str = "Boundary first"  # Data Manager tab ordered by our scores ("" = none)
    uncertainty_sampling: bool = False
    sample: int = 4000  # unlabeled records a run reads for its statistics (flows/rank.py)
    audit_share: float = 0.1  # share of each batch drawn uniformly from the unlabeled pool (the audit sample)
    audit_half_width: float = 0.03  # stop drawing audit items once accuracy is known to +/- this (95%)
    cold_start_sample: int = 2000  # tasks embedded before the first batch; the rest in the background
    full_reconcile_s: float = 86400.0  # a run lists every task at most this often (else only changes)


def predict(model: ProjectModel, tasks: list, queue: QueueOptions, progress=None,
            inferred: dict[str, Inference] | None = None) -> list:
    """One entry per task, in order: a prediction dict, or [] when no prediction could be made.
    ``inferred``: the tasks' inferences when the caller has them already (model.infer(tasks))."""
    if inferred is None:
        inferred = model.infer(tasks, progress=progress)
    saved = saved_priorities(queue.model_dir, model.project_id, model.model_version)
    unranked = [t for t in tasks if task_id(t) not in saved]
    batch = priorities(model, tasks, inferred, queue.strategy, queue.batch) if len(unranked) > 1 else {}
    return to_predictions(tasks, inferred, {**batch, **saved}, model.model_version)


def priorities(model: ProjectModel, tasks: list, inferred: dict[str, Inference], strategy: str, batch: int,
               labeled: dict | None = None, seed: int = 0) -> dict[int, float]:
    """{task id: queue priority in [0, 1]} of the tasks; ``labeled`` maps from_name -> (embeddings,
    class index) of the annotated items (class anchors for the strategies, near-duplicates to avoid)."""
    scores = [target_scores(model, inference) for inference in inferred.values()]
    return queue_priorities([task_id(t) for t in tasks], scores, strategy, batch, labeled=labeled, seed=seed)


def target_scores(model: ProjectModel, inference: Inference) -> TargetScores:
    target, head = inference.target, inference.head
    return TargetScores(
        from_name=target.from_name, multiple=target.multiple, indices=inference.indices,
        embeddings=inference.embeddings, proba=inference.proba, head=head,
        trained=model.is_trained(target), prototypes=model.zero_shot_head(target).prototypes)


def to_predictions(tasks: list, inferred: dict[str, Inference], queue_scores: dict, model_version: str) -> list:
    """Label Studio prediction dicts, one per task ([] where no target had an item)."""
    regions: list[list[dict]] = [[] for _ in tasks]
    confidences: list[list[float]] = [[] for _ in tasks]
    for inference in inferred.values():
        target, head = inference.target, inference.head
        for task_index, row in zip(inference.indices, inference.proba):
            confidence = float(head.score(row))
            choices = [target.labels[i].output for i in head.choose(row)]
            regions[task_index].append(choice_region(target.from_name, target.to_name, choices, confidence))
            confidences[task_index].append(confidence)
    out = []
    for task, results, scores in zip(tasks, regions, confidences):
        if not results:
            out.append([])
            continue
        score = queue_scores.get(task_id(task))
        out.append(prediction(results, float(min(scores) if score is None else score), model_version))
    return out
