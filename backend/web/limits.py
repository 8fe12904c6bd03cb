"""Keep the light endpoints answering: at most N /predict and /search requests at once per process; and
webhook bodies no larger than their event type needs (webhook_size_limit).

gunicorn gives each worker process THREADS threads. Without a limit, THREADS slow /predict calls (task
images on a slow server, a heavy batch) take every thread, and /health and /webhook time out behind
them. With PREDICT_CONCURRENCY slots (default THREADS - 2, at least 1), the other threads stay free for
the light endpoints. A heavy request that finds no free slot within PREDICT_SLOT_WAIT seconds gets a
503 with a JSON error and Retry-After: a clear answer, never a silent wait.
"""
from __future__ import annotations

import logging
import math
import threading

from flask import Flask, g, jsonify, request
from werkzeug.exceptions import RequestEntityTooLarge

from ..config import Settings

logger = logging.getLogger(__name__)

HEAVY_ENDPOINTS = frozenset({"api.predict", "api.search"})
# events whose payload lists many items (an import, a bulk delete); the others carry one annotation
LARGE_EVENTS = frozenset({"TASKS_CREATED", "ANNOTATIONS_DELETED"})


def webhook_size_limit(settings: Settings, action: str | None) -> int:
    """The largest body accepted for a webhook event (any event while its action is not known yet)."""
    if action is None or action in LARGE_EVENTS:
        return max(settings.webhook_max_bytes, settings.webhook_tasks_max_bytes)
    return settings.webhook_max_bytes


def check_webhook_size(settings: Settings, action: str) -> None:
    """413 with the limit named when this event's body is larger than its type needs (nothing recorded)."""
    limit = webhook_size_limit(settings, action)
    size = request.content_length or len(request.get_data(cache=True))
    if size > limit:
        setting = "WEBHOOK_TASKS_MAX_BYTES" if action in LARGE_EVENTS else "WEBHOOK_MAX_BYTES"
        raise RequestEntityTooLarge(f"a {action} webhook of {size} bytes is over the {limit} bytes this event "
                                    f"type may carry ({setting}); nothing was recorded")


def install_webhook_limit(app: Flask, settings: Settings) -> None:
    """/webhook bodies beyond the largest event limit get 413 before they are read into memory."""
    @app.before_request
    def _cap_webhook_body():
        if request.endpoint == "api.webhook":
            request.max_content_length = webhook_size_limit(settings, None)


def slots_for(settings: Settings) -> int:
    return settings.predict_concurrency or max(1, settings.threads - 2)


class RequestSlots:
    """A counting semaphore that knows how many of its slots are taken."""

    def __init__(self, slots: int, wait_s: float):
        self.slots, self.wait_s = slots, wait_s
        self._semaphore = threading.BoundedSemaphore(slots)
        self._lock = threading.Lock()
        self.busy = 0
        self.refused = 0

    def acquire(self) -> bool:
        if not self._semaphore.acquire(timeout=self.wait_s):
            with self._lock:
                self.refused += 1
            return False
        with self._lock:
            self.busy += 1
        return True

    def release(self) -> None:
        with self._lock:
            self.busy -= 1
        self._semaphore.release()


def install_request_slots(app: Flask, settings: Settings) -> RequestSlots:
    """Hooks the slots into app: register after authentication, so a refused login takes no slot."""
    limiter = RequestSlots(slots_for(settings), settings.predict_slot_wait_s)
    app.extensions["request_slots"] = limiter
    retry_after = str(max(1, math.ceil(settings.predict_slot_wait_s * 2)))

    @app.before_request
    def _take_slot():
        if request.endpoint not in HEAVY_ENDPOINTS:
            return None
        if not limiter.acquire():
            logger.warning("%s refused: all %d PREDICT_CONCURRENCY slots busy", request.path, limiter.slots)
            body = {"error": f"busy: {limiter.slots} /predict or /search requests are already running in this "
                             f"worker (PREDICT_CONCURRENCY); retry in {retry_after} s"}
            return jsonify(body), 503, {"Retry-After": retry_after}
        g.request_slot = True
        return None

    @app.teardown_request
    def _free_slot(_exc):
        if g.pop("request_slot", False):
            limiter.release()

    return limiter
