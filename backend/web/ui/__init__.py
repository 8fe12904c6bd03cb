"""The search and bulk-labeling page (GET /ui), beside Label Studio: find items by a text query or "more
like this", select them, give them one label (predictions for review or annotations), open them in a
Data Manager tab; the project's overview and the items along the head's class boundaries."""
from __future__ import annotations

from flask import Flask

from ...config import Settings
from .guard import load_secret
from .routes import ui
from .thumbnails import ThumbnailCache


def install_ui(app: Flask, settings: Settings) -> None:
    app.extensions["ui_secret"] = load_secret(settings.model_dir)
    app.extensions["ui_thumbnails"] = ThumbnailCache()
    app.register_blueprint(ui)
