"""Active-learning benchmark: simulated annotators on real embeddings (not a test).

    .venv/bin/python -m bench.active_learning [--quick] [--json] [--out DIR]

Datasets (bench/datasets.py: banking77, AG News and SMS spam with all-MiniLM-L6-v2; CIFAR-10 with
EfficientNet-Lite0), subsampled into a pool (what the annotator can label) and a disjoint test
set. Embeddings are computed once and cached as .npy under --cache (default /tmp/al_cache).

Every strategy runs the same loop with the same head (backend.learn.heads.LogisticHead, C=30): a first
batch (random for random sampling and the library baseline, ColdStart for the others), then
rounds of "fit the head on the labels so far, measure test accuracy, query the next batch" until
the label budget is spent, over several seeds. The library baseline is modAL's ActiveLearner with
margin_sampling (random first batch, the library's usual set-up) on the same head and embeddings.

Outputs (under --out, default /tmp/al_bench): results.json, learning_curves.png. Per dataset and
strategy: labels_to_95pct (first label count where the seed-averaged accuracy reaches 95% of the
full-pool accuracy, i.e. the head trained on the whole pool; null if never within the budget) and
auc_learning_curve (area under accuracy vs labels, divided by the label range: in [0, 1]).
--json prints the whole result as one JSON object on stdout. --quick is a smoke run on tiny pools.

Whole systems (bench/shipped_loop.py, issue #13): ``--arms ours,ls-example`` runs the shipped loop
(cold start, train_and_select, boundary queue of QUEUE_BATCH, retrain every --retrain-every labels,
a 10% uniform audit with Wilson intervals) against Label Studio's example backend (import order,
LogisticRegression retrained every 10 labels) and writes shipped_loop.png. ``--arms`` takes strategy
names too (it replaces --strategies when given), e.g. ``--arms random,boundary,ours,ls-example``.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np

from backend.learn.heads import LogisticHead, ZeroShotHead
from backend.queue import ColdStart, Entropy, LeastConfidence, Margin, QueryContext, RandomSampling
from bench.datasets import DATA, SPECS, Data, Spec, embedded, image_encoder_missing, log
from bench.shipped_loop import (AUDIT_SHARE, CHECKPOINTS, OURS_VARIANTS, QUEUE_BATCH, RETRAIN_EVERY, SYSTEM_NAMES,
                                ShippedLoop, ablation_steps,
                                eval_points, plot_systems, run_ls_example, summarize_systems, system_result, texts_of)
from bench.strategy_variants import ExploringBoundaryRetrieval

STRATEGY_NAMES = ("random", "least_confidence", "margin", "entropy", "boundary", "modal_margin")
POINTWISE = {"random": RandomSampling, "least_confidence": LeastConfidence, "margin": Margin, "entropy": Entropy}


# -- simulation -------------------------------------------------------------------------------------
C = 30.0


def make_head(K: int) -> LogisticHead:
    return LogisticHead(C=C, n_classes=K)


def accuracy(head, X, y) -> float:
    return float((head.predict_proba(X).argmax(axis=1) == y).mean())


def label_grid(first: int, batch: int, budget: int) -> list[int]:
    grid = [first]
    while grid[-1] < budget:
        grid.append(min(grid[-1] + batch, budget))
    return grid


def cold_start_batch(d: Data, n: int, seed: int) -> np.ndarray:
    zs = None
    if d.prototypes is not None:
        zs = ZeroShotHead(d.prototypes, 30.0).predict_proba(d.X_pool)
    return ColdStart().rank(zs, d.X_pool, n, QueryContext(prototypes=d.prototypes, rng=seed))


def run_ours(d: Data, strategy, grid: list[int], seed: int, timings: list) -> list[float]:
    rng = np.random.default_rng(seed)
    n = len(d.X_pool)
    if strategy.name == "random":
        labeled = list(rng.permutation(n)[:grid[0]])
    else:
        labeled = list(cold_start_batch(d, grid[0], seed))
    accs = []
    for step, target in enumerate(grid):
        head = make_head(d.K).fit(d.X_pool[labeled], d.y_pool[labeled])
        accs.append(accuracy(head, d.X_test, d.y_test))
        if step + 1 == len(grid):
            break
        k = grid[step + 1] - len(labeled)
        mask = np.ones(n, bool)
        mask[labeled] = False
        unl = np.flatnonzero(mask)
        t = time.perf_counter()
        proba = head.predict_proba(d.X_pool[unl])
        context = QueryContext(head=head, labeled_embeddings=d.X_pool[labeled], labeled_y=d.y_pool[labeled],
                               prototypes=d.prototypes, rng=rng)
        picks = strategy.rank(proba, d.X_pool[unl], k, context)
        timings.append(time.perf_counter() - t)
        labeled.extend(unl[picks].tolist())
    return accs


def modal_available() -> str | None:
    try:
        import modAL  # noqa: F401
    except ImportError:
        return "modAL-python is not installed (pip install modAL-python)"
    return None


def _patch_modal_for_new_sklearn() -> None:
    """modAL 0.4.2 passes check_X_y(force_all_finite=...), which scikit-learn 1.8 renamed to
    ensure_all_finite; translate the keyword (nothing else changes)."""
    import inspect

    import modAL.models.learners as learners
    from sklearn.utils import check_X_y

    if "force_all_finite" in inspect.signature(check_X_y).parameters or getattr(learners, "_al_patched", False):
        return

    def compat(*a, force_all_finite=True, **kw):
        return check_X_y(*a, ensure_all_finite=force_all_finite, **kw)

    learners.check_X_y = compat
    learners._al_patched = True


def run_modal(d: Data, grid: list[int], seed: int, timings: list) -> list[float]:
    from modAL.models import ActiveLearner
    from modAL.uncertainty import margin_sampling

    _patch_modal_for_new_sklearn()

    rng = np.random.default_rng(seed)
    n = len(d.X_pool)
    init = rng.permutation(n)[:grid[0]]
    learner = ActiveLearner(estimator=make_head(d.K), query_strategy=margin_sampling,
                            X_training=d.X_pool[init], y_training=d.y_pool[init])
    mask = np.ones(n, bool)
    mask[init] = False
    accs = []
    for step in range(len(grid)):
        accs.append(accuracy(learner.estimator, d.X_test, d.y_test))
        if step + 1 == len(grid):
            break
        unl = np.flatnonzero(mask)
        t = time.perf_counter()
        q, _ = learner.query(d.X_pool[unl], n_instances=grid[step + 1] - grid[step])
        timings.append(time.perf_counter() - t)
        picked = unl[np.asarray(q)]
        learner.teach(d.X_pool[picked], d.y_pool[picked])
        mask[picked] = False
    return accs


def labels_to_reach(grid, accs, target) -> int | None:
    for n, a in zip(grid, accs):
        if a >= target:
            return int(n)
    return None


def auc(grid, accs) -> float:
    g = np.asarray(grid, dtype=np.float64)
    a = np.asarray(accs, dtype=np.float64)
    if len(g) < 2:
        return float(a[0]) if len(a) else 0.0
    return float(np.sum((a[1:] + a[:-1]) / 2 * np.diff(g)) / (g[-1] - g[0]))


def make_strategy(name: str, boundary_kwargs: dict):
    """A fresh strategy; "boundary" with no variant keyword is the product BoundaryRetrieval."""
    if name == "boundary":
        return ExploringBoundaryRetrieval(**boundary_kwargs)
    return POINTWISE[name]()


def strategy_result(grid: list[int], curves: list, timings: list, target: float, full_acc: float,
                    seconds: float) -> dict:
    """One strategy's learning curves (one per seed) summarized."""
    A = np.asarray(curves)
    mean = A.mean(axis=0)
    return {
        "labels_to_95pct": labels_to_reach(grid, mean, target),
        "labels_to_99pct": labels_to_reach(grid, mean, 0.99 * full_acc),
        "auc_learning_curve": auc(grid, mean),
        "labels_to_95pct_per_seed": [labels_to_reach(grid, c, target) for c in curves],
        "auc_per_seed": [auc(grid, c) for c in curves],
        "final_accuracy": float(mean[-1]),
        "curve": {"labels": grid, "accuracy_mean": mean.round(4).tolist(),
                  "accuracy_std": A.std(axis=0).round(4).tolist()},
        "query_seconds_mean": float(np.mean(timings)) if timings else None,
        "seconds": round(seconds, 1),
    }


