"""Train heads on annotated embeddings, pick one on held-out data, and report how good it is.

- split_of(task_id): a task's split ("train" / "val" / "test") from a hash of its id, so a task
  never changes split as the project grows.
- train_and_select(...): fits every candidate head on train, selects on validation (or by
  cross-validation on train+val when labels are few), refits the winner on train+val and
  evaluates it on test. Returns the fitted head and a JSON-serializable report.

With audit_ids the test set is the audit sample (tasks drawn uniformly at random, see audit.py)
instead of the hash test split, and the report gains its numbers with 95% intervals.
"""
from __future__ import annotations

import hashlib
import time
from collections.abc import Collection
from dataclasses import dataclass
from datetime import datetime, timezone

import numpy as np
from sklearn.base import clone
from sklearn.model_selection import PredefinedSplit

from .audit import accuracy_on, audit_summary
from .folds import stratified_folds
from .heads import Head, PromptAnchoredHead, ZeroShotHead, blas_limit, candidate_heads
from .label_errors import MAX_REPORTED, review_labels
from .metrics import evaluate, finite, indicator, json_safe, selection_score, selection_score_from_proba
from .thresholds import threshold_shift

SPLITS = ("train", "val", "test")
MIN_ITEMS_FOR_VALIDATION_SPLIT = 20
MIN_VAL_PER_CLASS = 2.0  # average validation items per class below which selection uses CV
CV_FOLDS = 5
MIN_CV_SCORED = 10  # fewer cross-validated items than this: use the default head


def split_of(task_id, val: float = 0.15, test: float = 0.15) -> str:
    """Deterministic split of a task: sha1 of str(task_id) mapped to [0, 1)."""
    digest = hashlib.sha1(str(task_id).encode("utf-8")).digest()
    u = int.from_bytes(digest[:8], "big") / 2.0 ** 64
    if u < test:
        return "test"
    if u < test + val:
        return "val"
    return "train"


@dataclass
class _Data:
    """The labeled items and their splits."""

    X: np.ndarray
    Y: np.ndarray  # (n,) class indices or (n, K) indicators
    label_names: list[str]
    multiple: bool
    splits: np.ndarray  # "train" / "val" / "test" per item

    @property
    def K(self) -> int:
        return len(self.label_names)

    def mask(self, *names: str) -> np.ndarray:
        return np.isin(self.splits, names)


@dataclass
class _Plan:
    """How candidates are compared: on the validation split (k = 0) or by k-fold CV on train+val."""

    k: int
    selection: str
    reason: str
    cv_idx: np.ndarray | None = None  # items cross-validated (train+val)
    folds: np.ndarray | None = None  # fold of each cv_idx item
    scored: np.ndarray | None = None  # which cv_idx items count in the score
    note: str | None = None

    @property
    def too_few_scored(self) -> bool:
        return bool(self.k) and int(self.scored.sum()) < MIN_CV_SCORED


def _splits(task_ids, val: float, test: float, audit_ids: Collection | None) -> np.ndarray:
    """Each task's split. With an audit set it is the test set; the hash validation split stays as
    it was and the hash test items train (active learning chose them: a biased test set)."""
    if audit_ids is None:
        return np.array([split_of(t, val=val, test=test) for t in task_ids])
    audit = {str(a) for a in audit_ids}  # ids compare as split_of hashes them: 7 == "7"
    return np.array(["test" if str(t) in audit else "val" if split_of(t, val=val, test=test) == "val" else "train"
                     for t in task_ids])


def _prepare(X, Y, task_ids, label_names, multiple, val, test, audit_ids=None) -> _Data:
    """Arrays in their canonical shapes and dtypes, with each task's split."""
    label_names = [str(x) for x in label_names]
    X = np.asarray(X, dtype=np.float32).reshape(len(task_ids), -1)
    Y = np.asarray(Y).reshape(len(task_ids), len(label_names)) if multiple else np.asarray(Y, dtype=np.int64).ravel()
    if len(Y) != len(X):
        raise ValueError(f"{len(X)} embeddings but {len(Y)} labels")
    return _Data(X, Y, label_names, bool(multiple), _splits(task_ids, val, test, audit_ids))


