""""Along the boundary": per confused class pair, the unlabeled items the serving head is least sure
about, found as the queue finds them (backend.queue.BoundaryRetrieval: the pair's crossing points
between the class anchors, searched in the vector index, reranked by the head's exact top-2 margin).
Read-only: nothing is written anywhere."""
from __future__ import annotations

import numpy as np

from ...model import ClipClassifier
from ...queue.base import QueryContext
from ...queue.boundary import BoundaryRetrieval
from ...queue.geometry import class_anchors

SAMPLE = 2000  # unlabeled records read for the pair statistics


def along_boundary(model: ClipClassifier, labeled: set[int], pairs: int = 3, per_pair: int = 8,
                   seed: int = 0) -> dict:
    """{"pairs": [{"labels": [a, b], "weight", "items": [{"task", "margin", "proba": {a, b}}]}]},
    least sure first within a pair; pairs by how much probability mass sits between them."""
    model.load()
    control = model.primary
    if control.target.multiple:
        return {"pairs": [], "note": "multiple-choice <Choices>: every label is its own yes/no boundary"}
    store, head = control.store, control.head
    ids, sample = store.sample_unlabeled(SAMPLE, np.random.default_rng(seed), runs=8)
    if not ids:
        return {"pairs": [], "note": "no unlabeled task is embedded yet"}
    strategy = BoundaryRetrieval()
    ranked = strategy.pairs(head.predict_proba(sample), pairs * per_pair)[:pairs]
    prototypes = control.zero_shot.prototypes
    anchors = class_anchors(len(control.target.labels), head, None, None, prototypes)
    index = store.unlabeled_index(set(labeled))
    context, seen = QueryContext(head=head, prototypes=prototypes), set()
    names = control.target.outputs
    out = []
    for pair in ranked:
        keys, vectors, margins = strategy.retrieve(pair, anchors, lambda q, m: index.search(q, m),
                                                   _margins(head), head, context, seen)
        if not keys:
            continue
        proba = head.predict_proba(vectors)
        order = np.argsort(margins, kind="stable")[:per_pair]
        out.append({"labels": [names[pair.i], names[pair.j]], "weight": round(float(pair.weight), 3),
                    "items": [{"task": store.task_of(keys[n]), "margin": round(float(margins[n]), 4),
                               "proba": {names[pair.i]: round(float(proba[n, pair.i]), 3),
                                         names[pair.j]: round(float(proba[n, pair.j]), 3)}} for n in order]})
    return {"pairs": out, "serving": model.model_version, "sampled": len(ids)}


def _margins(head):
    from ...queue.measures import top2_margin

    return lambda keys, V: top2_margin(head.predict_proba(V))
