"""Train heads on annotated embeddings, pick one on held-out data, and report how good it is.

- split_of(task_id): a task's split ("train" / "val" / "test") from a hash of its id, so a task
  never changes split as the project grows.
- train_and_select(...): fits every candidate head on train, selects on validation (or by
  cross-validation on train+val when labels are few), refits the winner on train+val and
  evaluates it on test. Returns the fitted head and a JSON-serializable report.
- write_report(report, directory): report.json, report.html (self-contained),
  confusion_matrix.png and learning_curve.png.
"""
from __future__ import annotations

import base64
import hashlib
import html
import io
import json
import math
import time
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

from . import heads as _heads
from .heads import Head, PromptAnchoredHead, ZeroShotHead, candidate_heads

SPLITS = ("train", "val", "test")
MIN_ITEMS_FOR_VALIDATION_SPLIT = 20
MIN_VAL_PER_CLASS = 2.0  # average validation items per class below which selection uses CV
CV_FOLDS = 5
MIN_CV_SCORED = 10  # fewer cross-validated items than this: use the default head


# -- splits --------------------------------------------------------------------------------------
def split_of(task_id, val: float = 0.15, test: float = 0.15) -> str:
    """Deterministic split of a task: sha1 of str(task_id) mapped to [0, 1)."""
    digest = hashlib.sha1(str(task_id).encode("utf-8")).digest()
    u = int.from_bytes(digest[:8], "big") / 2.0 ** 64
    if u < test:
        return "test"
    if u < test + val:
        return "val"
    return "train"


# -- metrics -------------------------------------------------------------------------------------
def _f(x) -> float | None:
    if x is None:
        return None
    x = float(x)
    return None if math.isnan(x) or math.isinf(x) else x


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


def _roc_auc(Yind: np.ndarray, proba: np.ndarray, label_names: list[str]) -> tuple[float | None, str | None, int]:
    """Macro one-vs-rest ROC-AUC over the classes that have positives and negatives in this set."""
    from sklearn.metrics import roc_auc_score

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


def _indicator(Y: np.ndarray, K: int, multiple: bool) -> np.ndarray:
    if multiple:
        return np.asarray(Y).reshape(-1, K).astype(np.int64)
    out = np.zeros((len(Y), K), dtype=np.int64)
    out[np.arange(len(Y)), np.asarray(Y, dtype=np.int64)] = 1
    return out


def selection_score(head: Head, X: np.ndarray, Y: np.ndarray, multiple: bool) -> float:
    """Accuracy (single choice) or micro F1 (multiple choice)."""
    proba = head.predict_proba(X)
    return _selection_score_from_proba(head, proba, Y, multiple)


def _selection_score_from_proba(head: Head, proba: np.ndarray, Y: np.ndarray, multiple: bool) -> float:
    if len(proba) == 0:
        return float("nan")
    if multiple:
        from sklearn.metrics import f1_score

        return float(f1_score(Y, head.decisions(proba), average="micro", zero_division=0))
    return float((proba.argmax(axis=1) == Y).mean())


