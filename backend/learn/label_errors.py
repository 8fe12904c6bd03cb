"""Suspected label errors: confident learning (Northcutt, Jiang & Chuang 2021) on out-of-fold
probabilities of the chosen head, blended with its nearest labeled neighbours' votes.

Every labeled item is predicted by a clone of the head fitted without it (k folds, averaged over the
cross-validation's repeats), so a wrong label cannot vouch for itself; its labeled neighbours in
embedding space (itself left out) vote too, as much as their votes explain the labels (a second view
that the head's smooth boundary misses: measured on AG News at 210 labels, average precision 0.65 ->
0.68 on random items and 0.42 -> 0.48 on queue-picked ones). A class's threshold is the mean
probability the blend gives items labeled with that class (its self-confidence), which adapts to
classes the head is unsure about everywhere. The items whose most probable class among those
clearing their thresholds is not the given label (the off-diagonal of the "confident joint") say
how many labels are wrong; that many items are flagged, among those where another class (the
suggestion) is more probable than the given label, by ``suspicion``, most suspicious first.

``suspicion`` weighs cleanlab's self-confidence score (1 - p(given): best when a wrong label is any
other class) 3:1 against the normalized margin (p(suggested) - p(given): best when wrong labels go to
a confusable class); each alone loses badly on the other kind of error (docs/active_learning.md,
"Label-error review").

That count is too generous when the head is weak (an 82%-accurate head disagrees with many correct
labels), so the list is cut further where a held-out check says it stops being precise
(``precise_cut``): synthetic wrong labels injected into the out-of-fold rows show how often a wrong
label scores above each cut, the observed scores how often any label does, and the share of wrong
labels bounds the rest; the list keeps the longest prefix whose estimated precision reaches
TARGET_PRECISION.

- out_of_fold_proba(head, X, y, n_classes): probabilities, and which items could be checked;
- with_neighbours(proba, X, y, checkable): the blend with the neighbours' votes;
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
BOUND_MIN_RECALL = 0.25  # cuts that bound the share of wrong labels keep at least this share of injected ones
BOUND_STANDARD_ERRORS = 0.5  # of each cut's flagged share, added before it bounds pi (0: the min chases a lucky cut)
INJECTION_ROUNDS = 4  # wrong labels injected per checkable item (half uniform, half confusable)
SELF_CONFIDENCE_SHARE = 0.75  # of the suspicion; the rest is the normalized margin
NEIGHBOURS = 15  # labeled neighbours that vote on an item's class
NEIGHBOUR_TEMPERATURE = 0.05  # of the cosine similarities weighting the votes (MiniLM / CLIP scale)
NEIGHBOUR_REFERENCE = 2048  # labeled items the votes come from, at most (a random sample beyond): bounded cost
NEIGHBOUR_WEIGHTS = (0.0, 0.25, 0.5)  # the blend's share of the votes, chosen by log loss on the labels
VOTE_FLOOR = 1e-3  # per class, so a class no neighbour votes for is unlikely, not impossible


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


def neighbour_proba(X: np.ndarray, y: np.ndarray, n_classes: int, k: int = NEIGHBOURS,
                    reference: int = NEIGHBOUR_REFERENCE, seed: int = 0, chunk: int = 1024) -> np.ndarray:
    """(n, n_classes) class probabilities from each item's k most similar labeled items (cosine, the item
    itself left out), votes weighted by exp(similarity / NEIGHBOUR_TEMPERATURE) relative to the nearest one
    (so the vote is as sharp at cosine 0.5 as at 0.9), then a floor of VOTE_FLOOR per class. Cost
    O(n x reference)."""
    X = np.asarray(X, dtype=np.float32)
    y = np.asarray(y, dtype=np.int64)
    n = len(y)
    Z = X / np.maximum(np.linalg.norm(X, axis=1, keepdims=True), 1e-12)
    ref = (np.arange(n) if n <= reference
           else np.sort(np.random.default_rng(seed).choice(n, reference, replace=False)))
    k = min(k, len(ref) - 1)
    if k < 1:
        return np.full((n, n_classes), 1.0 / n_classes)
    votes = np.zeros((n, n_classes))
    Zref, yref = Z[ref], y[ref]
    for start in range(0, n, chunk):
        rows = np.arange(start, min(start + chunk, n))
        sim = Z[rows] @ Zref.T
        sim[rows[:, None] == ref[None, :]] = -np.inf  # an item never votes for itself
        nn = np.argpartition(sim, -k, axis=1)[:, -k:]
        near = np.take_along_axis(sim, nn, axis=1)
        weight = np.exp((near - near.max(axis=1, keepdims=True)) / NEIGHBOUR_TEMPERATURE)
        cells = (np.arange(len(rows))[:, None] * n_classes + yref[nn]).ravel()
        votes[rows] = np.bincount(cells, weights=weight.ravel(), minlength=len(rows) * n_classes).reshape(
            len(rows), n_classes)
    votes /= votes.sum(axis=1, keepdims=True)
    return (votes + VOTE_FLOOR) / (1.0 + n_classes * VOTE_FLOOR)


def with_neighbours(proba: np.ndarray, X: np.ndarray, y: np.ndarray, checkable: np.ndarray) -> np.ndarray:
    """The head's out-of-fold probabilities blended with the neighbours' votes, at the share (of
    NEIGHBOUR_WEIGHTS) that gives the checkable items' labels the lowest log loss: none where the votes
    are worse than the head (e.g. 77 classes and a couple of labels each)."""
    proba = np.asarray(proba, dtype=np.float64)
    y = np.asarray(y, dtype=np.int64)
    checkable = np.asarray(checkable, dtype=bool)
    if checkable.sum() < 2:
        return proba
    votes = neighbour_proba(X, y, proba.shape[1])
    rows = np.flatnonzero(checkable)

    def log_loss(w):
        return float(-np.log(np.clip((w * votes + (1 - w) * proba)[rows, y[rows]], 1e-12, 1.0)).mean())
    share = min(NEIGHBOUR_WEIGHTS, key=log_loss)
    blended = share * votes + (1 - share) * proba
    return np.where(checkable[:, None], blended, proba)


def suspicion(proba: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(score per row, most probable other class per row): SELF_CONFIDENCE_SHARE x (1 - p(label)) + the rest
    x (p(suggested) - p(label)); higher is more suspicious."""
    rows = np.arange(len(labels))
    others = np.asarray(proba, dtype=np.float64).copy()
    others[rows, labels] = -np.inf
    suggested = others.argmax(axis=1)
    p_label = proba[rows, labels]
    score = (SELF_CONFIDENCE_SHARE * (1.0 - p_label)
             + (1.0 - SELF_CONFIDENCE_SHARE) * (others[rows, suggested] - p_label))
    return score, suggested


