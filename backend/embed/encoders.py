"""Frozen encoders that turn items and label prompts into L2-normalized embeddings.

- ClipImageEncoder: open_clip image tower (CLIP_MODEL, CLIP_PRETRAINED: a pretrained tag, a local
  checkpoint file, or "none" for random weights in tests).
- ClipTextEncoder: the CLIP text tower, for <Text> tasks when TEXT_MODEL=clip.
- SentenceEncoder: a sentence-transformers model (TEXT_MODEL: hub name or local directory).

Each encoder embeds items (encode_items) and label prompts (encode_prompts) into one space, and says
how sharp its similarities are (logit_scale), which zero-shot heads use as softmax temperature.
get_encoder() is the one entry point; models load once per process.
"""
from __future__ import annotations

import hashlib
import logging
import threading
from dataclasses import dataclass, replace
from functools import cached_property
from pathlib import Path

import numpy as np

from .errors import BadItems, FetchError
from .gpu_decode import JpegBytes, TensorImageTransform, cpu_fallback
from .templates import IMAGE_TEMPLATES, TEXT_TEMPLATES

logger = logging.getLogger(__name__)


@dataclass(frozen=True, kw_only=True)
class EncoderSpec:
    """Which models embed items, and how they run (the CLIP fields serve images, and text when text_model="clip")."""

    clip_model: str  # open_clip architecture, e.g. "ViT-B-32"
    clip_pretrained: str  # pretrained tag, local checkpoint file, or "none" (random weights, for tests)
    text_model: str  # sentence-transformers name or directory, or "clip" for CLIP's text tower
    device: str = "auto"
    batch_size: int | None = None  # None: default_batch_size(device)
    precision: str = "fp16"  # on CUDA: fp16, bf16 or fp32 (CPU always computes in fp32)
    gpu_decode: bool = True  # on CUDA: plain JPEGs decoded and resized on the GPU (gpu_decode.py)
    channels_last: bool = True  # on CUDA: NHWC weights (convolutional towers; harmless for ViTs)

    def uses_clip(self, modality: str) -> bool:
        return modality == "image" or self.text_model.lower() == "clip"


# Measured on an H200 (issue 25): ViT-B-32 at 7,545 img/s with fp16 at batch 64, 21,365 at 256 and 22,975 in
# bf16 at 1,024; fp32 4,739. 256 gets nearly all of it with ramp-up batches still small; CPU gains nothing.
CUDA_BATCH_SIZE = 256
CPU_BATCH_SIZE = 64
AMP_DTYPES = {"fp16": "float16", "bf16": "bfloat16", "fp32": None}


def default_batch_size(device: str) -> int:
    return CUDA_BATCH_SIZE if device.startswith("cuda") else CPU_BATCH_SIZE


def _resolve_device(name: str) -> str:
    import torch

    if name != "auto":
        return name
    if torch.cuda.is_available():
        return "cuda"
    if getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
        return "mps"
    return "cpu"


def _slug(text: str) -> str:
    path = Path(text)
    if path.exists():  # local checkpoint or model directory: name plus a short hash of the full path
        return f"{path.stem}-{hashlib.sha1(str(path.resolve()).encode()).hexdigest()[:6]}"
    return text.replace("/", "-")


def _normalize(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, dtype=np.float32)
    return x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), 1e-12)


class Encoder:
    """prepare() is per-item CPU work (thread-safe, runs in fetch workers); encode_batch() runs the model."""

    id: str
    modality: str  # "image" or "text"
    templates: tuple[str, ...]
    logit_scale: float
    batch_size: int = 64

    def prepare(self, item):
        return item

    def encode_batch(self, prepared: list) -> np.ndarray:
        raise NotImplementedError

    def encode_items(self, items: list) -> np.ndarray:
        return self.encode_batch([self.prepare(item) for item in items])

    def encode_prompts(self, texts: list[str]) -> np.ndarray:
        raise NotImplementedError


