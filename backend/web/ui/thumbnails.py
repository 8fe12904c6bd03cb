"""Thumbnails of a project's image tasks, served by the backend (which holds the Label Studio token).

The browser names only (project, task): the image reference is read from that task's data in Label
Studio, and only when the task belongs to that project; the download goes through the model's Fetcher,
the same rules as /predict (host allowlist, byte and pixel limits, per-download deadline, credentials to
Label Studio's origin only, no redirect followed to a foreign host). The browser is never redirected.
Small JPEGs are kept in a bounded LRU cache for a while.
"""
from __future__ import annotations

import io
import threading
import time
from collections import OrderedDict

THUMB_PX = 192
CACHE_ITEMS = 4000  # ~10 KB each
CACHE_S = 600.0


class NotFound(LookupError):
    """No such task in this project, or it has no image (HTTP 404)."""


class Unavailable(RuntimeError):
    """The image could not be fetched or decoded under the fetch rules (HTTP 502); the message says why."""


class ThumbnailCache:
    def __init__(self, items: int = CACHE_ITEMS, ttl_s: float = CACHE_S, clock=time.monotonic):
        self.items, self.ttl_s, self._clock = items, ttl_s, clock
        self._cache: OrderedDict[tuple[str, int], tuple[float, bytes]] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, key: tuple[str, int]) -> bytes | None:
        with self._lock:
            found = self._cache.get(key)
            if found is None or self._clock() - found[0] > self.ttl_s:
                self._cache.pop(key, None)
                return None
            self._cache.move_to_end(key)
            return found[1]

    def put(self, key: tuple[str, int], jpeg: bytes) -> None:
        with self._lock:
            self._cache[key] = (self._clock(), jpeg)
            self._cache.move_to_end(key)
            while len(self._cache) > self.items:
                self._cache.popitem(last=False)


def task_image_ref(client, project: str, task: int, data_key: str) -> str:
    """The image reference of a task of this project (NotFound for another project's task)."""
    from label_studio_sdk.core.api_error import ApiError

    try:
        found = client.tasks.get(id=str(int(task)))
    except ApiError as exc:
        if exc.status_code == 404:
            raise NotFound(f"no task {task}") from None
        raise
    if int(getattr(found, "project", -1) or -1) != int(project):
        raise NotFound(f"task {task} is not a task of project {project}")
    ref = (getattr(found, "data", None) or {}).get(data_key)
    if not isinstance(ref, str) or not ref:
        raise NotFound(f"task {task} has no image in {data_key!r}")
    return ref


def render(fetcher, ref: str, task: int) -> bytes:
    """A JPEG thumbnail of the reference, fetched and decoded under the fetcher's limits."""
    from PIL import Image

    try:
        image = fetcher.load_image(ref, task_id=int(task), target_size=THUMB_PX)
    except Exception as exc:  # noqa: BLE001 (FetchError: refused host, too large, deadline...; or decoding)
        raise Unavailable(f"image of task {task} unavailable: {exc}") from None
    image = image.convert("RGB")
    image.thumbnail((THUMB_PX, THUMB_PX), Image.Resampling.BILINEAR)
    out = io.BytesIO()
    image.save(out, format="JPEG", quality=80)
    return out.getvalue()
