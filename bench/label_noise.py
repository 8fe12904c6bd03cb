"""Label-error review benchmark: planted label noise on real embeddings (not a test).

    .venv/bin/python -m bench.label_noise [--quick] [--json] [--datasets ...] [--seeds 3]

Datasets and cached embeddings as in bench/active_learning.py (bench/datasets.py, --cache, default
/tmp/al_cache; CIFAR-10 is skipped with a note when neither its embeddings are cached nor the
EfficientNet packages are installed). Per dataset a labeled pool of --pool items (2,000; the whole
tiny pool with --quick) gets a share --rate (10%) of its labels flipped, in two ways:

- uniform: a flipped item gets one of the other classes uniformly at random;
- class-dependent: every item of class c flips, with the same probability, to one fixed
  confusable class (the class whose mean embedding is nearest to c's).

Out-of-fold probabilities come from the shipped head (LogisticHead(C=10), as candidate_heads) over
5 folds (backend.learn.label_errors.out_of_fold_proba). Three flaggers run on these
probabilities: ours (with_neighbours, then confident_issues: the confident joint's count, ranked by
suspicion, cut by precise_cut), cleanlab's default (cleanlab.filter.find_label_issues(labels, pred_probs), ranked by
self-confidence) and "the model disagrees" (argmax != given, ranked by margin). Against the truly
flipped items: precision, recall, F1 of the flagged set and precision among the top 5% of the
pool in each ranking; and the held-out accuracy of the head retrained after the flagged items are
re-annotated with their true labels (vs noisy labels, and vs all labels clean). Means over seeds.

Needs cleanlab (pip install cleanlab): the benchmark's baseline only, not a product dependency.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np

from backend.learn.heads import LogisticHead
from backend.learn.label_errors import confident_issues, out_of_fold_proba, with_neighbours
from bench.datasets import SPECS, embedded, image_encoder_missing, log

HEAD_C = 10.0  # the LogisticHead among candidate_heads
METHODS = ("ours", "cleanlab", "disagree")
NOISES = ("uniform", "class")


def make_head(K: int) -> LogisticHead:
    return LogisticHead(C=HEAD_C, n_classes=K)


def plant_noise(y: np.ndarray, K: int, X: np.ndarray, kind: str, rate: float, seed: int) -> np.ndarray:
    """Noisy copy of y: a share rate of items flipped uniformly or to their class's confusable class."""
    rng = np.random.default_rng(seed)
    flip = rng.random(len(y)) < rate
    noisy = y.copy()
    if kind == "uniform":
        noisy[flip] = (y[flip] + rng.integers(1, K, int(flip.sum()))) % K
        return noisy
    means = np.stack([X[y == k].mean(axis=0) if (y == k).any() else np.zeros(X.shape[1]) for k in range(K)])
    similarity = means @ means.T
    np.fill_diagonal(similarity, -np.inf)
    noisy[flip] = similarity.argmax(axis=1)[y[flip]]
    return noisy


def flag_rankings(proba: np.ndarray, noisy: np.ndarray, checkable: np.ndarray, X: np.ndarray) -> dict[str, np.ndarray]:
    """Flagged item indices per method, most suspicious first (cleanlab sees the checkable items only:
    the rows of classes with one label are not probabilities). Ours blends the head's probabilities with the
    labeled neighbours' votes as the product does; the baselines see the head's probabilities alone."""
    from cleanlab.filter import find_label_issues

    rows = np.arange(len(noisy))
    others = proba.copy()
    others[rows, noisy] = -np.inf
    margin = others.max(axis=1) - proba[rows, noisy]
    idx = np.flatnonzero(checkable)
    # cleanlab needs every class present; remap the checkable items' classes onto 0..k-1
    classes, local = np.unique(noisy[idx], return_inverse=True)
    sub = proba[np.ix_(idx, classes)]
    sub = sub / np.maximum(sub.sum(axis=1, keepdims=True), 1e-12)
    t0 = time.perf_counter()
    cleanlab_ranked = idx[find_label_issues(local, sub, return_indices_ranked_by="self_confidence")]
    cleanlab_seconds = time.perf_counter() - t0
    t0 = time.perf_counter()
    ours = confident_issues(with_neighbours(proba, X, noisy, checkable), noisy, checkable)[0]
    ours_seconds = time.perf_counter() - t0
    disagree = idx[proba[idx].argmax(axis=1) != noisy[idx]]
    disagree = disagree[np.argsort(-margin[disagree], kind="stable")]
    return {"ours": ours, "cleanlab": cleanlab_ranked, "disagree": disagree,
            "_seconds": {"ours": ours_seconds, "cleanlab": cleanlab_seconds}}


def scores(ranked: np.ndarray, flipped: np.ndarray) -> dict:
    hits = flipped[ranked]
    tp = int(hits.sum())
    precision = tp / len(ranked) if len(ranked) else 0.0
    recall = tp / max(int(flipped.sum()), 1)
    top = max(1, int(round(0.05 * len(flipped))))
    return {"flagged": int(len(ranked)), "precision": precision, "recall": recall,
            "f1": 2 * precision * recall / (precision + recall) if tp else 0.0,
            "precision_top5": float(hits[:top].mean()) if len(ranked) else 0.0}


def held_out_accuracy(X, y, X_test, y_test, K) -> float:
    return float((make_head(K).fit(X, y).predict_proba(X_test).argmax(axis=1) == y_test).mean())


