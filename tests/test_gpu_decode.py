"""The device decode path (backend/embed/gpu_decode.py) and its CPU fallbacks, checked on CPU.

The tensor path is device-agnostic: with device="cpu" it runs the same code the GPU runs (torchvision's
decode_jpeg, antialiased bicubic resize, crop, the encoder's batched normalize), so these tests hold it to
open_clip's preprocess on real images. Which JPEGs go to the device, which take the PIL path, and what an
undecodable one gets, are checked through embed_items as the server calls it."""
import copy
import io
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from backend.config import Settings
from backend.embed.encoders import ClipImageEncoder, get_encoder
from backend.embed.fetch import Fetcher, ItemLoader
from backend.embed.gpu_decode import JpegBytes, TensorImageTransform, probe_jpeg
from backend.embed.pipeline import Item, embed_items
from tests.helpers import DATA_DIR, backend_env, encoder_spec, fetcher_kwargs


def _photo(size: tuple[int, int], seed: int, **save) -> bytes:
    rng = np.random.default_rng(seed)
    w, h = size
    img = Image.fromarray(rng.integers(0, 256, (5, 7, 3), dtype=np.uint8)).resize((w, h), Image.BICUBIC)
    arr = np.asarray(img, dtype=np.int16) + rng.integers(-10, 11, (h, w, 3), dtype=np.int16)
    out = io.BytesIO()
    img = Image.fromarray(arr.clip(0, 255).astype(np.uint8))
    fmt = save.pop("format", "JPEG")
    (img.convert(save.pop("mode")) if "mode" in save else img).save(out, fmt, **save)
    return out.getvalue()


def _garbage_scan(data: bytes) -> bytes:
    """Valid headers, EOI at the end, random entropy-coded data: neither decoder makes an image of it."""
    sos = data.index(b"\xff\xda")
    noise = np.random.default_rng(7).integers(0, 256, 3000, dtype=np.uint8).tobytes()
    return data[:sos + 20] + noise + b"\xff\xd9"


@pytest.fixture(scope="module")
def image_root(tmp_path_factory) -> Path:
    """Real CIFAR-10 JPEGs and photo-like JPEGs of several shapes, plus the odd ones."""
    root = tmp_path_factory.mktemp("decode")
    for cls in ("airplane", "dog", "frog"):
        for src in sorted((DATA_DIR / "cifar10-test" / cls).glob("*.jpg"))[:2]:
            shutil.copyfile(src, root / f"cifar_{cls}_{src.name}")
    for i, size in enumerate([(500, 375), (375, 500), (1024, 768), (640, 427)]):
        (root / f"photo_{i}.jpg").write_bytes(_photo(size, i))
    odd = {
        "odd.png": _photo((400, 300), 10, format="PNG"),
        "odd_progressive.jpg": _photo((400, 300), 11, progressive=True),
        "odd_cmyk.jpg": _photo((400, 300), 12, mode="CMYK"),
        "odd_gray.jpg": _photo((400, 300), 13, mode="L"),
        "odd_truncated.jpg": _photo((400, 300), 14)[:5000],
        "odd_huge.jpg": _photo((3000, 2000), 15, quality=50),
        "odd_corrupt.jpg": _garbage_scan(_photo((400, 300), 16)),
    }
    for name, data in odd.items():
        (root / name).write_bytes(data)
    return root


@pytest.fixture(scope="module")
def settings(tmp_path_factory, image_root) -> Settings:
    return Settings.from_env(backend_env(tmp_path_factory.mktemp("gd"), LOCAL_FILES_DOCUMENT_ROOT=image_root))


@pytest.fixture(scope="module")
def reference(settings):
    """The CPU encoder as the server builds it (PIL decode with draft mode, resize/crop in fetch threads)."""
    return get_encoder("image", encoder_spec(settings))


@pytest.fixture(scope="module")
def device_path(reference):
    """The same model with the device decode path switched on, on CPU (a shallow copy: the shared encoder
    stays as it is)."""
    clip = copy.copy(reference.clip)
    clip.tensor_transform = TensorImageTransform(clip.image_size, "cpu")
    return ClipImageEncoder(clip)


def _cos(a, b) -> float:
    return float(np.dot(a, b) / (np.linalg.norm(a) * np.linalg.norm(b)))