def bench_dataset(spec: Spec, args) -> dict:
    d = embedded(spec, args.quick, Path(args.cache))
    budget, batch = (spec.quick_budget, spec.quick_batch) if args.quick else (spec.budget, spec.batch)
    budget = min(budget, len(d.X_pool))
    first = batch
    grid = label_grid(first, batch, budget)
    t = time.perf_counter()
    full = make_head(d.K).fit(d.X_pool, d.y_pool)
    full_acc = accuracy(full, d.X_test, d.y_test)
    zs_acc = accuracy(ZeroShotHead(d.prototypes, 30.0), d.X_test, d.y_test) if d.prototypes is not None else None
    target = 0.95 * full_acc
    log(f"[{spec.name}] pool {len(d.X_pool)} test {len(d.X_test)} K={d.K}: full-pool accuracy {full_acc:.3f} "
        f"(fit {time.perf_counter() - t:.1f}s), target {target:.3f}, budget {budget}, batch {batch}")
    out = {"encoder": d.encoder, "pool_size": int(len(d.X_pool)), "test_size": int(len(d.X_test)),
           "classes": d.K, "dim": int(d.X_pool.shape[1]), "batch_size": batch, "label_budget": budget,
           "first_batch": "ColdStart for uncertainty/boundary strategies; random for random and modal_margin",
           "full_pool_accuracy": full_acc, "zero_shot_accuracy": zs_acc, "target_accuracy": target,
           "seeds": args.seeds, "strategies": {}}
    names = [s for s in STRATEGY_NAMES if s in args.strategies]
    if not names:
        del out["strategies"]
    modal_missing = modal_available()
    for name in names:
        if name == "modal_margin" and modal_missing:
            out["strategies"][name] = {"skipped": modal_missing, "labels_to_95pct": None, "auc_learning_curve": None}
            continue
        curves, timings = [], []
        t0 = time.perf_counter()
        for seed in range(args.seeds):
            if name == "modal_margin":
                curves.append(run_modal(d, grid, seed, timings))
            else:
                curves.append(run_ours(d, make_strategy(name, args.boundary_kwargs), grid, seed, timings))
        res = strategy_result(grid, curves, timings, target, full_acc, time.perf_counter() - t0)
        out["strategies"][name] = res
        log(f"  {name:17s} labels_to_95%={res['labels_to_95pct']!s:>5} per-seed={res['labels_to_95pct_per_seed']} "
            f"auc={res['auc_learning_curve']:.3f} final={res['final_accuracy']:.3f} ({res['seconds']}s)")
    rnd = out.get("strategies", {}).get("random", {}).get("labels_to_95pct")
    for name, res in out.get("strategies", {}).items():
        mine = res.get("labels_to_95pct")
        res["labels_vs_random"] = (mine / rnd) if (mine is not None and rnd) else None
    systems = [s for s in SYSTEM_NAMES if s in args.systems]
    if "ours" in systems and "random" in names and "ours-random" not in systems:
        systems.insert(systems.index("ours") + 1, "ours-random")  # the random arm run through the shipped loop
    if systems:
        bench_systems(spec, d, args, systems, out)
    if args.ablation:
        bench_ablation(spec, d, args, out)
    return out


