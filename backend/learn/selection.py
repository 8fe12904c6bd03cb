"""Train heads on annotated embeddings, choose one by cross-validation, and report how good it is.

- train_and_select(...): fits every candidate head (zero-shot and the prompt-prior family along its
  regularisation path) on every training label, chooses by repeated stratified k-fold cross-validation
  on those same labels (out-of-fold log loss after temperature calibration: smooth, so no two heads tie
  and a few noisy items move it little), never serves a head that scores below zero-shot, and
  evaluates the winner on the test set. Returns the fitted head and a JSON-serializable report.
- split_of(task_id): a task's hash split, the test set when no audit sample is given (cross_validation.py,
  which also holds the folds and the out-of-fold scoring).

With audit_ids the test set is the audit sample (tasks drawn uniformly at random, see audit.py)
instead of the hash test split, and the report gains its numbers with 95% intervals. Nothing is held
out for validation: every non-test label trains and is cross-validated on.
"""
from __future__ import annotations

import time
from collections.abc import Collection
from datetime import datetime, timezone

import numpy as np

from .audit import accuracy_headline, accuracy_on, audit_summary, effective_share
from .cross_validation import (SPLITS, CVPlan, CVScores, LabeledData, cv_scores, out_of_fold, plan_cv, prepare,
                               refit, split_of)  # noqa: F401  (split_of is part of this module's interface)
from .heads import DEFAULT_PRIOR_C, Head, PromptPriorHead, ZeroShotHead, blas_limit, candidate_heads
from .label_errors import MAX_REPORTED, review_from_proba, with_neighbours
from .metrics import evaluate, finite, indicator, json_safe

RESELECT_GROWTH = 1.25  # cross-validate the candidates again once the training labels grew by a quarter


def _candidate_results(candidates: list[Head], data: LabeledData, plan: CVPlan, previous: Head | None = None,
                       cross_validate: bool = True) -> tuple[list[dict], list]:
    """Fit every trained candidate on all training items (along the C path, each starting from the
    previous one's weights, the first from ``previous``, the head serving so far) and cross-validate them.
    Returns report entries and per-candidate scores (None where not cross-validated)."""
    X, Y, tr = data.X, data.Y, plan.train_idx
    results, fitted = [], []
    for i, head in enumerate(candidates):
        entry = {"name": head.name}
        t0 = time.perf_counter()
        try:
            if not isinstance(head, ZeroShotHead) and len(tr):
                candidates[i] = head = previous = refit(head, X[tr], Y[tr], previous)
            fitted.append(True)
        except Exception as exc:  # a candidate that cannot be fitted is reported, not fatal
            entry["error"] = f"{type(exc).__name__}: {exc}"
            fitted.append(False)
        entry["params"] = json_safe(head.report_params())
        entry["seconds"] = round(time.perf_counter() - t0, 3)
        results.append(entry)
    scores: list = [None] * len(candidates)
    if cross_validate and not plan.too_few_scored:
        usable = [h for h, ok in zip(candidates, fitted) if ok]
        runs = iter(out_of_fold(usable, data, plan))
        for i, ok in enumerate(fitted):
            if ok:
                scores[i] = score = cv_scores(next(runs), data, plan)
                results[i].update(val_score=finite(score.accuracy), cv_accuracy=finite(score.accuracy),
                                  cv_log_loss=finite(score.log_loss),
                                  cv_score=finite(score.score if not data.multiple else -score.score))
    for entry in results:
        entry.setdefault("val_score", None)
    return results, scores


def _kept_choice(history, candidates: list[Head], n_train: int) -> tuple[int, dict] | None:
    """(index of the candidate chosen last time, that choice) while the labels have grown by less than
    RESELECT_GROWTH since the last cross-validated choice: the choice of C moves slowly with the number of
    labels, so it is made again on a geometric schedule (a handful of times per doubling), and the runs
    between fit the chosen head alone."""
    last = history[-1] if history else None
    chosen = (last or {}).get("chosen") if isinstance(last, dict) else None
    if not isinstance(chosen, dict) or not isinstance(chosen.get("n_train"), int):
        return None
    if n_train >= chosen["n_train"] * RESELECT_GROWTH or n_train < chosen["n_train"]:
        return None
    for i, head in enumerate(candidates):
        if head.name == chosen.get("head"):
            return i, chosen
    return None