def test_only_plain_jpegs_go_to_the_device(image_root):
    routed = {p.name: probe_jpeg(p.read_bytes(), 16_000_000) for p in sorted(image_root.iterdir())}
    to_device = sorted(name for name, j in routed.items() if j is not None)
    assert to_device == sorted(p.name for p in image_root.glob("*.jpg")
                               if not p.name.startswith("odd_") or p.name == "odd_corrupt.jpg")
    assert (routed["photo_2.jpg"].width, routed["photo_2.jpg"].height) == (1024, 768)
    assert probe_jpeg((image_root / "photo_2.jpg").read_bytes(), 1024 * 768 - 1) is None  # MAX_IMAGE_PIXELS


def test_device_pixels_match_open_clips_preprocess_on_real_images(reference, image_root):
    clip = reference.clip
    transform = TensorImageTransform(clip.image_size, "cpu")
    jpegs = [p for p in sorted(image_root.glob("*.jpg")) if not p.name.startswith("odd_")]
    pixels, failed = transform([probe_jpeg(p.read_bytes(), 16_000_000) for p in jpegs])
    assert failed == {} and pixels.shape == (len(jpegs), 3, clip.image_size, clip.image_size)
    for path, ours in zip(jpegs, pixels):
        ref = clip.preprocess(Image.open(path).convert("RGB"))  # full decode, PIL resize and crop, normalize
        ref_pixels = (ref - clip._shift[0]) / clip._scale[0]
        diff = (ours - ref_pixels).abs()
        # JPEG decoders (libjpeg-turbo's vs torchvision's) and interpolation rounding differ by a few levels
        assert float(diff.mean()) < 0.5 and float(diff.max()) <= 8.5, path.name


def test_device_path_embeddings_match_the_reference_path(reference, device_path, image_root, settings):
    """cosine >= 0.995 against open_clip's preprocess (full decode) and the server's CPU path (draft mode)."""
    fetcher = Fetcher(**fetcher_kwargs(settings))
    jpegs = [p for p in sorted(image_root.glob("*.jpg")) if not p.name.startswith("odd_")]
    fast = device_path.encode_batch([probe_jpeg(p.read_bytes(), 16_000_000) for p in jpegs])
    cpu_path = reference.encode_items([fetcher.load_image(p.name) for p in jpegs])
    clip = reference.clip
    with torch.inference_mode():
        exact = clip._run(clip.model.encode_image, torch.stack([clip.preprocess(Image.open(p).convert("RGB"))
                                                                for p in jpegs]))
    for path, f, c, e in zip(jpegs, fast, cpu_path, exact):
        assert _cos(f, e) >= 0.995 and _cos(c, e) >= 0.995 and _cos(f, c) >= 0.995, path.name


def test_odd_images_fall_back_or_get_a_clear_error_per_item(tmp_path, reference, device_path, image_root, settings):
    fetcher = Fetcher(**fetcher_kwargs(settings))
    names = sorted(p.name for p in image_root.iterdir())
    items = [Item(task_id=1 + i, field="image", source=name) for i, name in enumerate(names)]
    loads = []

    def load(item):
        loaded = ItemLoader(fetcher, "image", jpeg_passthrough=True)(item)
        loads.append((item.source, type(loaded).__name__))
        return loaded

    fast = embed_items(items, device_path, load, None, "gd", workers=3)
    slow = embed_items(items, reference, ItemLoader(fetcher, "image"), None, "gd", workers=3)
    undecodable = {names.index("odd_truncated.jpg"), names.index("odd_corrupt.jpg")}
    assert set(fast.errors) == set(slow.errors) == undecodable
    for i in undecodable:
        assert "not a decodable image" in fast.errors[i], fast.errors[i]
    passed = {source for source, kind in loads if kind == "JpegBytes"}
    assert "odd_corrupt.jpg" in passed and "odd.png" not in passed and "odd_cmyk.jpg" not in passed
    for i, name in enumerate(names):
        if i not in undecodable:
            assert _cos(fast.embeddings[i], slow.embeddings[i]) >= 0.995, name
    assert fast.computed == len(names) - 2


def test_a_batch_with_a_corrupt_jpeg_keeps_the_others(device_path, image_root):
    """The device refuses the corrupt JPEG and so does the CPU fallback: BadItems names its position only."""
    from backend.embed.errors import BadItems

    good = probe_jpeg((image_root / "photo_0.jpg").read_bytes(), 16_000_000)
    bad = probe_jpeg((image_root / "odd_corrupt.jpg").read_bytes(), 16_000_000)
    assert isinstance(bad, JpegBytes)
    with pytest.raises(BadItems) as caught:
        device_path.encode_batch([good, bad, good])
    assert list(caught.value.reasons) == [1] and "not a decodable image" in caught.value.reasons[1]
