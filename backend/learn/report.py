"""Report files of a trained version: report.json, a self-contained report.html, and the figures.

The figures are drawn on matplotlib Figures with the Agg canvas, never pyplot: no global state,
so reports can be written from server threads.
"""
from __future__ import annotations

import base64
import io
import json
from pathlib import Path

import jinja2
import numpy as np

from .audit import accuracy_headline

_TEMPLATES = jinja2.Environment(loader=jinja2.PackageLoader("backend.learn", "templates"),
                                autoescape=True, keep_trailing_newline=True,
                                undefined=jinja2.StrictUndefined)


def _figure(width: float, height: float):
    """A figure outside pyplot, drawn by Agg."""
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


def _test_name(report: dict) -> str:
    """What the report's test set is called: the audit sample, or the hash test split."""
    return "audit" if report.get("test_set") == "audit sample" else "test"


def confusion_matrix_png(report: dict) -> bytes:
    """The test (audit) confusion matrix: colours are row fractions (recall per true class), text raw counts."""
    cm = (report.get("test") or {}).get("confusion_matrix")
    labels = report.get("labels") or []
    K = len(labels)
    if not cm:
        fig, ax = _figure(4, 1.5)
        ax.axis("off")
        ax.text(0.5, 0.5, f"no {_test_name(report)} items yet", ha="center", va="center")
        return _fig_to_png(fig)
    M = np.asarray(cm["matrix"], dtype=float)
    size = float(np.clip(1.5 + 0.22 * K, 4.5, 22))
    fig, ax = _figure(size + 1.2, size)
    rows = M.sum(axis=1, keepdims=True)
    ax.imshow(np.divide(M, rows, out=np.zeros_like(M), where=rows > 0), cmap="Blues", vmin=0, vmax=1)
    fs = 10 if K <= 10 else 7 if K <= 40 else 5
    ax.set_xticks(range(K))
    ax.set_yticks(range(K))
    ax.set_xticklabels([_short(l) for l in labels], rotation=90, fontsize=fs)
    ax.set_yticklabels([_short(l) for l in labels], fontsize=fs)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    if K <= 20:  # counts stay legible up to about 20 classes
        for i in range(K):
            for j in range(K):
                if M[i, j]:
                    frac = M[i, j] / rows[i, 0] if rows[i, 0] else 0
                    ax.text(j, i, f"{int(M[i, j])}", ha="center", va="center", fontsize=fs,
                            color="white" if frac > 0.5 else "black")
    ax.set_title(f"confusion matrix ({_test_name(report)}, n={report['test'].get('n', 0)}; colour = row fraction)",
                 fontsize=10)
    return _fig_to_png(fig)


def _audit_curve(ax, pts: list[dict]) -> list:
    """Audit accuracy with its 95% interval as error bars, and zero-shot's on the same items; the
    hash-split test accuracy only for versions without an audit set. Returns the accuracies annotated."""
    nan = float("nan")
    audited = [p for p in pts if p.get("audit_accuracy") is not None]
    x = [p["n_labels"] for p in audited]
    acc = [p["audit_accuracy"] for p in audited]
    below = [a - (p.get("audit_low") if p.get("audit_low") is not None else a) for p, a in zip(audited, acc)]
    above = [(p.get("audit_high") if p.get("audit_high") is not None else a) - a for p, a in zip(audited, acc)]
    ax.errorbar(x, acc, yerr=[below, above], fmt="o-", capsize=3, label="chosen head, audit accuracy (95% CI)")
    zs = [p.get("zero_shot_audit_accuracy") for p in audited]
    if any(z is not None for z in zs):
        ax.plot(x, [z if z is not None else nan for z in zs], "^:", color="gray", label="zero-shot, audit accuracy")
    older = [p for p in pts if p.get("audit_accuracy") is None and p.get("test_accuracy") is not None]
    if older:
        ax.plot([p["n_labels"] for p in older], [p["test_accuracy"] for p in older], "x", color="tab:red",
                label="test accuracy, hash split (biased)")
    return [p.get("audit_accuracy") if p.get("audit_accuracy") is not None else p.get("test_accuracy") for p in pts]


