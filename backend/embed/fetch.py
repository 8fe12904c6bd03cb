"""Fetch task data: images and texts referenced by Label Studio tasks.

Sources: http(s) URLs, Label Studio relative URLs (/data/upload/..., /data/local-files/?d=...),
cloud-storage URIs (s3://, gs://, azure-blob://) through Label Studio's resolver, data: URIs,
and files under the local-files document root. Every failure is a FetchError with a reason,
so one bad item never fails a batch.

Which host a URL reaches, the allowlist and the per-download deadline live in download.py; decoding
under a memory bound in images.py.
"""
from __future__ import annotations

import base64
import binascii
import logging
import os
import stat
import urllib.parse
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import requests
from PIL import Image

from .download import WATCHDOG, DeadlineAdapter, Origin, UnsafeURL, origin, origin_or_none
from .errors import FetchError
from .gpu_decode import JpegBytes, probe_jpeg
from .images import DEFAULT_MAX_IMAGE_PIXELS, DEFAULT_PIXELS_IN_FLIGHT, PixelBudget, decode_image

__all__ = ["Auth", "Fetcher", "FetchError", "ItemLoader", "decode_image"]

logger = logging.getLogger(__name__)

CLOUD_SCHEMES = ("s3", "gs", "azure-blob", "azure-spi")
LS_RELATIVE_PREFIXES = ("/data/", "/storage-data/", "/tasks/", "/api/")
DEFAULT_MAX_BYTES = 50 * 1024 * 1024
MAX_LOCAL_PATH_CHARS = 4096  # PATH_MAX on Linux


class Auth(Protocol):
    """Credentials for Label Studio's host (e.g. labelstudio.client.LabelStudioAuth)."""

    def headers(self, force_refresh: bool = False) -> dict:
        ...


