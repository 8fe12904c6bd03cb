"""Fetching task data from every supported source, and failing cleanly on bad input."""
import base64
import http.server
import io
import threading

import pytest
from PIL import Image

from backend.embed.fetch import Fetcher, FetchError, decode_image
from backend.config import Settings
from tests.helpers import fetcher_kwargs


def _jpeg(size=(40, 30), color=(200, 10, 10)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", size, color).save(buf, "JPEG")
    return buf.getvalue()


@pytest.fixture(scope="module")
def http_server():
    """A real HTTP server on loopback serving fixed routes; records the Authorization header it saw."""
    routes = {"/ok.jpg": (200, _jpeg()), "/data/upload/1/ok.jpg": (200, _jpeg()), "/text.txt": (200, "héllo wörld".encode()),
              "/corrupt.jpg": (200, b"\xff\xd8\xff\xe0 not really a jpeg"), "/big.bin": (200, b"x" * 5000)}
    seen = []

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            seen.append(self.headers.get("Authorization"))
            path = self.path.split("?")[0]
            if path.startswith("/redirect/"):  # /redirect/<host>/<path>: a 302 to that host on this port
                host, target = path[len("/redirect/"):].split("/", 1)
                self.send_response(302)
                self.send_header("Location", f"http://{host}:{self.server.server_address[1]}/{target}")
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            status, body = routes.get(path, (404, b"nope"))
            self.send_response(status)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}", seen
    server.shutdown()


def make(tmp_path, **env) -> Fetcher:
    base = {"MODEL_DIR": str(tmp_path), "LOCAL_FILES_DOCUMENT_ROOT": str(tmp_path)}
    base.update({k: str(v) for k, v in env.items()})
    return Fetcher(**fetcher_kwargs(Settings.from_env(base)))


def test_http_image_and_text(tmp_path, http_server):
    url, _ = http_server
    fetcher = make(tmp_path, ALLOWED_FETCH_HOSTS="127.0.0.1")
    assert fetcher.load_image(f"{url}/ok.jpg").size == (40, 30)
    assert fetcher.load_text(f"{url}/text.txt", is_url=True) == "héllo wörld"


def test_label_studio_relative_url_sends_legacy_token(tmp_path, http_server):
    url, seen = http_server
    fetcher = make(tmp_path, LABEL_STUDIO_URL=url, LABEL_STUDIO_API_KEY="a" * 40)
    assert fetcher.load_image("/data/upload/1/ok.jpg").size == (40, 30)
    assert seen[-1] == "Token " + "a" * 40
    fetcher.fetch_bytes(f"{url}/ok.jpg")  # absolute URL on the Label Studio host: token sent too
    assert seen[-1] == "Token " + "a" * 40
    # a redirect to another (allowed) host is followed without the token
    fetcher = make(tmp_path, LABEL_STUDIO_URL=url, LABEL_STUDIO_API_KEY="a" * 40, ALLOWED_FETCH_HOSTS="localhost")
    assert fetcher.fetch_bytes(f"{url}/redirect/localhost/ok.jpg")[:2] == b"\xff\xd8"
    assert seen[-2:] == ["Token " + "a" * 40, None]


def test_fetches_are_limited_to_label_studio_and_allowed_hosts(tmp_path, http_server):
    url, _ = http_server
    with pytest.raises(FetchError, match="ALLOWED_FETCH_HOSTS"):
        make(tmp_path).fetch_bytes(f"{url}/ok.jpg")  # no allowlist, not Label Studio: refused
    assert make(tmp_path, LABEL_STUDIO_URL=url).fetch_bytes(f"{url}/ok.jpg")  # Label Studio's host
    assert make(tmp_path, ALLOWED_FETCH_HOSTS="*").fetch_bytes(f"{url}/ok.jpg")
    allowed = make(tmp_path, ALLOWED_FETCH_HOSTS="127.0.0.1")
    assert allowed.fetch_bytes(f"{url}/redirect/127.0.0.1/ok.jpg")[:2] == b"\xff\xd8"  # same host: followed
    with pytest.raises(FetchError, match="ALLOWED_FETCH_HOSTS"):  # a redirect cannot leave the allowlist
        allowed.fetch_bytes(f"{url}/redirect/localhost/ok.jpg")
    with pytest.raises(FetchError, match="ALLOWED_FETCH_HOSTS"):
        make(tmp_path, ALLOWED_FETCH_HOSTS="*.example.com").fetch_bytes(f"{url}/ok.jpg")