def _winner_index(candidates: list[Head], results: list[dict], scores: list, data: LabeledData, plan: CVPlan) -> int:
    """The best cross-validated candidate; zero-shot (index 0) whenever it scores at least as well (unless it
    has no prompts to go by: prototypes of zeros predict one class for everything). With too few labels to
    cross-validate: the default prompt-prior head (zero-shot without any label)."""
    if plan.too_few_scored:
        default = [i for i, h in enumerate(candidates)
                   if isinstance(h, PromptPriorHead) and float(h.C) == DEFAULT_PRIOR_C and not results[i].get("error")]
        return default[0] if default and len(plan.train_idx) else 0
    best = None
    for i, s in enumerate(scores):
        if i == 0 or s is None:
            continue
        if best is None or s.key < scores[best].key:
            best = i
    informative = bool(np.abs(np.asarray(candidates[0].prototypes)).sum() > 0)  # an encoder without a text tower
    if best is None or (informative and scores[0] is not None and scores[0].key <= scores[best].key):
        return 0
    return best


def _zero_shot_summary(zero_shot: Head, data: LabeledData) -> dict | None:
    te = data.mask("test")
    if not te.any():
        return None
    zs = evaluate(zero_shot, data.X[te], data.Y[te], data.label_names, data.multiple)
    summary = {"accuracy": zs["accuracy"], "macro_f1": zs["macro_f1"], "ece": zs["ece"]}
    if data.multiple:
        summary["micro_f1"] = zs["micro_f1"]
    return summary


def _counts(data: LabeledData) -> tuple[dict, dict]:
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
    point = {"version": report["version"], "n_labels": counts["total"], "n_train": counts["train"],
             "test_accuracy": report["test"].get("accuracy"),
             "zero_shot_test_accuracy": zs["accuracy"] if zs else None,
             "val_score": report["val_score"], "head": report["head"], **_audit_point(report.get("audit"))}
    return [p for p in (_curve_point(h) for h in history or ()) if p] + [point]


def _audit_candidates(candidates: list[Head], results: list[dict], data: LabeledData) -> None:
    """Each candidate's accuracy on the audit set (every candidate is fitted on the training items, as
    the winner): shown next to the selection score to check the choice, never used for it."""
    X, Y, te = data.X, data.Y, data.mask("test")
    for head, entry in zip(candidates, results):
        if not entry.get("error") and (isinstance(head, ZeroShotHead) or data.mask("train").any()):
            entry["audit_accuracy"] = accuracy_on(head, X[te], Y[te], data.multiple)


def _honest_test_accuracy(report: dict) -> None:
    """The test accuracy never without its 95% interval and the message saying whether to trust it."""
    headline = accuracy_headline(report)
    report["test"].update(accuracy_low=headline["low"], accuracy_high=headline["high"],
                          accuracy_message=headline["message"])


def _label_errors(winner: Head, winner_scores: CVScores | None, data: LabeledData, plan: CVPlan, task_ids) -> dict:
    """Suspected label errors among all labeled items (audit annotations can be wrong too), from
    probabilities that never saw the item's own label: the selection's out-of-fold ones for training
    items (the mean of its repeats), the winner's for audit items (never trained on); each blended with
    its labeled neighbours' votes (label_errors.with_neighbours)."""
    if data.multiple:
        return {"label_errors": [], "label_errors_checked": 0, "label_errors_flagged": 0,
                "label_errors_note": "single choice only"}
    tr, te = plan.train_idx, np.flatnonzero(data.mask("test"))
    proba = np.zeros((len(data.Y), data.K))
    in_train = np.bincount(data.Y[tr], minlength=data.K)
    checkable = np.zeros(len(data.Y), dtype=bool)
    if winner_scores is not None and winner_scores.oof is not None:
        proba[tr], checkable[tr] = winner_scores.oof, plan.scored
    elif isinstance(winner, ZeroShotHead) and len(tr):
        proba[tr], checkable[tr] = winner.predict_proba(data.X[tr]), True
    if len(te):
        proba[te] = winner.predict_proba(data.X[te])
        checkable[te] = (in_train[data.Y[te]] >= 1) | isinstance(winner, ZeroShotHead)
    proba = with_neighbours(proba, data.X, data.Y, checkable)
    review = review_from_proba(proba, data.Y, checkable, task_ids, data.label_names)
    return {"label_errors": review.errors[:MAX_REPORTED], "label_errors_checked": review.checked,
            "label_errors_flagged": len(review.errors), "label_errors_note": None}


