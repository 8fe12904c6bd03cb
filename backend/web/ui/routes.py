"""The page's routes (all behind the backend's basic auth; writes also behind guard.check_write).

GET  /ui                                the projects this backend serves
GET  /ui/projects/<p>                   the page: overview, search, selection, apply, boundary
GET  /ui/api/<p>/overview               the overview's figures (JSON; the page polls it while embedding runs)
GET  /ui/api/<p>/search?q=|like=&offset=&limit=   a page of results, best first
POST /ui/api/<p>/apply                  {"label", "mode": "predictions"|"annotations", "query", "items": [{"task", "score"}],
                                        "confirm": n (annotations)} -> what Label Studio stored, read back
POST /ui/api/<p>/view                   {"tasks", "title"} -> a Data Manager tab holding exactly these tasks
GET  /ui/api/<p>/thumb/<task>           a JPEG thumbnail of an image task of this project
GET  /ui/api/<p>/boundary               per class pair, the items the head is least sure about
"""
from __future__ import annotations

import json

from flask import Blueprint, Response, current_app, jsonify, render_template, request

from ...flows.bulk_label import (
    BulkLabelError,
    choice_result,
    choose_among,
    create_annotations,
    fetch_tasks,
    import_predictions,
    reviewable,
    stored,
)
from ...flows.search import SearchError
from ...runtime.process import Runtime
from . import guard
from .boundary import along_boundary
from .overview import overview
from .search import MAX_QUERY_CHARS, MAX_RESULTS, ranked, snippet
from .thumbnails import NotFound, Unavailable, render, task_image_ref

ui = Blueprint("ui", __name__, template_folder="templates", static_folder="static", static_url_path="/ui/static")
PAGE_LIMIT = 200


class Invalid(ValueError):
    """A malformed request from the page (HTTP 400)."""


def _runtime() -> Runtime:
    return current_app.extensions["runtime"]


def _api(project: int):
    api = _runtime().api(str(project))
    if api is None:
        raise Invalid(f"project {project} has no Label Studio connection yet: connect the backend in Label Studio "
                      "(or set LABEL_STUDIO_URL and LABEL_STUDIO_API_KEY)")
    return api


def _int(name: str, default: int, low: int, high: int) -> int:
    raw = request.args.get(name, default)
    try:
        value = int(raw)
    except (TypeError, ValueError):
        raise Invalid(f"{name!r} must be an integer") from None
    if not low <= value <= high:
        raise Invalid(f"{name!r} must be from {low} to {high}")
    return value


def _labeled(project: int) -> set[int]:
    return {t.task_id for t in _runtime().log.labeled_tasks(str(project))}


@ui.errorhandler(Invalid)
@ui.errorhandler(SearchError)
@ui.errorhandler(BulkLabelError)
def _invalid(exc):
    return jsonify({"error": str(exc)}), 400


@ui.errorhandler(guard.Refused)
def _refused(exc):
    return jsonify({"error": str(exc)}), 403


@ui.errorhandler(NotFound)
def _not_found(exc):
    return jsonify({"error": str(exc)}), 404


@ui.errorhandler(Unavailable)
def _unavailable(exc):
    return jsonify({"error": str(exc)}), 502


@ui.get("/ui")
def index():
    runtime = _runtime()
    projects = sorted({m.project_id for m in runtime.models.built()} | set(runtime.versions.projects()),
                      key=lambda p: (len(p), p))
    return render_template("ui_index.html", projects=projects)


@ui.get("/ui/projects/<int:project>")
def page(project: int):
    secret = current_app.extensions["ui_secret"]
    return render_template("ui.html", o=overview(_runtime(), str(project)), csrf=guard.token(secret, request),
                           max_results=MAX_RESULTS, max_query=MAX_QUERY_CHARS)


@ui.get("/ui/api/<int:project>/overview")
def overview_json(project: int):
    return jsonify(overview(_runtime(), str(project)))


@ui.get("/ui/api/<int:project>/search")
def search(project: int):
    query, like = (request.args.get("q") or "").strip(), request.args.get("like")
    if like is None and not query:
        raise Invalid("give a text query ('q') or a task ('like')")
    if len(query) > MAX_QUERY_CHARS:
        raise Invalid(f"the query is longer than {MAX_QUERY_CHARS} characters")
    like_task = _int("like", 0, 0, 2**62) if like is not None else None
    offset, limit = _int("offset", 0, 0, MAX_RESULTS), _int("limit", 60, 1, PAGE_LIMIT)
    model = _runtime().model(str(project))
    control = model.primary
    found = ranked(model, control, query=query or None, like=like_task, labeled=_labeled(project),
                   offset=offset, limit=limit)
    items = [{"task": t, "score": round(s, 4)} for t, s in found.hits]
    if control.target.modality == "image":
        for item in items:
            item["thumb"] = f"/ui/api/{project}/thumb/{item['task']}"
    else:
        texts = _texts(project, control, [i["task"] for i in items])
        for item in items:
            item["text"] = texts.get(item["task"])
    return jsonify({"query": query, "like": like_task, "offset": offset, "results": items, "more": found.more,
                    "embedded": found.embedded, "took_ms": round(found.took_ms, 1), "max_results": MAX_RESULTS})


