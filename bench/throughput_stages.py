"""Stage report (`python -m bench.throughput --stages`): each stage of the embedding path measured alone,
then all together, on the same images, model and store, so whoever runs it sees which stage is the limit.

Stages (rates in items per second):

- read:            Fetcher.fetch_bytes of /data/local-files/ refs in FETCH_WORKERS threads (page cache warm);
- decode_cpu:      decode_image (JPEG draft mode) + the encoder's resize/crop to uint8, FETCH_WORKERS threads;
- decode_gpu:      (CUDA only) the same JPEG bytes decoded with nvjpeg and resized/cropped on the GPU, batched;
- encode:          encoder.encode_batch on prepared pixels (normalize, transfer, model), BATCH_SIZE at a time;
- text_encode:     the text encoder (TEXT_MODEL) on short sentences, texts/s (skipped if it cannot load);
- store_write_1w:  EmbeddingStore.put_many of unit vectors, STORE_BATCH records a call, one writer thread;
- store_write_2w_same / store_write_2w_two: two writer threads into one collection / into two collections;
- store_read:      get_many of stored records (the cached /predict path's read);
- head_predict:    ClipClassifier.predict on ready embeddings (zero-shot head, queue ranking, prediction dicts);
- together:        ClipClassifier.predict on the tasks (fresh project: nothing cached), returning predictions;
- together_stored: the same, then until every embedding is written to the store (the sustained bulk rate).

"limit" names the slowest of the stages one image passes through (read, decode, encode, store write with
one writer, head); "together_vs_limit" says how close the pipeline gets to it.
"""
from __future__ import annotations

import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

from backend.embed.fetch import Fetcher, decode_image
from backend.embed.store import StoredItem, open_store
from backend.runtime.build import build_model
from backend.runtime.models import fetcher_kwargs

PIPELINE_STAGES = ("read", "decode", "encode", "store_write_1w", "head_predict")
SENTENCES = ["the quick brown fox jumps over the lazy dog", "a photo of a cat sitting on a red sofa",
             "quarterly results beat expectations", "my card payment was declined twice today"]


def _rate(n: int, seconds: float) -> float:
    return round(n / max(seconds, 1e-9), 2)


def _timed(fn) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


