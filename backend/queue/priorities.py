"""Queue priorities of the unlabeled tasks: the numbers Label Studio sorts the queue by.

Before a target has a trained head, ColdStart (typical items of each cluster, nudged toward a small
zero-shot margin); after, the configured strategy (default boundary retrieval). The strategy's
batch takes priorities in [0, 0.5) in query order, every other task 0.5 + 0.5 * (its pointwise
priority), so the queue starts with a diverse boundary batch and continues by uncertainty.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Iterable, Mapping, Sequence

import numpy as np

from . import get_strategy
from .base import QueryContext
from .cold_start import ColdStart


@dataclass(frozen=True, eq=False)  # eq=False: numpy fields do not compare to one bool
class TargetScores:
    """One target's (one Choices tag's) inference on a list of tasks.

    indices: positions into the task list of the rows of ``embeddings`` / ``proba`` (tasks
    without data for the target are missing); head: the serving head (anything with
    predict_proba and score); trained: whether it was trained on annotations (else zero-shot);
    prototypes: the zero-shot label prototypes, (K, d); scores: the head's own certainty per row
    (``head.score(row)``), which ranks multiple-choice targets; None = computed here from head.
    """

    from_name: str
    multiple: bool
    indices: Sequence[int]
    embeddings: np.ndarray
    proba: np.ndarray
    head: Any
    trained: bool
    prototypes: np.ndarray | None = None
    scores: Sequence[float] | None = None


def queue_priorities(task_ids: Sequence, inferences: Iterable[TargetScores], strategy: str = "boundary",
                     batch: int = 50, labeled: Mapping | None = None, seed: int = 0) -> dict[int, float]:
    """{task id: priority in [0, 1]}, lower = label first; a task in several targets gets its
    lowest. ``task_ids[i]`` is the id of task i (non-int ids are skipped). ``labeled`` maps
    from_name -> (embeddings, class index) of the annotated items, as the training run embedded
    them: the strategies use them as class anchors and avoid their near-duplicates."""
    priorities: dict[int, float] = {}
    for target in inferences:
        for task_index, p in zip(target.indices, target_priorities(target, strategy, batch, labeled, seed)):
            task_id = task_ids[task_index]
            if isinstance(task_id, int):
                priorities[task_id] = min(priorities.get(task_id, 1.0), round(float(p), 6))
    return priorities


def target_priorities(target: TargetScores, strategy: str, batch: int, labeled: Mapping | None = None,
                      seed: int = 0) -> np.ndarray:
    """Priority per row of one target."""
    chooser = get_strategy(strategy) if target.trained else ColdStart()
    if target.multiple or len(target.indices) < 2:
        # strategies expect single-choice rows: rank by the head's own certainty
        scores = target.scores if target.scores is not None else [target.head.score(row) for row in target.proba]
        return np.clip(scores, 0.0, 1.0)
    labeled_E, labeled_y = (labeled or {}).get(target.from_name, (None, None))
    context = QueryContext(head=target.head if target.trained else None, labeled_embeddings=labeled_E,
                           labeled_y=labeled_y, prototypes=target.prototypes, rng=seed)
    return chooser.priority(target.proba, target.embeddings, min(batch, len(target.indices)), context)