def _texts(project: int, control, task_ids: list[int]) -> dict[int, str]:
    """{task: snippet} of text tasks, from one listing in Label Studio (none without a connection: the
    page then shows task ids only)."""
    api = _runtime().api(str(project))
    if api is None or not task_ids:
        return {}
    tasks = fetch_tasks(api.client, task_ids, project, fields="task_only")
    return {t: snippet((getattr(task, "data", None) or {}).get(control.target.data_key)) for t, task in tasks.items()}


@ui.post("/ui/api/<int:project>/apply")
def apply(project: int):
    guard.check_write(current_app.extensions["ui_secret"], request)
    body = request.get_json(silent=True) or {}
    items, mode, label = body.get("items"), body.get("mode"), body.get("label")
    query = str(body.get("query") or "").strip()[:MAX_QUERY_CHARS]
    if mode not in ("predictions", "annotations") or not isinstance(label, str) or not label:
        raise Invalid("give a 'label' and a 'mode' ('predictions' or 'annotations')")
    hits = _items(items)
    if mode == "annotations" and body.get("confirm") != len(hits):
        raise Invalid(f"creating {len(hits)} annotations needs 'confirm': {len(hits)} (the count the user confirmed)")
    client = _api(project).client
    target, output = choose_among(_runtime().model(str(project)).config.targets, body.get("from_name"), label)
    version = f"search:{query}" if query else "search:selection"
    rows, skipped = reviewable(client, hits, output, accept=mode == "annotations", version=version, project=project)
    result = choice_result(target, output)
    if mode == "annotations":
        written = create_annotations(client, [hit["task"] for hit, _ in rows], result)
    else:
        written = import_predictions(client, project, [hit for hit, _ in rows], result, version)
    readback = stored(client, project, [h["task"] for h in hits], output, version if mode == "predictions" else None)
    return jsonify({"mode": mode, "label": output, "from_name": target.from_name, "model_version": version,
                    "selected": len(hits), "written": written, "skipped": skipped, "stored": readback})


def _items(items) -> list[dict]:
    if not isinstance(items, list) or not items:
        raise Invalid("'items' must be a non-empty list of {\"task\", \"score\"}")
    if len(items) > MAX_RESULTS:
        raise Invalid(f"at most {MAX_RESULTS} tasks at once")
    hits = {}
    for item in items:
        task = item.get("task") if isinstance(item, dict) else None
        score = item.get("score", 0.0) if isinstance(item, dict) else None
        if isinstance(task, bool) or not isinstance(task, int) or not isinstance(score, (int, float)):
            raise Invalid("each item must be {\"task\": <id>, \"score\": <similarity>}")
        hits.setdefault(task, {"task": task, "score": float(score)})
    return list(hits.values())


@ui.post("/ui/api/<int:project>/view")
def view(project: int):
    guard.check_write(current_app.extensions["ui_secret"], request)
    body = request.get_json(silent=True) or {}
    tasks = sorted({h["task"] for h in _items([{"task": t} for t in body.get("tasks") or []] or None)})
    title = " ".join(str(body.get("title") or "Search selection").split())[:80] + f" ({len(tasks)})"
    api = _api(project)
    filters = {"conjunction": "and", "items": [
        {"filter": "filter:tasks:id", "operator": "in_list", "type": "Number", "value": tasks}]}
    created = api.client.views.create(project=project, data={"title": title, "filters": filters})
    base = _runtime().connection(str(project)).url.rstrip("/")
    return jsonify({"view": created.id, "title": title, "tasks": len(tasks),
                    "url": f"{base}/projects/{project}/data?tab={created.id}"})


@ui.get("/ui/api/<int:project>/thumb/<int:task>")
def thumbnail(project: int, task: int):
    cache = current_app.extensions["ui_thumbnails"]
    key = (str(project), task)
    jpeg = cache.get(key)
    if jpeg is None:
        model = _runtime().model(str(project))
        target = model.primary.target
        if target.modality != "image":
            raise NotFound(f"project {project} is not an image project")
        ref = task_image_ref(_api(project).client, str(project), task, target.data_key)
        jpeg = render(model.fetcher, ref, task)
        cache.put(key, jpeg)
    return Response(jpeg, mimetype="image/jpeg", headers={"Cache-Control": "private, max-age=600",
                                                          "X-Content-Type-Options": "nosniff"})


@ui.get("/ui/api/<int:project>/boundary")
def boundary(project: int):
    pairs, per_pair = _int("pairs", 3, 1, 10), _int("per_pair", 8, 1, 50)
    model = _runtime().model(str(project))
    found = along_boundary(model, _labeled(project), pairs, per_pair)
    control = model.primary
    image = control.target.modality == "image"
    texts = {} if image else _texts(project, control, [i["task"] for p in found["pairs"] for i in p["items"]])
    for pair in found["pairs"]:
        for item in pair["items"]:
            item["thumb" if image else "text"] = f"/ui/api/{project}/thumb/{item['task']}" if image \
                else texts.get(item["task"])
    return Response(json.dumps(found), mimetype="application/json")