def own_full_pool(d: Data, systems: list[str]) -> dict:
    """Each system's own head trained on the whole pool (context for the common 95% target)."""
    import warnings

    from sklearn.linear_model import LogisticRegression

    from backend.learn.selection import train_and_select
    from bench.shipped_loop import LOGIT_SCALE, LS_C

    own = {}
    if any(s in OURS_VARIANTS for s in systems):
        protos = d.prototypes if d.prototypes is not None else np.zeros((d.K, d.X_pool.shape[1]), np.float32)
        t = time.perf_counter()
        head, report = train_and_select(d.X_pool, d.y_pool, list(range(1, len(d.X_pool) + 1)), protos, LOGIT_SCALE,
                                        [str(k) for k in range(d.K)], False)
        own["ours"] = {"accuracy": accuracy(head, d.X_test, d.y_test), "head": report["head"],
                       "train_and_select_seconds": round(time.perf_counter() - t, 2)}
    if any(s.startswith("ls-example") for s in systems):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            lr = LogisticRegression(C=LS_C).fit(d.X_pool, d.y_pool)
        own["ls-example"] = {"accuracy": float((lr.predict(d.X_test) == d.y_test).mean())}
    return own


def bench_systems(spec: Spec, d: Data, args, systems: list[str], out: dict) -> None:
    """The whole-system arms (bench/shipped_loop.py) on this dataset."""
    budget = args.system_budget.get(spec.name) or out["label_budget"]
    budget = min(budget, len(d.X_pool))
    at = min(args.estimate_at, budget)
    points = eval_points(budget, step=5 if spec.batch <= 5 else 10, extra=(at,) + CHECKPOINTS)
    out.update(system_budget=budget, estimates_at_labels=at, retrain_every=args.retrain_every,
               queue_batch=QUEUE_BATCH, audit_share=args.audit_share, systems={},
               majority_accuracy=float(np.bincount(d.y_test).max() / len(d.y_test)))
    out["own_full_pool_accuracy"] = own_full_pool(d, systems)
    texts = None
    for name in systems:
        if name == "ls-example-tfidf":
            if spec.modality != "text":
                out["systems"][name] = {"skipped": "TF-IDF needs text", "labels_to_95pct": None}
                continue
            texts = texts or texts_of(spec, args.quick)
        traces = []
        t0 = time.perf_counter()
        for seed in range(args.seeds):
            if name in OURS_VARIANTS:
                kw = {"retrain_every": args.retrain_every, "audit_share": args.audit_share, "old_estimate_until": at,
                      **OURS_VARIANTS[name]}
                traces.append(ShippedLoop(d, seed, **kw).run(budget, points))
            else:
                traces.append(run_ls_example(d, budget, points, seed,
                                             features="tfidf" if name.endswith("tfidf") else "embeddings",
                                             texts=texts))
        res = system_result(traces, out["target_accuracy"], out["full_pool_accuracy"], at, time.perf_counter() - t0)
        out["systems"][name] = res
        line = (f"  {name:17s} labels_to_95%={res['labels_to_95pct']!s:>5} per-seed={res['labels_to_95pct_per_seed']} "
                f"final={res['final_accuracy']:.3f} retrains/seed={res['retrains_per_seed']} "
                f"retrain s mean/max={res['retrain_seconds_mean']}/{res['retrain_seconds_max']} ({res['seconds']}s)")
        if "estimates_at" in res:
            e = res["estimates_at"]
            line += (f"\n    at {at} labels: |audit-true|={e['audit_abs_error_mean']} (n={e['audit_n']}, "
                     f"half-width {e['audit_half_width_mean']}) |old-true|={e['biased_abs_error_mean']} "
                     f"(n={e['biased_n']}); signed audit {e['audit_signed_error_mean']} "
                     f"old {e['biased_signed_error_mean']}")
        log(line)


