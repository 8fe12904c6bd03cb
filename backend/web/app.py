"""The Flask app: settings validated at start, basic auth, error handlers, the routes (routes.py).

Run with gunicorn: gunicorn 'backend.web:create_app()' (see scripts/serve.sh).
"""
from __future__ import annotations

import logging
import time

import httpx

from flask import Flask, Response, jsonify, request
from werkzeug.exceptions import HTTPException

from ..config import Settings, SettingsError
from ..labelstudio.labelconfig import ConfigError
from ..labelstudio.protocol import ProtocolError
from ..model import ModelLoadError
from ..runtime.build import build_runtime
from ..runtime.connections import BindingConflict
from ..runtime.models import UnknownConfig
from .auth import authorized
from .limits import install_request_slots, install_webhook_limit
from .metrics import Metrics
from .routes import BadRequest, api
from .ui import install_ui

logger = logging.getLogger(__name__)

PUBLIC_PATHS = {"/", "/health"}


def create_app(settings: Settings | None = None) -> Flask:
    if settings is None:
        try:
            settings = Settings.from_env()
        except SettingsError as exc:
            raise SystemExit(f"configuration error: {exc}") from None
    logging.basicConfig(level=settings.log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    app = Flask(__name__)
    app.config["MAX_CONTENT_LENGTH"] = 256 * 1024 * 1024
    runtime = build_runtime(settings)
    metrics = Metrics(stats=runtime.stats, preannotation=runtime.preannotator.status,
                      training=runtime.scheduler.status)
    app.extensions["runtime"] = runtime
    app.extensions["metrics"] = metrics
    app.register_blueprint(api)
    install_ui(app, settings)  # the search and bulk-labeling page, GET /ui
    _add_auth_and_timing(app, settings, metrics)
    install_request_slots(app, settings)  # after auth: /predict and /search take a slot, or get a 503
    install_webhook_limit(app, settings)
    _add_error_handlers(app, metrics)
    resumed = runtime.scheduler.start()  # annotations recorded before a restart are trained on now
    if resumed:
        logger.info("resuming training for projects %s", resumed)
    logger.info("backend ready: %s", settings)
    return app


def _add_auth_and_timing(app: Flask, settings: Settings, metrics: Metrics) -> None:
    @app.before_request
    def _auth():
        request.environ["started"] = time.perf_counter()
        if settings.basic_auth_user and request.path not in PUBLIC_PATHS and not authorized(settings, request):
            return Response("Unauthorized", 401, {"WWW-Authenticate": 'Basic realm="ml-backend"'})

    @app.after_request
    def _timing(response):
        started = request.environ.get("started")
        if started is not None and request.endpoint:
            metrics.observe(request.endpoint.removeprefix("api."), time.perf_counter() - started)
        return response


def _add_error_handlers(app: Flask, metrics: Metrics) -> None:
    def bad_request(exc):
        return jsonify({"error": str(exc)}), 400

    for error in (BadRequest, ProtocolError, UnknownConfig):
        app.register_error_handler(error, bad_request)

    @app.errorhandler(ConfigError)
    def _bad_config(exc):
        return jsonify({"error": f"unsupported labeling config: {exc}"}), 400

    @app.errorhandler(BindingConflict)
    def _rebinding_refused(exc):
        logger.warning("%s", exc)
        return jsonify({"error": str(exc)}), 409

    @app.errorhandler(ModelLoadError)
    def _model_unavailable(exc):
        logger.error("%s", exc)
        return jsonify({"error": str(exc)}), 503

    @app.errorhandler(httpx.TransportError)
    @app.errorhandler(TimeoutError)
    def _store_unavailable(exc):  # a call to the Chroma server timed out (CHROMA_TIMEOUT) or could not connect
        logger.warning("%s on %s: %s", type(exc).__name__, request.path, exc)
        return jsonify({"error": f"the Chroma server did not answer in time ({type(exc).__name__}); "
                                 "retry shortly"}), 503, {"Retry-After": "10"}

    @app.errorhandler(HTTPException)
    def _http_error(exc):
        return jsonify({"error": exc.description}), exc.code

    @app.errorhandler(Exception)
    def _unexpected(exc):
        logger.exception("unhandled error on %s", request.path)
        metrics.add(errors=1)
        return jsonify({"error": f"internal error: {type(exc).__name__}"}), 500
