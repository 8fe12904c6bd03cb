"""CSRF protection for the page's writes: every POST must come from the page itself.

Three checks, all required: the request is JSON (an HTML form cannot send that without a CORS
preflight, which this server never grants); an Origin header, when the browser sends one, names this
server (and Sec-Fetch-Site is not "cross-site"); and an X-CSRF-Token header carries the token the page
was served with: an HMAC, under a secret kept in MODEL_DIR (shared by every gunicorn worker), of the
credentials the request came with, so a token is useless with other credentials.
"""
from __future__ import annotations

import hashlib
import hmac
import os
import secrets
from pathlib import Path
from urllib.parse import urlsplit

from flask import Request

HEADER = "X-CSRF-Token"


class Refused(Exception):
    """A write that did not come from the page (HTTP 403); the message says which check failed."""


def load_secret(model_dir: Path) -> bytes:
    """The page's signing secret: created once (atomically) in MODEL_DIR, read by every worker."""
    path = Path(model_dir) / ".ui-secret"
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        return path.read_bytes()
    with os.fdopen(fd, "wb") as f:
        f.write(secrets.token_bytes(32))
    return path.read_bytes()


def token(secret: bytes, request: Request) -> str:
    credentials = request.headers.get("Authorization") or "anonymous"
    return hmac.new(secret, b"ui-csrf\0" + credentials.encode("latin-1", "replace"), hashlib.sha256).hexdigest()


def check_write(secret: bytes, request: Request) -> None:
    """Raises Refused unless the POST carries the page's token, from the page's origin, as JSON."""
    if not request.is_json:
        raise Refused("writes must be JSON requests from the page")
    if request.headers.get("Sec-Fetch-Site", "").lower() == "cross-site":
        raise Refused("cross-site request refused")
    origin = request.headers.get("Origin")
    if origin is not None and urlsplit(origin).netloc.lower() != (request.host or "").lower():
        raise Refused("cross-origin request refused")
    sent = request.headers.get(HEADER, "")
    if not hmac.compare_digest(sent.encode("latin-1", "replace"), token(secret, request).encode("ascii")):
        raise Refused(f"missing or wrong {HEADER} header: reload the page")