def bench_ablation(spec: Spec, d: Data, args, out: dict) -> None:
    """Labels to 95% (and accuracy at the checkpoints) of each step between the fixed-head strategy and the
    shipped loop (bench.shipped_loop.ablation_steps), same seeds, pool and label grid."""
    budget = min(args.system_budget.get(spec.name) or out["label_budget"], len(d.X_pool))
    step = 5 if spec.batch <= 5 else 10
    points = eval_points(budget, step=step, extra=CHECKPOINTS)
    rows = []
    wanted = [w.strip() for w in getattr(args, "ablation_rows", "").split(",") if w.strip()]
    for name, kw in ablation_steps(spec.quick_batch if args.quick else spec.batch):
        if wanted and not any(w in name for w in wanted):
            continue
        t0 = time.perf_counter()
        traces = [ShippedLoop(d, seed, **kw).run(budget, points) for seed in range(args.seeds)]
        res = system_result(traces, out["target_accuracy"], out["full_pool_accuracy"], budget, time.perf_counter() - t0)
        mean = dict(zip(res["curve"]["labels"], res["curve"]["accuracy_mean"]))
        rows.append({"step": name, "config": kw, "labels_to_95pct": res["labels_to_95pct"],
                     "labels_to_95pct_per_seed": res["labels_to_95pct_per_seed"],
                     "accuracy_at": {m: mean[m] for m in CHECKPOINTS if m in mean}, "seconds": res["seconds"],
                     "curve": res["curve"]})
        log(f"  ablation {name:28s} labels_to_95%={res['labels_to_95pct']!s:>5} per-seed={res['labels_to_95pct_per_seed']}"
            f" acc@{list(rows[-1]['accuracy_at'])}={list(rows[-1]['accuracy_at'].values())} ({res['seconds']}s)")
    out["ablation"] = {"label_step": step, "budget": budget, "rows": rows}


