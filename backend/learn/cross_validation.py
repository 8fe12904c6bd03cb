"""Repeated stratified k-fold cross-validation of candidate heads on the training labels: the items and
their splits (LabeledData), the folds (CVPlan), out-of-fold probabilities with warm starts along the C
path, and the smooth score selection compares (calibrated out-of-fold log loss)."""
from __future__ import annotations

import hashlib
from collections.abc import Collection
from dataclasses import dataclass

import numpy as np
from scipy.optimize import minimize_scalar
from sklearn.base import clone

from .folds import stratified_folds
from .heads import DEFAULT_PRIOR_C, Head, ZeroShotHead
from .metrics import selection_score_from_proba
from .thresholds import threshold_shift

SPLITS = ("train", "test")
CV_FOLDS = 5
MIN_CV_SCORED = 10  # fewer cross-validated items than this: serve the default head
CV_PREDICTIONS = 300  # repeats of the k folds until about this many out-of-fold predictions (at most 5)
MAX_CV_REPEATS = 5
FOLD_TOL = 1e-5  # gradient tolerance of fold refits (1e-4 stops refits along the C path before they move)


def split_of(task_id, val: float = 0.15, test: float = 0.15) -> str:
    """Deterministic split of a task: sha1 of str(task_id) mapped to [0, 1) ("val" is kept for old reports;
    selection trains on val items too)."""
    digest = hashlib.sha1(str(task_id).encode("utf-8")).digest()
    u = int.from_bytes(digest[:8], "big") / 2.0 ** 64
    if u < test:
        return "test"
    if u < test + val:
        return "val"
    return "train"


@dataclass
class LabeledData:
    """The labeled items and their splits."""

    X: np.ndarray
    Y: np.ndarray  # (n,) class indices or (n, K) indicators
    label_names: list[str]
    multiple: bool
    splits: np.ndarray  # "train" / "test" per item

    @property
    def K(self) -> int:
        return len(self.label_names)

    def mask(self, *names: str) -> np.ndarray:
        return np.isin(self.splits, names)


@dataclass
class CVPlan:
    """How candidates are compared: repeated stratified k-fold cross-validation on every training item."""

    k: int
    repeats: int
    selection: str
    reason: str
    train_idx: np.ndarray  # positions of the training items
    folds: list  # per repeat: the fold of each training item
    scored: np.ndarray  # which training items count in the score (their class has 2+ labels)
    note: str | None = None

    @property
    def too_few_scored(self) -> bool:
        return int(self.scored.sum()) < MIN_CV_SCORED


def splits_of(task_ids, test: float, audit_ids: Collection | None) -> np.ndarray:
    """Each task's split: the audit sample is the test set (given, even empty), else the hash test split.
    Every other labeled item trains and is cross-validated on."""
    if audit_ids is None:
        return np.array(["test" if split_of(t, test=test) == "test" else "train" for t in task_ids])
    audit = {str(a) for a in audit_ids}  # ids compare as split_of hashes them: 7 == "7"
    return np.array(["test" if str(t) in audit else "train" for t in task_ids])


def prepare(X, Y, task_ids, label_names, multiple, test, audit_ids=None) -> LabeledData:
    """Arrays in their canonical shapes and dtypes, with each task's split."""
    label_names = [str(x) for x in label_names]
    X = np.asarray(X, dtype=np.float32).reshape(len(task_ids), -1)
    Y = np.asarray(Y).reshape(len(task_ids), len(label_names)) if multiple else np.asarray(Y, dtype=np.int64).ravel()
    if len(Y) != len(X):
        raise ValueError(f"{len(X)} embeddings but {len(Y)} labels")
    return LabeledData(X, Y, label_names, bool(multiple), splits_of(task_ids, test, audit_ids))


def plan_cv(data: LabeledData) -> CVPlan:
    """Repeated stratified k-fold CV over the training items; single choice scores only items whose class
    has another training example (a fold cannot learn a class it never saw, and every labeled class is
    trained on when serving)."""
    train_idx = np.flatnonzero(data.mask("train"))
    n = len(train_idx)
    Y = data.Y[train_idx]
    k = int(min(CV_FOLDS, max(2, n)))
    repeats = int(np.clip(np.ceil(CV_PREDICTIONS / max(n, 1)), 1, MAX_CV_REPEATS))
    folds = [stratified_folds(Y, k, data.multiple, seed=r) for r in range(repeats)] if n else []
    scored = np.ones(n, dtype=bool) if data.multiple else np.bincount(Y, minlength=data.K)[Y] >= 2
    plan = CVPlan(k, repeats, f"cross-validation ({repeats} x {k}-fold)",
                 f"{n} training labels, {int(scored.sum())} of them in classes with 2+ labels", train_idx, folds, scored)
    if plan.too_few_scored:
        plan.note = (f"only {int(scored.sum())} cross-validated items: too few to compare heads, so the default "
                     + (f"head is used (prompt-prior, C={DEFAULT_PRIOR_C:g}: the label prompts at the scale the "
                        "labels support, moved by every label)" if n else "head is used (zero-shot)"))
    elif not scored.all():
        plan.note = f"scored on the {int(scored.sum())} of {n} items whose class has 2+ labels"
    return plan


