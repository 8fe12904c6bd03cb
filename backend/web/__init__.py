"""The web layer: a Flask app serving Label Studio's ML backend protocol (routes.py)."""
from .app import create_app

__all__ = ["create_app"]