def _plan(data: _Data) -> _Plan:
    """Validation split when it has enough items per class, else cross-validation on train+val."""
    K = data.K
    trva = data.mask("train", "val")
    n_trva, n_val = int(trva.sum()), int(data.mask("val").sum())
    if n_trva >= MIN_ITEMS_FOR_VALIDATION_SPLIT and n_val / K >= MIN_VAL_PER_CLASS:
        return _Plan(0, "validation split", f"{n_val} validation items for {K} classes")
    k = int(min(CV_FOLDS, max(2, n_trva)))
    plan = _Plan(k, f"cross-validation (k={k})",
                 f"{n_val} validation items for {K} classes (< {MIN_VAL_PER_CLASS:g} per class) "
                 f"or fewer than {MIN_ITEMS_FOR_VALIDATION_SPLIT} labeled train+val items")
    # Cross-validation scores every candidate on the same items: single choice only counts items
    # whose class has another labeled example (a fold cannot learn a class it never saw, and at
    # deployment every labeled class is trained on).
    plan.cv_idx = np.flatnonzero(trva)
    Ycv = data.Y[plan.cv_idx]
    plan.folds = stratified_folds(Ycv, k, data.multiple)
    if data.multiple:
        plan.scored = np.ones(len(plan.cv_idx), dtype=bool)
    else:
        plan.scored = np.bincount(Ycv, minlength=K)[Ycv] >= 2
    n_scored = int(plan.scored.sum())
    if plan.too_few_scored:
        plan.note = (f"only {n_scored} cross-validated items: too few to compare heads, so the default "
                     + ("head is used (zero-shot)" if data.multiple else
                        "head is used (the first, most anchored, prompt-anchored head: close to zero-shot but "
                        "uses every label)"))
    elif not plan.scored.all():
        plan.note = f"scored on the {n_scored} of {len(plan.cv_idx)} items whose class has 2+ labels"
    return plan


class _HalfThreshold(Head):
    """Decisions at 0.5 on already threshold-shifted probabilities (used for CV scoring)."""

    multiple = True

    def __init__(self, n_classes: int):
        self.n_classes = n_classes

    @property
    def thresholds(self) -> np.ndarray:
        return np.full(self.n_classes, 0.5)


def _cv_score(head: Head, data: _Data, plan: _Plan) -> float:
    """Out-of-fold selection score: each fold predicted by a clone fitted on the other folds."""
    X, Y, idx = data.X, data.Y, plan.cv_idx
    oof = np.zeros((len(idx), data.K))
    for fit_pos, ev_pos in PredefinedSplit(plan.folds).split():
        if not plan.scored[ev_pos].any():
            continue
        part = clone(head).fit(X[idx[fit_pos]], Y[idx[fit_pos]])
        oof[ev_pos] = part.predict_proba(X[idx[ev_pos]])
        if data.multiple:  # decisions need each fold's own thresholds
            oof[ev_pos] = threshold_shift(oof[ev_pos], part)
    scorer = _HalfThreshold(data.K) if data.multiple else head
    return selection_score_from_proba(scorer, oof[plan.scored], Y[idx][plan.scored], data.multiple)


def _score(head: Head, data: _Data, plan: _Plan) -> float:
    """A candidate's selection score; the validation path leaves the head fitted on train."""
    X, Y = data.X, data.Y
    if isinstance(head, ZeroShotHead):
        ev = plan.cv_idx[plan.scored] if plan.k else np.flatnonzero(data.mask("val"))
        return selection_score_from_proba(head, head.predict_proba(X[ev]), Y[ev], data.multiple)
    if data.mask("train", "val").sum() < 2:
        raise ValueError("fewer than 2 labeled train+val items")
    if plan.k:
        return _cv_score(head, data, plan)
    tr, va = data.mask("train"), data.mask("val")
    if tr.sum() == 0:
        raise ValueError("no training items")
    head.fit(X[tr], Y[tr])
    return selection_score(head, X[va], Y[va], data.multiple)


def _candidate_results(candidates: list[Head], data: _Data, plan: _Plan) -> list[dict]:
    results = []
    for head in candidates:
        entry = {"name": head.name, "params": json_safe(head.report_params())}
        t0 = time.perf_counter()
        try:
            entry["val_score"] = finite(_score(head, data, plan))
        except Exception as exc:  # a candidate that cannot be fitted is reported, not fatal
            entry["val_score"] = None
            entry["error"] = f"{type(exc).__name__}: {exc}"
        entry["seconds"] = round(time.perf_counter() - t0, 3)
        results.append(entry)
    return results


