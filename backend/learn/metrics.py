"""Metrics of a fitted head on a labeled set, as JSON-serializable values.

Heads are duck typed: anything with predict_proba, decisions and score (see heads.Head).
"""
from __future__ import annotations

import math

import numpy as np
from sklearn.metrics import confusion_matrix, f1_score, precision_recall_fscore_support, roc_auc_score


def finite(x) -> float | None:
    """x as a float, or None for None, NaN and infinities (JSON has no NaN)."""
    if x is None:
        return None
    x = float(x)
    return None if math.isnan(x) or math.isinf(x) else x


def json_safe(obj):
    """obj with numpy scalars/arrays turned into plain Python values and non-finite floats into None."""
    if isinstance(obj, dict):
        return {str(k): json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [json_safe(v) for v in obj]
    if isinstance(obj, (np.integer,)):
        return int(obj)
    if isinstance(obj, (np.floating, float)):
        return finite(obj)
    if isinstance(obj, np.ndarray):
        return json_safe(obj.tolist())
    if isinstance(obj, (np.bool_,)):
        return bool(obj)
    return obj


def expected_calibration_error(confidence: np.ndarray, correct: np.ndarray, n_bins: int = 10) -> float | None:
    """Sum over equal-width confidence bins of |accuracy - mean confidence| weighted by bin size."""
    confidence = np.asarray(confidence, dtype=np.float64)
    correct = np.asarray(correct, dtype=np.float64)
    if len(confidence) == 0:
        return None
    bins = np.clip((confidence * n_bins).astype(int), 0, n_bins - 1)
    ece = 0.0
    for b in range(n_bins):
        mask = bins == b
        if mask.any():
            ece += mask.mean() * abs(correct[mask].mean() - confidence[mask].mean())
    return float(ece)


def macro_roc_auc(Yind: np.ndarray, proba: np.ndarray, label_names: list[str]) -> tuple[float | None, str | None, int]:
    """Macro one-vs-rest ROC-AUC over the classes that have positives and negatives in this set.

    Returns (auc or None, a note on what it covers or why it is missing, number of classes averaged).
    """
    usable = [k for k in range(Yind.shape[1]) if 0 < Yind[:, k].sum() < len(Yind)]
    if len(Yind) == 0:
        return None, "no items", 0
    if not usable:
        return None, "no class has both positive and negative items", 0
    aucs = [roc_auc_score(Yind[:, k], proba[:, k]) for k in usable]
    missing = [label_names[k] for k in range(Yind.shape[1]) if k not in set(usable)]
    reason = None
    if missing:
        shown = ", ".join(missing[:10]) + (f" and {len(missing) - 10} more" if len(missing) > 10 else "")
        reason = f"averaged over {len(usable)} of {Yind.shape[1]} classes; without positives or negatives here: {shown}"
    return float(np.mean(aucs)), reason, len(usable)


def indicator(Y: np.ndarray, K: int, multiple: bool) -> np.ndarray:
    """(n, K) 0/1 matrix of labels Y (class indices, or already indicators when multiple)."""
    if multiple:
        return np.asarray(Y).reshape(-1, K).astype(np.int64)
    out = np.zeros((len(Y), K), dtype=np.int64)
    out[np.arange(len(Y)), np.asarray(Y, dtype=np.int64)] = 1
    return out


def selection_score(head, X: np.ndarray, Y: np.ndarray, multiple: bool) -> float:
    """Accuracy (single choice) or micro F1 (multiple choice)."""
    return selection_score_from_proba(head, head.predict_proba(X), Y, multiple)


def selection_score_from_proba(head, proba: np.ndarray, Y: np.ndarray, multiple: bool) -> float:
    """selection_score on probabilities already computed (head only supplies the decisions)."""
    if len(proba) == 0:
        return float("nan")
    if multiple:
        return float(f1_score(Y, head.decisions(proba), average="micro", zero_division=0))
    return float((proba.argmax(axis=1) == Y).mean())


def _per_class(true: np.ndarray, pred: np.ndarray, label_names: list[str]) -> tuple[dict, list[dict]]:
    """(macro averages over the classes present in this set, per-class precision/recall/F1 rows)."""
    K = len(label_names)
    prec, rec, f1, support = precision_recall_fscore_support(true, pred, labels=list(range(K)), average=None,
                                                             zero_division=0)
    present = support > 0
    macro = {
        "macro_precision": float(prec[present].mean()) if present.any() else None,
        "macro_recall": float(rec[present].mean()) if present.any() else None,
        "macro_f1": float(f1[present].mean()) if present.any() else None,
        "macro_over": "classes present in this split",
    }
    rows = [
        {"label": label_names[k], "precision": float(prec[k]), "recall": float(rec[k]), "f1": float(f1[k]),
         "support": int(support[k]), "predicted": int(pred[:, k].sum())}
        for k in range(K)
    ]
    return macro, rows


def evaluate(head, X: np.ndarray, Y: np.ndarray, label_names: list[str], multiple: bool) -> dict:
    """Metrics of a fitted head on one labeled set (JSON-serializable)."""
    K = len(label_names)
    n = len(X)
    if n == 0:
        return {"n": 0, "accuracy": None, "note": "no items in this split"}
    proba = head.predict_proba(X)
    true = indicator(Y, K, multiple)
    pred = head.decisions(proba)
    # confusion matrix rows: true label, columns: predicted label (multiple choice: items with true k and predicted j)
    if multiple:
        correct = (pred == true).all(axis=1)
        matrix = true.T @ pred
    else:
        pred_idx = proba.argmax(axis=1)
        correct = pred_idx == np.asarray(Y)
        matrix = confusion_matrix(np.asarray(Y, dtype=np.int64), pred_idx, labels=list(range(K)))
    macro, per_class = _per_class(true, pred, label_names)
    # multiple choice: accuracy is exact-match (subset) accuracy
    out = {"n": int(n), "accuracy": float(correct.mean()), **macro}
    if multiple:
        out["micro_f1"] = float(f1_score(true, pred, average="micro", zero_division=0))
    out["per_class"] = per_class
    out["roc_auc"], out["roc_auc_note"], out["roc_auc_classes"] = macro_roc_auc(true, proba, label_names)
    confidence = np.array([head.score(row) for row in proba])
    out["ece"] = expected_calibration_error(confidence, correct)
    out["mean_confidence"] = float(confidence.mean())
    out["confusion_matrix"] = {"labels": list(label_names), "rows": "true", "columns": "predicted",
                               "matrix": matrix.astype(int).tolist()}
    return out