class _FastImageTransform:
    """open_clip's eval transform for resize_mode "shortest" (torchvision Resize of the shorter side with
    PIL, CenterCrop), done with PIL alone and returning a uint8 (H, W, 3) array.

    Pixel-identical to open_clip's transform (tests check it); ToTensor and Normalize, which open_clip
    runs per image as several small torch ops, happen once per batch in _OpenClip.encode_pixels. That
    keeps torch (and its OpenMP thread team) out of the fetch threads: on a 2-core machine per-image
    torch ops in 8 worker threads oversubscribe the cores and stall the encoder.
    """

    _RESAMPLE = {"bicubic": 3, "bilinear": 2, "nearest": 0, "lanczos": 1}  # PIL.Image.Resampling values

    def __init__(self, size: int, interpolation: str):
        self.size = size
        self.resample = self._RESAMPLE[interpolation]

    def __call__(self, image) -> np.ndarray:
        if image.mode != "RGB":
            image = image.convert("RGB")
        size = self.size
        w, h = image.size
        # torchvision's _compute_resized_output_size for an int size: shorter side -> size, longer truncated
        nw, nh = (size, int(size * h / w)) if w <= h else (int(size * w / h), size)
        if (nw, nh) != (w, h):
            # reducing_gap only acts on >= 6x downscales (huge PNGs): box-reduce first, then bicubic;
            # draft-decoded JPEGs and ordinary photos take the plain (exact) path
            gap = 3.0 if min(w / nw, h / nh) >= 6 else None
            image = image.resize((nw, nh), self.resample, reducing_gap=gap)
        left, top = int(round((nw - size) / 2.0)), int(round((nh - size) / 2.0))
        if (left, top, nw, nh) != (0, 0, size, size):
            image = image.crop((left, top, left + size, top + size))
        return np.asarray(image, dtype=np.uint8)


def _fast_transform(model, preprocess):
    """A _FastImageTransform equivalent to open_clip's preprocess for this model, or None."""
    cfg = getattr(getattr(model, "visual", None), "preprocess_cfg", None) or {}
    size = cfg.get("size")
    size = size if isinstance(size, int) else (size[0] if size and size[0] == size[1] else None)
    if not size or cfg.get("resize_mode", "shortest") != "shortest" or cfg.get("mode", "RGB") != "RGB" \
            or cfg.get("interpolation", "bicubic") not in _FastImageTransform._RESAMPLE:
        return None
    names = [type(t).__name__ for t in getattr(preprocess, "transforms", [])]
    if names != ["Resize", "CenterCrop", "MaybeConvertMode", "MaybeToTensor", "Normalize"]:
        return None
    return _FastImageTransform(size, cfg.get("interpolation", "bicubic"))