def confident_issues(proba: np.ndarray, y: np.ndarray, checkable: np.ndarray | None = None,
                     target: float | None = TARGET_PRECISION) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(flagged item indices ranked most suspicious first, suggested class per item, score per item).
    ``target``: cut the list further where its estimated precision falls below (precise_cut; None: no cut).

    How many: the off-diagonal count of the confident joint (items whose most probable class among
    those clearing their thresholds is not the given one). Which: that many items with the highest
    ``suspicion`` among those whose most probable other class (the suggestion) beats the given label.
    Ranking everything by one score and cutting at the confident joint's count beat both the per-item
    rule and cleanlab's per-pair pruning on the four benchmark data sets (docs/active_learning.md,
    "Label-error review").
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
    score, suggested = suspicion(proba, y)
    candidates = np.flatnonzero(checkable & (proba[rows, suggested] > p_given))  # the suggestion must beat the label
    ranked = candidates[np.argsort(-score[candidates], kind="stable")]
    count = int(off_diagonal.sum())
    if target is not None:
        count = min(count, precise_cut(proba, y, checkable, score[ranked], count / max(int(checkable.sum()), 1),
                                       target))
    return ranked[:count], suggested, score


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
    flagged(t). flagged(t) is taken BOUND_STANDARD_ERRORS standard errors (sqrt(flagged / n)) high in the bound: the
    min over many cuts otherwise lands on one that few items clear by luck and cuts far too early (with
    errors between confusable classes, recall 0.19 of planted errors on banking77 instead of 0.24-0.27)."""
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
        injected.append(suspicion(P, wrong)[0])
    injected = np.sort(np.concatenate(injected))
    recall = 1.0 - np.searchsorted(injected, ranked_scores, side="left") / len(injected)
    flagged = np.arange(1, len(ranked_scores) + 1) / n
    usable = recall >= BOUND_MIN_RECALL  # the tail beyond is too thin to bound the share of wrong labels
    bound = (flagged + BOUND_STANDARD_ERRORS * np.sqrt(flagged / n)) / np.maximum(recall, 1e-12)
    pi = float(np.min(bound[usable])) if usable.any() else wrong_share
    precise = np.flatnonzero(pi * recall / flagged >= target)
    return int(precise.max() + 1) if len(precise) else 0


@dataclass
class LabelReview:
    """The flagged items (as report entries, most suspicious first) and how many items were checked."""

    errors: list[dict]
    checked: int


def review_labels(head, X, y, task_ids, label_names, folds: int = 5, seed: int = 0) -> LabelReview:
    """Out-of-fold probabilities of clones of head, blended with the neighbours' votes, then confident
    learning. Single choice only."""
    if getattr(head, "multiple", False):
        return LabelReview([], 0)
    X = np.asarray(X, dtype=np.float32)
    y = np.asarray(y, dtype=np.int64).ravel()
    task_ids = list(task_ids)
    if len(y) < 2:
        return LabelReview([], 0)
    proba, checkable = out_of_fold_proba(head, X, y, len(label_names), folds=folds, seed=seed)
    return review_from_proba(with_neighbours(proba, X, y, checkable), y, checkable, task_ids, label_names)


def review_from_proba(proba: np.ndarray, y, checkable: np.ndarray, task_ids, label_names) -> LabelReview:
    """Confident learning on probabilities that never saw each item's own label (out-of-fold, blended)."""
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
    confidence (out-of-fold p of the suggestion), given_probability and suspicion (``suspicion``).
    [] for multiple-choice heads."""
    return review_labels(head, X, y, task_ids, label_names, folds=folds, seed=seed).errors
