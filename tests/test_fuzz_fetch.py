"""Fuzzing the fetcher with hypothesis: URLs built to make parsers disagree (as task data and as redirect
targets) never reach a host outside the allowlist, and decode-heavy or broken images end in a small RGB
image or a FetchError, with the pixel budget released. Real loopback servers record every request."""
import io
import urllib.parse

import pytest
from hypothesis import HealthCheck, assume, given, settings as hsettings, strategies as st
from PIL import Image

from backend.embed.fetch import Fetcher, FetchError, decode_image
from backend.embed.images import PixelBudget
from bench.hostile import HostileServer

URL_EXAMPLES = 300
IMAGE_EXAMPLES = 60


class StaticAuth:
    def headers(self, force_refresh=False):
        return {"Authorization": "Token t"}


@pytest.fixture(scope="module")
def servers():
    """(allowed, victim): the fetcher may reach `allowed` (localhost:<its port>) only; a request that
    reaches `victim` (127.0.0.1, another port) is a bypass."""
    with HostileServer() as allowed, HostileServer() as victim:
        yield allowed, victim


def _tokens(allowed: HostileServer, victim: HostileServer) -> list[str]:
    return ["localhost", f":{allowed.port}", "127.0.0.1", f":{victim.port}", f"127.0.0.1:{victim.port}",
            f"localhost:{victim.port}", "@", "\\", "/", "//", "?", "#", ":", ";", ".", "%5C", "%40", "%2F", "%3A",
            " ", "\t", "\n", "\r", "\x00", "[", "]", "[::1]", "\u3002", "\uff0e", "\uff20", "\u2215", "\uff3c",
            "user:pw@", "0x7f.1", "2130706433", "ok.jpg", "/ok.jpg", "/redirect?to=", "%"]


def _url_strategy(allowed: HostileServer, victim: HostileServer):
    parts = st.lists(st.sampled_from(_tokens(allowed, victim)), max_size=8).map("".join)
    prefix = st.sampled_from(["http://", "https://", "HTTP://", "http:/", "http:\\\\", "http:///", "//", ""])
    return st.builds(lambda p, a, b: p + a + b, prefix, parts, parts)


def _check_fetch(fetcher: Fetcher, url: str) -> None:
    try:
        fetcher.fetch_bytes(url)
    except FetchError:
        pass  # a per-task reason: fine; any other exception fails the test


def test_fuzz_parser_differential_urls_never_reach_another_host(servers, tmp_path):
    allowed, victim = servers
    fetchers = [Fetcher(allowed_hosts=(f"localhost:{allowed.port}",), timeout_s=0.5, deadline_s=1),
                Fetcher(label_studio_url=f"http://localhost:{allowed.port}", auth=StaticAuth(), timeout_s=0.5,
                        deadline_s=1, document_root=tmp_path)]
    cases = []

    @hsettings(max_examples=URL_EXAMPLES, deadline=None, suppress_health_check=list(HealthCheck))
    @given(url=_url_strategy(allowed, victim), which=st.sampled_from([0, 1]), via_redirect=st.booleans())
    def run(url, which, via_redirect):
        cases.append(url)
        if via_redirect:  # the same URL as the Location of a redirect from the allowed server
            url = f"http://localhost:{allowed.port}/redirect?to={urllib.parse.quote(url, safe='')}"
        _check_fetch(fetchers[which], url)
        assert victim.seen == [], f"{url!r} reached {victim.seen}"

    run()
    print(f"\n[fuzz] {len(cases)} URLs, {len(allowed.seen)} requests reached the allowed server, 0 the other")
    assert len(cases) >= URL_EXAMPLES and allowed.seen, "the strategy is too narrow"


FORMATS = {
    "PNG": ["1", "L", "LA", "P", "RGB", "RGBA", "I;16"],
    "GIF": ["P", "L"],
    "BMP": ["1", "L", "P", "RGB"],
    "TIFF": ["1", "L", "RGB", "RGBA", "CMYK", "F"],
    "WEBP": ["RGB", "RGBA"],
    "JPEG": ["L", "RGB", "CMYK"],
}
images = st.sampled_from(sorted(FORMATS)).flatmap(lambda fmt: st.tuples(
    st.just(fmt), st.sampled_from(FORMATS[fmt]), st.integers(1, 1600), st.integers(1, 1600)))


def _encode(fmt: str, mode: str, width: int, height: int) -> bytes:
    buf = io.BytesIO()
    try:
        Image.new(mode, (width, height), 1 if mode == "1" else 90).save(buf, fmt)
    except (OSError, ValueError, KeyError):
        assume(False)  # Pillow cannot write this combination: not a case
    return buf.getvalue()


@hsettings(max_examples=IMAGE_EXAMPLES, deadline=None, suppress_health_check=list(HealthCheck))
@given(image=images, cut=st.one_of(st.none(), st.integers(0, 400)))
def test_fuzz_decode_heavy_and_broken_images(image, cut):
    fmt, mode, width, height = image
    data = _encode(fmt, mode, width, height)
    if cut is not None:
        data = data[:cut]  # truncated: the header may still promise many pixels
    budget, target, limit = PixelBudget(1_500_000), 64, 1_000_000
    try:
        decoded = decode_image(data, max_pixels=limit, target_size=target, budget=budget)
    except FetchError:
        assert budget.in_use == 0
        return
    assert budget.in_use == 0 and budget.peak <= limit and decoded.mode == "RGB"
    short = min(width, height)
    if short >= 2 * target:  # reduced while decoding: what the encoder's transform sees is small
        assert target <= min(decoded.size) < 2 * target
    else:
        assert decoded.size == (width, height)
    assert fmt == "JPEG" or width * height <= limit  # only JPEG's draft decoding lets larger headers through