def run_dataset(name: str, quick: bool, cache: Path, pool: int, rate: float, seeds: int) -> dict:
    d = embedded(SPECS[name], quick, cache)
    out = {"dataset": name, "K": d.K, "encoder": d.encoder, "rate": rate, "noises": {}}
    for kind in NOISES:
        per_seed = []
        for seed in range(seeds):
            take = np.random.default_rng(seed).permutation(len(d.y_pool))[:pool]
            X, y = d.X_pool[take], d.y_pool[take]
            noisy = plant_noise(y, d.K, X, kind, rate, seed=1000 + seed)
            flipped = noisy != y
            t0 = time.perf_counter()
            proba, checkable = out_of_fold_proba(make_head(d.K), X, noisy, d.K, folds=5, seed=seed)
            oof_seconds = time.perf_counter() - t0
            ranked = flag_rankings(proba, noisy, checkable, X)
            row = {"seed": seed, "n": len(y), "flipped": int(flipped.sum()), "oof_seconds": oof_seconds,
                   "seconds": ranked.pop("_seconds"),
                   "acc_noisy": held_out_accuracy(X, noisy, d.X_test, d.y_test, d.K),
                   "acc_clean": held_out_accuracy(X, y, d.X_test, d.y_test, d.K)}
            for method in METHODS:
                fixed = noisy.copy()
                fixed[ranked[method]] = y[ranked[method]]  # the annotator re-labels every flagged item
                row[method] = {**scores(ranked[method], flipped),
                               "acc_after": held_out_accuracy(X, fixed, d.X_test, d.y_test, d.K)}
            per_seed.append(row)
            log(f"[{name} {kind} seed {seed}] flipped {row['flipped']}/{len(y)}  "
                + "  ".join(f"{m}: F1 {row[m]['f1']:.3f} P@5% {row[m]['precision_top5']:.2f}" for m in METHODS)
                + f"  oof {oof_seconds:.1f}s")
        out["noises"][kind] = {"mean": _mean(per_seed), "seeds": per_seed}
    return out


def _mean(rows: list[dict]) -> dict:
    """Field-wise mean of nested dicts of numbers."""
    first = rows[0]
    if isinstance(first, dict):
        return {k: _mean([r[k] for r in rows]) for k in first if k != "seed"}
    return float(np.mean(rows))


def table(results: list[dict]) -> str:
    head = ("| dataset (n, flipped) | noise | flagged ours / cleanlab / disagree | precision | recall "
            "| **F1** | precision top 5% | held-out acc: noisy → after review (clean) |\n|" + "---|" * 8)
    lines = [head]
    for res in results:
        for kind, block in res["noises"].items():
            m = block["mean"]

            def trio(key, fmt="{:.2f}"):
                return " / ".join(fmt.format(m[method][key]) for method in METHODS)
            lines.append(
                f"| {res['dataset']} ({m['n']:.0f}, {m['flipped']:.0f}) | {kind} | {trio('flagged', '{:.0f}')} "
                f"| {trio('precision')} | {trio('recall')} | {trio('f1', '{:.3f}')} | {trio('precision_top5')} "
                f"| {m['acc_noisy']:.3f} → {trio('acc_after', '{:.3f}')} ({m['acc_clean']:.3f}) |")
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="the tiny cached pools, 1 seed: a smoke run")
    ap.add_argument("--json", action="store_true", help="print the results as one JSON object on stdout")
    ap.add_argument("--cache", default=os.environ.get("AL_CACHE", "/tmp/al_cache"), help="embedding cache dir")
    ap.add_argument("--datasets", nargs="+", default=list(SPECS), choices=list(SPECS))
    ap.add_argument("--pool", type=int, default=2000, help="labeled items per dataset")
    ap.add_argument("--rate", type=float, default=0.10, help="share of labels flipped")
    ap.add_argument("--seeds", type=int, default=None, help="noise draws per dataset (default 3; 1 with --quick)")
    args = ap.parse_args(argv)
    try:
        import cleanlab  # noqa: F401
    except ImportError:
        print("the baseline needs cleanlab: .venv/bin/pip install cleanlab", file=sys.stderr)
        return 2
    seeds = args.seeds or (1 if args.quick else 3)
    cache = Path(args.cache)
    results, skipped = [], {}
    started = time.perf_counter()
    for name in args.datasets:
        spec = SPECS[name]
        n_pool, n_test = (spec.quick_pool, spec.quick_test) if args.quick else (spec.pool, spec.test)
        cached = Path(f"{cache}/{name}_efficientnet-lite0_{n_pool}_{n_test}_Xp.npy").exists()
        if spec.modality == "image" and not cached and image_encoder_missing():
            skipped[name] = image_encoder_missing()
            log(f"[skip] {name}: {skipped[name]}")
            continue
        results.append(run_dataset(name, args.quick, cache, args.pool, args.rate, seeds))
    summary = {"results": results, "skipped": skipped, "seeds": seeds, "head": f"LogisticHead(C={HEAD_C:g})",
               "seconds": round(time.perf_counter() - started, 1)}
    print(table(results), file=sys.stderr if args.json else sys.stdout)
    for name, why in skipped.items():
        print(f"skipped {name}: {why}", file=sys.stderr if args.json else sys.stdout)
    if args.json:
        print(json.dumps(summary, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