def learning_curve_png(report: dict) -> bytes:
    """Accuracy of each version's chosen head against the number of labels: on the audit set with
    95% intervals where versions have one, else on the hash test split; and the selection score."""
    curve = report.get("learning_curve") or []
    fig, ax = _figure(6.5, 3.8)
    pts = [p for p in curve if p.get("n_labels") is not None]
    if pts:
        n = [p["n_labels"] for p in pts]
        acc = [p.get("test_accuracy") for p in pts]
        zs = [p.get("zero_shot_test_accuracy") for p in pts]
        val = [p.get("val_score") for p in pts]
        nan = float("nan")
        if any(p.get("audit_accuracy") is not None for p in pts):
            acc = _audit_curve(ax, pts)
        else:
            ax.plot(n, [a if a is not None else nan for a in acc], "o-", label="chosen head, test accuracy")
            if any(z is not None for z in zs):
                ax.plot(n, [z if z is not None else nan for z in zs], "^:", color="gray",
                        label="zero-shot, test accuracy")
        ax.plot(n, [v if v is not None else nan for v in val], "s--", alpha=0.7,
                label="chosen head, out-of-fold accuracy (actively chosen labels: hard items)")
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
    """A metric for the page: floats rounded, None as a dash."""
    if x is None:
        return "–"
    if isinstance(x, float):
        return f"{x:.{digits}f}"
    return str(x)


def _interval(est) -> str:
    """An estimate for the page: "0.871 (0.842–0.895)", or a dash without items."""
    if not isinstance(est, dict) or est.get("value") is None:
        return "–"
    return f"{_fmt(est['value'])} ({_fmt(est.get('low'))}–{_fmt(est.get('high'))})"


def _summary(report: dict) -> list[tuple[str, str]]:
    """(field, value) rows of the summary table."""
    test = report.get("test") or {}
    counts = report.get("counts") or {}
    zs = report.get("zero_shot_test") or {}
    name = _test_name(report)
    headline = accuracy_headline(report)
    auc_note = f" — {test['roc_auc_note']}" if test.get("roc_auc_note") else ""
    rows = [
        ("version", report.get("version")),
        ("chosen head", report.get("head")),
        ("selection", f"{report.get('selection')} on {report.get('selection_metric')} — {report.get('selection_reason')}"),
        ("labeled items", f"{counts.get('total')} (train {counts.get('train')}, {name} {counts.get('test')}); "
                          f"the chosen head is fitted on {report.get('refit_on')}"),
        (f"{name} accuracy (95% CI)", f"{_interval(headline)} — {headline['message']} (zero-shot "
                                      + f"{_fmt(zs.get('accuracy'))})"),
        (f"{name} macro F1", f"{_fmt(test.get('macro_f1'))} (zero-shot {_fmt(zs.get('macro_f1'))})"),
        (f"{name} ROC-AUC (macro OvR)", f"{_fmt(test.get('roc_auc'))}{auc_note}"),
        (f"{name} ECE (10 bins)", _fmt(test.get("ece"))),
        ("created", report.get("created_at")),
    ]
    if report.get("multiple"):
        rows.insert(5, (f"{name} micro F1", f"{_fmt(test.get('micro_f1'))} (zero-shot {_fmt(zs.get('micro_f1'))})"))
    return rows


def render_html(report: dict, cm_png: bytes, lc_png: bytes) -> str:
    """The self-contained report page (figures inlined as data URIs, no external links or scripts)."""
    return _TEMPLATES.get_template("report.html.j2").render(
        report=report,
        summary=_summary(report),
        test=report.get("test") or {},
        test_name=_test_name(report),
        audit=report.get("audit"),
        class_counts=report.get("class_counts") or {},
        fmt=_fmt,
        interval=_interval,
        cm_png=base64.b64encode(cm_png).decode("ascii"),
        lc_png=base64.b64encode(lc_png).decode("ascii"),
    )


def write_report(report: dict, directory: Path) -> None:
    """report.json, report.html (self-contained), confusion_matrix.png, learning_curve.png."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "report.json").write_text(json.dumps(report, indent=2, allow_nan=False), encoding="utf-8")
    cm_png = confusion_matrix_png(report)
    lc_png = learning_curve_png(report)
    (directory / "confusion_matrix.png").write_bytes(cm_png)
    (directory / "learning_curve.png").write_bytes(lc_png)
    (directory / "report.html").write_text(render_html(report, cm_png, lc_png), encoding="utf-8")
