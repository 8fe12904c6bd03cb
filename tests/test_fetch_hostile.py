"""Hostile task data against the fetcher, over real loopback sockets: URLs that parsers read differently,
Label Studio's host on another port, scheme downgrades, slow-drip servers, odd local files, decode-heavy
images. Every case ends in a FetchError with a reason (a clean per-task skip), and no request reaches a
host it should not (the servers record every request)."""
import base64
import os
import shutil
import subprocess
import threading
import time
import urllib.parse

import pytest
from PIL import Image

from backend.config import Settings
from backend.embed.fetch import Fetcher, FetchError, decode_image
from bench.hostile import HostileServer, heavy_png
from tests.helpers import fetcher_kwargs


class StaticAuth:
    def headers(self, force_refresh=False):
        return {"Authorization": "Token t"}


@pytest.fixture
def victim():
    """A server no test fetch may reach: every request it records is a bypass."""
    with HostileServer() as server:
        yield server


@pytest.fixture
def allowed():
    with HostileServer() as server:
        yield server


def _refused(fetcher: Fetcher, url: str, match: str | None = None):
    with pytest.raises(FetchError, match=match):
        fetcher.fetch_bytes(url)


@pytest.mark.parametrize("template", [
    "http://127.0.0.1:{port}\\@cdn.example.com/ok.jpg",  # urllib.parse: cdn.example.com; requests: 127.0.0.1
    "http://127.0.0.1:{port}\\\\@cdn.example.com/ok.jpg",
    "http://127.0.0.1:{port}\\.cdn.example.com/ok.jpg",
    "http://127.0.0.1:{port}\t@cdn.example.com/ok.jpg",
    " http://127.0.0.1:{port}\\@cdn.example.com/ok.jpg ",
])
def test_parser_differential_urls_are_refused(victim, template):
    fetcher = Fetcher(allowed_hosts=("cdn.example.com",), timeout_s=1)
    _refused(fetcher, template.format(port=victim.port), "refused URL")
    assert victim.seen == []


def test_parser_differential_redirect_is_refused(victim, allowed):
    fetcher = Fetcher(allowed_hosts=("localhost",), timeout_s=1)
    bypass = urllib.parse.quote(f"http://127.0.0.1:{victim.port}\\@localhost/ok.jpg")
    _refused(fetcher, f"http://localhost:{allowed.port}/redirect?to={bypass}", "backslash")
    assert len(allowed.seen) == 1 and victim.seen == []


def test_label_studio_entry_is_host_and_port(victim, allowed):
    fetcher = Fetcher(label_studio_url=allowed.url, auth=StaticAuth(), timeout_s=1)
    assert fetcher.fetch_bytes(f"{allowed.url}/ok.jpg")[:2] == b"\xff\xd8"
    _refused(fetcher, f"http://127.0.0.1:{victim.port}/ok.jpg", "ALLOWED_FETCH_HOSTS")  # same host, other port
    assert victim.seen == [] and allowed.seen == [("/ok.jpg", "Token t")]


def test_allowed_fetch_hosts_entry_may_name_a_port(victim, allowed):
    settings = Settings.from_env({"ALLOWED_FETCH_HOSTS": f"127.0.0.1:{allowed.port}, *.example.com:8443"})
    fetcher = Fetcher(**fetcher_kwargs(settings))
    assert fetcher.fetch_bytes(f"{allowed.url}/ok.jpg")[:2] == b"\xff\xd8"
    _refused(fetcher, f"{victim.url}/ok.jpg", "ALLOWED_FETCH_HOSTS")
    assert fetcher.host_allowed("https://a.example.com:8443/x") and not fetcher.host_allowed("https://a.example.com/x")
    assert victim.seen == []


@pytest.fixture
def tls_server(tmp_path):
    """One loopback port answering both https:// (self-signed for 127.0.0.1) and http://."""
    import ssl

    if shutil.which("openssl") is None:
        pytest.skip("openssl is needed to make a test certificate")
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=127.0.0.1",
                    "-addext", "subjectAltName=IP:127.0.0.1", "-keyout", str(key), "-out", str(cert)],
                   check=True, capture_output=True)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert, key)
    with HostileServer(tls=context) as server:
        yield server, str(cert)


def test_https_to_http_redirect_on_label_studio_host_drops_the_token(tls_server, monkeypatch):
    server, cert = tls_server
    for name in ("REQUESTS_CA_BUNDLE", "CURL_CA_BUNDLE"):  # they would override the session's CA
        monkeypatch.delenv(name, raising=False)
    ls_url = f"https://127.0.0.1:{server.port}"
    fetcher = Fetcher(label_studio_url=ls_url, auth=StaticAuth(), timeout_s=2)
    fetcher.session.verify = cert
    downgrade = f"http://127.0.0.1:{server.port}/ok.jpg"  # same host and port, plain http
    assert fetcher.fetch_bytes(f"{ls_url}/redirect?to={downgrade}")[:2] == b"\xff\xd8"
    assert [auth for _, auth in server.seen] == ["Token t", None]