def _winner_index(candidates: list[Head], results: list[dict], data: _Data, plan: _Plan) -> int:
    if plan.too_few_scored:
        anchored = [i for i, h in enumerate(candidates) if isinstance(h, PromptAnchoredHead)]
        n_trva = int(data.mask("train", "val").sum())
        return anchored[0] if anchored and n_trva >= 1 and not data.multiple else 0
    scores = [r["val_score"] if r["val_score"] is not None else -np.inf for r in results]
    best_i = 0
    for i, s in enumerate(scores):  # strict improvement needed: ties go to the simpler (earlier) head
        if s > scores[best_i] + 1e-12:
            best_i = i
    return best_i


def _zero_shot_summary(zero_shot: Head, data: _Data) -> dict | None:
    te = data.mask("test")
    if not te.any():
        return None
    zs = evaluate(zero_shot, data.X[te], data.Y[te], data.label_names, data.multiple)
    summary = {"accuracy": zs["accuracy"], "macro_f1": zs["macro_f1"], "ece": zs["ece"]}
    if data.multiple:
        summary["micro_f1"] = zs["micro_f1"]
    return summary


def _counts(data: _Data) -> tuple[dict, dict]:
    """(items per split and in total, items per class per split)."""
    counts = {s: int((data.splits == s).sum()) for s in SPLITS}
    counts["total"] = int(len(data.splits))
    true_ind = indicator(data.Y, data.K, data.multiple)
    class_counts = {name: {s: int(true_ind[data.splits == s, j].sum()) for s in SPLITS}
                    for j, name in enumerate(data.label_names)}
    return counts, class_counts


def _curve_point(report: dict) -> dict | None:
    """An earlier report's point on the learning curve (its own last point, or one rebuilt from it)."""
    if not isinstance(report, dict):
        return None
    curve = report.get("learning_curve")
    if curve and isinstance(curve, list) and isinstance(curve[-1], dict):
        return curve[-1]
    test = report.get("test") or {}
    return {"version": report.get("version"), "n_labels": (report.get("counts") or {}).get("total"),
            "test_accuracy": test.get("accuracy"), "val_score": report.get("val_score"),
            "head": report.get("head"), **_audit_point(report.get("audit"))}


def _audit_point(audit: dict | None) -> dict:
    """A version's audit figures on the learning curve: accuracy with its interval, zero-shot's."""
    if not isinstance(audit, dict) or not isinstance(audit.get("accuracy"), dict):
        return {}
    acc, zs = audit["accuracy"], audit.get("zero_shot_accuracy") or {}
    return {"audit_n": audit.get("n"), "audit_accuracy": acc.get("value"), "audit_low": acc.get("low"),
            "audit_high": acc.get("high"), "zero_shot_audit_accuracy": zs.get("value")}


def _learning_curve(history, report: dict) -> list[dict]:
    counts, zs = report["counts"], report["zero_shot_test"]
    point = {"version": report["version"], "n_labels": counts["total"], "n_train": counts["train"] + counts["val"],
             "test_accuracy": report["test"].get("accuracy"),
             "zero_shot_test_accuracy": zs["accuracy"] if zs else None,
             "val_score": report["val_score"], "head": report["head"], **_audit_point(report.get("audit"))}
    return [p for p in (_curve_point(h) for h in history or ()) if p] + [point]


def _audit_candidates(candidates: list[Head], best_i: int, results: list[dict], data: _Data) -> None:
    """Each candidate's accuracy on the audit set, fitted like the winner (train+val): shown next to
    the selection score to check the choice, never used for it."""
    X, Y, te, fit = data.X, data.Y, data.mask("test"), data.mask("train", "val")
    for i, (head, entry) in enumerate(zip(candidates, results)):
        if entry.get("error"):
            continue
        if i != best_i and not isinstance(head, ZeroShotHead):
            head = clone(head).fit(X[fit], Y[fit])
        entry["audit_accuracy"] = accuracy_on(head, X[te], Y[te], data.multiple)


