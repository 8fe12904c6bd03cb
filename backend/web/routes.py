"""The HTTP protocol of Label Studio ML backends, plus our extras.

GET /health, GET /          liveness: {"status": "UP", "model_class": ...}
POST /setup                 {"project", "schema", ...} -> {"model_version"}
POST /predict               {"tasks", "project", "label_config", ...} -> {"results": [...]} one entry per task
POST /webhook               annotation events -> acknowledged at once
POST /search                {"query", "k", "project", "label_config"?, "to_name"?} -> {"results": [{"task", "score"}]}
                            the unlabeled embedded tasks most similar to a text query, best first
GET /metrics                Prometheus text format (counters, latencies, embedding statistics)
GET /status                 this process's counters, served versions and the training state as JSON
GET /reports                evaluation reports of every model version (JSON list)
GET /reports/latest         the newest report (HTML; ?format=json for JSON), /reports/<version> likewise
"""
from __future__ import annotations

import os

from flask import Blueprint, Response, current_app, jsonify, request
from prometheus_client import CONTENT_TYPE_LATEST

from ..flows.predict import predict_in_time
from ..flows.record import record_event
from ..flows.search import SearchError, search as search_tasks
from ..labelstudio.pacing import pacing_status
from ..labelstudio.protocol import TASKS_CREATED, IgnoredEvent, parse_webhook, project_id
from ..learn.result import TrainingResult
from ..model import ClipClassifier
from ..runtime.process import Runtime
from .limits import check_webhook_size

MAX_SEARCH_K = 1000
MAX_QUERY_CHARS = 2000
MAX_JSON_DEPTH = 64  # Label Studio's payloads nest a few levels; deeper bodies are refused before anything walks them

api = Blueprint("api", __name__)


class BadRequest(ValueError):
    """The request is malformed; the message says how."""


def _runtime() -> Runtime:
    return current_app.extensions["runtime"]


def _metrics():
    return current_app.extensions["metrics"]


def _json_body() -> dict:
    try:
        body = request.get_json(silent=True)
    except RecursionError:  # the JSON parser recurses once per nesting level
        raise BadRequest(f"the JSON body is nested more than {MAX_JSON_DEPTH} levels deep") from None
    if not isinstance(body, dict):
        raise BadRequest("the request body must be a JSON object")
    if _nested_deeper(body, MAX_JSON_DEPTH):
        raise BadRequest(f"the JSON body is nested more than {MAX_JSON_DEPTH} levels deep")
    return body


def _nested_deeper(value, limit: int) -> bool:
    """Whether lists and objects nest more than ``limit`` levels (iterative: no recursion to overflow)."""
    stack = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if depth > limit:
            return True
        children = item.values() if isinstance(item, dict) else item
        stack.extend((child, depth + 1) for child in children if isinstance(child, (dict, list)))
    return False


def _optional_str(body: dict, key: str, message: str) -> str | None:
    value = body.get(key)
    if value is not None and not isinstance(value, str):
        raise BadRequest(message)
    return value


@api.get("/")
@api.get("/health")
def health():
    return jsonify({"status": "UP", "model_class": ClipClassifier.__name__})


@api.post("/setup")
def setup():
    body = _json_body()
    schema = body.get("schema") or body.get("label_config")
    if not isinstance(schema, str):
        raise BadRequest("setup needs the labeling config in 'schema'")
    hostname, token = body.get("hostname"), body.get("access_token")
    hostname = hostname if isinstance(hostname, str) and hostname.startswith(("http://", "https://")) else None
    token = token if isinstance(token, str) and token.strip() else None
    return jsonify({"model_version": _runtime().setup(project_id(body.get("project")), schema, hostname, token)})


@api.post("/predict")
def predict():
    body = _json_body()
    tasks = body.get("tasks")
    if not isinstance(tasks, list):
        raise BadRequest("'tasks' must be a list of Label Studio tasks")
    label_config = _optional_str(body, "label_config", "'label_config' must be a string")
    runtime, project = _runtime(), project_id(body.get("project"))
    model = runtime.model(project, label_config)
    # what is embedded within PREDICT_TIMEOUT is answered; the rest is predicted and imported in the background
    results, late = predict_in_time(model, tasks, runtime.settings.predict_timeout_s)
    if late:
        runtime.preannotator.submit(project, label_config, late)
    served = sum(1 for r in results if r)
    _metrics().add(predict_requests=1, tasks=len(tasks), predictions=served, tasks_failed=len(tasks) - served)
    return jsonify({"results": results})


