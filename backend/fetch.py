"""Fetch task data: images and texts referenced by Label Studio tasks.

Sources: http(s) URLs, Label Studio relative URLs (/data/upload/..., /data/local-files/?d=...),
cloud-storage URIs (s3://, gs://, azure-blob://) through Label Studio's resolver, data: URIs,
and files under LOCAL_FILES_DOCUMENT_ROOT. Every failure is a FetchError with a reason,
so one bad item never fails a batch.
"""
from __future__ import annotations

import base64
import binascii
import io
import logging
import threading
import time
import urllib.parse
import warnings
from pathlib import Path

import requests
from PIL import Image, UnidentifiedImageError

from .settings import Settings

logger = logging.getLogger(__name__)
# We enforce our own MAX_IMAGE_PIXELS before decoding, with a clear per-task error instead of a warning.
warnings.simplefilter("ignore", Image.DecompressionBombWarning)

CLOUD_SCHEMES = ("s3", "gs", "azure-blob", "azure-spi")
LS_RELATIVE_PREFIXES = ("/data/", "/storage-data/", "/tasks/", "/api/")


class FetchError(Exception):
    """An item could not be fetched or decoded; str(error) is the reason shown in logs."""


def _is_jwt(token: str) -> bool:
    # Personal access tokens are JWT refresh tokens; legacy tokens are 40 hex chars.
    return token.count(".") == 2 and len(token) > 60


class LabelStudioAuth:
    """Authorization header for Label Studio, for both legacy tokens and personal access tokens."""

    def __init__(self, url: str | None, api_key: str | None, session: requests.Session, timeout: float):
        self.url = url.rstrip("/") if url else None
        self.api_key = api_key
        self._session = session
        self._timeout = timeout
        self._access: str | None = None
        self._access_expires = 0.0
        self._lock = threading.Lock()

    def headers(self, force_refresh: bool = False) -> dict:
        if not self.api_key:
            return {}
        if not _is_jwt(self.api_key):
            return {"Authorization": f"Token {self.api_key}"}
        with self._lock:
            if force_refresh or not self._access or time.time() > self._access_expires:
                self._access = self._exchange()
                self._access_expires = time.time() + 240  # access tokens live ~5 min
            return {"Authorization": f"Bearer {self._access}"}

    def _exchange(self) -> str:
        if not self.url:
            raise FetchError("LABEL_STUDIO_URL is required to use a personal access token")
        try:
            resp = self._session.post(f"{self.url}/api/token/refresh/", json={"refresh": self.api_key},
                                      timeout=self._timeout)
        except requests.RequestException as exc:
            raise FetchError(f"token refresh failed: {type(exc).__name__}") from None
        if resp.status_code != 200 or "access" not in resp.json():
            raise FetchError(f"token refresh failed: HTTP {resp.status_code} (is LABEL_STUDIO_API_KEY valid?)")
        return resp.json()["access"]


