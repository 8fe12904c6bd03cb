"""The label-error tab at an annotator's size (not a test): the setting of tests/test_e2e_audit_review.py
without Label Studio.

    .venv/bin/python -m bench.label_review_small [--dataset ag_news] [--draws 8] [--json]

Per draw: 210 random pool items (bench/datasets.py embeddings, cached as for bench.active_learning),
every 4th of the last 60 relabeled to another class uniformly (15 wrong), every 10th item an audit
item; then the server's own ``train_and_select`` (prototypes, logit scale 30, the audit ids) and its
report's ``label_errors`` (what the tab shows). Prints the tab's precision and recall per draw and
pooled, with the precision a random pick would have.
"""
from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

import numpy as np

from backend.learn.selection import train_and_select
from bench.datasets import SPECS, embedded

LABELS, LATE, EVERY_WRONG, EVERY_AUDIT = 210, 60, 4, 10
LOGIT_SCALE = 30.0  # the sentence encoder's


def one_draw(d, seed: int) -> dict:
    rng = np.random.default_rng(seed)
    idx = rng.choice(len(d.X_pool), LABELS, replace=False)
    given = d.y_pool[idx].copy()
    wrong = set()
    for i in range(LABELS - LATE, LABELS, EVERY_WRONG):
        given[i] = (given[i] + rng.integers(1, d.K)) % d.K
        wrong.add(int(idx[i]))
    audit = [int(idx[i]) for i in range(0, LABELS, EVERY_AUDIT)]
    names = [str(k) for k in range(d.K)]
    _, report = train_and_select(d.X_pool[idx], given, [int(i) for i in idx], d.prototypes, LOGIT_SCALE, names,
                                 False, audit_ids=audit)
    flagged = [e["task_id"] for e in report["label_errors"]]
    hits = sum(t in wrong for t in flagged)
    return {"seed": seed, "head": report["head"], "flagged": len(flagged), "hits": hits, "wrong": len(wrong)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--dataset", default="ag_news", choices=[n for n, s in SPECS.items() if s.modality == "text"])
    ap.add_argument("--draws", type=int, default=8)
    ap.add_argument("--cache", default=os.environ.get("AL_CACHE", "/tmp/al_cache"))
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    d = embedded(SPECS[args.dataset], False, Path(args.cache))
    rows = [one_draw(d, seed) for seed in range(args.draws)]
    flagged, hits, wrong = (sum(r[k] for r in rows) for k in ("flagged", "hits", "wrong"))
    pooled = {"precision": round(hits / max(flagged, 1), 3), "recall": round(hits / wrong, 3),
              "chance": round(wrong / (LABELS * len(rows)), 3)}
    if args.json:
        print(json.dumps({"dataset": args.dataset, "draws": rows, "pooled": pooled}))
        return
    for r in rows:
        print(f"draw {r['seed']}: {r['head']:<22} flagged {r['flagged']:>3}, {r['hits']} of {r['wrong']} wrong: "
              f"precision {r['hits'] / max(r['flagged'], 1):.2f}, recall {r['hits'] / r['wrong']:.2f}")
    print(f"pooled: precision {pooled['precision']:.2f}, recall {pooled['recall']:.2f} (chance {pooled['chance']:.2f})")


if __name__ == "__main__":
    main()