@pytest.mark.parametrize("route", ["/drip?bytes=200&every=0.1", "/drip-headers?every=0.1"])
def test_slow_drip_download_ends_at_the_deadline(allowed, route):
    fetcher = Fetcher(allowed_hosts=("127.0.0.1",), timeout_s=1, deadline_s=1)  # each byte is well within 1 s
    started = time.monotonic()
    _refused(fetcher, allowed.url + route, "FETCH_DEADLINE")
    assert time.monotonic() - started < 2.5  # the whole drip would take 20 s (body) or 1,000 s (headers)
    assert fetcher.fetch_bytes(f"{allowed.url}/ok.jpg")[:2] == b"\xff\xd8"  # the pool still works afterwards


def test_fetch_deadline_setting_reaches_the_fetcher():
    settings = Settings.from_env({"FETCH_DEADLINE": "7.5"})
    assert Fetcher(**fetcher_kwargs(settings)).deadline_s == 7.5


# -- local files -------------------------------------------------------------------------------
def test_fifo_under_the_document_root_is_refused_without_blocking(tmp_path):
    os.mkfifo(tmp_path / "pipe.jpg")
    fetcher = Fetcher(document_root=tmp_path)
    outcome = []

    def fetch(ref):
        try:
            fetcher.fetch_bytes(ref)
        except FetchError as exc:
            outcome.append(str(exc))

    for ref in ("pipe.jpg", "/data/local-files/?d=pipe.jpg"):
        thread = threading.Thread(target=fetch, args=(ref,), daemon=True)
        thread.start()
        thread.join(5)
        assert not thread.is_alive(), f"{ref}: blocked on a FIFO"
    assert len(outcome) == 2 and all("regular file" in reason for reason in outcome)


@pytest.mark.parametrize("ref", [".", "photos", "/data/local-files/?d=photos", "/data/local-files/?d=."])
def test_a_directory_under_the_document_root_is_a_clean_fetch_error(tmp_path, ref):
    (tmp_path / "photos").mkdir()
    with pytest.raises(FetchError, match="regular file"):
        Fetcher(document_root=tmp_path).fetch_bytes(ref)


@pytest.mark.parametrize("ref", ["a\x00b.jpg", "a%00b.jpg", "x" * 5000 + ".jpg", "a/" * 3000 + "b.jpg",
                                 "/data/local-files/?d=" + "x" * 5000, "/data/local-files/?d=a%00b.jpg"])
def test_nul_bytes_and_overlong_local_paths_are_clean_fetch_errors(tmp_path, ref):
    with pytest.raises(FetchError):
        Fetcher(document_root=tmp_path).fetch_bytes(ref)


def test_local_files_query_is_decoded_once(tmp_path):
    (tmp_path / "photo%41.jpg").write_bytes(b"percent")
    (tmp_path / "a b.jpg").write_bytes(b"space")
    fetcher = Fetcher(document_root=tmp_path)
    assert fetcher.fetch_bytes("/data/local-files/?d=photo%2541.jpg") == b"percent"
    assert fetcher.fetch_bytes("/data/local-files/?d=a%20b.jpg") == b"space"


# -- decode-heavy images --------------------------------------------------------------------------
def test_default_max_image_pixels_is_what_clip_can_use():
    limit = Settings.from_env({}).max_image_pixels
    assert limit <= 16_000_000
    fetcher = Fetcher(**fetcher_kwargs(Settings.from_env({})))
    bomb = "data:image/png;base64," + base64.b64encode(heavy_png(8000)).decode()  # 64 Mpx in a few KB
    with pytest.raises(FetchError, match="MAX_IMAGE_PIXELS"):
        fetcher.load_image(bomb)


def test_large_non_jpeg_is_reduced_inside_the_decode():
    image = decode_image(heavy_png(3000), max_pixels=16_000_000, target_size=224)
    assert image.mode == "RGB" and 224 <= min(image.size) < 448  # 3000 / 13: like JPEG draft mode
    assert decode_image(heavy_png(300), 16_000_000, target_size=224).size == (300, 300)  # small: untouched


def test_max_image_pixels_counts_the_pixels_jpeg_draft_decodes():
    import io

    buf = io.BytesIO()
    Image.new("RGB", (6000, 4000), (10, 120, 200)).save(buf, "JPEG", quality=50)  # 24 Mpx, a phone photo
    image = decode_image(buf.getvalue(), max_pixels=16_000_000, target_size=224)
    assert image.size == (375, 250)  # decoded at 1/8 in the DCT (750x500), then halved: 0.1 Mpx


def test_decoded_pixels_in_flight_are_bounded_per_process():
    from backend.embed.images import PixelBudget

    budget = PixelBudget(3000 * 3000)
    data = heavy_png(3000)
    threads = [threading.Thread(target=decode_image, args=(data, 16_000_000, 224, budget)) for _ in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert budget.peak == 3000 * 3000 and budget.in_use == 0  # one decode at a time, all released
    one = Fetcher(**fetcher_kwargs(Settings.from_env({"DECODE_PIXELS_IN_FLIGHT": "5000000"})))
    other = Fetcher(**fetcher_kwargs(Settings.from_env({"DECODE_PIXELS_IN_FLIGHT": "5000000"})))
    assert one.pixel_budget is other.pixel_budget and one.pixel_budget.limit == 5_000_000  # shared by all fetchers