def plot(results: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ds = [n for n, r in results["datasets"].items() if r.get("strategies")]
    if not ds:
        return
    cols = min(2, len(ds))
    rows = (len(ds) + cols - 1) // cols
    fig, axes = plt.subplots(rows, cols, figsize=(6.2 * cols, 4.3 * rows), squeeze=False)
    for ax, name in zip(axes.ravel(), ds):
        r = results["datasets"][name]
        for sname, s in r["strategies"].items():
            if "curve" not in s:
                continue
            g = np.asarray(s["curve"]["labels"])
            m, sd = np.asarray(s["curve"]["accuracy_mean"]), np.asarray(s["curve"]["accuracy_std"])
            style = {"lw": 2.4} if sname == "boundary" else {"lw": 1.3}
            if sname == "random":
                style = {"lw": 1.8, "color": "k", "ls": "--"}
            ax.plot(g, m, label=f"{sname} ({s['labels_to_95pct']})", **style)
            ax.fill_between(g, m - sd, m + sd, alpha=0.12, color=ax.lines[-1].get_color())
        ax.axhline(r["target_accuracy"], color="gray", lw=0.8, ls=":")
        ax.axhline(r["full_pool_accuracy"], color="gray", lw=0.8)
        ax.set_title(f"{name} ({r['encoder']}, pool {r['pool_size']}, {r['classes']} classes)", fontsize=10)
        ax.set_xlabel("labels")
        ax.set_ylabel("test accuracy")
        lo = min(min(s["curve"]["accuracy_mean"]) for s in r["strategies"].values() if "curve" in s)
        ax.set_ylim(max(0.0, lo - 0.05), min(1.0, r["full_pool_accuracy"] + 0.05))
        ax.legend(fontsize=7, title="strategy (labels to 95%)", title_fontsize=7, loc="lower right")
        ax.grid(alpha=0.3)
    for ax in axes.ravel()[len(ds):]:
        ax.axis("off")
    fig.suptitle("Accuracy vs labels (mean ± sd over seeds); dotted: 95% of full-pool accuracy", fontsize=11)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def summarize(results: dict) -> dict:
    rows = {}
    met = 0
    for name, r in results["datasets"].items():
        if not r.get("strategies"):
            continue
        b = r["strategies"].get("boundary", {})
        ratio = b.get("labels_vs_random")
        rows[name] = {s: v.get("labels_to_95pct") for s, v in r["strategies"].items()}
        rows[name]["boundary_vs_random"] = ratio
        b99, r99 = b.get("labels_to_99pct"), r["strategies"].get("random", {}).get("labels_to_99pct")
        rows[name]["boundary_vs_random_at_99pct"] = (b99 / r99) if (b99 is not None and r99) else None
        rnd = r["strategies"].get("random", {}).get("labels_to_95pct")
        ok = (ratio is not None and ratio <= 0.6) or (rnd is None and b.get("labels_to_95pct") is not None)
        rows[name]["boundary_meets_60pct_target"] = bool(ok)
        met += bool(ok)
    return {"labels_to_95pct": rows, "datasets_meeting_target": met, "datasets": len(rows)}


def parse_args(argv=None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="tiny pools, 2 seeds: a smoke run (< 60 s)")
    ap.add_argument("--json", action="store_true", help="print the results as one JSON object on stdout")
    ap.add_argument("--cache", default=os.environ.get("AL_CACHE", "/tmp/al_cache"), help="embedding cache dir")
    ap.add_argument("--out", default="/tmp/al_bench", help="where results.json and learning_curves.png go")
    ap.add_argument("--seeds", type=int, default=None, help="seeds per strategy (default 3; 2 with --quick)")
    ap.add_argument("--datasets", nargs="+", default=list(SPECS), choices=list(SPECS))
    ap.add_argument("--strategies", nargs="+", default=list(STRATEGY_NAMES), choices=list(STRATEGY_NAMES))
    ap.add_argument("--arms", type=lambda v: [a.strip() for a in v.split(",") if a.strip()], default=None,
                    help="comma-separated arms: strategies (%s) and/or systems (%s); replaces --strategies"
                         % (", ".join(STRATEGY_NAMES), ", ".join(SYSTEM_NAMES)))
    ap.add_argument("--retrain-every", type=int, default=None,
                    help="ours: a training run every N labels (default %d: the server retrains as often as runs "
                         "finish, every few labels; docs/active_learning.md)" % RETRAIN_EVERY)
    ap.add_argument("--audit-share", type=float, default=AUDIT_SHARE,
                    help="ours: share of served tasks drawn uniformly for the audit (default %g; 0 = none)"
                         % AUDIT_SHARE)
    ap.add_argument("--estimate-at", type=int, default=200, help="label count where the estimates are compared")
    ap.add_argument("--system-budget", type=json.loads, default={},
                    help='JSON {dataset: label budget} for the system arms (default: the dataset\'s budget)')
    ap.add_argument("--embed-only", action="store_true", help="only fill the embedding cache")
    ap.add_argument("--ablation", action="store_true",
                    help="run the steps from the fixed-head strategy to the shipped loop (bench.shipped_loop.ablation_steps)")
    ap.add_argument("--ablation-rows", default="",
                    help='only the ablation rows whose name contains one of these comma-separated words, '
                         'e.g. "= ours,store"')
    ap.add_argument("--boundary-kwargs", type=json.loads, default={},
                    help='JSON keyword arguments for BoundaryRetrieval or its bench variants '
                         '(bench.strategy_variants.ExploringBoundaryRetrieval), e.g. \'{"density_weight": 0.1}\' '
                         "(default: the product defaults)")
    args = ap.parse_args(argv)
    args.systems = []
    if args.arms is not None:
        unknown = [a for a in args.arms if a not in STRATEGY_NAMES + SYSTEM_NAMES]
        if unknown:
            ap.error(f"unknown arm(s) {unknown}; choose from {', '.join(STRATEGY_NAMES + SYSTEM_NAMES)}")
        args.strategies = [a for a in args.arms if a in STRATEGY_NAMES]
        args.systems = [a for a in args.arms if a in SYSTEM_NAMES]
    if args.ablation and args.arms is None:
        args.strategies = []  # the ablation alone
    if args.seeds is None:
        args.seeds = 2 if args.quick else 3
    if args.retrain_every is None:
        args.retrain_every = RETRAIN_EVERY
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    try:
        import torch

        torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))
    except ImportError:
        pass
    if not args.embed_only:
        # one BLAS thread: the head fits are small, and on a shared 2-core machine more threads
        # made them ~10x slower (oversubscription)
        from threadpoolctl import threadpool_limits

        threadpool_limits(1)
    t0 = time.perf_counter()
    results = {"config": {"quick": args.quick, "seeds": args.seeds, "head": f"LogisticHead(C={C:g})",
                          "boundary_kwargs": args.boundary_kwargs, "strategies": args.strategies,
                          "systems": args.systems, "retrain_every": args.retrain_every,
                          "audit_share": args.audit_share,
                          "data": str(DATA), "cache": str(args.cache)}, "datasets": {}}
    real_stdout = sys.stdout
    sys.stdout = sys.stderr  # libraries print to stdout (efficientnet's loader); keep it for the JSON
    try:
        return _run(args, results, t0, real_stdout)
    finally:
        sys.stdout = real_stdout


