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
from functools import cached_property
from pathlib import Path

import numpy as np

from .settings import Settings

logger = logging.getLogger(__name__)

# A compact subset of the CLIP paper's ImageNet prompt ensemble.
IMAGE_TEMPLATES = (
    "a photo of a {}.",
    "a bad photo of a {}.",
    "a photo of many {}.",
    "a low resolution photo of a {}.",
    "a close-up photo of a {}.",
    "a blurry photo of a {}.",
    "a good photo of a {}.",
    "a photo of the small {}.",
    "a photo of the large {}.",
    "itap of a {}.",
)
TEXT_TEMPLATES = (
    "{}",
    "This text is about {}.",
    "A message about {}.",
    "Category: {}.",
)


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


class _OpenClip:
    """The shared open_clip model (image and text towers), loaded once."""

    def __init__(self, settings: Settings):
        import open_clip
        import torch

        pretrained = settings.clip_pretrained
        self.device = _resolve_device(settings.device)
        logger.info("loading open_clip %s (pretrained=%s) on %s", settings.clip_model, pretrained, self.device)
        model, _, preprocess = open_clip.create_model_and_transforms(
            settings.clip_model,
            pretrained=None if pretrained.lower() in ("", "none", "random") else pretrained,
            device=self.device,
        )
        model.eval()
        self.model = model
        self.preprocess = preprocess
        self.tokenizer = open_clip.get_tokenizer(settings.clip_model)
        self.batch_size = settings.batch_size
        self.id = encoder_id("image", settings)
        with torch.no_grad():
            self.logit_scale = float(model.logit_scale.exp().clamp(max=100).item())
        # half precision only where it is fast and safe
        self.amp_dtype = torch.float16 if self.device.startswith("cuda") else None

    def _run(self, fn, batch):
        import torch

        with torch.inference_mode():
            if self.amp_dtype is not None:
                with torch.autocast("cuda", dtype=self.amp_dtype):
                    out = fn(batch)
            else:
                out = fn(batch)
            out = out.float()
            out = out / out.norm(dim=-1, keepdim=True).clamp_min(1e-12)
        return out.cpu().numpy()

    def encode_pixels(self, tensors: list) -> np.ndarray:
        import torch

        outs = []
        for start in range(0, len(tensors), self.batch_size):
            batch = torch.stack(tensors[start:start + self.batch_size])
            outs.append(self._run(self.model.encode_image, batch.to(self.device, non_blocking=True)))
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

    def prepare(self, image):
        return self.clip.preprocess(image)  # resize, crop, normalize: a (3, H, W) tensor

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

    def __init__(self, settings: Settings):
        from sentence_transformers import SentenceTransformer

        device = _resolve_device(settings.device)
        logger.info("loading sentence encoder %s on %s", settings.text_model, device)
        self.model = SentenceTransformer(settings.text_model, device=device)
        if device.startswith("cuda"):
            self.model.half()
        self.batch_size = settings.batch_size
        self.id = encoder_id("text", settings)

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


def _uses_clip(modality: str, settings: Settings) -> bool:
    return modality == "image" or settings.text_model.lower() == "clip"


def encoder_id(modality: str, settings: Settings) -> str:
    """Stable name of the encoder for a modality, known without loading it (used in model versions)."""
    if _uses_clip(modality, settings):
        return f"clip-{_slug(settings.clip_model)}-{_slug(settings.clip_pretrained)}"
    return f"st-{_slug(settings.text_model)}"


def get_encoder(modality: str, settings: Settings) -> Encoder:
    """The encoder for "image" or "text" items under these settings (loaded once per process)."""
    use_clip = _uses_clip(modality, settings)
    key = (modality, settings.clip_model, settings.clip_pretrained, settings.device, settings.batch_size) if use_clip \
        else (modality, settings.text_model, settings.device, settings.batch_size)
    with _cache_lock:
        if key not in _cache:
            if use_clip:
                clip_key = ("clip", settings.clip_model, settings.clip_pretrained, settings.device, settings.batch_size)
                if clip_key not in _cache:
                    _cache[clip_key] = _OpenClip(settings)  # type: ignore[assignment]
                clip = _cache[clip_key]
                _cache[key] = ClipImageEncoder(clip) if modality == "image" else ClipTextEncoder(clip)
            else:
                _cache[key] = SentenceEncoder(settings)
        return _cache[key]
