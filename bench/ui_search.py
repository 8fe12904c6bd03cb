"""Search latency of the search page (backend.web.ui.search) at 10,000 and 100,000 embedded items
(not a test).

    .venv/bin/python -m bench.ui_search [--sizes 10000 100000] [--dim 512] [--labeled 0.05] [--json]

Random unit vectors (float32, d=512 as CLIP ViT-B/32) go through the real EmbeddingStore (embedded
Chroma in a temp dir, one collection per project and encoder, records "<task>:<field>"), a share of
them flagged labeled as the training runs flag them. Per size it times, median of --queries queries:

- page: the query of the page and of /search (EmbeddingStore.nearest: one HNSW query without a
  metadata filter, over-fetched past the labeled tasks), for the first page (60) and a deep page (3000);
- filtered: the same first page through the metadata-filtered query (EmbeddingStore.nearest_filtered:
  field filter plus "$nin" of the labeled ids), what /search used before, for comparison;
- overlap: how many of the filtered query's top 60 the page's query also returns.
"""
from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time

import numpy as np

from backend.embed.store import StoredItem, open_store
from backend.embed.store_view import StoreView

FIELD, ENCODER = "image", "clip-ViT-B-32-bench"


def _unit(x: np.ndarray) -> np.ndarray:
    return (x / np.linalg.norm(x, axis=-1, keepdims=True)).astype(np.float32)


def _fill(store, project: str, n: int, dim: int, rng) -> None:
    for start in range(0, n, 5000):
        vectors = _unit(rng.standard_normal((min(5000, n - start), dim)))
        store.put_many(project, ENCODER, [StoredItem(start + i, FIELD, "h", v) for i, v in enumerate(vectors)])


def _median_ms(fn, queries) -> float:
    times = []
    for q in queries:
        started = time.perf_counter()
        fn(q)
        times.append((time.perf_counter() - started) * 1000)
    return round(statistics.median(times), 1)


def measure(n: int, dim: int, labeled_share: float, n_queries: int, seed: int = 0) -> dict:
    rng = np.random.default_rng(seed)
    with tempfile.TemporaryDirectory() as tmp:
        store = open_store(path=tmp)
        project = f"bench{n}"
        started = time.perf_counter()
        _fill(store, project, n, dim, rng)
        build_s = time.perf_counter() - started
        view = StoreView(store, project, ENCODER, FIELD)
        labeled = {int(t) for t in rng.choice(n, int(n * labeled_share), replace=False)}
        view.mark_labeled(sorted(labeled), True)
        queries = _unit(rng.standard_normal((n_queries, dim)))

        def page(q, k):
            return view.nearest(q, k, labeled, total=n)

        def filtered(q, k):
            return view.store.nearest_filtered(view.project, view.encoder_id, q, k, FIELD, labeled, total=n)

        page(queries[0], 60)  # warm: the HNSW index loads on the first query
        first = _median_ms(lambda q: page(q, 60), queries)
        deep = _median_ms(lambda q: page(q, 3000), queries)
        old = _median_ms(lambda q: filtered(q, 60), queries)
        overlap = statistics.mean(len({t for t, _ in page(q, 60)} & {t for t, _ in filtered(q, 60)}) / 60
                                  for q in queries[:5])
    return {"n": n, "dim": dim, "labeled": len(labeled), "build_s": round(build_s, 1), "page60_ms": first,
            "page3000_ms": deep, "filtered60_ms": old, "speedup_vs_filtered": round(old / max(first, 1e-3), 1),
            "overlap_at_60": round(overlap, 3)}


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--sizes", type=int, nargs="+", default=[10_000, 100_000])
    p.add_argument("--dim", type=int, default=512)
    p.add_argument("--labeled", type=float, default=0.05, help="share of the items flagged labeled")
    p.add_argument("--queries", type=int, default=20)
    p.add_argument("--json", action="store_true")
    args = p.parse_args(argv)
    rows = []
    for n in args.sizes:
        rows.append(measure(n, args.dim, args.labeled, args.queries))
        if not args.json:  # each size as soon as it is measured (a 100k build takes minutes)
            print(", ".join(f"{k}={v}" for k, v in rows[-1].items()), flush=True)
    if args.json:
        print(json.dumps(rows))


if __name__ == "__main__":
    main()
