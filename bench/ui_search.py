"""Search latency of the search page (backend.web.ui.search) at 10,000 and 100,000 embedded items
(not a test).

    .venv/bin/python -m bench.ui_search [--sizes 10000 100000] [--dim 512] [--labeled 0.05] [--real] [--json]

Random unit vectors (float32, d=512 as CLIP ViT-B/32) go through the real EmbeddingStore (embedded
Chroma in a temp dir, one collection per project and encoder, records "<task>:<field>"), a share of
them flagged labeled as the training runs flag them. Per size it times, median of --queries queries:

- page: the query of the page and of /search (EmbeddingStore.nearest: one HNSW query without a
  metadata filter, over-fetched past the labeled tasks), for the first page (60) and a deep page (3000);
- filtered: the same first page through the metadata-filtered query (EmbeddingStore.nearest_filtered:
  field filter plus "$nin" of the labeled ids), what /search used before, for comparison;
- overlap: how many of the filtered query's top 60 the page's query also returns;
- recall: how many of the exact top 60 / top 3,000 unlabeled items (a numpy scan of every vector)
  the page's query returns (Chroma's HNSW graph at its default parameters).

--real embeds the data sets' own texts (banking77, AG News, SMS spam: ~26,000 distinct texts) with the
real MiniLM (d=384, what a text project stores) and queries with the label names' prompts, as a user's
text query does; sizes past the texts available are skipped. Random unit vectors in 512 dimensions have
no structure for the graph to use, so they are the hard case for recall.
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


def _fill(store, project: str, vectors: np.ndarray) -> None:
    for start in range(0, len(vectors), 5000):
        chunk = vectors[start:start + 5000]
        store.put_many(project, ENCODER, [StoredItem(start + i, FIELD, "h", v) for i, v in enumerate(chunk)])


def real_vectors() -> tuple[np.ndarray, np.ndarray]:
    """MiniLM embeddings of the text data sets' distinct texts (shuffled) and of their label prompts."""
    from bench.datasets import load_raw, text_encoder

    texts, names = [], []
    for name in ("banking77", "ag_news", "sms_spam"):
        raw = load_raw(name)
        texts += list(raw.items) + list(raw.test_items or [])
        names += [getattr(label, "output", str(label)) for label in raw.labels]
    texts = list(dict.fromkeys(texts))
    np.random.default_rng(0).shuffle(texts)
    encoder = text_encoder()
    print(f"[ui_search] embedding {len(texts)} texts with MiniLM", flush=True)
    return _unit(encoder.encode_items(texts)), _unit(encoder.encode_prompts(names))


def _exact(vectors: np.ndarray, labeled: set[int], q: np.ndarray, k: int) -> set[int]:
    scores = vectors @ q
    if labeled:
        scores[sorted(labeled)] = -np.inf
    return set(np.argpartition(-scores, k)[:k].tolist())


def _median_ms(fn, queries) -> float:
    times = []
    for q in queries:
        started = time.perf_counter()
        fn(q)
        times.append((time.perf_counter() - started) * 1000)
    return round(statistics.median(times), 1)


def measure(n: int, dim: int, labeled_share: float, n_queries: int, seed: int = 0,
            real: tuple[np.ndarray, np.ndarray] | None = None) -> dict:
    rng = np.random.default_rng(seed)
    if real is not None:
        vectors, queries = real[0][:n], real[1][rng.permutation(len(real[1]))[:n_queries]]
        dim = vectors.shape[1]
    else:
        vectors = _unit(rng.standard_normal((n, dim)))
        queries = _unit(rng.standard_normal((n_queries, dim)))
    with tempfile.TemporaryDirectory() as tmp:
        store = open_store(path=tmp)
        project = f"bench{n}"
        started = time.perf_counter()
        _fill(store, project, vectors)
        build_s = time.perf_counter() - started
        view = StoreView(store, project, ENCODER, FIELD)
        labeled = {int(t) for t in rng.choice(n, int(n * labeled_share), replace=False)}
        view.mark_labeled(sorted(labeled), True)

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
        recall = {k: statistics.mean(len({t for t, _ in page(q, k)} & _exact(vectors, labeled, q, k)) / k
                                     for q in queries) for k in (60, 3000)}
    return {"vectors": "real MiniLM" if real is not None else "random", "n": n, "dim": dim, "labeled": len(labeled), "build_s": round(build_s, 1), "page60_ms": first,
            "page3000_ms": deep, "filtered60_ms": old, "speedup_vs_filtered": round(old / max(first, 1e-3), 1),
            "overlap_at_60": round(overlap, 3), "recall_at_60": round(recall[60], 3),
            "recall_at_3000": round(recall[3000], 3)}


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--sizes", type=int, nargs="+", default=[10_000, 100_000])
    p.add_argument("--dim", type=int, default=512)
    p.add_argument("--labeled", type=float, default=0.05, help="share of the items flagged labeled")
    p.add_argument("--queries", type=int, default=20)
    p.add_argument("--real", action="store_true", help="the text data sets' MiniLM embeddings, not random vectors")
    p.add_argument("--json", action="store_true")
    args = p.parse_args(argv)
    real = real_vectors() if args.real else None
    rows = []
    for n in args.sizes:
        if real is not None and n > len(real[0]):
            print(f"[ui_search] {n} skipped: {len(real[0])} real texts", flush=True)
            continue
        rows.append(measure(n, args.dim, args.labeled, args.queries, real=real))
        if not args.json:  # each size as soon as it is measured (a 100k build takes minutes)
            print(", ".join(f"{k}={v}" for k, v in rows[-1].items()), flush=True)
    if args.json:
        print(json.dumps(rows))


if __name__ == "__main__":
    main()