def evaluate(head: Head, X: np.ndarray, Y: np.ndarray, label_names: list[str], multiple: bool) -> dict:
    """Metrics of a fitted head on one labeled set (JSON-serializable)."""
    from sklearn.metrics import f1_score, precision_recall_fscore_support

    K = len(label_names)
    n = len(X)
    if n == 0:
        return {"n": 0, "accuracy": None, "note": "no items in this split"}
    proba = head.predict_proba(X)
    true = _indicator(Y, K, multiple)
    pred = head.decisions(proba)
    if multiple:
        correct = (pred == true).all(axis=1)
    else:
        pred_idx = proba.argmax(axis=1)
        correct = pred_idx == np.asarray(Y)
    prec, rec, f1, support = precision_recall_fscore_support(true, pred, labels=list(range(K)), average=None,
                                                             zero_division=0)
    present = support > 0  # macro averages over classes that occur in this set
    out = {
        "n": int(n),
        "accuracy": float(correct.mean()),  # multiple choice: exact-match (subset) accuracy
        "macro_precision": float(prec[present].mean()) if present.any() else None,
        "macro_recall": float(rec[present].mean()) if present.any() else None,
        "macro_f1": float(f1[present].mean()) if present.any() else None,
        "macro_over": "classes present in this split",
    }
    if multiple:
        out["micro_f1"] = float(f1_score(true, pred, average="micro", zero_division=0))
    out["per_class"] = [
        {"label": label_names[k], "precision": float(prec[k]), "recall": float(rec[k]), "f1": float(f1[k]),
         "support": int(support[k]), "predicted": int(pred[:, k].sum())}
        for k in range(K)
    ]
    out["roc_auc"], out["roc_auc_note"], out["roc_auc_classes"] = _roc_auc(true, proba, label_names)
    confidence = np.array([head.score(row) for row in proba])
    out["ece"] = expected_calibration_error(confidence, correct)
    out["mean_confidence"] = float(confidence.mean())
    # rows: true label, columns: predicted label (multiple choice: items with true k and predicted j)
    if multiple:
        matrix = true.T @ pred
    else:
        matrix = np.zeros((K, K), dtype=np.int64)
        np.add.at(matrix, (np.asarray(Y, dtype=np.int64), pred_idx), 1)
    out["confusion_matrix"] = {"labels": list(label_names), "rows": "true", "columns": "predicted",
                               "matrix": matrix.astype(int).tolist()}
    return out


# -- selection -----------------------------------------------------------------------------------
def _folds(Y: np.ndarray, k: int, multiple: bool, seed: int = 0) -> np.ndarray:
    """Fold index per item: stratified by class (single choice) or by rarest positive label (multiple)."""
    rng = np.random.default_rng(seed)
    n = len(Y)
    if multiple:
        Yb = np.asarray(Y).reshape(n, -1)
        freq = Yb.sum(axis=0)
        key = np.array([int(np.argmin(np.where(r > 0, freq, np.inf))) if r.any() else -1 for r in Yb])
    else:
        key = np.asarray(Y)
    folds = np.empty(n, dtype=np.int64)
    offset = 0
    for cls in np.unique(key):
        idx = np.flatnonzero(key == cls)
        idx = idx[rng.permutation(len(idx))]
        folds[idx] = (np.arange(len(idx)) + offset) % k  # rotate so singleton classes spread over folds
        offset += len(idx)
    return folds


def _json_safe(obj):
    if isinstance(obj, dict):
        return {str(k): _json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_json_safe(v) for v in obj]
    if isinstance(obj, (np.integer,)):
        return int(obj)
    if isinstance(obj, (np.floating, float)):
        return _f(obj)
    if isinstance(obj, np.ndarray):
        return _json_safe(obj.tolist())
    if isinstance(obj, (np.bool_,)):
        return bool(obj)
    return obj


def _curve_point(report: dict) -> dict | None:
    if not isinstance(report, dict):
        return None
    curve = report.get("learning_curve")
    if curve and isinstance(curve, list) and isinstance(curve[-1], dict):
        return curve[-1]
    test = report.get("test") or {}
    return {"version": report.get("version"), "n_labels": (report.get("counts") or {}).get("total"),
            "test_accuracy": test.get("accuracy"), "val_score": report.get("val_score"),
            "head": report.get("head")}


def train_and_select(X, Y, task_ids, prototypes, logit_scale: float, label_names, multiple: bool,
                     history=(), version: str = "", candidates: list[Head] | None = None,
                     val: float = 0.15, test: float = 0.15) -> tuple[Head, dict]:
    """Fit candidates, select on validation (or CV), refit the winner on train+val, report on test.

    X: (n, d) embeddings; Y: class indices (n,) or (n, K) indicators (multiple); task_ids: n ids
    (their hash decides the split); history: earlier reports (for the learning curve).
    Returns (fitted winner, report dict). The test split never influences the choice.
    """
    if _heads.BLAS_THREADS is None:
        return _train_and_select(X, Y, task_ids, prototypes, logit_scale, label_names, multiple, history,
                                 version, candidates, val, test)
    with _heads.threadpool_limits(limits=_heads.BLAS_THREADS, user_api="blas"):
        return _train_and_select(X, Y, task_ids, prototypes, logit_scale, label_names, multiple, history,
                                 version, candidates, val, test)


