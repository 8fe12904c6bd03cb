"""The project overview: embedding progress, the serving version, its audit accuracy with its interval,
the learning curve (as an inline SVG polyline), the label-error count, and links."""
from __future__ import annotations

from ...runtime.process import Runtime

CHART_W, CHART_H, PAD = 320, 120, 24


def overview(runtime: Runtime, project: str) -> dict:
    """What the overview shows; every figure read now (store count, Label Studio's task count, the
    newest report), none cached."""
    model = runtime.model(project)
    control = model.primary
    connection = runtime.connection(project)
    api = runtime.api(project)
    total = None
    if api is not None:
        try:
            total = int(getattr(api.client.projects.get(id=int(project)), "task_number", None) or 0)
        except Exception as exc:  # noqa: BLE001 (Label Studio unreachable: the page still shows what the backend knows)
            total = None
            error = f"Label Studio did not answer ({type(exc).__name__})"
        else:
            error = None
    else:
        error = "no Label Studio connection for this project yet (connect the backend, or set LABEL_STUDIO_URL)"
    embedded = control.store.count() if control.store is not None else 0
    progress = (runtime.preannotator.status().get(str(project), {}) if runtime.preannotator else {})
    version = runtime.versions.latest(project)
    report = (version.report() if version is not None else None) or {}
    return {
        "project": str(project), "modality": control.target.modality, "from_name": control.from_name,
        "labels": list(control.target.outputs), "multiple": control.target.multiple,
        "embedded": embedded, "tasks": total, "pending": int(progress.get("pending", 0) or 0),
        "serving": model.model_version, "trained": model.trained, "audit": _audit(report.get("audit")),
        "label_errors": report.get("label_errors_flagged"), "labeled": runtime.log.count(project),
        "curve": curve_chart(report.get("learning_curve") or []),
        "versions_trained": len(report.get("learning_curve") or []),
        "report_url": f"/reports/latest?project={project}" if version is not None else None,
        "label_studio_url": f"{connection.url.rstrip('/')}/projects/{project}/data" if connection.url else None,
        "error": error,
    }


def _audit(audit) -> dict | None:
    if not isinstance(audit, dict):
        return None
    accuracy = audit.get("accuracy") or {}
    return {"n": audit.get("n"), "value": accuracy.get("value"), "low": accuracy.get("low"),
            "high": accuracy.get("high"), "enough": bool(audit.get("enough")), "message": audit.get("message")}


def curve_chart(curve: list) -> dict | None:
    """SVG coordinates of the learning curve: audit accuracy with its 95% interval against the number of
    labels. Versions without an audit figure are left out: their test split is drawn from the labels
    annotators or a search chose, not an unbiased sample of the pool, so it is no point to plot."""
    points = []
    for p in curve:
        if not isinstance(p, dict) or p.get("n_labels") is None or p.get("audit_accuracy") is None:
            continue
        value = float(p["audit_accuracy"])
        low = p.get("audit_low") if p.get("audit_low") is not None else value
        high = p.get("audit_high") if p.get("audit_high") is not None else value
        points.append((int(p["n_labels"]), value, float(low), float(high)))
    if not points:
        return None
    most = max(n for n, *_ in points) or 1

    def x(n):
        return PAD + (CHART_W - 2 * PAD) * (n / most)

    def y(v):
        return CHART_H - PAD - (CHART_H - 2 * PAD) * min(max(v, 0.0), 1.0)

    marks = [{"x": round(x(n), 1), "y": round(y(v), 1), "y_low": round(y(lo), 1), "y_high": round(y(hi), 1),
              "label": f"{n} labels: {v:.2f} ({lo:.2f}-{hi:.2f}, audit)"} for n, v, lo, hi in points]
    return {"width": CHART_W, "height": CHART_H, "pad": PAD, "most": most, "marks": marks,
            "polyline": " ".join(f"{m['x']},{m['y']}" for m in marks), "y0": y(0.0), "y1": y(1.0)}
