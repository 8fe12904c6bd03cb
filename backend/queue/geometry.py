"""Class geometry for boundary retrieval: class anchors, confused class pairs and their share of
the batch, and the point between two anchors where the head changes its mind."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .measures import as_proba, top2_margin


def unit(x: np.ndarray) -> np.ndarray:
    """L2-normalized rows (float32); a zero row stays zero."""
    x = np.asarray(x, dtype=np.float32)
    return x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), 1e-12)


def class_anchors(K: int, head=None, labeled_embeddings=None, labeled_y=None, prototypes=None) -> np.ndarray:
    """(K, d) unit vectors standing for each class, NaN rows where nothing is known.

    In order of preference: the mean embedding of the class's labeled items; the zero-shot
    prototype; the head's weight row (PromptAnchoredHead.W, ZeroShotHead.prototypes, a multinomial
    LogisticHead's coef_ row). A head without a per-class weight matrix (a binary LogisticRegression
    has one vector) relies on the labeled means and prototypes.
    """
    anchors = None
    if labeled_embeddings is not None and len(labeled_embeddings):
        E = np.asarray(labeled_embeddings, np.float32)
        y = np.asarray(labeled_y).astype(int)
        anchors = np.full((K, E.shape[1]), np.nan, dtype=np.float32)
        for c in np.unique(y):
            if 0 <= c < K:
                anchors[c] = unit(E[y == c].mean(axis=0))
    fallbacks = []
    if prototypes is not None:
        fallbacks.append(np.asarray(prototypes, np.float32))
    W = head_weight_matrix(head, K)
    if W is not None:
        fallbacks.append(W)
    for F in fallbacks:
        if anchors is None:
            anchors = np.full((K, F.shape[1]), np.nan, dtype=np.float32)
        missing = np.isnan(anchors[:, 0])
        anchors[missing] = unit(F[missing])
    if anchors is None:
        raise ValueError("BoundaryRetrieval needs labeled embeddings, prototypes or a head with weights")
    return anchors


def head_weight_matrix(head, K: int) -> np.ndarray | None:
    """The head's (K, d) class weight rows where it has them (None otherwise)."""
    if head is None:
        return None
    for attr in ("W", "prototypes"):
        W = getattr(head, attr, None)
        if isinstance(W, np.ndarray) and W.ndim == 2 and W.shape[0] == K:
            return W.astype(np.float32)
    models = getattr(head, "models", None)
    if models and models[0] is not None and hasattr(models[0], "coef_") and not getattr(head, "multiple", False):
        coef, classes = models[0].coef_, models[0].classes_
        if coef.shape[0] == len(classes) and len(classes) > 2:
            W = np.full((K, coef.shape[1]), np.nan, dtype=np.float32)
            W[classes] = coef
            return W
    return None


@dataclass
class Pair:
    """Two confused classes (i < j), how much probability mass sits between them, and how many
    batch slots they get."""

    i: int
    j: int
    weight: float
    slots: int = 0


def confused_pairs(proba, max_pairs: int | None = None) -> list[Pair]:
    """Class pairs ranked by how much probability mass sits between them: every item adds
    (1 - margin) to the pair of its two top classes."""
    p = as_proba(proba)
    if p.shape[1] < 2 or len(p) == 0:
        return []
    top2 = np.argsort(-p, axis=1, kind="stable")[:, :2]
    a, b = np.minimum(top2[:, 0], top2[:, 1]), np.maximum(top2[:, 0], top2[:, 1])
    w = 1.0 - top2_margin(p)
    K = p.shape[1]
    acc = np.zeros(K * K)
    np.add.at(acc, a * K + b, w)
    order = np.argsort(-acc, kind="stable")
    pairs = [Pair(int(c // K), int(c % K), float(acc[c])) for c in order if acc[c] > 0]
    return pairs[:max_pairs] if max_pairs else pairs


def allocate_slots(pairs: list[Pair], k: int, power: float = 1.0) -> list[Pair]:
    """Share k batch slots among pairs in proportion to weight ** power (largest remainder);
    pairs that get no slot are dropped."""
    pairs = [p for p in pairs if p.weight > 0]
    if not pairs or k <= 0:
        return []
    w = np.array([p.weight for p in pairs], dtype=np.float64) ** power
    raw = w / w.sum() * k
    slots = np.floor(raw).astype(int)
    for idx in np.argsort(-(raw - slots), kind="stable")[:k - int(slots.sum())]:
        slots[idx] += 1
    out = []
    for p, s in zip(pairs, slots):
        if s > 0:
            p.slots = int(s)
            out.append(p)
    return out


def crossing_point(head, a: np.ndarray, b: np.ndarray, i: int, j: int, steps: int = 17) -> np.ndarray:
    """Unit vector on the arc from anchor a (class i) to anchor b (class j) where the head's
    preference flips from i to j (log p_i - log p_j crosses zero; linear interpolation between
    grid points). Where it never flips, the point where the two are closest; without a head, the
    normalized bisector."""
    if head is None:
        return unit(a + b)
    t = np.linspace(0.0, 1.0, steps)
    pts = unit((1 - t)[:, None] * a[None, :] + t[:, None] * b[None, :])
    p = np.clip(np.asarray(head.predict_proba(pts), dtype=np.float64), 1e-12, 1.0)
    d = np.log(p[:, i]) - np.log(p[:, j])
    flips = np.flatnonzero((d[:-1] > 0) & (d[1:] <= 0))
    if len(flips):
        s = flips[0]
        frac = d[s] / (d[s] - d[s + 1]) if d[s] != d[s + 1] else 0.5
        tt = t[s] + frac * (t[s + 1] - t[s])
    else:
        tt = t[int(np.argmin(np.abs(d)))]
    return unit((1 - tt) * a + tt * b)