def _report(winner: Head, zero_shot: Head, results: list[dict], data: LabeledData, plan: CVPlan, version: str) -> dict:
    """Evaluate the winner (already fitted on every training item) on the test set; the report without
    its learning curve."""
    X, Y, names, multiple = data.X, data.Y, data.label_names, data.multiple
    te = data.mask("test")
    counts, class_counts = _counts(data)
    chosen = next(r for r in results if r["selected"])
    return {
        "version": str(version),
        "created_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "multiple": multiple,
        "labels": names,
        "head": winner.name,
        "head_params": json_safe(winner.report_params()),
        "selection": plan.selection if not plan.too_few_scored else "default (too few labels to cross-validate)",
        "selection_reason": plan.reason,
        "selection_note": plan.note,
        "selection_metric": ("micro_f1" if multiple else
                             "log loss after temperature calibration (out-of-fold); val_score: out-of-fold accuracy"),
        "val_score": chosen.get("val_score"),
        "cv_log_loss": chosen.get("cv_score"),
        "counts": counts,
        "class_counts": class_counts,
        "candidates": results,
        "val": None,
        "test": evaluate(winner, X[te], Y[te], names, multiple),
        "zero_shot_test": _zero_shot_summary(zero_shot, data),
        "thresholds": (None if not multiple or winner.thresholds is None
                       else [float(t) for t in winner.thresholds]),
        "refit_on": "every training label (all labels but the test set)",
        "seconds": None,
    }


def train_and_select(X, Y, task_ids, prototypes, logit_scale: float, label_names, multiple: bool,
                     history=(), version: str = "", candidates: list[Head] | None = None,
                     test: float = 0.15, audit_ids: Collection | None = None, previous: Head | None = None,
                     label_review: bool = True) -> tuple[Head, dict]:
    """Fit candidates on every training label, choose by repeated stratified cross-validation, report on test.

    X: (n, d) embeddings; Y: class indices (n,) or (n, K) indicators (multiple); task_ids: n ids;
    history: earlier reports, oldest first (the learning curve; the last one's choice is kept, without
    cross-validating again, until the training labels grew by RESELECT_GROWTH). audit_ids: task ids of the
    audit sample (None: the hash test split of the task ids is the test set). Given, even empty, the
    labeled audit items are the test set and all others train; the report gains "audit" (figures with
    95% intervals) and each candidate its audit accuracy. The test set never influences the choice.
    previous: the head serving so far (its weights start the fits). label_review: look for suspected label
    errors (out-of-fold probabilities of the winner). Returns (fitted winner, report dict).
    """
    with blas_limit():
        started = time.perf_counter()
        data = prepare(X, Y, task_ids, label_names, multiple, test, audit_ids)
        if candidates is None:
            candidates = candidate_heads(prototypes, logit_scale, multiple)
        if not candidates or not isinstance(candidates[0], ZeroShotHead):
            raise ValueError("the first candidate must be the zero-shot head")
        plan = plan_cv(data)
        kept = None if plan.too_few_scored else _kept_choice(history, candidates, len(plan.train_idx))
        if kept is not None:
            candidates = [candidates[0]] + ([candidates[kept[0]]] if kept[0] else [])
        results, scores = _candidate_results(candidates, data, plan, previous, cross_validate=kept is None)
        best_i = (len(candidates) - 1) if kept is not None else _winner_index(candidates, results, scores, data, plan)
        for i, r in enumerate(results):
            r["selected"] = i == best_i
        winner = candidates[best_i]
        report = _report(winner, candidates[0], results, data, plan, version)
        if kept is not None:
            report.update(selection=f"kept from {kept[1].get('version')} (cross-validated at {kept[1]['n_train']} "
                                    f"training labels; chosen again at {int(np.ceil(kept[1]['n_train'] * RESELECT_GROWTH))})",
                          val_score=kept[1].get("val_score"), chosen=kept[1])
        else:
            report["chosen"] = {"head": winner.name, "n_train": int(len(plan.train_idx)), "version": str(version),
                                "val_score": report["val_score"]}
        report["test_set"] = "hash split" if audit_ids is None else "audit sample"
        if audit_ids is not None:
            te = data.mask("test")
            report["audit"] = audit_summary(winner, candidates[0], data.X[te], data.Y[te], data.label_names,
                                            data.multiple)
            report["audit"]["share"] = effective_share(report["audit"]["n"], report["counts"]["total"])
            _audit_candidates(candidates, results, data)
        _honest_test_accuracy(report)
        if label_review:
            winner_scores = scores[best_i]
            if (winner_scores is None and not plan.too_few_scored and not data.multiple
                    and not isinstance(winner, ZeroShotHead)):
                winner_scores = CVScores(float("nan"), float("nan"), float("nan"),
                                        np.mean(out_of_fold([winner], data, plan)[0], axis=0))
            report.update(_label_errors(winner, winner_scores, data, plan, list(task_ids)))
        else:
            report.update(label_errors=None, label_errors_checked=0, label_errors_flagged=0,
                          label_errors_note="not checked in this run")
        report["learning_curve"] = _learning_curve(history, report)
        report["seconds"] = round(time.perf_counter() - started, 3)
        return winner, json_safe(report)
