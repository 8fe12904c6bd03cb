"""The label-error tab at an annotator's size (not a test): the setting of tests/test_e2e_audit_review.py
without Label Studio.

    .venv/bin/python -m bench.label_review_small [--dataset ag_news] [--draws 8] [--queue] [--json]

Per draw: 210 random pool items (bench/datasets.py embeddings, cached as for bench.active_learning),
every 4th of the last 60 relabeled to another class uniformly (15 wrong), every 10th item an audit
item; then the server's own ``train_and_select`` (prototypes, logit scale 30, the audit ids) and its
report's ``label_errors`` (what the tab shows, at most REVIEW_MAX). Prints the tab's precision and
recall per draw and pooled, with the precision a random pick would have.

--queue: the items are picked as the e2e's annotator gets them: a project of 500 random pool items,
5 labels per run from the served head's lowest-margin tasks (every 10th label an audit draw, uniform
over the unlabeled tasks), ``train_and_select`` after every 5 (zero-shot before the first).
"""
from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

import numpy as np

from backend.flows.review import REVIEW_MAX
from backend.learn.heads import ZeroShotHead
from backend.learn.selection import train_and_select
from bench.datasets import SPECS, embedded

LABELS, LATE, EVERY_WRONG, EVERY_AUDIT = 210, 60, 4, 10
LOGIT_SCALE = 30.0  # the sentence encoder's
PROJECT, PER_RUN = 500, 5  # --queue: the e2e's project size and labels per run


def queue_picked(d, rng) -> tuple[np.ndarray, set]:
    """Pool indices in the order the annotator labels them, and the audit draws among them."""
    project = rng.choice(len(d.X_pool), PROJECT, replace=False)
    head, picked, audit = ZeroShotHead(d.prototypes, LOGIT_SCALE), [], set()
    names = [str(k) for k in range(d.K)]
    while len(picked) < LABELS:
        rest = np.setdiff1d(project, picked)
        top2 = np.sort(head.predict_proba(d.X_pool[rest]), axis=1)[:, -2:]
        order = iter(rest[np.argsort(top2[:, 1] - top2[:, 0], kind="stable")])
        for _ in range(min(PER_RUN, LABELS - len(picked))):
            if len(picked) % EVERY_AUDIT == 0:
                item = int(rng.choice(np.setdiff1d(project, picked)))
                audit.add(item)
            else:
                item = int(next(i for i in order if i not in picked))
            picked.append(item)
        head, _ = train_and_select(d.X_pool[picked], d.y_pool[picked], picked, d.prototypes, LOGIT_SCALE, names,
                                   False, audit_ids=sorted(audit), label_review=False)
    return np.array(picked), audit


def one_draw(d, seed: int, queue: bool = False) -> dict:
    rng = np.random.default_rng(seed)
    if queue:
        idx, audit_items = queue_picked(d, rng)
    else:
        idx = rng.choice(len(d.X_pool), LABELS, replace=False)
    given = d.y_pool[idx].copy()
    wrong = set()
    for i in range(LABELS - LATE, LABELS, EVERY_WRONG):
        given[i] = (given[i] + rng.integers(1, d.K)) % d.K
        wrong.add(int(idx[i]))
    audit = sorted(audit_items) if queue else [int(idx[i]) for i in range(0, LABELS, EVERY_AUDIT)]
    names = [str(k) for k in range(d.K)]
    _, report = train_and_select(d.X_pool[idx], given, [int(i) for i in idx], d.prototypes, LOGIT_SCALE, names,
                                 False, audit_ids=audit)
    flagged = [e["task_id"] for e in report["label_errors"]][:REVIEW_MAX]
    hits = sum(t in wrong for t in flagged)
    return {"seed": seed, "head": report["head"], "flagged": len(flagged), "hits": hits, "wrong": len(wrong)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--dataset", default="ag_news", choices=[n for n, s in SPECS.items() if s.modality == "text"])
    ap.add_argument("--draws", type=int, default=8)
    ap.add_argument("--cache", default=os.environ.get("AL_CACHE", "/tmp/al_cache"))
    ap.add_argument("--queue", action="store_true", help="items picked by the queue, as in the e2e")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    d = embedded(SPECS[args.dataset], False, Path(args.cache))
    rows = [one_draw(d, seed, args.queue) for seed in range(args.draws)]
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
