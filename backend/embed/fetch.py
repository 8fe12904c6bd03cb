"""Fetch task data: images and texts referenced by Label Studio tasks.

Sources: http(s) URLs, Label Studio relative URLs (/data/upload/..., /data/local-files/?d=...),
cloud-storage URIs (s3://, gs://, azure-blob://) through Label Studio's resolver, data: URIs,
and files under the local-files document root. Every failure is a FetchError with a reason,
so one bad item never fails a batch.
"""
from __future__ import annotations

import base64
import binascii
import io
import logging
import time
import urllib.parse
import warnings
from pathlib import Path
from typing import Protocol

import requests
from PIL import Image, UnidentifiedImageError

logger = logging.getLogger(__name__)
# We enforce our own MAX_IMAGE_PIXELS before decoding, with a clear per-task error instead of a warning.
warnings.simplefilter("ignore", Image.DecompressionBombWarning)

CLOUD_SCHEMES = ("s3", "gs", "azure-blob", "azure-spi")
LS_RELATIVE_PREFIXES = ("/data/", "/storage-data/", "/tasks/", "/api/")
DEFAULT_MAX_BYTES = 50 * 1024 * 1024


class FetchError(Exception):
    """An item could not be fetched or decoded; str(error) is the reason shown in logs."""


class Auth(Protocol):
    """Credentials for Label Studio's host (e.g. labelstudio.client.LabelStudioAuth)."""

    def headers(self, force_refresh: bool = False) -> dict:
        ...


class Fetcher:
    """Downloads and decodes task data under explicit limits.

    auth: sends credentials to Label Studio's host only (None: no credentials). allowed_hosts: other
    hosts task URLs may point to ("*" = any, "*.example.com" = subdomains). document_root: the
    directory local paths and /data/local-files/ resolve under (None: no local files).
    """

    def __init__(self, *, label_studio_url: str | None = None, auth: Auth | None = None, timeout_s: float = 10.0,
                 max_bytes: int = DEFAULT_MAX_BYTES, max_image_pixels: int = 64_000_000,
                 max_text_chars: int = 20_000, allowed_hosts: tuple[str, ...] = (),
                 document_root: Path | None = None, pool_size: int = 16):
        self.label_studio_url = label_studio_url.rstrip("/") if label_studio_url else None
        self.auth = auth
        self.timeout_s = timeout_s
        self.max_bytes = max_bytes
        self.max_image_pixels = max_image_pixels
        self.max_text_chars = max_text_chars
        self.allowed_hosts = tuple(allowed_hosts)
        # resolved, so the containment check compares real paths
        self.document_root = Path(document_root).resolve() if document_root is not None else None
        self.session = requests.Session()
        adapter = requests.adapters.HTTPAdapter(pool_connections=4, pool_maxsize=pool_size)
        self.session.mount("http://", adapter)
        self.session.mount("https://", adapter)

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
            if not self.label_studio_url:
                raise FetchError(f"relative URL {ref[:80]!r} needs LABEL_STUDIO_URL")
            return self._http(self.label_studio_url + ref, with_auth=True)
        if parsed.scheme in ("", "file"):
            return self._read_local(self._under_document_root(parsed.path or ref))
        raise FetchError(f"unsupported URL scheme {parsed.scheme!r}")

    def _is_label_studio(self, url: str) -> bool:
        if not self.label_studio_url:
            return False
        return urllib.parse.urlparse(url).netloc == urllib.parse.urlparse(self.label_studio_url).netloc

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
        """Label Studio's host, plus ALLOWED_FETCH_HOSTS: the backend is no open proxy into the network."""
        host = (urllib.parse.urlparse(url).hostname or "").lower()
        if not host:
            return False
        if self.label_studio_url and host == (urllib.parse.urlparse(self.label_studio_url).hostname or "").lower():
            return True
        for pattern in self.allowed_hosts:
            if pattern == "*" or host == pattern or (pattern.startswith("*.") and host.endswith(pattern[1:])):
                return True
        return False

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
        refreshed = False
        for _hop in range(4):  # at most 3 redirects, each checked against the allowlist
            if not self.host_allowed(url):
                raise FetchError(f"host of {_redact(url)} is not Label Studio's and not in ALLOWED_FETCH_HOSTS")
            headers = self._auth_headers(force_refresh=refreshed) if with_auth else {}
            try:
                with self.session.get(url, headers=headers, timeout=self.timeout_s, stream=True,
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
                    return self._read_body(resp, url)
            except requests.RequestException as exc:
                raise FetchError(f"{type(exc).__name__} for {_redact(url)}") from None
        raise FetchError(f"too many redirects or repeated 401 for {_redact(url)}")

    def _read_body(self, resp, url: str) -> bytes:
        """The response body, refused past max_bytes (declared or streamed) or when it trickles in too slowly."""
        limit = self.max_bytes
        declared = resp.headers.get("Content-Length")
        if declared and declared.isdigit() and int(declared) > limit:
            raise FetchError(f"{_redact(url)} is {int(declared)} bytes, over FETCH_MAX_BYTES={limit}")
        chunks, size, deadline = [], 0, time.monotonic() + self.timeout_s * 3
        for chunk in resp.iter_content(256 * 1024):
            size += len(chunk)
            if size > limit:
                raise FetchError(f"{_redact(url)} exceeds FETCH_MAX_BYTES={limit}")
            if time.monotonic() > deadline:
                raise FetchError(f"{_redact(url)} download too slow")
            chunks.append(chunk)
        return b"".join(chunks)

    # -- local files ---------------------------------------------------------------------------
    def _local_files_path(self, parsed) -> Path | None:
        """/data/local-files/?d=rel/path is read straight from disk when we share LOCAL_FILES_DOCUMENT_ROOT."""
        if self.document_root is None or not parsed.path.startswith("/data/local-files"):
            return None
        rel = urllib.parse.parse_qs(parsed.query).get("d", [""])[0]
        try:
            path = self._under_document_root(rel)
        except FetchError:
            return None
        return path if path.is_file() else None

    def _under_document_root(self, raw: str) -> Path:
        root = self.document_root
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
            if size > self.max_bytes:
                raise FetchError(f"file is {size} bytes, over FETCH_MAX_BYTES")
            return path.read_bytes()
        except OSError as exc:
            raise FetchError(f"cannot read local file: {exc.strerror or type(exc).__name__}") from None

    # -- decoded items -------------------------------------------------------------------------
    def load_image(self, ref: str, task_id: int | None = None, target_size: int = 224) -> Image.Image:
        return decode_image(self.fetch_bytes(ref, task_id), self.max_image_pixels, target_size)

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
