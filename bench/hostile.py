"""Hostile task-data servers on loopback, for `bench.soak --mixed` and the tests: slow-drip responses,
decode-heavy images and a log of every request that reached them. Loopback only.

    with HostileServer() as server:
        server.url + "/drip?bytes=100&every=1"      # headers at once, then one body byte a second
        server.url + "/drip-headers?every=1"        # the status line, then the headers a byte a second
        server.url + "/heavy.png?side=8000"         # a few KB of PNG, 64 Mpx once decoded
        server.url + "/ok.jpg", server.url + "/redirect?to=<url>"
        server.seen                                 # [(path, Authorization header or None), ...]
"""
from __future__ import annotations

import functools
import http.server
import io
import socket
import ssl
import threading
import urllib.parse

from PIL import Image


def jpeg(size: tuple[int, int] = (64, 48), color: tuple[int, int, int] = (200, 30, 30)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", size, color).save(buf, "JPEG")
    return buf.getvalue()


@functools.lru_cache(maxsize=8)
def heavy_png(side: int = 8000, mode: str = "L") -> bytes:
    """A flat side x side PNG: kilobytes on the wire, side² pixels (x3 or x4 bytes as RGB/RGBA) once decoded."""
    buf = io.BytesIO()
    Image.new(mode, (side, side), 128 if mode in ("L", "P") else 1).save(buf, "PNG", optimize=False)
    return buf.getvalue()


class _Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: _Server

    def log_message(self, *args):
        pass

    def do_GET(self):  # noqa: N802 (http.server's name)
        path, _, query = self.path.partition("?")
        args = {k: v[-1] for k, v in urllib.parse.parse_qs(query).items()}
        with self.server.lock:
            self.server.seen.append((self.path, self.headers.get("Authorization")))
        try:
            route = getattr(self, "_" + path.strip("/").replace(".", "_").replace("-", "_"), None)
            (route or self._not_found)(args)
        except OSError:  # the client gave up (deadline, disconnect): nothing more to send
            pass

    def _send(self, status: int, body: bytes, headers: dict | None = None) -> None:
        self.send_response(status)
        for name, value in {"Content-Length": str(len(body)), **(headers or {})}.items():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(body)

    def _not_found(self, args):
        self._send(404, b"not found")

    def _ok_jpg(self, args):
        self._send(200, jpeg(), {"Content-Type": "image/jpeg"})

    def _heavy_png(self, args):
        self._send(200, heavy_png(int(args.get("side", 8000))), {"Content-Type": "image/png"})

    def _redirect(self, args):
        location = args.get("to", "/ok.jpg").encode("utf-8").decode("latin-1")  # raw bytes, as a server may send
        self._send(int(args.get("status", 302)), b"", {"Location": location})

    def _drip(self, args):
        """Headers at once, then the body one byte every `every` seconds (Content-Length `bytes`)."""
        body, every = jpeg(), float(args.get("every", 1))
        size = int(args.get("bytes", len(body)))
        self.send_response(200)
        self.send_header("Content-Length", str(size))
        self.end_headers()
        self.wfile.flush()
        for i in range(size):
            if self.server.stopping.wait(every):
                return
            self.wfile.write(body[i % len(body):i % len(body) + 1])
            self.wfile.flush()

    def _drip_headers(self, args):
        """The status line, then the headers one byte every `every` seconds: never a body."""
        every = float(args.get("every", 1))
        self.wfile.write(b"HTTP/1.1 200 OK\r\n")
        for byte in b"X-Slow: " + b"a" * 10_000:
            if self.server.stopping.wait(every):
                return
            self.wfile.write(bytes([byte]))
            self.wfile.flush()


class _Server(http.server.ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, address, tls: ssl.SSLContext | None):
        super().__init__(address, _Handler)
        self.tls = tls
        self.lock = threading.Lock()
        self.seen: list[tuple[str, str | None]] = []
        self.stopping = threading.Event()

    def get_request(self):
        """With a TLS context, one port speaks both: a connection that starts with a TLS handshake gets TLS."""
        sock, address = super().get_request()
        if self.tls is not None and sock.recv(1, socket.MSG_PEEK) == b"\x16":
            sock = self.tls.wrap_socket(sock, server_side=True)
        return sock, address


class HostileServer:
    """A ThreadingHTTPServer on 127.0.0.1 (a free port unless given) serving the routes above; with `tls`
    (a server-side SSLContext) the same port answers https:// and http://."""

    def __init__(self, port: int = 0, tls: ssl.SSLContext | None = None):
        self._server = _Server(("127.0.0.1", port), tls)
        self.port = self._server.server_address[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True, name="hostile-server")

    @property
    def seen(self) -> list[tuple[str, str | None]]:
        with self._server.lock:
            return list(self._server.seen)

    def start(self) -> HostileServer:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.stopping.set()  # drips end at their next byte
        self._server.shutdown()
        self._server.server_close()

    def __enter__(self) -> HostileServer:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

