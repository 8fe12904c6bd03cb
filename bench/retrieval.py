"""Boundary retrieval at scale: vector-store (HNSW) query vs exact numpy scan (not a test).

    .venv/bin/python -m bench.retrieval [--json] [--sizes 100000 1000000] [--graph 16:100 32:200]

Synthetic but embedding-like vectors (float32, L2-normalized, d=384): K classes, each a mixture of
sub-clusters, so neighbourhoods are meaningful as with real sentence/image embeddings. The head is
linear (a LogisticHead-like weight matrix, the class means times a temperature). For Q confused
class pairs, each query point is the point where the head's preference flips between the two class
anchors (backend.queue.crossing_point), exactly as BoundaryRetrieval computes it.

Per size n (default 100k and 1M) it reports:

- index_recall_at_m: overlap of the index's top-m neighbours of a query point with the exact
  numpy top-m (same cosine ranking), averaged over queries;
- boundary_recall_at_k: the k-item boundary batch that BoundaryRetrieval keeps after reranking by
  exact margin, from the index's candidates vs from the exact scan's candidates;
- global_boundary_recall_at_k: the same batch vs the k items with the smallest pair margin among
  all n items (the exhaustive answer that no shortlist can beat; tells what the query-point
  shortlist itself misses);
- query seconds: index search (+ rerank) vs exact scan (one matmul over n x d + top-m) vs the full
  exact margin scan (predict_proba over all n items), and their ratios;
- build seconds; for hnswlib a sweep of ef_search (recall against time).

Indexes: Chroma (embedded PersistentClient in a temp dir, cosine space, batch add) and hnswlib
(the HNSW library Chroma's index is built on, same M=16 / ef_construction=100 / ef_search=100
defaults; --graph builds others, M:ef_construction, as CHROMA_HNSW_M / CHROMA_HNSW_CONSTRUCTION_EF
set them in the backend). By default Chroma is measured up to --chroma-max (100k: a 1M Chroma build with its
SQLite write path takes far longer than the budget on 2 cores) and hnswlib at every size.
--json prints one JSON object.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from backend.embed.store import HnswParams
from backend.learn.heads import softmax
from backend.queue import crossing_point, top2_margin


def log(*args):
    print(*args, file=sys.stderr, flush=True)


class LinearHead:
    def __init__(self, W, b=None):
        self.W = np.asarray(W, np.float32)
        self.b = np.zeros(len(W), np.float32) if b is None else np.asarray(b, np.float32)

    def predict_proba(self, X):
        return softmax((np.asarray(X, np.float32) @ self.W.T + self.b).astype(np.float64))


def make_vectors(n, d, K, subclusters, seed, chunk=200_000):
    rng = np.random.default_rng(seed)
    means = rng.standard_normal((K, d)).astype(np.float32)
    means /= np.linalg.norm(means, axis=1, keepdims=True)
    subs = rng.standard_normal((K, subclusters, d)).astype(np.float32)
    subs /= np.linalg.norm(subs, axis=2, keepdims=True)
    X = np.empty((n, d), np.float32)
    y = rng.integers(0, K, n)
    s = rng.integers(0, subclusters, n)
    for a in range(0, n, chunk):
        b = min(n, a + chunk)
        noise = rng.standard_normal((b - a, d)).astype(np.float32) * (0.9 / np.sqrt(d))
        # class part + sub-cluster part + noise; a little mixing toward a second class makes boundaries
        other = rng.integers(0, K, b - a)
        mix = rng.beta(1.0, 4.0, b - a).astype(np.float32)[:, None]
        v = 1.0 * ((1 - mix) * means[y[a:b]] + mix * means[other]) + 0.6 * subs[y[a:b], s[a:b]] + noise
        X[a:b] = v / np.linalg.norm(v, axis=1, keepdims=True)
    return X, y, means


def exact_topm(X, q, m):
    sims = X @ q
    top = np.argpartition(-sims, m - 1)[:m]
    return top[np.argsort(-sims[top])]


def boundary_batch(head, X, cand, i, j, k):
    """k candidates with the smallest top-2 margin whose two top classes are {i, j} (others after)."""
    p = head.predict_proba(X[cand])
    mg = top2_margin(p)
    top2 = np.argsort(-p, axis=1)[:, :2]
    on_pair = ((top2[:, 0] == i) & (top2[:, 1] == j)) | ((top2[:, 0] == j) & (top2[:, 1] == i))
    order = np.lexsort((mg, ~on_pair))
    return set(np.asarray(cand)[order[:k]].tolist())


def global_boundary(head, X, i, j, k, chunk=200_000):
    """Exhaustive: the k items of all n with the smallest margin among those whose top-2 are {i, j}."""
    best_idx, best_m = np.zeros(0, np.int64), np.zeros(0)
    for a in range(0, len(X), chunk):
        p = head.predict_proba(X[a:a + chunk])
        top2 = np.argsort(-p, axis=1)[:, :2]
        on = ((top2[:, 0] == i) & (top2[:, 1] == j)) | ((top2[:, 0] == j) & (top2[:, 1] == i))
        mg = np.where(on, top2_margin(p), np.inf)
        best_idx = np.concatenate([best_idx, np.arange(a, a + len(p))])
        best_m = np.concatenate([best_m, mg])
        keep = np.argsort(best_m)[:k]
        best_idx, best_m = best_idx[keep], best_m[keep]
    return set(best_idx[np.isfinite(best_m)].tolist())


def full_margin_scan(head, X, k, chunk=200_000):
    """What 'exact' margin sampling costs: predict_proba over every item, then top-k smallest margins."""
    ms = np.empty(len(X))
    for a in range(0, len(X), chunk):
        ms[a:a + chunk] = top2_margin(head.predict_proba(X[a:a + chunk]))
    return np.argpartition(ms, k)[:k]


# -- indexes ----------------------------------------------------------------------------------------
class HnswIndex:
    name = "hnswlib"

    def __init__(self, X, M=16, ef_construction=100, ef_search=100, threads=2):
        import hnswlib

        self.index = hnswlib.Index(space="cosine", dim=X.shape[1])
        self.index.init_index(max_elements=len(X), M=M, ef_construction=ef_construction)
        self.index.set_num_threads(threads)
        self.index.add_items(X, np.arange(len(X)))
        self.ef_search = ef_search

    def search(self, q, m):
        self.index.set_ef(max(self.ef_search, m))
        labels, _ = self.index.knn_query(q[None, :], k=m)
        return labels[0].astype(np.int64)


class ChromaIndexBench:
    name = "chroma"

    def __init__(self, X, path, M=16, ef_construction=100):
        import chromadb

        self.client = chromadb.PersistentClient(path=str(path))
        graph = HnswParams(M=M, construction_ef=ef_construction).metadata()  # the backend's own keys
        self.coll = self.client.create_collection("bench", embedding_function=None,
                                                  metadata={"hnsw:space": "cosine", **graph})
        step = min(5000, self.client.get_max_batch_size())
        for a in range(0, len(X), step):
            b = min(len(X), a + step)
            self.coll.add(ids=[str(i) for i in range(a, b)], embeddings=X[a:b],
                          metadatas=[{"labeled": False}] * (b - a))

    def search(self, q, m):
        res = self.coll.query(query_embeddings=[q.tolist()], n_results=m, include=[])
        return np.asarray([int(i) for i in res["ids"][0]], dtype=np.int64)


def measure(X, y, means, index, queries, m, k, temperature, n_full_scan_reps=1):
    head = LinearHead(temperature * means)
    rec_idx, rec_bnd, rec_glob, t_idx, t_idx_rerank, t_exact, t_exact_rerank = [], [], [], [], [], [], []
    for (i, j) in queries:
        q = crossing_point(head, means[i], means[j], i, j)
        t = time.perf_counter()
        ann = index.search(q, m)
        t_idx.append(time.perf_counter() - t)
        t = time.perf_counter()
        b_ann = boundary_batch(head, X, ann, i, j, k)
        t_idx_rerank.append(t_idx[-1] + time.perf_counter() - t)
        t = time.perf_counter()
        ex = exact_topm(X, q, m)
        t_exact.append(time.perf_counter() - t)
        t = time.perf_counter()
        b_ex = boundary_batch(head, X, ex, i, j, k)
        t_exact_rerank.append(t_exact[-1] + time.perf_counter() - t)
        rec_idx.append(len(set(ann.tolist()) & set(ex.tolist())) / m)
        rec_bnd.append(len(b_ann & b_ex) / max(len(b_ex), 1))
        g = global_boundary(head, X, i, j, k)
        rec_glob.append(len(b_ann & g) / max(len(g), 1))
    t = time.perf_counter()
    for _ in range(n_full_scan_reps):
        full_margin_scan(head, X, k)
    t_full = (time.perf_counter() - t) / n_full_scan_reps
    med = lambda v: float(np.median(v))  # noqa: E731
    return {
        "queries": len(queries), "m": m, "k": k,
        "index_recall_at_m": float(np.mean(rec_idx)),
        "boundary_recall_at_k": float(np.mean(rec_bnd)),
        "global_boundary_recall_at_k": float(np.mean(rec_glob)),
        "index_query_seconds": med(t_idx), "index_query_plus_rerank_seconds": med(t_idx_rerank),
        "exact_scan_seconds": med(t_exact), "exact_scan_plus_rerank_seconds": med(t_exact_rerank),
        "full_margin_scan_seconds": t_full,
        "time_ratio_index_vs_exact_scan": med(t_idx_rerank) / med(t_exact_rerank),
        "time_ratio_index_vs_full_margin_scan": med(t_idx_rerank) / t_full,
    }


def parse_args(argv=None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", type=int, nargs="+", default=[100_000, 1_000_000])
    ap.add_argument("--dim", type=int, default=384)
    ap.add_argument("--classes", type=int, default=50)
    ap.add_argument("--subclusters", type=int, default=8)
    ap.add_argument("--queries", type=int, default=20, help="confused pairs queried per size")
    ap.add_argument("--m", type=int, default=200, help="candidates retrieved per query point")
    ap.add_argument("--k", type=int, default=20, help="boundary batch kept per pair")
    ap.add_argument("--chroma-max", type=int, default=100_000, help="largest size also built in Chroma")
    ap.add_argument("--temperature", type=float, default=30.0)
    ap.add_argument("--ef", type=int, nargs="+", default=[100, 400, 1000],
                    help="hnswlib ef_search values to sweep (the search uses max(ef, m))")
    ap.add_argument("--graph", nargs="+", default=["16:100"], metavar="M:EF_CONSTRUCTION",
                    help="HNSW graphs to build (Chroma's default 16:100; CHROMA_HNSW_M / "
                         "CHROMA_HNSW_CONSTRUCTION_EF in the backend)")
    ap.add_argument("--json", action="store_true")
    ap.add_argument("--out", default="/tmp/al_bench", help="writes retrieval.json here")
    return ap.parse_args(argv)


def closest_pairs(means: np.ndarray, n_pairs: int) -> list[tuple[int, int]]:
    """The confused pairs: the classes with the closest means."""
    S = means @ means.T
    np.fill_diagonal(S, -np.inf)
    flat = np.argsort(-np.triu(S, 1).ravel())
    pairs = []
    for f in flat:
        i, j = divmod(int(f), len(means))
        if i < j and (i, j) not in pairs:
            pairs.append((i, j))
        if len(pairs) >= n_pairs:
            break
    return pairs


def bench_index(kind: str, graph: tuple[int, int], n: int, X, y, means, pairs, args, threads: int,
                entry: dict) -> None:
    """Build one index over X with graph (M, ef_construction) and measure it (hnswlib: at every --ef)."""
    M, ef_c = graph
    tmp = Path(tempfile.mkdtemp(prefix="bench_retrieval_"))
    try:
        log(f"[{n}] building {kind} M={M} ef_construction={ef_c} ...")
        t = time.perf_counter()
        index = (HnswIndex(X, M=M, ef_construction=ef_c, threads=threads) if kind == "hnswlib"
                 else ChromaIndexBench(X, tmp, M=M, ef_construction=ef_c))
        build = time.perf_counter() - t
        log(f"[{n}] {kind} built in {build:.0f}s; querying {len(pairs)} pairs")
        efs = args.ef if kind == "hnswlib" else [None]
        for ef in efs:
            if ef is not None:
                index.ef_search = ef
            r = measure(X, y, means, index, pairs, args.m, args.k, args.temperature)
            r["build_seconds"] = round(build, 1)
            r["M"], r["ef_construction"] = M, ef_c
            r["ef_search"] = max(ef, args.m) if ef is not None else "chroma default (100; max(ef, m) used)"
            label = (kind if ef is None else f"{kind}_ef{ef}") + ("" if graph == (16, 100) else f"_M{M}_efc{ef_c}")
            entry["indexes"][label] = r
            log(f"[{n}] {label}: " + json.dumps({k: (round(v, 5) if isinstance(v, float) else v)
                                                 for k, v in r.items()}))
        del index
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def main(argv=None) -> int:
    args = parse_args(argv)
    threads = max(1, min(2, os.cpu_count() or 1))
    results = {"config": {k: v for k, v in vars(args).items() if k not in ("json", "out")}, "sizes": {}}
    for n in args.sizes:
        t = time.perf_counter()
        X, y, means = make_vectors(n, args.dim, args.classes, args.subclusters, seed=n)
        entry = {"n": n, "generate_seconds": round(time.perf_counter() - t, 1), "indexes": {}}
        pairs = closest_pairs(means, args.queries)
        graphs = [tuple(int(v) for v in g.split(":")) for g in args.graph]
        for graph in graphs:
            for kind in ["hnswlib"] + (["chroma"] if n <= args.chroma_max else []):
                bench_index(kind, graph, n, X, y, means, pairs, args, threads, entry)
        if n > args.chroma_max:
            entry["indexes"]["chroma"] = {"skipped": f"not built above --chroma-max={args.chroma_max}; "
                                                     "hnswlib is the same HNSW algorithm and parameters"}
        results["sizes"][str(n)] = entry
        del X
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "retrieval.json").write_text(json.dumps(results, indent=1))
    if args.json:
        print(json.dumps(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