@api.post("/search")
def search():
    body = _json_body()
    query = body.get("query")
    if not isinstance(query, str) or not query.strip():
        raise BadRequest("'query' must be a non-empty string, e.g. {\"query\": \"a horse\"}")
    if len(query) > MAX_QUERY_CHARS:
        raise BadRequest(f"'query' is longer than {MAX_QUERY_CHARS} characters")
    k = body.get("k", 20)
    if isinstance(k, bool) or not isinstance(k, int) or not 1 <= k <= MAX_SEARCH_K:
        raise BadRequest(f"'k' must be an integer from 1 to {MAX_SEARCH_K}, got {k!r}")
    to_name = _optional_str(body, "to_name", "'to_name' must be the name of an object tag (e.g. \"image\")")
    label_config = _optional_str(body, "label_config", "'label_config' must be a string")
    if body.get("project") in (None, ""):
        raise BadRequest("'project' is required: the Label Studio project id whose tasks to search")
    runtime, project = _runtime(), project_id(body.get("project"))
    labeled = {t.task_id for t in runtime.log.labeled_tasks(project)}
    try:
        found = search_tasks(runtime.model(project, label_config), query.strip(), k, exclude_task_ids=labeled,
                             to_name=to_name)
    except SearchError as exc:
        raise BadRequest(str(exc)) from None
    _metrics().add(search_requests=1)
    return jsonify(found)


@api.post("/webhook")
def webhook():
    # Label Studio waits 1 s and runs this inside the annotator's request: record, then train later.
    body = _json_body()
    try:
        event = parse_webhook(body)
    except IgnoredEvent as exc:  # PROJECT_UPDATED and the other events Label Studio sends us too
        return jsonify({"status": "ignored", "reason": str(exc)}), 200
    runtime = _runtime()
    check_webhook_size(runtime.settings, event.action)
    _metrics().webhook(event.action)
    if event.action == TASKS_CREATED:
        if not isinstance(event.tasks, list):
            raise BadRequest("TASKS_CREATED payload has no list of tasks")
        queued = runtime.preannotate_imports(event.project, event.label_config, event.tasks)
        return jsonify({"status": "ok", "result": {"queued": queued}}), 201
    result = record_event(runtime.log, event)  # durably, before the answer; trained in the background
    runtime.scheduler.notify(event.project)
    return jsonify({"status": "ok", "result": result}), 201


@api.get("/reports")
def reports_list():
    versions = _runtime().versions
    projects = [request.args["project"]] if request.args.get("project") else versions.projects()
    listing = []
    for project in projects:
        for version in versions.all(project_id(project)):
            result = TrainingResult.from_report(version.report() or {})
            listing.append({
                "project": project, "version": version.name, "number": version.number,
                "created_at": version.meta.get("created_at"), "labels": version.meta.get("labels"),
                "head": result.head, "test_accuracy": result.test_accuracy, "accuracy": result.accuracy,
                "url": f"/reports/{version.number}?project={project}",
            })
    return jsonify({"reports": listing})


@api.get("/reports/<path:version>")
def report_view(version):
    versions = _runtime().versions
    project = request.args.get("project")
    if not project:
        known = versions.projects()
        if len(known) != 1:
            raise BadRequest(f"add ?project=<id>; projects with reports: {known}")
        project = known[0]
    project = project_id(project)
    found = versions.latest(project) if version == "latest" else \
        versions.find(project, version.removeprefix("v") if version[1:].isdigit() else version)
    if found is None:
        return jsonify({"error": f"no report {version!r} for project {project}"}), 404
    if request.args.get("format") == "json" or request.accept_mimetypes.best == "application/json":
        return jsonify(found.report() or {})
    html = found.directory / "report.html"
    if not html.exists():
        return jsonify({"error": f"version {found.name} has no HTML report"}), 404
    return Response(html.read_text(), mimetype="text/html")


@api.get("/metrics")
def metrics_exposition():
    return Response(_metrics().exposition(), content_type=CONTENT_TYPE_LATEST)


@api.get("/status")
def status():
    runtime = _runtime()
    return jsonify({**_metrics().snapshot(), "process": {"pid": os.getpid(), "serving": runtime.serving()},
                    "training": runtime.scheduler.status(), "preannotation": runtime.preannotator.status(),
                    "label_studio": pacing_status()})  # per Label Studio URL: retries, backoffs, chunk sizes

