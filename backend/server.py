"""HTTP protocol of Label Studio ML backends on current Flask.

GET /health, GET /          liveness: {"status": "UP", "model_class": ...}
POST /setup                 {"project", "schema", ...} -> {"model_version"}
POST /predict               {"tasks", "project", "label_config", ...} -> {"results": [...]} one entry per task
POST /webhook               annotation events -> acknowledged at once
POST /search                {"query", "k", "project", "label_config"?, "to_name"?} -> {"results": [{"task", "score"}]}
                            the unlabeled embedded tasks most similar to a text query, best first
GET /metrics                counters, latencies and training state as JSON
GET /reports                evaluation reports of every model version (JSON list)
GET /reports/latest         the newest report (HTML; ?format=json for JSON), /reports/<version> likewise

Run with gunicorn: gunicorn 'backend.server:create_app()' (see scripts/serve.sh).
"""
from __future__ import annotations

import hashlib
import hmac
import logging
import os
import threading
import time
from collections import Counter, defaultdict

from flask import Flask, Response, jsonify, request
from werkzeug.exceptions import HTTPException

from .annotations import AnnotationLog
from .fetch import Fetcher
from .label_config import ConfigError
from .model import ClipClassifier, ModelLoadError, SearchError
from .ranking import ranked_version
from .settings import Settings, SettingsError
from .store import EmbeddingStore
from .training import Trainer
from .versions import VersionStore

logger = logging.getLogger(__name__)

PUBLIC_PATHS = {"/", "/health"}
TRAIN_EVENTS = {"ANNOTATION_CREATED", "ANNOTATION_UPDATED", "ANNOTATIONS_DELETED", "START_TRAINING"}
MAX_SEARCH_K = 1000
MAX_QUERY_CHARS = 2000


class BadRequest(ValueError):
    """The request is malformed; the message says how."""


class ModelRegistry:
    """One ClipClassifier per (project, labeling config), built once and shared by request threads."""

    def __init__(self, settings: Settings):
        self.settings = settings
        self._store: EmbeddingStore | None = None
        self._models: dict[tuple[str, str], ClipClassifier] = {}
        self._configs: dict[str, str] = {}  # project -> last label_config seen (from /setup)
        self._connections: dict[str, tuple[str | None, str | None]] = {}  # project -> (url, token) from /setup
        self._lock = threading.Lock()
        self._building: dict[tuple[str, str], threading.Lock] = defaultdict(threading.Lock)
        self.versions = VersionStore(settings.model_dir)
        self.log = AnnotationLog(settings.model_dir / "annotations.sqlite3", settings.annotation_log_journal)
        self.trainer = Trainer(settings, self, self.log, self.versions)

    @property
    def store(self) -> EmbeddingStore | None:
        with self._lock:
            if self._store is None:
                try:
                    self._store = EmbeddingStore.from_settings(self.settings)
                except Exception as exc:
                    logger.error("cannot open the Chroma store (%s); serving without cache", exc)
                    return None
            return self._store

    def stats(self) -> dict:
        total: Counter = Counter()
        for model in list(self._models.values()):
            total.update(model.stats)
        return dict(total)

    def remember(self, project: str, label_config: str | None, url: str | None, token: str | None) -> None:
        with self._lock:
            if label_config:
                self._configs[project] = label_config
            if url or token:
                self._connections[project] = (url, token)

    def connection(self, project: str) -> tuple[str | None, str | None]:
        """Label Studio URL and token: the environment's, else what /setup sent for this project."""
        url, token = self._connections.get(str(project), (None, None))
        return self.settings.label_studio_url or url, self.settings.label_studio_api_key or token

    def get(self, project: str, label_config: str | None) -> ClipClassifier:
        label_config = label_config or self._configs.get(project) or self.log.generations(project)[2]
        if not label_config:
            raise BadRequest("label_config is missing and /setup was not called for this project")
        key = (project, hashlib.sha1(label_config.encode()).hexdigest())
        if key in self._models:
            return self._models[key]
        with self._building[key]:  # concurrent first requests build the model once
            if key not in self._models:
                url, token = self.connection(project)
                fetcher = Fetcher(self.settings, label_studio_url=url, api_key=token)
                self._models[key] = ClipClassifier(project, label_config, self.settings, self.store, fetcher,
                                                   self.versions, self.trainer)
            return self._models[key]


