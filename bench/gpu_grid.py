"""CUDA settings by measurement, and the fast path checked against the reference (bench/gpu_check.sh runs it).

    python -m bench.gpu_grid --json [--small]

- grid: model-only images/s of the image tower over batch size x precision x channels_last (the defaults in
  backend/embed/encoders.py: CUDA_BATCH_SIZE, CUDA_PRECISION, channels_last, come from this table);
- same_embeddings: per image set, the minimum cosine between the fast path (device decode when the encoder
  decodes JPEGs, else the PIL path) and the reference (open_clip's preprocess on a full PIL decode, fp32 CPU);
- sustained: ClipClassifier.predict over N tasks (N >= 20,000 unless --small) that point at the image files,
  writing behind, then until every embedding is stored: images/s returned and stored, the store's backlog.
Runs on CPU too (the rehearsal; tiny sizes with --small).
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from backend.config import Settings
from backend.embed.encoders import EncoderSpec, get_encoder
from backend.embed.fetch import Fetcher
from backend.embed.gpu_decode import probe_jpeg
from backend.embed.store import open_store
from backend.embed.write_behind import flush_all, for_store
from backend.runtime.build import build_model
from backend.runtime.models import fetcher_kwargs
from bench.throughput import IMAGE_CONFIG, cifar_jpegs, synthetic_jpegs


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def model_only_grid(device: str, batches: list[int], images: int) -> list[dict]:
    import torch

    rows = []
    for precision in ("fp16", "bf16", "fp32") if device.startswith("cuda") else ("fp32",):
        for channels_last in (True, False) if device.startswith("cuda") else (False,):
            spec = EncoderSpec(clip_model=os.environ.get("CLIP_MODEL", "ViT-B-32"), clip_pretrained="none",
                               text_model="clip", device=device, precision=precision, channels_last=channels_last)
            clip = get_encoder("image", spec).clip
            for batch in batches if precision != "fp32" else batches[:2]:
                x = torch.randn(batch, 3, clip.image_size, clip.image_size, device=clip.device)
                x = x.to(clip.amp_dtype or torch.float32)
                clip._run(clip.model.encode_image, x)  # warm-up
                n = max(batch, images // batch * batch)
                t0 = time.perf_counter()
                for _ in range(n // batch):
                    clip._run(clip.model.encode_image, x)
                rate = n / (time.perf_counter() - t0)
                rows.append({"precision": precision, "channels_last": channels_last, "batch": batch,
                             "images_per_s": round(rate, 1)})
                log(f"grid {precision} channels_last={channels_last} batch {batch}: {rate:.0f} img/s")
    return rows


def same_embeddings(settings: Settings, root: Path, sets: dict[str, list[Path]]) -> dict:
    """Min/mean cosine of fast path vs reference (full PIL decode + open_clip preprocess, fp32 on CPU)."""
    import torch
    from PIL import Image

    fast = get_encoder("image", EncoderSpec(clip_model=settings.clip_model, clip_pretrained="none",
                                            text_model="clip", device=settings.device))
    reference = get_encoder("image", EncoderSpec(clip_model=settings.clip_model, clip_pretrained="none",
                                                 text_model="clip", device="cpu"))
    # one set of random weights on both: copy the reference's weights into the fast encoder's model
    fast.clip.model.load_state_dict(reference.clip.model.state_dict())
    fetcher = Fetcher(**fetcher_kwargs(settings))
    out = {}
    for name, paths in sets.items():
        if fast.decodes_jpeg:
            items = [probe_jpeg(p.read_bytes(), settings.max_image_pixels)
                     or fetcher.load_image(str(p.relative_to(root))) for p in paths]
        else:
            items = [fetcher.load_image(str(p.relative_to(root))) for p in paths]
        got = fast.encode_batch([fast.prepare(i) for i in items])
        clip = reference.clip
        with torch.inference_mode():
            ref = np.concatenate([clip._run(clip.model.encode_image, torch.stack(
                [clip.preprocess(Image.open(p).convert("RGB")) for p in paths[s:s + 64]]))
                for s in range(0, len(paths), 64)])
        cos = np.sum(got * ref, axis=1)
        out[name] = {"images": len(paths), "min_cosine": round(float(cos.min()), 6),
                     "mean_cosine": round(float(cos.mean()), 6), "device_decoded": bool(fast.decodes_jpeg)}
        log(f"same embeddings {name}: {out[name]}")
    return out


def sustained(settings: Settings, root: Path, paths: list[Path], tasks_n: int) -> dict:
    store = open_store(path=Path(settings.model_dir) / "chroma-sustained")
    model = build_model(settings, "sustained", IMAGE_CONFIG, store=store)
    model.load()
    refs = [f"/data/local-files/?d={p.relative_to(root)}" for p in paths]
    tasks = [{"id": 1 + i, "data": {"image": refs[i % len(refs)]}} for i in range(tasks_n)]
    t0 = time.perf_counter()
    done = 0
    for start in range(0, tasks_n, 4096):  # as the import flow does: chunks, writes behind, bounded backlog
        chunk = tasks[start:start + 4096]
        out = model.predict(chunk, inferred=model.infer_embedded(model.embed_tasks(chunk, writes="behind")))
        done += sum(1 for r in out if r)
    returned = time.perf_counter() - t0
    flush_all()
    stored = time.perf_counter() - t0
    behind = for_store(store)
    return {"tasks": tasks_n, "predicted": done, "returned_images_per_s": round(tasks_n / returned, 1),
            "stored_images_per_s": round(tasks_n / stored, 1),
            "stored_records": store.count("sustained", model.controls[0].encoder.id),
            "store_failed": behind.failed, "store_dropped": behind.dropped}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--small", action="store_true", help="tiny sizes (the CPU rehearsal)")
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--device", default=os.environ.get("DEVICE", "auto"))
    args = parser.parse_args(argv)
    tmp = Path(tempfile.mkdtemp(prefix="gpu-grid-"))
    root = tmp / "images"
    n = 16 if args.small else 1000
    sets = {"cifar": cifar_jpegs(root / "cifar", n), "500x375": synthetic_jpegs(root / "500x375", n, (500, 375), 500),
            "1024x768": synthetic_jpegs(root / "1024x768", min(n, 300), (1024, 768), 1024)}
    sets = {k: v for k, v in sets.items() if v}
    env = {"CLIP_PRETRAINED": "none", "MODEL_DIR": str(tmp / "models"), "LOCAL_FILES_DOCUMENT_ROOT": str(root),
           "DEVICE": args.device, "LOG_LEVEL": "WARNING"}
    env.update({k: os.environ[k] for k in ("BATCH_SIZE", "FETCH_WORKERS", "CUDA_PRECISION", "GPU_DECODE",
                                            "TEXT_MODEL") if os.environ.get(k)})
    settings = Settings.from_env(env)
    from backend.embed.encoders import _resolve_device

    device = _resolve_device(args.device)
    result = {"device": device,
              "grid": model_only_grid(device, [16, 32] if args.small else [64, 256, 512, 1024], 64 if args.small else 4096),
              "same_embeddings": same_embeddings(settings, root, sets),
              "sustained": sustained(settings, root, next(iter(sets.values())), 64 if args.small else 20480)}
    log(f"sustained: {result['sustained']}")
    print(json.dumps(result) if args.json else json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