class _OpenClip:
    """The shared open_clip model (image and text towers), loaded once."""

    def __init__(self, spec: EncoderSpec):
        import open_clip
        import torch

        pretrained = spec.clip_pretrained
        self.device = _resolve_device(spec.device)
        logger.info("loading open_clip %s (pretrained=%s) on %s", spec.clip_model, pretrained, self.device)
        model, _, preprocess = open_clip.create_model_and_transforms(
            spec.clip_model,
            pretrained=None if pretrained.lower() in ("", "none", "random") else pretrained,
            device=self.device,
        )
        model.eval()
        cuda = self.device.startswith("cuda")
        if cuda and spec.channels_last:
            model = model.to(memory_format=torch.channels_last)
        self.model = model
        self.preprocess = preprocess  # open_clip's per-image transform: (3, H, W) float tensors
        self.fast_transform = _fast_transform(model, preprocess)  # same pixels, uint8 (H, W, 3) arrays
        self.image_size = self.fast_transform.size if self.fast_transform else 224
        cfg = getattr(model.visual, "preprocess_cfg", {}) or {}
        mean = torch.tensor(cfg.get("mean", open_clip.OPENAI_DATASET_MEAN), dtype=torch.float32)
        std = torch.tensor(cfg.get("std", open_clip.OPENAI_DATASET_STD), dtype=torch.float32)
        # Normalize(ToTensor(x)) = (x / 255 - mean) / std = x * scale + shift, applied once per batch
        self._scale = (1.0 / (255.0 * std)).view(1, 3, 1, 1).to(self.device)
        self._shift = (-mean / std).view(1, 3, 1, 1).to(self.device)
        # one batch at a time: concurrent requests would otherwise oversubscribe the CPU (or GPU memory)
        self._run_lock = threading.Lock()
        self.tokenizer = open_clip.get_tokenizer(spec.clip_model)
        self.batch_size = spec.batch_size or default_batch_size(self.device)
        self.id = encoder_id("image", spec)
        with torch.no_grad():
            self.logit_scale = float(model.logit_scale.exp().clamp(max=100).item())
        # half precision only where it is fast and safe (fp16 embeddings match CPU fp32 at cosine >= 0.999999)
        amp = AMP_DTYPES[spec.precision] if cuda else None
        self.amp_dtype = getattr(torch, amp) if amp else None
        # JPEGs decoded on the GPU: same pixels as fast_transform within interpolation rounding
        self.tensor_transform = TensorImageTransform(self.image_size, self.device) \
            if cuda and spec.gpu_decode and self.fast_transform is not None else None

    def _run(self, fn, batch):
        import torch

        with self._run_lock, torch.inference_mode():
            if self.amp_dtype is not None:
                with torch.autocast(self.device.split(":")[0], dtype=self.amp_dtype):
                    out = fn(batch)
            else:
                out = fn(batch)
            out = out.float()
            out = out / out.norm(dim=-1, keepdim=True).clamp_min(1e-12)
        return out.cpu().numpy()

    def pixels_to_input(self, arrays: list):
        """uint8 (H, W, 3) arrays -> the model's normalized (N, 3, H, W) input on its device.

        One copy into a (pinned, on CUDA) uint8 batch, one transfer of uint8 (a quarter of float32's
        bytes), then ToTensor + Normalize as one multiply-add over the batch, on the device, in the
        model's precision. The NHWC -> NCHW permute is a view: the input is channels_last.
        """
        import torch

        n = len(arrays)
        cuda = self.device.startswith("cuda")
        batch = torch.empty((n, *arrays[0].shape), dtype=torch.uint8, pin_memory=cuda)
        np.stack(arrays, out=batch.numpy())
        x = batch if self.device == "cpu" else batch.to(self.device, non_blocking=cuda)
        x = x.permute(0, 3, 1, 2).to(self.amp_dtype or torch.float32)
        return torch.addcmul(self._shift.to(x.dtype), x, self._scale.to(x.dtype))

    def batch_input(self, chunk: list):
        """uint8 arrays and JpegBytes (decoded on the device) -> one normalized input batch, in order.
        A JPEG the device cannot decode takes the CPU path; BadItems names those neither can decode."""
        import torch

        jpeg_pos = [i for i, p in enumerate(chunk) if isinstance(p, JpegBytes)]
        if not jpeg_pos:
            return self.pixels_to_input(chunk)
        pixels, failed = self.tensor_transform([chunk[i] for i in jpeg_pos])
        arrays = {i: p for i, p in enumerate(chunk) if not isinstance(p, JpegBytes)}
        errors = {}
        for k in failed:
            try:
                arrays[jpeg_pos[k]] = self.fast_transform(cpu_fallback(chunk[jpeg_pos[k]], self.image_size))
            except FetchError as exc:
                errors[jpeg_pos[k]] = str(exc)
        if errors:
            raise BadItems(errors)
        dtype = self.amp_dtype or torch.float32
        x = torch.empty((len(chunk), 3, self.image_size, self.image_size), dtype=dtype, device=self.device)
        on_device = [p for k, p in enumerate(jpeg_pos) if k not in failed]
        if on_device:
            x[on_device] = torch.addcmul(self._shift, pixels, self._scale).to(dtype)
        if arrays:
            x[sorted(arrays)] = self.pixels_to_input([arrays[i] for i in sorted(arrays)])
        return x

    def encode_pixels(self, prepared: list) -> np.ndarray:
        """prepared: uint8 (H, W, 3) arrays from fast_transform or JpegBytes, or (3, H, W) tensors from preprocess."""
        import torch

        outs = []
        for start in range(0, len(prepared), self.batch_size):
            chunk = prepared[start:start + self.batch_size]
            if isinstance(chunk[0], (np.ndarray, JpegBytes)):
                with torch.inference_mode():
                    batch = self.batch_input(chunk)
            else:
                batch = torch.stack(chunk).to(self.device, non_blocking=True)
            outs.append(self._run(self.model.encode_image, batch))
        return np.concatenate(outs) if outs else np.zeros((0, self.dim), np.float32)

    def encode_texts(self, texts: list[str]) -> np.ndarray:
        outs = []
        for start in range(0, len(texts), self.batch_size):
            tokens = self.tokenizer(texts[start:start + self.batch_size]).to(self.device)
            outs.append(self._run(self.model.encode_text, tokens))
        return np.concatenate(outs) if outs else np.zeros((0, self.dim), np.float32)

    @cached_property
    def dim(self) -> int:
        return int(self.encode_texts(["x"]).shape[1])


