"""HTTP downloads of task data: the host a URL really reaches, the allowlist, and a deadline per download.

Which host: requests prepares a URL (urllib3's parser, IDNA, requoting) and connects to the host of the
prepared URL. A URL that urllib.parse reads differently, such as ``http://127.0.0.1:1\\@cdn.example.com/``
(urllib.parse: host cdn.example.com; requests: 127.0.0.1 port 1), is the classic allowlist bypass. So
`origin` refuses backslashes, control characters and odd whitespace outright, takes the host from the URL
requests would send, and requires urllib.parse and urllib3 to agree on it.

Deadline: FETCH_TIMEOUT bounds each socket operation, so a server that sends a byte a second never
trips it. `WATCHDOG.deadline(seconds)` bounds the whole download: one watchdog thread shuts down the
sockets of a download past its deadline (connection, headers and body alike), which ends any read
blocked on them at once. Sessions get this through `DeadlineAdapter`.
"""
from __future__ import annotations

import heapq
import itertools
import os
import re
import socket
import threading
import time
import urllib.parse
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Iterator

import requests
import urllib3
from requests.adapters import HTTPAdapter

DEFAULT_PORTS = {"http": 80, "https": 443}
# backslashes, control characters, whitespace other than a plain space (which requests sends as %20,
# wherever it stands, and both parsers read alike)
_UNSAFE = re.compile(r"[\\\x00-\x1f\x7f]|[^\S ]")


class UnsafeURL(ValueError):
    """The URL is malformed or parsers disagree on the host it reaches."""


@dataclass(frozen=True)
class Origin:
    """Where a request connects: scheme, host (lower case, IDNA-encoded, IPv6 without brackets) and port."""

    scheme: str
    host: str
    port: int

    def matches(self, pattern: str) -> bool:
        """An ALLOWED_FETCH_HOSTS entry: "*", "host", "*.domain", each optionally ":port" (then that port only)."""
        host, port = split_port(pattern.strip().lower())
        if port is not None and port != self.port:
            return False
        return host == "*" or self.host == host or (host.startswith("*.") and self.host.endswith(host[1:]))


def split_port(pattern: str) -> tuple[str, int | None]:
    """("host", port or None) of "host", "host:8080", "[::1]:8080", "::1"."""
    if pattern.startswith("["):
        host, _, rest = pattern[1:].partition("]")
        return host, int(rest[1:]) if rest[1:].isdigit() else None
    host, sep, port = pattern.rpartition(":")
    if sep and port.isdigit() and ":" not in host:
        return host, int(port)
    return pattern, None


def origin(url: str) -> Origin:
    """The origin a request for `url` connects to; UnsafeURL when that is in any doubt."""
    if _UNSAFE.search(url):
        raise UnsafeURL("URL contains a backslash, whitespace or a control character")
    try:
        prepared = requests.Request("GET", url).prepare().url or ""
        ours, theirs = urllib.parse.urlsplit(prepared), urllib3.util.parse_url(prepared)
        scheme, host, port = ours.scheme.lower(), (ours.hostname or "").lower(), ours.port
    except (requests.RequestException, urllib3.exceptions.HTTPError, ValueError, UnicodeError):
        raise UnsafeURL("malformed URL") from None
    if scheme not in DEFAULT_PORTS or not host:
        raise UnsafeURL("not an http(s) URL with a host")
    if (host, port) != ((theirs.host or "").lower().strip("[]"), theirs.port):
        raise UnsafeURL("URL parsers disagree on its host")
    return Origin(scheme, host, port or DEFAULT_PORTS[scheme])


def origin_or_none(url: str | None) -> Origin | None:
    try:
        return origin(url) if url else None
    except UnsafeURL:
        return None


# -- the deadline ------------------------------------------------------------------------------------
class Download:
    """The sockets of one download; `expired` is final once the `deadline` block has exited."""

    def __init__(self):
        self._lock = threading.Lock()
        self._sockets: list[socket.socket] = []
        self._connections: list = []
        self.expired = False
        self.done = False

    def track(self, sock: socket.socket | None = None, connection=None) -> None:
        with self._lock:
            if sock is not None:
                self._sockets.append(sock)
            if connection is not None:
                self._connections.append(connection)
            if self.expired:  # late arrival: shut it too
                self._shutdown_all()

    def expire(self) -> None:
        with self._lock:
            if not self.done:
                self.expired = True
                self._shutdown_all()

    def finish(self) -> None:
        with self._lock:
            self.done = True

    def _shutdown_all(self) -> None:
        for sock in self._sockets + [getattr(c, "sock", None) for c in self._connections]:
            if sock is not None:
                try:  # the plain socket's shutdown (not SSLSocket's): wakes a read blocked in another thread
                    socket.socket.shutdown(sock, socket.SHUT_RDWR)
                except OSError:
                    pass


class Watchdog:
    """One daemon thread per process that expires downloads past their deadline."""

    def __init__(self):
        self._seq = itertools.count()
        self._local = threading.local()
        self._reset()
        os.register_at_fork(after_in_child=self._reset)  # a forked child starts with no thread and no lock held

    def _reset(self) -> None:
        self._heap: list[tuple[float, int, Download]] = []
        self._cond = threading.Condition()
        self._thread: threading.Thread | None = None

    def current(self) -> Download | None:
        return getattr(self._local, "download", None)

    @contextmanager
    def deadline(self, seconds: float) -> Iterator[Download]:
        """Requests made by this thread inside the block are cut off `seconds` after it starts."""
        download, previous = Download(), self.current()
        with self._cond:
            heapq.heappush(self._heap, (time.monotonic() + seconds, next(self._seq), download))
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="download-deadlines", daemon=True)
                self._thread.start()
            self._cond.notify()
        self._local.download = download
        try:
            yield download
        finally:
            self._local.download = previous
            download.finish()

    def _run(self) -> None:
        with self._cond:
            while True:
                now = time.monotonic()
                while self._heap and (self._heap[0][2].done or self._heap[0][0] <= now):
                    heapq.heappop(self._heap)[2].expire()  # a no-op for finished downloads
                self._cond.wait(self._heap[0][0] - now if self._heap else None)


WATCHDOG = Watchdog()


class _Tracked:
    """Registers the connection (TLS handshake) and its socket (headers, body) with the thread's download."""

    def connect(self):
        download = WATCHDOG.current()
        if download is not None:
            download.track(connection=self)
        super().connect()

    def getresponse(self):
        download = WATCHDOG.current()
        if download is not None:
            download.track(sock=self.sock, connection=self)  # the response reads this socket after the connection lets go
        return super().getresponse()


class _HTTPConnection(_Tracked, urllib3.connection.HTTPConnection):
    pass


class _HTTPSConnection(_Tracked, urllib3.connection.HTTPSConnection):
    pass


class _HTTPPool(urllib3.HTTPConnectionPool):
    ConnectionCls = _HTTPConnection


class _HTTPSPool(urllib3.HTTPSConnectionPool):
    ConnectionCls = _HTTPSConnection


_POOLS = {"http": _HTTPPool, "https": _HTTPSPool}


class DeadlineAdapter(HTTPAdapter):
    """requests' adapter whose connections obey WATCHDOG.deadline."""

    def init_poolmanager(self, *args, **kwargs):
        super().init_poolmanager(*args, **kwargs)
        self.poolmanager.pool_classes_by_scheme = _POOLS

    def proxy_manager_for(self, proxy, **kwargs):
        manager = super().proxy_manager_for(proxy, **kwargs)
        if not proxy.lower().startswith("socks"):
            manager.pool_classes_by_scheme = _POOLS
        return manager
