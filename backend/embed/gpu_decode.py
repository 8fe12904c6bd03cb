"""Decode where it is cheap: plain JPEGs decoded and resized on the encoder's device.

On a GPU server the CPU decode (PIL, GIL-bound threads) is what holds the pipeline back, not the model.
When the image encoder runs on CUDA, the fetch threads only read the bytes and check the JPEG header
(`probe_jpeg`); the encoder decodes a whole batch with nvjpeg (`torchvision.io.decode_jpeg(..., device=
"cuda")`), resizes the shorter side with antialiased bicubic interpolation (what PIL does) and center-crops
on the GPU (`TensorImageTransform`). Everything else takes the CPU path (PIL with JPEG draft mode):
PNG and other formats, progressive, CMYK/YCCK/grayscale or Adobe-RGB JPEGs, truncated files, and very
large photos (draft mode decodes those at 1/2-1/8 scale, cheaper than a full decode anywhere). A JPEG the
device cannot decode falls back to the CPU path too, and if that fails it gets the CPU path's error.

The transform is device-agnostic: on CPU (device="cpu") it computes the same pixels, which is how the
tests check it against open_clip's preprocess on machines without a GPU.
"""
from __future__ import annotations

import io
import warnings
from dataclasses import dataclass

from PIL import Image

from .errors import FetchError
from .images import decode_image

# Larger JPEGs take the CPU path: draft mode decodes them at a fraction of their size, nvjpeg cannot.
GPU_MAX_PIXELS = 4_200_000  # ~2048x2048
EOI = b"\xff\xd9"  # end-of-image marker: a file without it near its end is truncated


@dataclass(frozen=True)
class JpegBytes:
    """A plain JPEG left undecoded for the device (width and height from its header)."""
    data: bytes
    width: int
    height: int


def probe_jpeg(data: bytes, max_pixels: int) -> JpegBytes | None:
    """JpegBytes when the data is a JPEG the device decodes exactly as PIL would (baseline, 3-component
    YCbCr, complete, at most min(max_pixels, GPU_MAX_PIXELS)); None: decode it on the CPU path."""
    if not data.startswith(b"\xff\xd8") or EOI not in data[-1024:]:
        return None
    try:
        img = Image.open(io.BytesIO(data))  # the header only
    except Exception:
        return None
    info = img.info
    if img.format != "JPEG" or img.mode != "RGB" or info.get("progressive") or info.get("progression") \
            or info.get("adobe_transform") == 0:  # Adobe APP14 transform 0: RGB samples, not YCbCr
        return None
    width, height = img.size
    if width < 1 or height < 1 or width * height > min(max_pixels, GPU_MAX_PIXELS):
        return None
    return JpegBytes(data, width, height)


def output_size(width: int, height: int, size: int) -> tuple[int, int]:
    """(width, height) after resizing the shorter side to size (torchvision's rule: the longer truncated)."""
    return (size, int(size * height / width)) if width <= height else (int(size * width / height), size)


class TensorImageTransform:
    """open_clip's eval transform (shorter side -> size with bicubic, center crop) on torch tensors, batched
    on ``device``; JPEG bytes are decoded there with torchvision.io.decode_jpeg (nvjpeg on CUDA).

    Returns float32 (N, 3, size, size) pixels in 0..255, rounded as PIL rounds, for the encoder's
    batched normalize. Images of one size are resized together (CIFAR, camera photos: one call a batch).
    """

    def __init__(self, size: int, device: str, antialias: bool = True):
        self.size, self.device, self.antialias = size, device, antialias

    def decode(self, jpegs: list[JpegBytes]) -> list:
        """(3, H, W) uint8 tensors on the device, or a FetchError per JPEG the device could not decode."""
        import torch
        from torchvision.io import ImageReadMode, decode_jpeg

        raw = [torch.frombuffer(bytearray(j.data), dtype=torch.uint8) for j in jpegs]
        with warnings.catch_warnings():  # torchvision 0.29 deprecates its decoders in favour of TorchCodec
            warnings.simplefilter("ignore", DeprecationWarning)
            try:
                return list(decode_jpeg(raw, mode=ImageReadMode.RGB, device=self.device))
            except RuntimeError:  # one bad file fails the batched call: decode one by one to find it
                out = []
                for r in raw:
                    try:
                        out.append(decode_jpeg(r, mode=ImageReadMode.RGB, device=self.device))
                    except RuntimeError as exc:
                        out.append(FetchError(f"JPEG not decodable on {self.device}: {exc}"[:200]))
                return out

    def resize_crop(self, images: list):
        """(3, H, W) uint8 tensors -> float32 (N, 3, size, size), 0..255, in input order."""
        import torch
        import torch.nn.functional as F

        out = torch.empty((len(images), 3, self.size, self.size), dtype=torch.float32, device=self.device)
        by_shape: dict[tuple[int, int], list[int]] = {}
        for i, img in enumerate(images):
            by_shape.setdefault(tuple(img.shape[1:]), []).append(i)
        for (h, w), idx in by_shape.items():
            x = torch.stack([images[i] for i in idx]).float()
            nw, nh = output_size(w, h, self.size)
            if (nw, nh) != (w, h):
                x = F.interpolate(x, size=(nh, nw), mode="bicubic", align_corners=False, antialias=self.antialias)
                x = x.round_().clamp_(0, 255)
            top, left = int(round((nh - self.size) / 2.0)), int(round((nw - self.size) / 2.0))
            out[idx] = x[:, :, top:top + self.size, left:left + self.size]
        return out

    def __call__(self, jpegs: list[JpegBytes]):
        """(float32 (N, 3, size, size) pixels of the decoded ones, {position: FetchError} of the others)."""
        decoded = self.decode(jpegs)
        failed = {i: d for i, d in enumerate(decoded) if isinstance(d, FetchError)}
        good = [d for d in decoded if not isinstance(d, FetchError)]
        return (self.resize_crop(good) if good else None), failed


def cpu_fallback(jpeg: JpegBytes, target_size: int) -> Image.Image:
    """The CPU path for a JPEG the device refused: PIL with draft mode (FetchError if PIL refuses too)."""
    return decode_image(jpeg.data, max(jpeg.width * jpeg.height, 1), target_size)
