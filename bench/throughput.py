"""Throughput benchmark (not a test): model-only vs our end-to-end pipeline vs a per-task loop, and
/predict latency, all measured in one run on this machine.

    CLIP_PRETRAINED=none .venv/bin/python -m bench.throughput            # table
    CLIP_PRETRAINED=none .venv/bin/python -m bench.throughput --json     # one JSON object
    CLIP_PRETRAINED=none .venv/bin/python -m bench.throughput --stages   # each stage alone, then together

What is measured (every throughput on the same images, same model, batch size and precision):

- model_only:     encode_image on ready-made (B, 3, 224, 224) tensors of BATCH_SIZE; no I/O at all.
- end_to_end:     ClipClassifier.predict() (backend.model) on Label Studio tasks that point at JPEG files through
                  /data/local-files/?d=... (read, decode, preprocess, encode, write to Chroma, head):
                  the code path of /predict, with a fresh project each pass so nothing is cached.
- per_task_loop:  what most ML backend examples do: for each task fetch, decode, preprocess,
                  encode_image on a batch of 1.
- /predict p50/p95 through the Flask app in process: uncached (a new task id) and cached (the same
                  task again: its embedding comes from Chroma), 1 task per request.

Image sets: CIFAR-10 test JPEGs (32x32, from ../shared/data, if present) and synthetic photo-like
JPEGs of 500x375 and 1024x768 written to a temp dir. Measurements are interleaved (model-only,
end-to-end, loop for each set, repeated --rounds times) so background load hits all of them alike;
the headline numbers pool all sets (images / seconds), the per-set medians are reported as well.

CLIP weights: with no internet use CLIP_PRETRAINED=none (random weights, identical compute). The
default here is "none" unless CLIP_PRETRAINED is set.
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from backend.config import Settings
from backend.embed.encoders import get_encoder
from backend.embed.fetch import Fetcher, decode_image
from backend.embed.store import open_store
from backend.embed.write_behind import flush_all
from backend.runtime.build import build_model
from backend.runtime.models import encoder_spec, fetcher_kwargs, store_kwargs
from backend.web import create_app

REPO = Path(__file__).resolve().parent.parent

IMAGE_CONFIG = (REPO / "label_config" / "image_classification.xml").read_text()


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def synthetic_jpegs(folder: Path, count: int, size: tuple[int, int], seed: int) -> list[Path]:
    """Photo-like JPEGs (smooth colour fields, edges, mild noise): realistic file sizes and decode cost."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    w, h = size
    for i in range(count):
        base = Image.fromarray(rng.integers(0, 256, (6, 8, 3), dtype=np.uint8)).resize((w, h), Image.BICUBIC)
        draw = ImageDraw.Draw(base)
        for _ in range(6):
            x0, y0 = int(rng.integers(0, w)), int(rng.integers(0, h))
            x1, y1 = x0 + int(rng.integers(20, w // 2)), y0 + int(rng.integers(20, h // 2))
            fill = tuple(int(c) for c in rng.integers(0, 256, 3))
            (draw.ellipse if rng.random() < 0.5 else draw.rectangle)((x0, y0, x1, y1), fill=fill)
        arr = np.asarray(base, dtype=np.int16) + rng.integers(-12, 13, (h, w, 3), dtype=np.int16)
        path = folder / f"{i:05d}.jpg"
        Image.fromarray(arr.clip(0, 255).astype(np.uint8)).save(path, "JPEG", quality=90)
        paths.append(path)
    return paths


def cifar_jpegs(dest: Path, count: int) -> list[Path]:
    data = Path(os.environ.get("SHARED_DATA") or REPO.parent / "shared" / "data") / "cifar10-test"
    if not data.is_dir():
        return []
    sources = sorted(data.glob("*/*.jpg"))
    step = max(1, len(sources) // count)
    dest.mkdir(parents=True, exist_ok=True)
    paths = []
    for src in sources[::step][:count]:
        target = dest / f"{src.parent.name}_{src.name}"
        shutil.copyfile(src, target)
        paths.append(target)
    return paths


def tasks_for(paths: list[Path], root: Path, first_id: int) -> list[dict]:
    return [{"id": first_id + i, "data": {"image": f"/data/local-files/?d={p.relative_to(root)}"}}
            for i, p in enumerate(paths)]


def percentile(values: list[float], q: float) -> float:
    return float(np.percentile(values, q)) if values else float("nan")



def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--json", action="store_true", help="print one JSON object (details go to stderr)")
    parser.add_argument("--images", type=int, default=192, help="images per set for model-only and end-to-end")
    parser.add_argument("--loop-images", type=int, default=48, help="images per set for the per-task loop")
    parser.add_argument("--rounds", type=int, default=2, help="interleaved repetitions")
    parser.add_argument("--sets", default="cifar,500x375,1024x768", help="comma-separated image sets")
    parser.add_argument("--predict-requests", type=int, default=20, help="/predict requests of each kind")
    parser.add_argument("--batch-size", type=int, default=None, help="BATCH_SIZE (default: the setting's)")
    parser.add_argument("--device", default=os.environ.get("DEVICE", "auto"))
    parser.add_argument("--keep", action="store_true", help="keep the temp dir")
    parser.add_argument("--stages", action="store_true",
                        help="stage report (bench/throughput_stages.py): read, decode, encode, store write at 1 and "
                             "2 writers, head, text encode, and together; names the limiting stage")
    parser.add_argument("--store-batch", type=int, default=2048, help="--stages: records per store write call")
    parser.add_argument("--store-records", type=int, default=4096, help="--stages: records written per store measure")
    return parser.parse_args(argv)


def bench_settings(args, tmp: Path, root: Path) -> Settings:
    env = {
        "CLIP_PRETRAINED": os.environ.get("CLIP_PRETRAINED", "none"),
        "CLIP_MODEL": os.environ.get("CLIP_MODEL", "ViT-B-32"),
        "MODEL_DIR": str(tmp / "models"),
        "LOCAL_FILES_DOCUMENT_ROOT": str(root),
        "DEVICE": args.device,
        "LOG_LEVEL": "WARNING",
    }
    for name in ("FETCH_WORKERS", "TEXT_MODEL", "CUDA_PRECISION", "GPU_DECODE"):
        if os.environ.get(name):
            env[name] = os.environ[name]
    if args.batch_size or os.environ.get("BATCH_SIZE"):
        env["BATCH_SIZE"] = str(args.batch_size or os.environ["BATCH_SIZE"])
    return Settings.from_env(env)


def image_sets(args, root: Path) -> dict[str, list[Path]]:
    sets: dict[str, list[Path]] = {}
    for name in [s.strip() for s in args.sets.split(",") if s.strip()]:
        n = max(args.images, args.loop_images)
        if name == "cifar":
            paths = cifar_jpegs(root / "cifar", n)
            if not paths:
                log("cifar10-test not found; skipping the cifar set")
                continue
        else:
            w, h = (int(v) for v in name.split("x"))
            paths = synthetic_jpegs(root / name, n, (w, h), seed=w)
        sets[name] = paths
        log(f"set {name}: {len(paths)} JPEGs, {sum(p.stat().st_size for p in paths) / len(paths) / 1024:.0f} KiB avg")
    return sets


class Throughput:
    """The three throughput measurements, on one encoder, store and fetcher."""

    def __init__(self, settings: Settings, root: Path):
        self.settings = settings
        self.root = root
        self.store = open_store(**store_kwargs(settings))
        self.fetcher = Fetcher(**fetcher_kwargs(settings))
        self.encoder = get_encoder("image", encoder_spec(settings))
        clip = self.encoder.clip
        self.model = clip.model
        self.preprocess = clip.preprocess
        self.batch_size = self.encoder.batch_size
        self.device = clip.device
        self.dtype = getattr(clip, "amp_dtype", None)
        self.project_counter = 1000
        self.config = IMAGE_CONFIG
        self.stored_rates: list[tuple[int, float]] = []  # (images, images/s until every embedding is stored)

    def _encode(self, x):
        """L2-normalized image embeddings of a ready input batch, in the encoder's precision."""
        import torch

        if self.dtype is not None:
            with torch.autocast("cuda", dtype=self.dtype):
                out = self.model.encode_image(x)
        else:
            out = self.model.encode_image(x)
        out = out.float()
        return out / out.norm(dim=-1, keepdim=True)

    def model_only(self, n: int) -> float:
        import torch

        x = torch.randn(self.batch_size, 3, 224, 224)
        if self.device.startswith("cuda"):
            x = x.to(self.device)
        done = 0
        t0 = time.perf_counter()
        with torch.inference_mode():
            while done < n:
                b = min(self.batch_size, n - done)
                self._encode(x[:b]).cpu()
                done += b
        return n / (time.perf_counter() - t0)

    def end_to_end(self, paths: list[Path]) -> float:
        self.project_counter += 1
        settings = self.settings
        model = build_model(settings, str(self.project_counter), IMAGE_CONFIG, store=self.store)
        model.load()
        tasks = tasks_for(paths, self.root, 1)
        t0 = time.perf_counter()
        # as /predict and imports embed: predictions returned without waiting for the store's writes
        out = model.predict(tasks, inferred=model.infer_embedded(model.embed_tasks(tasks, writes="behind")))
        elapsed = time.perf_counter() - t0
        flush_all()
        self.stored_rates.append((len(paths), len(paths) / (time.perf_counter() - t0)))
        failed = sum(1 for r in out if not r)
        if failed:
            raise SystemExit(f"end-to-end: {failed} tasks without prediction")
        return len(paths) / elapsed

    def per_task_loop(self, paths: list[Path]) -> float:
        import torch

        tasks = tasks_for(paths, self.root, 1)
        t0 = time.perf_counter()
        with torch.no_grad():
            for task in tasks:
                raw = self.fetcher.fetch_bytes(task["data"]["image"], task["id"])
                image = decode_image(raw, self.settings.max_image_pixels)
                x = self.preprocess(image).unsqueeze(0).to(self.device)
                self._encode(x).cpu().numpy()
        return len(paths) / (time.perf_counter() - t0)

    def warm_up(self, paths: list[Path]) -> None:
        """First calls allocate and JIT-select kernels."""
        self.model_only(self.batch_size)
        self.end_to_end(paths[:min(len(paths), self.batch_size)])
        self.per_task_loop(paths[:4])


def interleaved_runs(bench: Throughput, sets: dict[str, list[Path]], args) -> dict:
    """{set: {kind: [(images, images/s) per round]}}."""
    runs: dict[str, dict[str, list[tuple[int, float]]]] = {
        name: {"model_only": [], "end_to_end": [], "per_task_loop": []} for name in sets}
    for r in range(args.rounds):
        for name, paths in sets.items():
            n = min(args.images, len(paths))
            # alternate the order within a round so drift in background load does not favour one side
            order = ["model_only", "end_to_end", "per_task_loop"]
            if r % 2:
                order.reverse()
            for kind in order:
                if kind == "model_only":
                    ips = bench.model_only(n)
                    count = n
                elif kind == "end_to_end":
                    ips = bench.end_to_end(paths[:n])
                    count = n
                else:
                    count = min(args.loop_images, len(paths))
                    ips = bench.per_task_loop(paths[:count])
                runs[name][kind].append((count, ips))
                log(f"round {r + 1} {name:>9} {kind:>13}: {ips:6.2f} images/s")
    return runs


def pooled(runs: dict, kind: str) -> float:
    images = sum(c for s in runs.values() for c, _ in s[kind])
    seconds = sum(c / ips for s in runs.values() for c, ips in s[kind])
    return images / seconds


def per_set_medians(runs: dict) -> dict:
    per_set = {
        name: {kind: round(statistics.median(ips for _, ips in values), 2) for kind, values in kinds.items()}
        for name, kinds in runs.items()
    }
    for name, v in per_set.items():
        v["e2e_vs_model"] = round(v["end_to_end"] / v["model_only"], 3)
        v["e2e_vs_loop"] = round(v["end_to_end"] / v["per_task_loop"], 3)
    return per_set


def predict_latency(settings: Settings, root: Path, lat_paths: list[Path], requests: int) -> tuple[list, list]:
    """(uncached, cached) /predict latencies in ms, 1 task per request, through the Flask app in process."""
    client = create_app(settings).test_client()
    uncached, cached = [], []

    def post(tasks) -> float:
        t0 = time.perf_counter()
        resp = client.post("/predict", json={"tasks": tasks, "project": 77, "label_config": IMAGE_CONFIG})
        ms = (time.perf_counter() - t0) * 1000
        if resp.status_code != 200 or not resp.get_json()["results"][0]:
            raise SystemExit(f"/predict failed: {resp.status_code} {resp.get_data(as_text=True)[:200]}")
        return ms

    post(tasks_for(lat_paths[:1], root, 900_000))  # loads the model and prototypes for project 77
    post(tasks_for(lat_paths[:1], root, 900_000))
    for i in range(requests):
        task = tasks_for([lat_paths[i % len(lat_paths)]], root, 1_000_000 + i)
        uncached.append(post(task))  # a new task id: fetched, decoded, encoded, stored
        cached.append(post(task))  # the same task again: read from Chroma
    extra = [post(tasks_for([lat_paths[i % len(lat_paths)]], root, 1_000_000 + i))
             for i in range(requests)]
    cached += extra
    return uncached, cached


def summarize(runs: dict, uncached: list, cached: list, stored: list = ()) -> dict:
    result = {
        "model_only_images_per_s": round(pooled(runs, "model_only"), 2),
        "end_to_end_images_per_s": round(pooled(runs, "end_to_end"), 2),
        "per_task_loop_images_per_s": round(pooled(runs, "per_task_loop"), 2),
        "predict_cached_p50_ms": round(percentile(cached, 50), 2),
        "predict_cached_p95_ms": round(percentile(cached, 95), 2),
        "predict_uncached_p50_ms": round(percentile(uncached, 50), 2),
        "predict_uncached_p95_ms": round(percentile(uncached, 95), 2),
    }
    if stored:  # the sustained rate: until every embedding is in the store
        result["end_to_end_stored_images_per_s"] = round(sum(c for c, _ in stored) / sum(c / r for c, r in stored), 2)
    result["end_to_end_vs_model_only"] = round(result["end_to_end_images_per_s"] / result["model_only_images_per_s"], 3)
    result["end_to_end_vs_per_task_loop"] = round(
        result["end_to_end_images_per_s"] / result["per_task_loop_images_per_s"], 3)
    # ratios of adjacent measurements (same set, same round): least sensitive to drifting background load
    adjacent = [e[1] / m[1] for kinds in runs.values() for m, e in zip(kinds["model_only"], kinds["end_to_end"])]
    result["end_to_end_vs_model_only_adjacent_median"] = round(statistics.median(adjacent), 3)
    result["per_set"] = per_set_medians(runs)
    return result


def run_config(args, bench: Throughput, load_start) -> dict:
    import torch

    settings = bench.settings
    return {
        "clip_model": settings.clip_model, "clip_pretrained": settings.clip_pretrained, "device": bench.device,
        "batch_size": bench.batch_size, "fetch_workers": settings.fetch_workers,
        "torch_threads": torch.get_num_threads(),
        "cpus": os.cpu_count(), "rounds": args.rounds, "images_per_set": args.images,
        "loop_images_per_set": args.loop_images, "python": platform.python_version(), "torch": torch.__version__,
        "load_average_start_end": [load_start, round(os.getloadavg()[0], 2)] if hasattr(os, "getloadavg") else None,
    }


def print_table(result: dict) -> None:
    print(f"{'set':>10} {'model-only':>11} {'end-to-end':>11} {'per-task':>9} {'e2e/model':>10} {'e2e/loop':>9}")
    for name, v in result["per_set"].items():
        print(f"{name:>10} {v['model_only']:>11.2f} {v['end_to_end']:>11.2f} {v['per_task_loop']:>9.2f} "
              f"{v['e2e_vs_model']:>10.3f} {v['e2e_vs_loop']:>9.3f}")
    print(f"{'pooled':>10} {result['model_only_images_per_s']:>11.2f} {result['end_to_end_images_per_s']:>11.2f} "
          f"{result['per_task_loop_images_per_s']:>9.2f} {result['end_to_end_vs_model_only']:>10.3f} "
          f"{result['end_to_end_vs_per_task_loop']:>9.3f}")
    print(f"/predict 1 task: cached p50 {result['predict_cached_p50_ms']:.1f} ms "
          f"(p95 {result['predict_cached_p95_ms']:.1f}), uncached p50 {result['predict_uncached_p50_ms']:.1f} ms "
          f"(p95 {result['predict_uncached_p95_ms']:.1f})")


def main(argv=None) -> int:
    args = parse_args(argv)
    import torch

    load_start = round(os.getloadavg()[0], 2) if hasattr(os, "getloadavg") else None  # other work on the machine
    tmp = Path(tempfile.mkdtemp(prefix="bench-throughput-"))
    root = tmp / "images"
    settings = bench_settings(args, tmp, root)
    logging.basicConfig(level=logging.WARNING)
    sets = image_sets(args, root)
    bench = Throughput(settings, root)
    log(f"device={bench.device} batch_size={bench.batch_size} torch_threads={torch.get_num_threads()} "
        f"cpus={os.cpu_count()} amp={bench.dtype}")

    bench.warm_up(next(iter(sets.values())))
    if args.stages:
        return stage_report(args, bench, sets, tmp, load_start)
    bench.stored_rates.clear()  # the warm-up's
    runs = interleaved_runs(bench, sets, args)
    uncached, cached = predict_latency(settings, root, next(iter(sets.values())), args.predict_requests)
    result = summarize(runs, uncached, cached, bench.stored_rates)
    result["config"] = run_config(args, bench, load_start)
    if not args.keep:
        shutil.rmtree(tmp, ignore_errors=True)
    else:
        log(f"kept {tmp}")

    if args.json:
        print(json.dumps(result))
    else:
        print_table(result)
    return 0


def stage_report(args, bench: Throughput, sets: dict, tmp: Path, load_start) -> int:
    from bench.throughput_stages import measure, print_stage_table

    report = measure(bench, sets, tmp, args)
    report["config"] = run_config(args, bench, load_start)
    report["config"].update(store_batch=args.store_batch, store_records=args.store_records,
                            amp=str(bench.dtype), gpu_decode=bench.encoder.decodes_jpeg)
    if not args.keep:
        shutil.rmtree(tmp, ignore_errors=True)
    if args.json:
        print(json.dumps(report))
    else:
        print_stage_table(report)
    return 0


if __name__ == "__main__":
    sys.exit(main())