def test_relative_url_without_label_studio_url_is_a_clear_error(tmp_path):
    with pytest.raises(FetchError, match="LABEL_STUDIO_URL"):
        make(tmp_path).fetch_bytes("/data/upload/1/x.jpg")


def test_data_uri_and_local_files(tmp_path):
    fetcher = make(tmp_path)
    jpeg = _jpeg()
    assert fetcher.load_image("data:image/jpeg;base64," + base64.b64encode(jpeg).decode()).size == (40, 30)
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "a.jpg").write_bytes(jpeg)
    assert fetcher.fetch_bytes("sub/a.jpg") == jpeg
    assert fetcher.fetch_bytes("/data/local-files/?d=sub/a.jpg") == jpeg  # read from disk, no Label Studio needed


@pytest.mark.parametrize("ref, reason", [
    ("../../etc/passwd", "outside"),
    ("/etc/passwd", "outside"),
    ("ftp://example.com/x.jpg", "unsupported URL scheme"),
    ("data:image/png;base64", "malformed"),
    ("", "empty"),
])
def test_refused_references(tmp_path, ref, reason):
    with pytest.raises(FetchError, match=reason):
        make(tmp_path).fetch_bytes(ref)


def test_symlink_escape_is_refused(tmp_path):
    root = tmp_path / "root"
    root.mkdir()
    (tmp_path / "secret.txt").write_text("secret")
    (root / "link.txt").symlink_to(tmp_path / "secret.txt")
    fetcher = Fetcher(**fetcher_kwargs(Settings.from_env({"LOCAL_FILES_DOCUMENT_ROOT": str(root)})))
    with pytest.raises(FetchError, match="outside"):
        fetcher.fetch_bytes("link.txt")


def test_http_failures_are_fetch_errors(tmp_path, http_server):
    url, _ = http_server
    fetcher = make(tmp_path, FETCH_MAX_BYTES=1000, ALLOWED_FETCH_HOSTS="127.0.0.1")
    with pytest.raises(FetchError, match="HTTP 404"):
        fetcher.fetch_bytes(f"{url}/missing.jpg")
    with pytest.raises(FetchError, match="FETCH_MAX_BYTES"):
        fetcher.fetch_bytes(f"{url}/big.bin")
    with pytest.raises(FetchError, match="not a decodable image"):
        fetcher.load_image(f"{url}/corrupt.jpg")
    with pytest.raises(FetchError, match="ConnectionError"):
        fetcher.fetch_bytes("http://127.0.0.1:9/unreachable.jpg")


def test_decompression_bomb_is_refused_before_decoding():
    buf = io.BytesIO()
    Image.new("1", (12000, 12000)).save(buf, "PNG")  # tiny file, 144 Mpx once decoded
    assert len(buf.getvalue()) < 100_000
    with pytest.raises(FetchError, match="MAX_IMAGE_PIXELS"):
        decode_image(buf.getvalue(), max_pixels=64_000_000)


def test_text_values(tmp_path):
    fetcher = make(tmp_path, MAX_TEXT_CHARS=10)
    assert fetcher.load_text("  hello world and more  ") == "hello worl"
    assert fetcher.load_text(42) == "42"
    with pytest.raises(FetchError, match="empty"):
        fetcher.load_text("   ")
    with pytest.raises(FetchError, match="not a string"):
        fetcher.load_text({"nested": "dict"})


def test_auth_failure_is_a_fetch_error_and_credentials_stay_on_label_studio(tmp_path, http_server):
    url, seen = http_server

    class FailingAuth:
        def headers(self, force_refresh=False):
            raise RuntimeError("token refresh failed: HTTP 401")

    class StaticAuth:
        def headers(self, force_refresh=False):
            return {"Authorization": "Token t"}

    fetcher = Fetcher(label_studio_url=url, auth=FailingAuth())
    with pytest.raises(FetchError, match="token refresh failed: HTTP 401"):
        fetcher.fetch_bytes("/data/upload/1/ok.jpg")
    fetcher = Fetcher(label_studio_url=url, auth=StaticAuth(), allowed_hosts=("localhost",))
    assert fetcher.fetch_bytes(f"{url}/redirect/localhost/ok.jpg")[:2] == b"\xff\xd8"
    assert seen[-2:] == ["Token t", None]
