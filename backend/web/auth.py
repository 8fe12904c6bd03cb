"""Who may call the backend: HTTP basic auth (BASIC_AUTH_USER/PASS) on everything but /health, and on
/webhook also an X-Webhook-Secret header (WEBHOOK_SECRET).

Label Studio 1.23 sends the model connection's basic auth with /health, /setup, /predict and the
START_TRAINING webhook (ml/api_connector.py), but the project webhook it creates for the backend
(ml/models.py, create_ml_webhook) carries only the webhook's own ``headers``, empty by default: with
basic auth on, ANNOTATION_* events need that header added to the webhook (README, "Protecting /webhook").

Credentials are compared as bytes, in constant time, user and password both: non-ASCII ones arrive as
UTF-8 (browsers, curl) or as Latin-1 (python-requests, so Label Studio), and either is accepted.
"""
from __future__ import annotations

import base64
import binascii
import hmac

from flask import Request

from ..config import Settings

WEBHOOK_SECRET_HEADER = "X-Webhook-Secret"


def _basic_credentials(header: str | None) -> tuple[bytes, bytes]:
    """(user, password) bytes of a Basic Authorization header; empty ones when there is none."""
    scheme, _, encoded = (header or "").strip().partition(" ")
    if scheme.lower() != "basic":
        return b"", b""
    try:
        user, _, password = base64.b64decode(encoded.strip(), validate=True).partition(b":")
    except (binascii.Error, ValueError):
        return b"", b""
    return user, password


def _matches(given: bytes, expected: str | None) -> bool:
    """Whether ``given`` is the UTF-8 or the Latin-1 encoding of ``expected`` (both always compared)."""
    expected = expected or ""
    utf8 = expected.encode("utf-8", "surrogatepass")
    try:
        latin1 = expected.encode("latin-1")
    except UnicodeEncodeError:  # not Latin-1: only UTF-8 can carry it
        latin1 = utf8
    same = hmac.compare_digest(given, utf8) | hmac.compare_digest(given, latin1)
    return same and bool(expected)  # nothing matches an unset value


def authorized(settings: Settings, request: Request) -> bool:
    """Whether the request carries the configured credentials (no short-circuit: the time taken does
    not tell which field was wrong)."""
    user, password = _basic_credentials(request.headers.get("Authorization"))
    ok = _matches(user, settings.basic_auth_user) & _matches(password, settings.basic_auth_pass)
    if settings.webhook_secret and request.path == "/webhook":
        # WSGI hands header values over as Latin-1 text: encoding them back gives the bytes sent
        secret = (request.headers.get(WEBHOOK_SECRET_HEADER) or "").encode("latin-1", "replace")
        ok |= _matches(secret, settings.webhook_secret)
    return ok
