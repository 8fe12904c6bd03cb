"""Suspected label errors: confident learning (Northcutt, Jiang & Chuang 2021) on out-of-fold
probabilities of the chosen head.

Every labeled item is predicted by a clone of the head fitted without it (k folds), so a wrong
label cannot vouch for itself. A class's threshold is the mean probability the head gives items
labeled with that class (its self-confidence), which adapts to classes the head is unsure about
everywhere. The items whose most probable class among those clearing their thresholds is not the
given label (the off-diagonal of the "confident joint") say how many labels are wrong; that many
items are flagged, those where the most probable other class (the suggestion) beats the given
label by the widest margin, most suspicious first.

That count is too generous when the head is weak (an 82%-accurate head disagrees with many correct
labels), so the list is cut further where a held-out check says it stops being precise
(``precise_cut``): synthetic wrong labels injected into the out-of-fold rows show how often a wrong
label scores above each cut, the observed scores how often any label does, and the share of wrong
labels bounds the rest; the list keeps the longest prefix whose estimated precision reaches
TARGET_PRECISION.

- out_of_fold_proba(head, X, y, n_classes): probabilities, and which items could be checked;
- confident_issues(proba, y, checkable): flagged items (ranked), suggested labels, scores;
- review_labels(...) / rank_label_errors(...): the report's list of entries.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from sklearn.base import clone

from .folds import stratified_folds

MAX_REPORTED = 200  # entries kept in a report; the review page shows the top of the list
TARGET_PRECISION = 0.8  # of the flagged list, as the injected-error check estimates it (measured: ~0.6-0.9)
INJECTION_ROUNDS = 4  # wrong labels injected per checkable item (half uniform, half confusable)


def out_of_fold_proba(head, X: np.ndarray, y: np.ndarray, n_classes: int, folds: int = 5,
                      seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """((n, n_classes) probabilities, each row from a clone of head fitted on the other folds;
    (n,) checkable: the item's class has another labeled item, so the item's clone learned it).

    A class with one labeled item is left unchecked: without it no fold knows the class, and its
    probability would be 0 whatever the truth.
    """
    y = np.asarray(y, dtype=np.int64)
    n = len(y)
    proba = np.zeros((n, n_classes))
    checkable = np.bincount(y, minlength=n_classes)[y] >= 2
    if not checkable.any():
        return proba, checkable
    fold = stratified_folds(y, int(min(folds, n)), multiple=False, seed=seed)
    for f in np.unique(fold):
        held_out = fold == f
        part = clone(head).fit(X[~held_out], y[~held_out])
        p = part.predict_proba(X[held_out])
        proba[held_out, :p.shape[1]] = p  # a head that infers K from its labels may have fewer columns
    return proba, checkable


def confident_issues(proba: np.ndarray, y: np.ndarray, checkable: np.ndarray | None = None,
                     target: float | None = TARGET_PRECISION) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(flagged item indices ranked most suspicious first, suggested class per item, score per item).
    ``target``: cut the list further where its estimated precision falls below (precise_cut; None: no cut).

    How many: the off-diagonal count of the confident joint (items whose most probable class among
    those clearing their thresholds is not the given one). Which: that many items with the largest
    normalized margin, score = p(suggested) - p(given) with suggested the most probable other
    class, and only where it is positive. Ranking everything by one score and cutting at the
    confident joint's count beat both the per-item rule and cleanlab's per-pair pruning on the four
    benchmark data sets (docs/active_learning.md, "Label-error review").
    """
    proba = np.asarray(proba, dtype=np.float64)
    y = np.asarray(y, dtype=np.int64)
    n, K = proba.shape
    rows = np.arange(n)
    checkable = np.ones(n, dtype=bool) if checkable is None else np.asarray(checkable, dtype=bool)
    p_given = proba[rows, y]
    # threshold of class j: mean p_j over checkable items labeled j; a class no checkable item
    # carries has no threshold, so no item is confidently that class
    sums = np.bincount(y[checkable], weights=p_given[checkable], minlength=K)
    counts = np.bincount(y[checkable], minlength=K)
    thresholds = np.divide(sums, counts, out=np.full(K, np.inf), where=counts > 0)
    clearing = np.where(proba >= thresholds, proba, -np.inf)
    confident_label = clearing.argmax(axis=1)
    off_diagonal = checkable & np.isfinite(clearing[rows, confident_label]) & (confident_label != y)
    others = proba.copy()
    others[rows, y] = -np.inf
    suggested = others.argmax(axis=1)
    score = others[rows, suggested] - p_given
    candidates = np.flatnonzero(checkable & (score > 0))  # the suggestion must beat the given label
    ranked = candidates[np.argsort(-score[candidates], kind="stable")]
    count = int(off_diagonal.sum())
    if target is not None:
        count = min(count, precise_cut(proba, y, checkable, score[ranked], count / max(int(checkable.sum()), 1),
                                       target))
    return ranked[:count], suggested, score