class Metrics:
    def __init__(self):
        self._lock = threading.Lock()
        self.counters: dict[str, int] = defaultdict(int)
        self.latency_ms: dict[str, list[float]] = defaultdict(list)
        self.started = time.time()

    def add(self, **counts: int) -> None:
        with self._lock:
            for name, value in counts.items():
                self.counters[name] += value

    def observe(self, endpoint: str, ms: float) -> None:
        with self._lock:
            window = self.latency_ms[endpoint]
            window.append(ms)
            del window[:-1000]

    def snapshot(self, extra: dict | None = None) -> dict:
        import numpy as np

        with self._lock:
            lat = {
                name: {"count": len(v), "p50_ms": float(np.percentile(v, 50)), "p95_ms": float(np.percentile(v, 95))}
                for name, v in self.latency_ms.items() if v
            }
            counters = {**dict(self.counters), **(extra or {})}
            return {"uptime_s": round(time.time() - self.started, 1), "counters": counters, "latency": lat}


def _project_id(raw) -> str:
    # Label Studio sends "<id>.<created-at timestamp>"; the id part names the project.
    if raw is None or raw == "":
        return "default"
    text = str(raw).split(".", 1)[0].strip()
    if not text.isalnum() or len(text) > 64:
        raise BadRequest(f"project {raw!r} is not a Label Studio project id")
    return text


def _warm_up(model: ClipClassifier) -> None:
    try:
        model.load()
    except ModelLoadError as exc:
        logger.error("project %s: %s", model.project_id, exc)
    except Exception:
        logger.exception("loading the model for project %s failed", model.project_id)


def _process(registry: ModelRegistry) -> dict:
    """This process's pid and the version it serves per project (each gunicorn worker has its own)."""
    serving = {}
    for (project, _), model in list(registry._models.items()):
        model.refresh()  # as /predict does: one small file read
        serving[project] = model.model_version
    return {"pid": os.getpid(), "serving": serving}


def _json_body() -> dict:
    body = request.get_json(silent=True)
    if not isinstance(body, dict):
        raise BadRequest("the request body must be a JSON object")
    return body