def log_probabilities(proba: np.ndarray) -> np.ndarray:
    return np.log(np.clip(proba, 1e-12, 1.0))


def calibrated_log_loss(proba: np.ndarray, y: np.ndarray) -> tuple[float, float]:
    """(mean log loss after the best single temperature, that temperature) of single-choice probabilities:
    compares how well heads separate the classes, not how confident they happen to be."""
    L = log_probabilities(proba)
    rows = np.arange(len(y))

    def nll(log_t):
        Z = L * np.exp(log_t)
        Z = Z - Z.max(axis=1, keepdims=True)
        return float((np.log(np.exp(Z).sum(axis=1)) - Z[rows, y]).mean())
    best = minimize_scalar(nll, bounds=(-5.0, 3.0), method="bounded")
    return float(best.fun), float(np.exp(best.x))


@dataclass
class CVScores:
    """A candidate's out-of-fold figures (all repeats pooled; oof: the repeats' mean probabilities for single
    choice, the first repeat's decisions for multiple)."""

    score: float  # the selection score: lower is better
    accuracy: float
    log_loss: float
    oof: np.ndarray | None = None

    @property
    def key(self) -> tuple:
        """What candidates are ordered by: the score to 4 decimals, then the uncalibrated log loss (perfectly
        separated folds calibrate every head to a loss of 0: a tie that must not fall to list order)."""
        return (round(self.score, 4), self.log_loss)


class _HalfThreshold(Head):
    """Decisions at 0.5 on already threshold-shifted probabilities (used for CV scoring)."""

    multiple = True

    def __init__(self, n_classes: int):
        self.n_classes = n_classes

    @property
    def thresholds(self) -> np.ndarray:
        return np.full(self.n_classes, 0.5)


def refit(head: Head, X, Y, start: Head | None = None, tol: float | None = None) -> Head:
    """A clone of head fitted on X, Y; starting from ``start``'s weights where the family allows (warm start
    along the C path). ``start`` must never have seen the items a fold holds out."""
    part = clone(head)
    if hasattr(part, "warm_start") and start is not None and hasattr(start, "W_"):
        part.set_params(warm_start=True)
        part.W_, part.b_ = start.W_, start.b_
    if tol is not None and hasattr(part, "tol"):
        part.set_params(tol=tol)
    part.fit(X, Y)
    if hasattr(part, "warm_start"):
        part.set_params(warm_start=False)
    return part


def out_of_fold(candidates: list[Head], data: LabeledData, plan: CVPlan) -> list[list[np.ndarray] | None]:
    """Per candidate, per repeat: (n_train, K) out-of-fold probabilities (decisions at 0.5 for multiple
    choice). Within a fold the trained candidates are fitted along the C path, each from the previous one's
    weights (never from a fit that saw the held-out items)."""
    X, Y, idx = data.X, data.Y, plan.train_idx
    runs: list[list] = [[] for _ in candidates]
    for folds in plan.folds:
        oofs = [np.zeros((len(idx), data.K)) for _ in candidates]
        for f in np.unique(folds):
            held = folds == f
            previous = None
            for c, head in enumerate(candidates):
                if isinstance(head, ZeroShotHead):
                    part = head
                else:
                    part = previous = refit(head, X[idx[~held]], Y[idx[~held]], previous, FOLD_TOL)
                oofs[c][held] = part.predict_proba(X[idx[held]])
                if data.multiple:  # decisions need each fold's own thresholds
                    oofs[c][held] = threshold_shift(oofs[c][held], part)
        for c in range(len(candidates)):
            runs[c].append(oofs[c])
    return runs


def cv_scores(runs: list[np.ndarray], data: LabeledData, plan: CVPlan) -> CVScores:
    """Out-of-fold selection figures. Single choice: log loss after temperature calibration (a smooth
    score: no two heads tie, and a noisy handful of items moves it little). Multiple: micro-F1 (higher
    is better, so its negative is the key)."""
    Y = data.Y[plan.train_idx]
    s = plan.scored
    if data.multiple:
        f1 = float(np.mean([selection_score_from_proba(_HalfThreshold(data.K), oof[s], Y[s], True) for oof in runs]))
        bce = float(np.mean([-np.mean(np.log(np.clip(np.where(Y[s] > 0, oof[s], 1 - oof[s]), 1e-12, 1)))
                             for oof in runs]))
        return CVScores(-f1, f1, bce, runs[0])
    P = np.concatenate([oof[s] for oof in runs])
    y = np.tile(Y[s], len(runs))
    loss, _ = calibrated_log_loss(P, y)
    accuracy = float((P.argmax(axis=1) == y).mean())
    raw = float(-log_probabilities(P)[np.arange(len(y)), y].mean())
    return CVScores(loss, accuracy, raw, np.mean(runs, axis=0))