def _label_errors(winner: Head, data: _Data, task_ids) -> dict:
    """Suspected label errors among all labeled items (audit annotations can be wrong too)."""
    if data.multiple:
        return {"label_errors": [], "label_errors_checked": 0, "label_errors_flagged": 0,
                "label_errors_note": "single choice only"}
    review = review_labels(winner, data.X, data.Y, task_ids, data.label_names)
    return {"label_errors": review.errors[:MAX_REPORTED], "label_errors_checked": review.checked,
            "label_errors_flagged": len(review.errors), "label_errors_note": None}


def _refit_and_report(winner: Head, zero_shot: Head, results: list[dict], data: _Data, plan: _Plan,
                      version: str) -> dict:
    """Refit the winner on train+val, evaluate it, and build the report (without the learning curve)."""
    X, Y, names, multiple = data.X, data.Y, data.label_names, data.multiple
    tr, va, te = data.mask("train"), data.mask("val"), data.mask("test")
    # validation metrics of the winner as fitted on train only (only meaningful with a val split)
    val_metrics = None
    if not plan.k and va.any() and (isinstance(winner, ZeroShotHead) or tr.any()):
        val_metrics = evaluate(winner, X[va], Y[va], names, multiple)
    t0 = time.perf_counter()
    if not isinstance(winner, ZeroShotHead):
        winner.fit(X[tr | va], Y[tr | va])
    refit_seconds = time.perf_counter() - t0
    test_metrics = evaluate(winner, X[te], Y[te], names, multiple)
    zero_shot_summary = _zero_shot_summary(zero_shot, data)
    counts, class_counts = _counts(data)
    return {
        "version": str(version),
        "created_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "multiple": multiple,
        "labels": names,
        "head": winner.name,
        "head_params": json_safe(winner.report_params()),
        "selection": plan.selection,
        "selection_reason": plan.reason,
        "selection_note": plan.note,
        "selection_metric": "micro_f1" if multiple else "accuracy",
        "val_score": next(r["val_score"] for r in results if r["selected"]),
        "counts": counts,
        "class_counts": class_counts,
        "candidates": results,
        "val": val_metrics,
        "test": test_metrics,
        "zero_shot_test": zero_shot_summary,
        "thresholds": (None if not multiple or winner.thresholds is None
                       else [float(t) for t in winner.thresholds]),
        "refit_on": "train+val",
        "refit_seconds": round(refit_seconds, 3),
        "seconds": None,
    }


def train_and_select(X, Y, task_ids, prototypes, logit_scale: float, label_names, multiple: bool,
                     history=(), version: str = "", candidates: list[Head] | None = None,
                     val: float = 0.15, test: float = 0.15,
                     audit_ids: Collection | None = None) -> tuple[Head, dict]:
    """Fit candidates, select on validation (or CV), refit the winner on train+val, report on test.

    X: (n, d) embeddings; Y: class indices (n,) or (n, K) indicators (multiple); task_ids: n ids
    (their hash decides the split); history: earlier reports (for the learning curve).
    audit_ids: task ids of the audit sample (None: the hash test split is the test set). Given, even
    empty, the labeled audit items are the test set and all others train or validate; the report
    gains "audit" (figures with 95% intervals) and each candidate its audit accuracy.
    Returns (fitted winner, report dict). The test set never influences the choice.
    """
    with blas_limit():
        started = time.perf_counter()
        data = _prepare(X, Y, task_ids, label_names, multiple, val, test, audit_ids)
        if candidates is None:
            candidates = candidate_heads(prototypes, logit_scale, multiple)
        if not candidates or not isinstance(candidates[0], ZeroShotHead):
            raise ValueError("the first candidate must be the zero-shot head")
        plan = _plan(data)
        results = _candidate_results(candidates, data, plan)
        best_i = _winner_index(candidates, results, data, plan)
        for i, r in enumerate(results):
            r["selected"] = i == best_i
        winner = candidates[best_i]
        report = _refit_and_report(winner, candidates[0], results, data, plan, version)
        report["test_set"] = "hash split" if audit_ids is None else "audit sample"
        if audit_ids is not None:
            te = data.mask("test")
            report["audit"] = audit_summary(winner, candidates[0], data.X[te], data.Y[te], data.label_names,
                                            data.multiple)
            _audit_candidates(candidates, best_i, results, data)
        report.update(_label_errors(winner, data, list(task_ids)))
        report["learning_curve"] = _learning_curve(history, report)
        report["seconds"] = round(time.perf_counter() - started, 3)
        return winner, json_safe(report)