def _train_and_select(X, Y, task_ids, prototypes, logit_scale, label_names, multiple, history, version,
                      candidates, val, test) -> tuple[Head, dict]:
    started = time.perf_counter()
    label_names = [str(x) for x in label_names]
    K = len(label_names)
    X = np.asarray(X, dtype=np.float32).reshape(len(task_ids), -1)
    Y = np.asarray(Y).reshape(len(task_ids), K) if multiple else np.asarray(Y, dtype=np.int64).ravel()
    if len(Y) != len(X):
        raise ValueError(f"{len(X)} embeddings but {len(Y)} labels")
    splits = np.array([split_of(t, val=val, test=test) for t in task_ids])
    tr, va, te = (splits == "train"), (splits == "val"), (splits == "test")
    trva = tr | va
    if candidates is None:
        candidates = candidate_heads(prototypes, logit_scale, multiple)
    if not candidates or not isinstance(candidates[0], ZeroShotHead):
        raise ValueError("the first candidate must be the zero-shot head")

    n_trva, n_val = int(trva.sum()), int(va.sum())
    true_ind = _indicator(Y, K, multiple)
    if n_trva < MIN_ITEMS_FOR_VALIDATION_SPLIT or n_val / K < MIN_VAL_PER_CLASS:
        k = int(min(CV_FOLDS, max(2, n_trva)))
        selection = f"cross-validation (k={k})"
        why = (f"{n_val} validation items for {K} classes (< {MIN_VAL_PER_CLASS:g} per class) "
               f"or fewer than {MIN_ITEMS_FOR_VALIDATION_SPLIT} labeled train+val items")
    else:
        k = 0
        selection = "validation split"
        why = f"{n_val} validation items for {K} classes"

    # Cross-validation scores every candidate on the same items: single choice only counts items
    # whose class has another labeled example (a fold cannot learn a class it never saw, and at
    # deployment every labeled class is trained on).
    note = None
    if k:
        cv_idx = np.flatnonzero(trva)
        folds = _folds(Y[cv_idx], k, multiple)
        if multiple:
            scored = np.ones(len(cv_idx), dtype=bool)
        else:
            per_class = np.bincount(Y[cv_idx], minlength=K)
            scored = per_class[Y[cv_idx]] >= 2
        if scored.sum() < MIN_CV_SCORED:
            note = (f"only {int(scored.sum())} cross-validated items: too few to compare heads, so the default "
                    + ("head is used (zero-shot)" if multiple else
                       "head is used (the first, most anchored, prompt-anchored head: close to zero-shot but "
                       "uses every label)"))
        elif not scored.all():
            note = (f"scored on the {int(scored.sum())} of {len(cv_idx)} items whose class has 2+ labels")

    results = []
    for head in candidates:
        entry = {"name": head.name, "params": _json_safe(head.params())}
        t0 = time.perf_counter()
        try:
            if isinstance(head, ZeroShotHead):
                if k:
                    ev = cv_idx[scored]
                else:
                    ev = np.flatnonzero(va)
                score = _selection_score_from_proba(head, head.predict_proba(X[ev]), Y[ev], multiple)
            elif n_trva < 2:
                raise ValueError("fewer than 2 labeled train+val items")
            elif k:
                oof = np.zeros((len(cv_idx), K))
                for f in range(k):
                    fit_i, ev_i = cv_idx[folds != f], cv_idx[folds == f]
                    if len(ev_i) == 0 or not (scored & (folds == f)).any():
                        continue
                    part = head._clone()
                    part.fit(X[fit_i], Y[fit_i])
                    oof[folds == f] = part.predict_proba(X[ev_i])
                    if multiple:  # decisions need each fold's own thresholds
                        oof[folds == f] = _threshold_shift(oof[folds == f], part)
                score = _selection_score_from_proba(_HalfThreshold(K) if multiple else head, oof[scored],
                                                    Y[cv_idx][scored], multiple)
            else:
                if tr.sum() == 0:
                    raise ValueError("no training items")
                head.fit(X[tr], Y[tr])
                score = selection_score(head, X[va], Y[va], multiple)
            entry["val_score"] = _f(score)
        except Exception as exc:  # a candidate that cannot be fitted is reported, not fatal
            entry["val_score"] = None
            entry["error"] = f"{type(exc).__name__}: {exc}"
        entry["seconds"] = round(time.perf_counter() - t0, 3)
        results.append(entry)

    scores = [r["val_score"] if r["val_score"] is not None else -np.inf for r in results]
    best_i = 0
    if k and scored.sum() < MIN_CV_SCORED:
        anchored = [i for i, h in enumerate(candidates) if isinstance(h, PromptAnchoredHead)]
        best_i = anchored[0] if anchored and n_trva >= 1 and not multiple else 0
    else:
        for i, s in enumerate(scores):  # strict improvement needed: ties go to the simpler (earlier) head
            if s > scores[best_i] + 1e-12:
                best_i = i
    for i, r in enumerate(results):
        r["selected"] = i == best_i
    winner = candidates[best_i]

    # validation metrics of the winner as fitted on train only (only meaningful with a val split)
    val_metrics = None
    if not k and va.any() and (isinstance(winner, ZeroShotHead) or tr.any()):
        val_metrics = evaluate(winner, X[va], Y[va], label_names, multiple)

    t0 = time.perf_counter()
    if not isinstance(winner, ZeroShotHead):
        winner.fit(X[trva], Y[trva])
    refit_seconds = time.perf_counter() - t0

    test_metrics = evaluate(winner, X[te], Y[te], label_names, multiple)
    zero_shot = candidates[0]
    zs = evaluate(zero_shot, X[te], Y[te], label_names, multiple) if te.any() else None
    zero_shot_summary = None
    if zs:
        zero_shot_summary = {"accuracy": zs["accuracy"], "macro_f1": zs["macro_f1"], "ece": zs["ece"]}
        if multiple:
            zero_shot_summary["micro_f1"] = zs["micro_f1"]

    counts = {s: int((splits == s).sum()) for s in SPLITS}
    counts["total"] = int(len(splits))
    class_counts = {name: {s: int(true_ind[splits == s, j].sum()) for s in SPLITS}
                    for j, name in enumerate(label_names)}

    report = {
        "version": str(version),
        "created_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "multiple": bool(multiple),
        "labels": label_names,
        "head": winner.name,
        "head_params": _json_safe(winner.params()),
        "selection": selection,
        "selection_reason": why,
        "selection_note": note,
        "selection_metric": "micro_f1" if multiple else "accuracy",
        "val_score": results[best_i]["val_score"],
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
    point = {"version": str(version), "n_labels": counts["total"], "n_train": counts["train"] + counts["val"],
             "test_accuracy": test_metrics.get("accuracy"),
             "zero_shot_test_accuracy": zero_shot_summary["accuracy"] if zero_shot_summary else None,
             "val_score": report["val_score"], "head": winner.name}
    curve = [p for p in (_curve_point(h) for h in history or ()) if p]
    report["learning_curve"] = curve + [point]
    report["seconds"] = round(time.perf_counter() - started, 3)
    return winner, _json_safe(report)


class _HalfThreshold(Head):
    """Decisions at 0.5 on already threshold-shifted probabilities (used for CV scoring)."""

    multiple = True

    def __init__(self, K: int):
        self.thresholds = np.full(K, 0.5)


def _threshold_shift(proba: np.ndarray, head: Head) -> np.ndarray:
    """Per-class monotone map sending each head's decision threshold to 0.5 (decisions unchanged)."""
    out = np.empty_like(proba, dtype=np.float64)
    for i, row in enumerate(proba):
        p, t = head._decision_row(np.asarray(row, dtype=np.float64))
        t = np.clip(t, 1e-6, 1 - 1e-6)
        out[i] = np.where(p >= t, 0.5 + 0.5 * (p - t) / (1 - t), 0.5 * p / t)
    return out


# -- report files --------------------------------------------------------------------------------
def _figure(width: float, height: float):
    """A figure outside pyplot (no global state: safe in server threads), drawn by Agg."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height))
    FigureCanvasAgg(fig)
    return fig, fig.add_subplot()


def _fig_to_png(fig) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100, bbox_inches="tight")
    return buf.getvalue()


def _short(name: str, n: int = 22) -> str:
    return name if len(name) <= n else name[: n - 1] + "…"


def confusion_matrix_png(report: dict) -> bytes:
    cm = (report.get("test") or {}).get("confusion_matrix")
    labels = report.get("labels") or []
    K = len(labels)
    if not cm:
        fig, ax = _figure(4, 1.5)
        ax.axis("off")
        ax.text(0.5, 0.5, "no test items yet", ha="center", va="center")
        return _fig_to_png(fig)
    M = np.asarray(cm["matrix"], dtype=float)
    size = float(np.clip(1.5 + 0.22 * K, 4.5, 22))
    fig, ax = _figure(size + 1.2, size)
    # row-normalised colours (recall per true class), raw counts as annotations
    rows = M.sum(axis=1, keepdims=True)
    ax.imshow(np.divide(M, rows, out=np.zeros_like(M), where=rows > 0), cmap="Blues", vmin=0, vmax=1)
    fs = 10 if K <= 10 else 7 if K <= 40 else 5
    ax.set_xticks(range(K))
    ax.set_yticks(range(K))
    ax.set_xticklabels([_short(l) for l in labels], rotation=90, fontsize=fs)
    ax.set_yticklabels([_short(l) for l in labels], fontsize=fs)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    if K <= 20:
        for i in range(K):
            for j in range(K):
                if M[i, j]:
                    frac = M[i, j] / rows[i, 0] if rows[i, 0] else 0
                    ax.text(j, i, f"{int(M[i, j])}", ha="center", va="center", fontsize=fs,
                            color="white" if frac > 0.5 else "black")
    ax.set_title(f"confusion matrix (test, n={report['test'].get('n', 0)}; colour = row fraction)", fontsize=10)
    return _fig_to_png(fig)


def learning_curve_png(report: dict) -> bytes:
    curve = report.get("learning_curve") or []
    fig, ax = _figure(6.5, 3.8)
    pts = [p for p in curve if p.get("n_labels") is not None]
    if pts:
        n = [p["n_labels"] for p in pts]
        acc = [p.get("test_accuracy") for p in pts]
        zs = [p.get("zero_shot_test_accuracy") for p in pts]
        val = [p.get("val_score") for p in pts]
        nan = float("nan")
        ax.plot(n, [a if a is not None else nan for a in acc], "o-", label="chosen head, test accuracy")
        ax.plot(n, [v if v is not None else nan for v in val], "s--", alpha=0.7, label="chosen head, selection score")
        if any(z is not None for z in zs):
            ax.plot(n, [z if z is not None else nan for z in zs], "^:", color="gray", label="zero-shot, test accuracy")
        for p, x, y in zip(pts, n, acc):
            if y is not None:
                ax.annotate(str(p.get("version") or "")[-12:], (x, y), textcoords="offset points", xytext=(0, 6),
                            fontsize=7, ha="center")
        ax.legend(fontsize=8, loc="lower right")
    ax.set_xlabel("labeled items")
    ax.set_ylabel("accuracy")
    ax.set_ylim(0, 1.02)
    ax.grid(alpha=0.3)
    ax.set_title("learning curve")
    return _fig_to_png(fig)


def _fmt(x, digits: int = 3) -> str:
    if x is None:
        return "–"
    if isinstance(x, float):
        return f"{x:.{digits}f}"
    return html.escape(str(x))


def _html(report: dict, cm_png: bytes, lc_png: bytes) -> str:
    e = html.escape
    test = report.get("test") or {}
    counts = report.get("counts") or {}
    zs = report.get("zero_shot_test") or {}
    b64 = lambda png: base64.b64encode(png).decode("ascii")  # noqa: E731
    summary = [
        ("version", report.get("version")),
        ("chosen head", report.get("head")),
        ("selection", f"{report.get('selection')} on {report.get('selection_metric')} — {report.get('selection_reason')}"),
        ("labeled items", f"{counts.get('total')} (train {counts.get('train')}, val {counts.get('val')}, "
                          f"test {counts.get('test')}); winner refit on {report.get('refit_on')}"),
        ("test accuracy", f"{_fmt(test.get('accuracy'))} (zero-shot {_fmt(zs.get('accuracy'))})"),
        ("test macro F1", f"{_fmt(test.get('macro_f1'))} (zero-shot {_fmt(zs.get('macro_f1'))})"),
        ("test ROC-AUC (macro OvR)", f"{_fmt(test.get('roc_auc'))}" + (f" — {test['roc_auc_note']}"
                                                                       if test.get("roc_auc_note") else "")),
        ("test ECE (10 bins)", _fmt(test.get("ece"))),
        ("created", report.get("created_at")),
    ]
    if report.get("multiple"):
        summary.insert(5, ("test micro F1", f"{_fmt(test.get('micro_f1'))} (zero-shot {_fmt(zs.get('micro_f1'))})"))
    rows = "".join(f"<tr><th>{e(str(k))}</th><td>{e(str(v))}</td></tr>" for k, v in summary)
    cand = "".join(
        f"<tr class='{'win' if c.get('selected') else ''}'><td>{e(c['name'])}</td><td>{_fmt(c.get('val_score'))}</td>"
        f"<td>{_fmt(c.get('seconds'), 2)}</td><td>{'✔' if c.get('selected') else ''}</td>"
        f"<td>{e(c.get('error') or '')}</td></tr>"
        for c in report.get("candidates") or [])
    cc = report.get("class_counts") or {}
    per = "".join(
        f"<tr><td>{e(p['label'])}</td><td>{_fmt(p['precision'])}</td><td>{_fmt(p['recall'])}</td>"
        f"<td>{_fmt(p['f1'])}</td><td>{p['support']}</td><td>{p['predicted']}</td>"
        f"<td>{cc.get(p['label'], {}).get('train', '')}</td><td>{cc.get(p['label'], {}).get('val', '')}</td></tr>"
        for p in test.get("per_class") or [])
    curve = "".join(
        f"<tr><td>{e(str(p.get('version')))}</td><td>{p.get('n_labels')}</td><td>{_fmt(p.get('test_accuracy'))}</td>"
        f"<td>{_fmt(p.get('zero_shot_test_accuracy'))}</td><td>{_fmt(p.get('val_score'))}</td>"
        f"<td>{e(str(p.get('head')))}</td></tr>"
        for p in report.get("learning_curve") or [])
    css = ("body{font-family:system-ui,sans-serif;margin:2em;color:#222;max-width:1200px}"
           "table{border-collapse:collapse;margin:0.5em 0 1.5em}td,th{border:1px solid #ccc;padding:3px 8px;"
           "text-align:left;font-size:13px}th{background:#f4f4f4}tr.win td{background:#e6f4ea;font-weight:600}"
           "img{max-width:100%;border:1px solid #eee}h2{margin-top:1.5em}")
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>Model report {e(str(report.get('version')))}</title>
<style>{css}</style></head><body>
<h1>Model report</h1>
<h2>Summary</h2><table>{rows}</table>
<h2>Candidates</h2>
<table><tr><th>head</th><th>{e(str(report.get('selection_metric')))} ({e(str(report.get('selection')))})</th>
<th>seconds</th><th>chosen</th><th>error</th></tr>{cand}</table>
<h2>Per-class metrics (test)</h2>
<table><tr><th>label</th><th>precision</th><th>recall</th><th>F1</th><th>test support</th><th>predicted</th>
<th>train</th><th>val</th></tr>{per}</table>
<h2>Confusion matrix (test)</h2>
<img alt="confusion matrix" src="data:image/png;base64,{b64(cm_png)}">
<h2>Learning curve</h2>
<img alt="learning curve" src="data:image/png;base64,{b64(lc_png)}">
<table><tr><th>version</th><th>labels</th><th>test accuracy</th><th>zero-shot test accuracy</th>
<th>selection score</th><th>head</th></tr>{curve}</table>
</body></html>
"""


def write_report(report: dict, directory: Path) -> None:
    """report.json, report.html (self-contained), confusion_matrix.png, learning_curve.png."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "report.json").write_text(json.dumps(report, indent=2, allow_nan=False), encoding="utf-8")
    cm_png = confusion_matrix_png(report)
    lc_png = learning_curve_png(report)
    (directory / "confusion_matrix.png").write_bytes(cm_png)
    (directory / "learning_curve.png").write_bytes(lc_png)
    (directory / "report.html").write_text(_html(report, cm_png, lc_png), encoding="utf-8")