class Fetcher:
    def __init__(self, settings: Settings, label_studio_url: str | None = None, api_key: str | None = None):
        self.settings = settings
        self.session = requests.Session()
        adapter = requests.adapters.HTTPAdapter(pool_connections=4, pool_maxsize=max(8, settings.fetch_workers * 2))
        self.session.mount("http://", adapter)
        self.session.mount("https://", adapter)
        self.auth = LabelStudioAuth(label_studio_url or settings.label_studio_url,
                                    api_key or settings.label_studio_api_key, self.session, settings.fetch_timeout_s)

    # -- raw bytes ---------------------------------------------------------------------------
    def fetch_bytes(self, ref: str, task_id: int | None = None) -> bytes:
        if not isinstance(ref, str) or not ref.strip():
            raise FetchError("empty or non-string data reference")
        ref = ref.strip()
        if ref.startswith("data:"):
            return self._data_uri(ref)
        parsed = urllib.parse.urlparse(ref)
        if parsed.scheme in CLOUD_SCHEMES:
            return self._cloud(ref, task_id)
        if parsed.scheme in ("http", "https"):
            return self._http(ref, with_auth=self._is_label_studio(ref))
        if ref.startswith(LS_RELATIVE_PREFIXES):
            local = self._local_files_path(parsed)
            if local is not None:
                return self._read_local(local)
            if not self.auth.url:
                raise FetchError(f"relative URL {ref[:80]!r} needs LABEL_STUDIO_URL")
            return self._http(self.auth.url + ref, with_auth=True)
        if parsed.scheme in ("", "file"):
            return self._read_local(self._under_document_root(parsed.path or ref))
        raise FetchError(f"unsupported URL scheme {parsed.scheme!r}")

    def _is_label_studio(self, url: str) -> bool:
        if not self.auth.url:
            return False
        return urllib.parse.urlparse(url).netloc == urllib.parse.urlparse(self.auth.url).netloc

    def _data_uri(self, ref: str) -> bytes:
        header, _, payload = ref.partition(",")
        if not _:
            raise FetchError("malformed data: URI")
        if len(payload) > self.settings.fetch_max_bytes * 4 // 3 + 4:
            raise FetchError("data: URI larger than FETCH_MAX_BYTES")
        try:
            if header.endswith(";base64"):
                return base64.b64decode(payload, validate=False)
            return urllib.parse.unquote_to_bytes(payload)
        except (binascii.Error, ValueError):
            raise FetchError("malformed base64 in data: URI") from None

    def _cloud(self, ref: str, task_id: int | None) -> bytes:
        if not self.auth.url or task_id is None:
            raise FetchError(f"{ref.split(':', 1)[0]}:// URIs are resolved through Label Studio; set LABEL_STUDIO_URL")
        fileuri = base64.urlsafe_b64encode(ref.encode()).decode()
        return self._http(f"{self.auth.url}/tasks/{task_id}/resolve/?fileuri={fileuri}", with_auth=True)

    def host_allowed(self, url: str) -> bool:
        """Label Studio's host, plus ALLOWED_FETCH_HOSTS: the backend is no open proxy into the network."""
        host = (urllib.parse.urlparse(url).hostname or "").lower()
        if not host:
            return False
        if self.auth.url and host == (urllib.parse.urlparse(self.auth.url).hostname or "").lower():
            return True
        for pattern in self.settings.allowed_fetch_hosts:
            if pattern == "*" or host == pattern or (pattern.startswith("*.") and host.endswith(pattern[1:])):
                return True
        return False

    def _http(self, url: str, with_auth: bool) -> bytes:
        limit, timeout = self.settings.fetch_max_bytes, self.settings.fetch_timeout_s
        refreshed = False
        for _hop in range(4):  # at most 3 redirects, each checked against the allowlist
            if not self.host_allowed(url):
                raise FetchError(f"host of {_redact(url)} is not Label Studio's and not in ALLOWED_FETCH_HOSTS")
            headers = self.auth.headers(force_refresh=refreshed) if with_auth else {}
            try:
                with self.session.get(url, headers=headers, timeout=timeout, stream=True,
                                      allow_redirects=False) as resp:
                    if resp.status_code == 401 and with_auth and not refreshed and "Bearer" in str(headers):
                        refreshed = True  # access token expired early: refresh once
                        continue
                    if resp.is_redirect and resp.headers.get("Location"):
                        target = urllib.parse.urljoin(url, resp.headers["Location"])
                        # credentials go to Label Studio only, never along a redirect to another host
                        with_auth = with_auth and urllib.parse.urlparse(target).netloc == urllib.parse.urlparse(url).netloc
                        url = target
                        continue
                    if resp.status_code != 200:
                        raise FetchError(f"HTTP {resp.status_code} for {_redact(url)}")
                    declared = resp.headers.get("Content-Length")
                    if declared and declared.isdigit() and int(declared) > limit:
                        raise FetchError(f"{_redact(url)} is {int(declared)} bytes, over FETCH_MAX_BYTES={limit}")
                    chunks, size, deadline = [], 0, time.monotonic() + timeout * 3
                    for chunk in resp.iter_content(256 * 1024):
                        size += len(chunk)
                        if size > limit:
                            raise FetchError(f"{_redact(url)} exceeds FETCH_MAX_BYTES={limit}")
                        if time.monotonic() > deadline:
                            raise FetchError(f"{_redact(url)} download too slow")
                        chunks.append(chunk)
                    return b"".join(chunks)
            except requests.RequestException as exc:
                raise FetchError(f"{type(exc).__name__} for {_redact(url)}") from None
        raise FetchError(f"too many redirects or repeated 401 for {_redact(url)}")

    # -- local files ---------------------------------------------------------------------------
    def _local_files_path(self, parsed) -> Path | None:
        """/data/local-files/?d=rel/path is read straight from disk when we share LOCAL_FILES_DOCUMENT_ROOT."""
        if self.settings.local_files_document_root is None or not parsed.path.startswith("/data/local-files"):
            return None
        rel = urllib.parse.parse_qs(parsed.query).get("d", [""])[0]
        try:
            path = self._under_document_root(rel)
        except FetchError:
            return None
        return path if path.is_file() else None

    def _under_document_root(self, raw: str) -> Path:
        root = self.settings.local_files_document_root
        if root is None:
            raise FetchError("local paths need LOCAL_FILES_DOCUMENT_ROOT")
        raw = urllib.parse.unquote(raw)
        candidate = Path(raw) if Path(raw).is_absolute() else root / raw
        resolved = candidate.resolve()  # follows symlinks, so a link pointing outside is refused too
        if resolved != root and root not in resolved.parents:
            raise FetchError("path is outside LOCAL_FILES_DOCUMENT_ROOT")
        return resolved

    def _read_local(self, path: Path) -> bytes:
        try:
            size = path.stat().st_size
            if size > self.settings.fetch_max_bytes:
                raise FetchError(f"file is {size} bytes, over FETCH_MAX_BYTES")
            return path.read_bytes()
        except OSError as exc:
            raise FetchError(f"cannot read local file: {exc.strerror or type(exc).__name__}") from None

    # -- decoded items -------------------------------------------------------------------------
    def load_image(self, ref: str, task_id: int | None = None, target_size: int = 224) -> Image.Image:
        return decode_image(self.fetch_bytes(ref, task_id), self.settings.max_image_pixels, target_size)

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
        return value[: self.settings.max_text_chars]


def decode_image(data: bytes, max_pixels: int, target_size: int = 224) -> Image.Image:
    try:
        img = Image.open(io.BytesIO(data))
        width, height = img.size
        if width * height > max_pixels:
            raise FetchError(f"image is {width}x{height}, over MAX_IMAGE_PIXELS={max_pixels} (decompression bomb?)")
        # JPEG draft mode decodes at a reduced scale (1/2, 1/4, 1/8 in the DCT), keeping both sides >= the
        # model's input size: big photos decode several times faster, and the resize after it has less to do.
        if img.format == "JPEG" and target_size:
            img.draft("RGB", (target_size, target_size))
        img.load()
        # most photos are RGB already: skip convert(), which would copy the whole image
        return img if img.mode == "RGB" else img.convert("RGB")
    except FetchError:
        raise
    except (UnidentifiedImageError, OSError, ValueError, Image.DecompressionBombError, SyntaxError) as exc:
        raise FetchError(f"not a decodable image ({type(exc).__name__})") from None


def _redact(url: str) -> str:
    """URL for logs: no query string (signed URLs and tokens live there)."""
    parsed = urllib.parse.urlparse(url)
    return urllib.parse.urlunparse(parsed._replace(query="", fragment=""))[:200]