def _margin(proba: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """p(most probable other class) - p(label), per row."""
    rows = np.arange(len(labels))
    others = proba.copy()
    others[rows, labels] = -np.inf
    return others.max(axis=1) - proba[rows, labels]


def precise_cut(proba: np.ndarray, y: np.ndarray, checkable: np.ndarray, ranked_scores: np.ndarray,
                wrong_share: float, target: float = TARGET_PRECISION, seed: int = 0) -> int:
    """How many of the ranked items (their scores, descending) to flag for an estimated precision >= target.

    Held-out check: every checkable item gets INJECTION_ROUNDS wrong labels (half drawn uniformly from the
    other classes, half in proportion to the head's probabilities: the confusions annotators make), scored
    on its own out-of-fold row, which never saw its label. At a cut t: recall(t) = share of injected
    labels scoring >= t, flagged(t) = share of all labels scoring >= t, and the share of wrong labels pi
    is bounded by min flagged(t) / recall(t) (wrong labels alone cannot outnumber what scores above t;
    confident learning's ``wrong_share`` only where too few injected labels score that high: it
    underestimates with a good head and overestimates with a weak one); precision(t) = pi x recall(t) /
    flagged(t)."""
    idx = np.flatnonzero(checkable)
    n, K = len(idx), proba.shape[1]
    if not len(ranked_scores) or n == 0 or K < 2:
        return 0
    P, given = proba[idx], np.asarray(y)[idx]
    rng = np.random.default_rng(seed)
    rows = np.arange(n)
    weights = P.copy() + 1e-9
    weights[rows, given] = 0.0
    cumulative = np.cumsum(weights / weights.sum(axis=1, keepdims=True), axis=1)
    injected = []
    for r in range(INJECTION_ROUNDS):
        if r % 2 == 0:
            wrong = (given + rng.integers(1, K, n)) % K
        else:
            wrong = np.minimum((rng.random((n, 1)) > cumulative).sum(axis=1), K - 1)
        injected.append(_margin(P, wrong))
    injected = np.sort(np.concatenate(injected))
    recall = 1.0 - np.searchsorted(injected, ranked_scores, side="left") / len(injected)
    flagged = np.arange(1, len(ranked_scores) + 1) / n
    usable = recall >= 0.25  # the tail beyond is too thin to bound the share of wrong labels
    pi = float(np.min(flagged[usable] / recall[usable])) if usable.any() else wrong_share
    precise = np.flatnonzero(pi * recall / flagged >= target)
    return int(precise.max() + 1) if len(precise) else 0


@dataclass
class LabelReview:
    """The flagged items (as report entries, most suspicious first) and how many items were checked."""

    errors: list[dict]
    checked: int


def review_labels(head, X, y, task_ids, label_names, folds: int = 5, seed: int = 0) -> LabelReview:
    """Out-of-fold probabilities of clones of head, then confident learning. Single choice only."""
    if getattr(head, "multiple", False):
        return LabelReview([], 0)
    X = np.asarray(X, dtype=np.float32)
    y = np.asarray(y, dtype=np.int64).ravel()
    task_ids = list(task_ids)
    if len(y) < 2:
        return LabelReview([], 0)
    proba, checkable = out_of_fold_proba(head, X, y, len(label_names), folds=folds, seed=seed)
    return review_from_proba(proba, y, checkable, task_ids, label_names)


def review_from_proba(proba: np.ndarray, y, checkable: np.ndarray, task_ids, label_names) -> LabelReview:
    """Confident learning on probabilities that never saw each item's own label (out-of-fold)."""
    y = np.asarray(y, dtype=np.int64).ravel()
    task_ids = list(task_ids)
    ranked, suggested, score = confident_issues(proba, y, checkable)
    errors = [{"rank": r + 1, "task_id": task_ids[i], "given": str(label_names[y[i]]),
               "suggested": str(label_names[suggested[i]]), "confidence": round(float(proba[i, suggested[i]]), 4),
               "given_probability": round(float(proba[i, y[i]]), 4), "suspicion": round(float(score[i]), 4)}
              for r, i in enumerate(ranked)]
    return LabelReview(errors, int(checkable.sum()))


def rank_label_errors(head, X, y, task_ids, label_names, folds: int = 5, seed: int = 0) -> list[dict]:
    """Suspected label errors, most suspicious first: dicts with rank, task_id, given, suggested,
    confidence (out-of-fold p of the suggestion), given_probability and suspicion (their difference).
    [] for multiple-choice heads."""
    return review_labels(head, X, y, task_ids, label_names, folds=folds, seed=seed).errors