class Fetcher:
    """Downloads and decodes task data under explicit limits.

    auth: sends credentials to Label Studio's origin only (scheme, host and port; None: no credentials).
    allowed_hosts: other hosts task URLs may point to ("*" = any, "*.example.com" = subdomains, either
    with ":port" = that port only). document_root: the directory local paths and /data/local-files/
    resolve under (None: no local files). timeout_s bounds each socket operation, deadline_s a whole
    download (default 3 x timeout_s). max_pixels_in_flight: the decoded pixels this process holds at once
    (shared by every Fetcher with that limit).
    """

    def __init__(self, *, label_studio_url: str | None = None, auth: Auth | None = None, timeout_s: float = 10.0,
                 max_bytes: int = DEFAULT_MAX_BYTES, max_image_pixels: int = DEFAULT_MAX_IMAGE_PIXELS,
                 max_text_chars: int = 20_000, allowed_hosts: tuple[str, ...] = (),
                 document_root: Path | None = None, pool_size: int = 16, deadline_s: float | None = None,
                 max_pixels_in_flight: int = DEFAULT_PIXELS_IN_FLIGHT):
        self.label_studio_url = label_studio_url.rstrip("/") if label_studio_url else None
        self.label_studio_origin: Origin | None = origin_or_none(self.label_studio_url)
        self.auth = auth
        self.timeout_s = timeout_s
        self.deadline_s = deadline_s if deadline_s is not None else timeout_s * 3
        self.max_bytes = max_bytes
        self.max_image_pixels = max_image_pixels
        self.pixel_budget = PixelBudget.shared(max_pixels_in_flight)
        self.max_text_chars = max_text_chars
        self.allowed_hosts = tuple(allowed_hosts)
        # resolved, so the containment check compares real paths
        self.document_root = Path(document_root).resolve() if document_root is not None else None
        self.session = requests.Session()
        adapter = DeadlineAdapter(pool_connections=4, pool_maxsize=pool_size)
        self.session.mount("http://", adapter)
        self.session.mount("https://", adapter)

    # -- raw bytes ---------------------------------------------------------------------------
    def fetch_bytes(self, ref: str, task_id: int | None = None) -> bytes:
        if not isinstance(ref, str) or not ref.strip():
            raise FetchError("empty or non-string data reference")
        ref = ref.strip()
        if ref.startswith("data:"):
            return self._data_uri(ref)
        try:
            parsed = urllib.parse.urlparse(ref)
        except ValueError as exc:  # e.g. "http://[": an unclosed IPv6 host
            raise FetchError(f"malformed URL {_redact(ref)!r}: {exc}") from None
        if parsed.scheme in CLOUD_SCHEMES:
            return self._cloud(ref, task_id)
        if parsed.scheme in ("http", "https"):
            return self._http(ref, with_auth=self._is_label_studio(ref))
        if ref.startswith(LS_RELATIVE_PREFIXES):
            local = self._local_files_path(parsed)
            if local is not None:
                return self._read_local(local)
            if not self.label_studio_url:
                raise FetchError(f"relative URL {ref[:80]!r} needs LABEL_STUDIO_URL")
            return self._http(self.label_studio_url + ref, with_auth=True)
        if parsed.scheme in ("", "file"):
            return self._read_local(self._under_document_root(parsed.path or ref))
        raise FetchError(f"unsupported URL scheme {parsed.scheme!r}")

    def _is_label_studio(self, url: str) -> bool:
        """Same scheme, host and port as LABEL_STUDIO_URL: where credentials may go."""
        return self.label_studio_origin is not None and origin_or_none(url) == self.label_studio_origin

    def _data_uri(self, ref: str) -> bytes:
        header, _, payload = ref.partition(",")
        if not _:
            raise FetchError("malformed data: URI")
        if len(payload) > self.max_bytes * 4 // 3 + 4:
            raise FetchError("data: URI larger than FETCH_MAX_BYTES")
        try:
            if header.endswith(";base64"):
                return base64.b64decode(payload, validate=False)
            return urllib.parse.unquote_to_bytes(payload)
        except (binascii.Error, ValueError):
            raise FetchError("malformed base64 in data: URI") from None

    def _cloud(self, ref: str, task_id: int | None) -> bytes:
        if not self.label_studio_url or task_id is None:
            raise FetchError(f"{ref.split(':', 1)[0]}:// URIs are resolved through Label Studio; set LABEL_STUDIO_URL")
        fileuri = base64.urlsafe_b64encode(ref.encode()).decode()
        return self._http(f"{self.label_studio_url}/tasks/{task_id}/resolve/?fileuri={fileuri}", with_auth=True)

    def host_allowed(self, url: str) -> bool:
        """Label Studio's host and port, plus ALLOWED_FETCH_HOSTS: the backend is no open proxy into the network."""
        try:
            self._allowed_origin(url)
        except FetchError:
            return False
        return True

    def _allowed_origin(self, url: str) -> Origin:
        """The origin a request for url reaches, judged by the parser that connects; FetchError if refused."""
        try:
            target = origin(url)
        except UnsafeURL as exc:
            raise FetchError(f"refused URL {_redact(url)!r}: {exc}") from None
        ls = self.label_studio_origin
        if ls is not None and (target.host, target.port) == (ls.host, ls.port):
            return target
        if any(target.matches(pattern) for pattern in self.allowed_hosts):
            return target
        raise FetchError(f"host of {_redact(url)} is not Label Studio's and not in ALLOWED_FETCH_HOSTS")

    def _auth_headers(self, force_refresh: bool) -> dict:
        if self.auth is None:
            return {}
        try:
            return self.auth.headers(force_refresh=force_refresh)
        except FetchError:
            raise
        except Exception as exc:  # e.g. a failed token exchange: this item fails, with the reason
            raise FetchError(str(exc) or type(exc).__name__) from None

    def _http(self, url: str, with_auth: bool) -> bytes:
        """The body at url, within deadline_s from the first connection to the last byte, redirects included."""
        with WATCHDOG.deadline(self.deadline_s) as download:
            try:
                body, error = self._follow(url, with_auth), None
            except FetchError as exc:
                body, error = None, exc
        if download.expired:  # sockets shut down mid-transfer: whatever came back is incomplete
            raise FetchError(f"{_redact(url)} not downloaded within FETCH_DEADLINE={self.deadline_s:g}s (slow server)")
        if error is not None:
            raise error
        return body

    def _follow(self, url: str, with_auth: bool) -> bytes:
        refreshed = False
        for _hop in range(4):  # at most 3 redirects, each checked against the allowlist
            current = self._allowed_origin(url)
            headers = self._auth_headers(force_refresh=refreshed) if with_auth else {}
            try:
                with self.session.get(url, headers=headers, timeout=self.timeout_s, stream=True,
                                      allow_redirects=False) as resp:
                    if resp.status_code == 401 and with_auth and not refreshed and "Bearer" in str(headers):
                        refreshed = True  # access token expired early: refresh once
                        continue
                    if resp.is_redirect and resp.headers.get("Location"):
                        target = _join(url, resp.headers["Location"])
                        # credentials go to Label Studio only: never along a redirect to another origin
                        # (another host or port, or https -> http)
                        with_auth = with_auth and origin_or_none(target) == current
                        url = target
                        continue
                    if resp.status_code != 200:
                        raise FetchError(f"HTTP {resp.status_code} for {_redact(url)}")
                    return self._read_body(resp, url)
            except (requests.RequestException, ValueError) as exc:  # ValueError: requests parsing a bad Location
                raise FetchError(f"{type(exc).__name__} for {_redact(url)}") from None
        raise FetchError(f"too many redirects or repeated 401 for {_redact(url)}")

    def _read_body(self, resp, url: str) -> bytes:
        """The response body, refused past max_bytes (declared or streamed); the deadline is the watchdog's."""
        limit = self.max_bytes
        declared = resp.headers.get("Content-Length")
        if declared and declared.isdigit() and int(declared) > limit:
            raise FetchError(f"{_redact(url)} is {int(declared)} bytes, over FETCH_MAX_BYTES={limit}")
        chunks, size = [], 0
        for chunk in resp.iter_content(256 * 1024):
            size += len(chunk)
            if size > limit:
                raise FetchError(f"{_redact(url)} exceeds FETCH_MAX_BYTES={limit}")
            chunks.append(chunk)
        return b"".join(chunks)

    # -- local files ---------------------------------------------------------------------------
    def _local_files_path(self, parsed) -> Path | None:
        """/data/local-files/?d=rel/path is read straight from disk when we share LOCAL_FILES_DOCUMENT_ROOT."""
        if self.document_root is None or not parsed.path.startswith("/data/local-files"):
            return None
        rel = urllib.parse.parse_qs(parsed.query).get("d", [""])[0]  # parse_qs has decoded it: once is all
        try:
            path = self._under_document_root(rel, unquote=False)
        except FetchError:
            return None  # not ours to read: Label Studio serves it (or says why not)
        return path if path.exists() else None  # a FIFO exists too: _read_local refuses it without blocking

    def _under_document_root(self, raw: str, unquote: bool = True) -> Path:
        root = self.document_root
        if root is None:
            raise FetchError("local paths need LOCAL_FILES_DOCUMENT_ROOT")
        raw = urllib.parse.unquote(raw) if unquote else raw
        if "\x00" in raw or len(raw) > MAX_LOCAL_PATH_CHARS:
            raise FetchError("invalid local path (a NUL byte, or longer than PATH_MAX)")
        try:
            candidate = Path(raw) if Path(raw).is_absolute() else root / raw
            resolved = candidate.resolve()  # follows symlinks, so a link pointing outside is refused too
        except (OSError, ValueError) as exc:
            raise FetchError(f"invalid local path ({getattr(exc, 'strerror', None) or type(exc).__name__})") from None
        if resolved != root and root not in resolved.parents:
            raise FetchError("path is outside LOCAL_FILES_DOCUMENT_ROOT")
        return resolved

    def _read_local(self, path: Path) -> bytes:
        """A regular file's bytes. Opened non-blocking, then checked: a FIFO or a device never blocks a worker."""
        try:
            fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_NOFOLLOW | os.O_CLOEXEC)
        except (OSError, ValueError) as exc:
            raise FetchError(f"cannot read local file: {getattr(exc, 'strerror', None) or type(exc).__name__}") from None
        info = os.fstat(fd)  # before fdopen, which refuses a directory with its own exception
        if not stat.S_ISREG(info.st_mode):
            os.close(fd)
            raise FetchError("local path is not a regular file (a directory, FIFO, socket or device?)")
        with os.fdopen(fd, "rb", buffering=0) as file:
            if info.st_size > self.max_bytes:
                raise FetchError(f"file is {info.st_size} bytes, over FETCH_MAX_BYTES")
            try:
                data = file.read(self.max_bytes + 1)
            except OSError as exc:
                raise FetchError(f"cannot read local file: {exc.strerror or type(exc).__name__}") from None
        if len(data) > self.max_bytes:
            raise FetchError("file grew over FETCH_MAX_BYTES while read")
        return data

    # -- decoded items -------------------------------------------------------------------------
    def load_image(self, ref: str, task_id: int | None = None, target_size: int = 224,
                   jpeg_passthrough: bool = False) -> Image.Image | JpegBytes:
        """The decoded image; with jpeg_passthrough, a plain JPEG comes back undecoded as JpegBytes (for an
        encoder that decodes on its device, gpu_decode.py) and only other images are decoded here."""
        data = self.fetch_bytes(ref, task_id)
        if jpeg_passthrough and (jpeg := probe_jpeg(data, self.max_image_pixels)) is not None:
            return jpeg
        return decode_image(data, self.max_image_pixels, target_size, self.pixel_budget)

    def load_text(self, value, is_url: bool = False, task_id: int | None = None) -> str:
        if is_url:
            raw = self.fetch_bytes(str(value), task_id)
            value = raw.decode("utf-8", errors="replace")
        if not isinstance(value, str):
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                value = str(value)
            else:
                raise FetchError(f"text value is a {type(value).__name__}, not a string")
        # lone surrogates (from non-UTF-8 input decoded with surrogateescape) break tokenizers
        value = value.encode("utf-8", "replace").decode("utf-8").strip()
        if not value:
            raise FetchError("empty text")
        return value[: self.max_text_chars]


