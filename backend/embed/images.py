"""Decoding task images under a memory bound.

A few kilobytes of PNG can hold 64 megapixels; decoded (and converted to RGB) that is hundreds of
megabytes, and every fetch thread of every request may hold one. Three limits keep it flat:

- MAX_IMAGE_PIXELS counts the pixels a decode produces (after JPEG draft scaling), checked from the
  header before decoding;
- a process-wide `PixelBudget` bounds the decoded pixels in flight across all requests: a decode waits
  until its pixels fit;
- the full-size pixels never leave `decode_image`: JPEG decodes at 1/2, 1/4 or 1/8 scale in the DCT
  (draft mode), and any other format is box-reduced by an integer factor right after decoding, both
  keeping the shorter side >= the model's input size. What the encoder's transform then sees is small.
"""
from __future__ import annotations

import io
import threading
import warnings
from contextlib import contextmanager, nullcontext
from typing import Iterator

from PIL import Image, UnidentifiedImageError

from .errors import FetchError

# We enforce our own MAX_IMAGE_PIXELS before decoding, with a clear per-task error instead of a warning.
warnings.simplefilter("ignore", Image.DecompressionBombWarning)

DEFAULT_MAX_IMAGE_PIXELS = 16_000_000  # 4000x4000: CLIP sees 224-448 px; more only costs memory
DEFAULT_PIXELS_IN_FLIGHT = 64_000_000  # four of the largest images decoding at once, per process
DRAFT_FORMATS = ("JPEG", "MPO")  # decoders that scale in the DCT
REDUCIBLE_MODES = ("L", "LA", "RGB", "RGBA", "I", "F")  # Image.reduce averages these correctly (not P, 1, CMYK)


class PixelBudget:
    """Decoded pixels in flight: `hold(n)` waits until n more fit under `limit` (an image larger than the
    whole budget waits to be alone). `shared(limit)` is the one budget of this process for that limit."""

    _shared: dict[int, PixelBudget] = {}
    _shared_lock = threading.Lock()

    def __init__(self, limit: int, wait_s: float = 60.0):
        self.limit, self.wait_s = limit, wait_s
        self.in_use = self.peak = 0
        self._cond = threading.Condition()

    @classmethod
    def shared(cls, limit: int) -> PixelBudget:
        with cls._shared_lock:
            return cls._shared.setdefault(limit, cls(limit))

    @contextmanager
    def hold(self, pixels: int) -> Iterator[None]:
        cost = min(pixels, self.limit)
        with self._cond:
            if not self._cond.wait_for(lambda: self.in_use + cost <= self.limit, self.wait_s):
                raise FetchError(f"no decode budget for {pixels} pixels within {self.wait_s:.0f} s "
                                 "(DECODE_PIXELS_IN_FLIGHT busy)")
            self.in_use += cost
            self.peak = max(self.peak, self.in_use)
        try:
            yield
        finally:
            with self._cond:
                self.in_use -= cost
                self._cond.notify_all()


def decode_image(data: bytes, max_pixels: int, target_size: int = 224, budget: PixelBudget | None = None) -> Image.Image:
    """An RGB image whose shorter side is target_size to about twice that (when it was larger); FetchError
    with the reason when the data is no image or would decode to more than max_pixels."""
    try:
        img = Image.open(io.BytesIO(data))
        if img.format in DRAFT_FORMATS and target_size:
            img.draft("RGB", (target_size, target_size))  # keeps both sides >= target_size
        width, height = img.size
        if width * height > max_pixels:
            raise FetchError(f"image is {width}x{height}, over MAX_IMAGE_PIXELS={max_pixels} (decompression bomb?)")
        with budget.hold(width * height) if budget is not None else nullcontext():
            img.load()
            img = reduce_to(img, target_size)
            # most photos are RGB already: skip convert(), which would copy the whole image
            return img if img.mode == "RGB" else img.convert("RGB")
    except FetchError:
        raise
    except (UnidentifiedImageError, OSError, ValueError, Image.DecompressionBombError, SyntaxError) as exc:
        raise FetchError(f"not a decodable image ({type(exc).__name__})") from None


def reduce_to(img: Image.Image, target_size: int) -> Image.Image:
    """Box-reduce by the largest integer factor that keeps the shorter side >= target_size (what JPEG draft
    mode does in the DCT, for decoders that cannot)."""
    factor = min(img.size) // target_size if target_size else 0
    if factor < 2:
        return img
    if img.mode not in REDUCIBLE_MODES:
        transparent = img.mode == "PA" or "transparency" in img.info
        img = img.convert("L" if img.mode == "1" else "RGBA" if transparent else "RGB")
    return img.reduce(factor)