class Stages:
    """Measures the stages on one Throughput bench (bench.throughput: settings, encoder, store, fetcher)."""

    def __init__(self, bench, store_batch: int, store_records: int):
        self.bench = bench
        self.settings = bench.settings
        self.encoder = bench.encoder
        self.workers = bench.settings.fetch_workers
        self.store_batch = store_batch
        self.store_records = store_records
        self.fetcher = Fetcher(**fetcher_kwargs(self.settings))

    def refs(self, paths: list[Path]) -> list[str]:
        return [f"/data/local-files/?d={p.relative_to(self.bench.root)}" for p in paths]

    def read(self, paths: list[Path]) -> tuple[float, list[bytes]]:
        with ThreadPoolExecutor(self.workers) as pool:
            t0 = time.perf_counter()
            data = list(pool.map(self.fetcher.fetch_bytes, self.refs(paths)))
            return _rate(len(paths), time.perf_counter() - t0), data

    def decode_cpu(self, data: list[bytes]) -> tuple[float, list]:
        size = getattr(self.encoder, "image_size", 224)

        def one(raw: bytes):
            image = decode_image(raw, self.settings.max_image_pixels, size, self.fetcher.pixel_budget)
            return self.encoder.prepare(image)

        with ThreadPoolExecutor(self.workers) as pool:
            t0 = time.perf_counter()
            prepared = list(pool.map(one, data))
            return _rate(len(data), time.perf_counter() - t0), prepared

    def decode_gpu(self, data: list[bytes]) -> float | None:
        """nvjpeg decode + GPU resize/crop of the same bytes (CUDA only; None elsewhere)."""
        from backend.embed.gpu_decode import JpegBytes, probe_jpeg

        clip = self.encoder.clip
        if not clip.device.startswith("cuda") or clip.tensor_transform is None:
            return None
        jpegs = [probe_jpeg(raw, self.settings.max_image_pixels) for raw in data]
        jpegs = [j for j in jpegs if isinstance(j, JpegBytes)]
        if not jpegs:
            return None
        import torch

        def run():
            for start in range(0, len(jpegs), self.encoder.batch_size):
                clip.tensor_transform(jpegs[start:start + self.encoder.batch_size])
            torch.cuda.synchronize()

        run()  # warm-up: nvjpeg handles, kernels
        return _rate(len(jpegs), _timed(run))

    def encode(self, prepared: list) -> float:
        batch = self.encoder.batch_size
        self.encoder.encode_batch(prepared[:batch])  # warm-up
        return _rate(len(prepared), _timed(lambda: self.encoder.encode_batch(prepared)))

    def text_encode(self, n: int) -> float | None:
        from backend.embed.encoders import get_encoder
        from backend.runtime.models import encoder_spec

        try:
            text = get_encoder("text", encoder_spec(self.settings))
        except Exception as exc:  # no offline text model here: say so, measure the rest
            print(f"text encoder not available ({type(exc).__name__}); text_encode skipped", file=sys.stderr)
            return None
        texts = [f"{SENTENCES[i % len(SENTENCES)]} #{i}" for i in range(n)]
        text.encode_batch(texts[:text.batch_size])
        return _rate(n, _timed(lambda: text.encode_batch(texts)))

    def _records(self, n: int, dim: int, first: int) -> list[StoredItem]:
        rng = np.random.default_rng(first)
        vectors = rng.standard_normal((n, dim)).astype(np.float32)
        vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
        return [StoredItem(first + i, "image", f"{first + i:016x}", vectors[i]) for i in range(n)]

    def _write(self, store, project: str, records: list[StoredItem]) -> None:
        for start in range(0, len(records), self.store_batch):
            store.put_many(project, "stages", records[start:start + self.store_batch])

    def store_write(self, tmp: Path, dim: int) -> dict[str, float]:
        """Records/s at one writer, two writers into one collection, two writers into two collections."""
        store = open_store(path=tmp / "stage-store")
        n = self.store_records
        out = {}
        self._write(store, "warm", self._records(self.store_batch, dim, 10**9))  # collection + segment set-up
        out["store_write_1w"] = _rate(n, _timed(lambda: self._write(store, "one", self._records(n, dim, 0))))
        for name, projects in (("store_write_2w_same", ("same", "same")), ("store_write_2w_two", ("a", "b"))):
            halves = [self._records(n // 2, dim, k * n) for k in range(2)]
            with ThreadPoolExecutor(2) as pool:
                t0 = time.perf_counter()
                list(pool.map(self._write, [store, store], projects, halves))
                seconds = time.perf_counter() - t0
            out[name] = _rate(2 * (n // 2), seconds)
        keys = [(r.task_id, r.field, r.hash) for r in self._records(n, dim, 0)]
        out["store_read"] = _rate(n, _timed(lambda: store.get_many("one", "stages", keys)))
        return out

    def head_predict(self, project: str, embeddings: list[np.ndarray], tasks: list[dict]) -> float:
        model = build_model(self.settings, project, self.bench.config, store=self.bench.store)
        model.load()
        control = model.controls[0]
        embedded = {control.from_name: (list(range(len(tasks))), embeddings)}
        model.predict(tasks[:8], inferred=model.infer_embedded(
            {control.from_name: (list(range(8)), embeddings[:8])}))  # warm-up
        return _rate(len(tasks), _timed(lambda: model.predict(tasks, inferred=model.infer_embedded(embedded))))

    def together(self, paths: list[Path]) -> tuple[float, float]:
        """(images/s until predictions are returned, images/s until every embedding is also stored)."""
        from backend.embed.write_behind import flush_all

        self.bench.project_counter += 1
        model = build_model(self.settings, str(self.bench.project_counter), self.bench.config, store=self.bench.store)
        model.load()
        tasks = [{"id": 1 + i, "data": {"image": ref}} for i, ref in enumerate(self.refs(paths))]
        t0 = time.perf_counter()
        # as /predict and imports embed: the response does not wait for the store's writes
        out = model.predict(tasks, inferred=model.infer_embedded(model.embed_tasks(tasks, writes="behind")))
        returned = time.perf_counter() - t0
        flush_all()
        stored = time.perf_counter() - t0
        if sum(1 for r in out if not r):
            raise SystemExit("stages: tasks without prediction")
        return _rate(len(paths), returned), _rate(len(paths), stored)


def measure(bench, sets: dict[str, list[Path]], tmp: Path, args) -> dict:
    """{"sets": {set: {stage: rate}}, "shared": {stage: rate}, "limit": ..., per set}."""
    stages = Stages(bench, store_batch=args.store_batch, store_records=args.store_records)
    shared: dict[str, float | None] = {}
    per_set: dict[str, dict] = {}
    embeddings = None
    for name, paths in sets.items():
        paths = paths[:args.images]
        row: dict[str, float | None] = {}
        row["read"], data = stages.read(paths)
        row["decode_cpu"], prepared = stages.decode_cpu(data)
        row["decode_gpu"] = stages.decode_gpu(data)
        row["decode"] = max(r for r in (row["decode_cpu"], row["decode_gpu"]) if r is not None)
        row["encode"] = stages.encode(prepared)
        if embeddings is None:
            embeddings = list(bench.encoder.encode_batch(prepared))
        row["together"], row["together_stored"] = stages.together(paths)
        per_set[name] = row
        print(f"stages {name}: " + ", ".join(f"{k} {v}" for k, v in row.items()), file=sys.stderr, flush=True)
    dim = int(embeddings[0].shape[0])
    shared.update(stages.store_write(tmp, dim))
    tasks = [{"id": 1 + i, "data": {"image": "unused"}} for i in range(len(embeddings))]
    shared["head_predict"] = stages.head_predict("stages-head", embeddings, tasks)
    shared["text_encode"] = stages.text_encode(max(64, args.images))
    for row in per_set.values():
        pipeline = {s: row.get(s, shared.get(s)) for s in PIPELINE_STAGES}
        row["limit"] = min(pipeline, key=lambda s: pipeline[s])
        row["together_vs_limit"] = round(row["together"] / pipeline[row["limit"]], 3)
    return {"sets": per_set, "shared": shared}


def print_stage_table(report: dict) -> None:
    sets = report["sets"]
    names = list(sets)
    print(f"{'stage':>20} " + " ".join(f"{n:>12}" for n in names))
    for stage in ("read", "decode_cpu", "decode_gpu", "encode", "together", "together_stored"):
        cells = [sets[n].get(stage) for n in names]
        print(f"{stage:>20} " + " ".join(f"{'-' if c is None else f'{c:.1f}':>12}" for c in cells))
    for stage, value in report["shared"].items():
        print(f"{stage:>20} {'-' if value is None else f'{value:.1f}':>12}  (all sets)")
    print(f"{'limit':>20} " + " ".join(f"{sets[n]['limit']:>12}" for n in names))
    print(f"{'together / limit':>20} " + " ".join(f"{sets[n]['together_vs_limit']:>12.3f}" for n in names))