def create_app(settings: Settings | None = None) -> Flask:
    if settings is None:
        try:
            settings = Settings.from_env()
        except SettingsError as exc:
            raise SystemExit(f"configuration error: {exc}") from None
    logging.basicConfig(level=settings.log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    app = Flask(__name__)
    app.config["MAX_CONTENT_LENGTH"] = 256 * 1024 * 1024
    registry = ModelRegistry(settings)
    metrics = Metrics()
    app.extensions["registry"] = registry
    app.extensions["metrics"] = metrics

    @app.before_request
    def _auth():
        request.environ["started"] = time.perf_counter()
        if settings.basic_auth_user and request.path not in PUBLIC_PATHS:
            auth = request.authorization
            ok = auth is not None and auth.username is not None and auth.password is not None \
                and hmac.compare_digest(auth.username, settings.basic_auth_user) \
                and hmac.compare_digest(auth.password, settings.basic_auth_pass)
            if not ok:
                return Response("Unauthorized", 401, {"WWW-Authenticate": 'Basic realm="ml-backend"'})

    @app.after_request
    def _timing(response):
        started = request.environ.get("started")
        if started is not None and request.endpoint:
            metrics.observe(request.endpoint, (time.perf_counter() - started) * 1000)
        return response

    @app.errorhandler(BadRequest)
    def _bad_request(exc):
        return jsonify({"error": str(exc)}), 400

    @app.errorhandler(ConfigError)
    def _bad_config(exc):
        return jsonify({"error": f"unsupported labeling config: {exc}"}), 400

    @app.errorhandler(ModelLoadError)
    def _model_unavailable(exc):
        logger.error("%s", exc)
        return jsonify({"error": str(exc)}), 503

    @app.errorhandler(HTTPException)
    def _http_error(exc):
        return jsonify({"error": exc.description}), exc.code

    @app.errorhandler(Exception)
    def _unexpected(exc):
        logger.exception("unhandled error on %s", request.path)
        metrics.add(errors=1)
        return jsonify({"error": f"internal error: {type(exc).__name__}"}), 500

    @app.get("/")
    @app.get("/health")
    def health():
        return jsonify({"status": "UP", "model_class": ClipClassifier.__name__})

    @app.post("/setup")
    def setup():
        body = _json_body()
        project = _project_id(body.get("project"))
        schema = body.get("schema") or body.get("label_config")
        if not isinstance(schema, str):
            raise BadRequest("setup needs the labeling config in 'schema'")
        hostname, token = body.get("hostname"), body.get("access_token")
        hostname = hostname if isinstance(hostname, str) and hostname.startswith(("http://", "https://")) else None
        token = token if isinstance(token, str) and token.strip() else None
        registry.remember(project, schema, hostname, token)
        model = registry.get(project, schema)
        # Label Studio waits only a few seconds for /setup: load weights in the background.
        threading.Thread(target=_warm_up, args=(model,), name="warm-up").start()
        if all(registry.connection(project)) and not model.trained \
                and ranked_version(settings.model_dir, project) != model.model_version:
            # cold start: rank the queue from zero-shot before the first annotation (background run)
            registry.log.request_training(project, schema)
            registry.trainer.notify(project)
        return jsonify({"model_version": model.model_version})

    @app.post("/predict")
    def predict():
        body = _json_body()
        tasks = body.get("tasks")
        if not isinstance(tasks, list):
            raise BadRequest("'tasks' must be a list of Label Studio tasks")
        label_config = body.get("label_config")
        if label_config is not None and not isinstance(label_config, str):
            raise BadRequest("'label_config' must be a string")
        params = body.get("params") if isinstance(body.get("params"), dict) else {}
        model = registry.get(_project_id(body.get("project")), label_config)
        results = model.predict(tasks, context=params.get("context"))
        served = sum(1 for r in results if r)
        metrics.add(predict_requests=1, tasks=len(tasks), predictions=served, tasks_failed=len(tasks) - served)
        return jsonify({"results": results})

    @app.post("/search")
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
        to_name, label_config = body.get("to_name"), body.get("label_config")
        if to_name is not None and not isinstance(to_name, str):
            raise BadRequest("'to_name' must be the name of an object tag (e.g. \"image\")")
        if label_config is not None and not isinstance(label_config, str):
            raise BadRequest("'label_config' must be a string")
        if body.get("project") in (None, ""):
            raise BadRequest("'project' is required: the Label Studio project id whose tasks to search")
        project = _project_id(body.get("project"))
        model = registry.get(project, label_config)
        labeled = {t.task_id for t in registry.log.labeled_tasks(project)}
        try:
            found = model.search(query.strip(), k, exclude_task_ids=labeled, to_name=to_name)
        except SearchError as exc:
            raise BadRequest(str(exc)) from None
        metrics.add(search_requests=1)
        return jsonify(found)

    @app.post("/webhook")
    def webhook():
        # Label Studio waits 1 s and runs this inside the annotator's request: record, then train later.
        body = _json_body()
        event = body.get("action")
        if not isinstance(event, str) or event not in TRAIN_EVENTS:
            return jsonify({"status": "ignored", "reason": f"unknown event {event!r}"}), 200
        project = body.get("project")
        if project in (None, ""):
            raise BadRequest("webhook payload has no project")
        project_id = _project_id(project.get("id") if isinstance(project, dict) else project)
        metrics.add(**{f"webhook_{event.lower()}": 1})
        result = registry.trainer.handle(project_id, event, body)
        return jsonify({"status": "ok", "result": result}), 201

    @app.get("/reports")
    def reports_list():
        projects = [request.args["project"]] if request.args.get("project") else registry.versions.projects()
        listing = []
        for project in projects:
            for version in registry.versions.all(_project_id(project)):
                report = version.report() or {}
                listing.append({
                    "project": project, "version": version.name, "number": version.number,
                    "created_at": version.meta.get("created_at"), "labels": version.meta.get("labels"),
                    "head": report.get("head"), "test_accuracy": (report.get("test") or {}).get("accuracy"),
                    "url": f"/reports/{version.number}?project={project}",
                })
        return jsonify({"reports": listing})

    @app.get("/reports/<path:version>")
    def report_view(version):
        project = request.args.get("project")
        if not project:
            known = registry.versions.projects()
            if len(known) != 1:
                raise BadRequest(f"add ?project=<id>; projects with reports: {known}")
            project = known[0]
        project = _project_id(project)
        found = registry.versions.latest(project) if version == "latest" else \
            registry.versions.find(project, version.removeprefix("v") if version[1:].isdigit() else version)
        if found is None:
            return jsonify({"error": f"no report {version!r} for project {project}"}), 404
        if request.args.get("format") == "json" or request.accept_mimetypes.best == "application/json":
            return jsonify(found.report() or {})
        html = found.directory / "report.html"
        if not html.exists():
            return jsonify({"error": f"version {found.name} has no HTML report"}), 404
        return Response(html.read_text(), mimetype="text/html")

    @app.get("/metrics")
    def metrics_view():
        trainer = registry.trainer
        if trainer.jobs is not None:  # RQ workers train, maybe elsewhere: the cluster's state is in Redis
            return jsonify({**metrics.snapshot(registry.stats()), "process": _process(registry),
                            "training": trainer.jobs.status()})
        return jsonify({**metrics.snapshot(registry.stats()), "process": _process(registry),
                        "training": {"runs": dict(trainer.runs), "failures": dict(trainer.failures),
                                     "last_error": trainer.last_error, "busy": trainer.busy(),
                                     "last_ranking": trainer.last_ranking}})

    resumed = registry.trainer.resume()  # annotations recorded before a restart are trained on now
    if resumed:
        logger.info("resuming training for projects %s", resumed)
    logger.info("backend ready: %s", settings)
    return app