class ClipImageEncoder(Encoder):
    modality = "image"
    templates = IMAGE_TEMPLATES

    def __init__(self, clip: _OpenClip):
        self.clip = clip
        self.id = clip.id
        self.logit_scale = clip.logit_scale
        self.batch_size = clip.batch_size

    @property
    def image_size(self) -> int:
        """Side of the model's square input (decoders can draft-decode JPEGs down to it)."""
        return self.clip.image_size

    @property
    def decodes_jpeg(self) -> bool:
        """Plain JPEGs may come as JpegBytes (decoded on the encoder's device) instead of images."""
        return self.clip.tensor_transform is not None

    def prepare(self, image):
        """Per-item CPU work for the fetch threads: resize + center crop, a uint8 (H, W, 3) array
        (JpegBytes pass through: the device decodes them in encode_batch)."""
        if isinstance(image, JpegBytes):
            return image
        if self.clip.fast_transform is not None:
            return self.clip.fast_transform(image)
        return self.clip.preprocess(image)  # another transform family: open_clip's (3, H, W) tensor

    def encode_batch(self, prepared):
        return self.clip.encode_pixels(prepared)

    def encode_prompts(self, texts):
        return self.clip.encode_texts(texts)


class ClipTextEncoder(ClipImageEncoder):
    modality = "text"
    templates = TEXT_TEMPLATES

    def prepare(self, text):
        return text

    def encode_batch(self, prepared):
        return self.clip.encode_texts(prepared)


class SentenceEncoder(Encoder):
    modality = "text"
    templates = TEXT_TEMPLATES
    # Sentence-embedding cosine similarities span a narrow range; this temperature maps them to
    # usable probabilities (ranking does not depend on it).
    logit_scale = 30.0

    def __init__(self, spec: EncoderSpec):
        from sentence_transformers import SentenceTransformer

        import torch

        device = _resolve_device(spec.device)
        logger.info("loading sentence encoder %s on %s", spec.text_model, device)
        self.model = SentenceTransformer(spec.text_model, device=device)
        if device.startswith("cuda") and spec.precision != "fp32":
            self.model.to(getattr(torch, AMP_DTYPES[spec.precision]))
        self.batch_size = spec.batch_size or default_batch_size(device)
        self.id = encoder_id("text", spec)

    def _encode(self, texts):
        emb = self.model.encode(list(texts), batch_size=self.batch_size, convert_to_numpy=True,
                                normalize_embeddings=True, show_progress_bar=False)
        return _normalize(emb)

    def encode_batch(self, prepared):
        return self._encode(prepared)

    def encode_prompts(self, texts):
        return self._encode(texts)


_cache: dict[tuple, Encoder] = {}
_cache_lock = threading.Lock()


def encoder_id(modality: str, spec: EncoderSpec) -> str:
    """Stable name of the encoder for a modality, known without loading it. It names Chroma collections
    and model versions of existing installations: never change the format."""
    if spec.uses_clip(modality):
        return f"clip-{_slug(spec.clip_model)}-{_slug(spec.clip_pretrained)}"
    return f"st-{_slug(spec.text_model)}"


def get_encoder(modality: str, spec: EncoderSpec) -> Encoder:
    """The encoder for "image" or "text" items under this spec (loaded once per process; the image and
    CLIP text encoders share one open_clip model)."""
    use_clip = spec.uses_clip(modality)
    clip_key = ("clip", replace(spec, text_model=""))
    key = (modality, clip_key[1] if use_clip else replace(spec, clip_model="", clip_pretrained="", gpu_decode=False))
    with _cache_lock:
        if key not in _cache:
            if use_clip:
                if clip_key not in _cache:
                    _cache[clip_key] = _OpenClip(spec)  # type: ignore[assignment]
                clip = _cache[clip_key]
                _cache[key] = ClipImageEncoder(clip) if modality == "image" else ClipTextEncoder(clip)
            else:
                _cache[key] = SentenceEncoder(spec)
        return _cache[key]