def _run(args, results, t0, real_stdout) -> int:
    for name in args.datasets:
        spec = SPECS[name]
        if spec.modality == "image" and (why := image_encoder_missing()):
            log(f"[{name}] skipped: {why}")
            results["datasets"][name] = {"skipped": why}
            continue
        if args.embed_only:
            d = embedded(spec, args.quick, Path(args.cache))
            log(f"[{name}] cached: pool {d.X_pool.shape}, test {d.X_test.shape} ({d.embed_seconds:.0f}s)")
            continue
        results["datasets"][name] = bench_dataset(spec, args)
    if args.embed_only:
        return 0
    results["summary"] = summarize(results)
    if args.systems:
        results["summary"]["systems"] = summarize_systems(results, args.estimate_at)
    results["seconds"] = round(time.perf_counter() - t0, 1)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps(results, indent=1))
    written = [out / "results.json"]
    if args.strategies:
        plot(results, out / "learning_curves.png")
        written.append(out / "learning_curves.png")
    if args.systems:
        plot_systems(results, out / "shipped_loop.png")
        written.append(out / "shipped_loop.png")
    log(f"[done] {results['seconds']}s; wrote {', '.join(map(str, written))}")
    log(json.dumps(results["summary"], indent=1))
    if args.json:
        print(json.dumps(results), file=real_stdout)
    return 0


if __name__ == "__main__":
    sys.exit(main())