@dataclass(frozen=True)
class ItemLoader:
    """Loads one item of an object tag for the embedding pipeline (embed_items' ``load``): an image, decoded
    for the encoder's input size, or a text."""
    fetcher: Fetcher
    modality: str  # "image" or "text"
    is_url: bool = False  # a text given as a URL (valueType="url")
    image_size: int = 224  # JPEG draft decoding targets the encoder's input size (more for larger models)
    jpeg_passthrough: bool = False  # the encoder decodes plain JPEGs on its device (gpu_decode.py)

    def __call__(self, item) -> Image.Image | JpegBytes | str:
        if self.modality == "image":
            if not isinstance(item.source, str):
                raise FetchError(f"image reference is a {type(item.source).__name__}, not a URL")
            return self.fetcher.load_image(item.source, task_id=item.task_id, target_size=self.image_size,
                                           jpeg_passthrough=self.jpeg_passthrough)
        return self.fetcher.load_text(item.source, is_url=self.is_url, task_id=item.task_id)


def _join(url: str, location: str) -> str:
    try:
        return urllib.parse.urljoin(url, location)
    except ValueError:
        raise FetchError(f"malformed redirect Location from {_redact(url)}") from None


def _redact(url: str) -> str:
    """URL for logs: no query string (signed URLs and tokens live there)."""
    return url.split("#", 1)[0].split("?", 1)[0][:200]  # no parsing: a malformed URL is redacted too
