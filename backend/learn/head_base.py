"""The base of the classifier heads (heads.py lists them) on frozen, L2-normalized embeddings, as scikit-learn estimators.

Every head has:

- ``name``: a short string used in reports and model versions;
- ``fit(X, Y)``: X is (n, d); Y is an int array of class indices (single choice) or an (n, K) 0/1
  indicator matrix (``multiple=True``); classes without examples are allowed;
- ``predict_proba(X) -> (n, K)``: softmax probabilities (single choice) or per-class sigmoid
  probabilities (multiple choice; the zero-shot head keeps its softmax, see below);
- ``choose(proba_row) -> list[int]``: chosen label indices, most probable first, never empty;
- ``score(proba_row) -> float``: confidence in [0, 1]. Single choice: the top probability.
  Multiple choice: the least certain per-class decision, where a class's certainty is
  max(p, 1 - p) rescaled so that its threshold maps to 0.5 (exactly max(p, 1 - p) at threshold 0.5).

Heads are ``BaseEstimator``s: constructor arguments are stored unchanged under their own names,
so ``sklearn.base.clone``, ``get_params`` and the repr work; conversions happen where the values
are used. They hold only plain attributes and numpy arrays (plus fitted scikit-learn estimators
for LogisticHead), so they pickle; pickles of the former ``backend.heads`` classes load into these.
"""
from __future__ import annotations

import contextlib
import threading

import numpy as np
from sklearn.base import BaseEstimator, clone
from threadpoolctl import threadpool_limits

from .thresholds import best_f1_threshold, decision_certainty

# Fitting runs its BLAS calls single-threaded: these matrices are small, and multi-threaded
# OpenBLAS on a busy machine (server threads, encoders) is 5-20x slower than one thread.
# threadpool_limits is process-wide while it is held. None = leave the BLAS default.
BLAS_THREADS: int | None = 1


_held = threading.local()


@contextlib.contextmanager
def blas_limit():
    """Context manager holding BLAS at BLAS_THREADS threads (read at call time; None: no limit). Nested
    uses inside one thread cost nothing (finding the BLAS libraries takes milliseconds each time)."""
    if BLAS_THREADS is None or getattr(_held, "depth", 0):
        yield
        return
    _held.depth = 1
    try:
        with threadpool_limits(limits=BLAS_THREADS, user_api="blas"):
            yield
    finally:
        _held.depth = 0


def softmax(logits: np.ndarray) -> np.ndarray:
    z = logits - logits.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


def sigmoid(z: np.ndarray) -> np.ndarray:
    return 0.5 * (1.0 + np.tanh(0.5 * z))  # overflow-free


def _as_float32(X) -> np.ndarray:
    X = np.asarray(X, dtype=np.float32)
    if X.ndim == 1:
        X = X[None, :]
    return X


class Head(BaseEstimator):
    """Shared choose/score logic and multi-label threshold tuning."""

    name = "head"
    multiple = False
    thresholds: np.ndarray | None = None
    threshold_folds = 3
    min_items_for_threshold_tuning = 12

    # -- to implement -------------------------------------------------------------------------
    def _fit(self, X: np.ndarray, Y: np.ndarray) -> None:
        raise NotImplementedError

    def predict_proba(self, X) -> np.ndarray:
        raise NotImplementedError

    @property
    def n_classes_(self) -> int:
        """Number of classes (columns of predict_proba)."""
        raise NotImplementedError

    def report_params(self) -> dict:
        """The parameters a report shows for this head (a stable subset of get_params)."""
        return {}

    # -- shared -------------------------------------------------------------------------------
    def __setstate__(self, state):
        # heads pickled by the former module kept `name` as an instance attribute; it is derived now
        state = {k: v for k, v in state.items() if k != "name"}
        super().__setstate__(state)

    def fit(self, X, Y) -> "Head":
        with blas_limit():
            X = _as_float32(X)
            Y = np.asarray(Y)
            if self.multiple:
                Y = Y.reshape(len(X), -1).astype(np.float32)
            else:
                Y = Y.astype(np.int64).ravel()
            self._fit(X, Y)
            if self.multiple:
                self.thresholds = self._tuned_thresholds(X, Y)
            return self

    def _tuned_thresholds(self, X: np.ndarray, Y: np.ndarray) -> np.ndarray:
        """Per-class F1-optimal thresholds from out-of-fold probabilities (0.5 where data is too thin)."""
        K = self.n_classes_
        thresholds = np.full(K, 0.5)
        n = len(X)
        if n < self.min_items_for_threshold_tuning:
            return thresholds
        folds = np.random.default_rng(0).permutation(n) % self.threshold_folds
        oof = np.zeros((n, K), dtype=np.float64)
        for f in range(self.threshold_folds):
            head = clone(self)
            head._fit(X[folds != f], Y[folds != f])
            oof[folds == f] = head.predict_proba(X[folds == f])
        for k in range(K):
            if Y[:, k].sum() >= 2 and (1 - Y[:, k]).sum() >= 2:
                thresholds[k] = best_f1_threshold(oof[:, k], Y[:, k])
        return thresholds

    def decision_row(self, proba_row: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(per-class decision scores, thresholds) for multiple choice: class k is chosen where score >= threshold."""
        t = self.thresholds if self.thresholds is not None else np.full(len(proba_row), 0.5)
        return proba_row, t

    def choose(self, proba_row) -> list[int]:
        row = np.asarray(proba_row, dtype=np.float64).ravel()
        top = int(np.argmax(row))
        if not self.multiple:
            return [top]
        p, t = self.decision_row(row)
        chosen = [int(i) for i in np.argsort(-p, kind="stable") if p[i] >= t[i]]
        return chosen or [top]

    def score(self, proba_row) -> float:
        row = np.asarray(proba_row, dtype=np.float64).ravel()
        if not self.multiple:
            return float(np.clip(row.max(), 0.0, 1.0))
        p, t = self.decision_row(row)
        return float(decision_certainty(p, t).min())

    def decisions(self, proba: np.ndarray) -> np.ndarray:
        """(n, K) 0/1 matrix of chosen labels for a probability matrix."""
        out = np.zeros(proba.shape, dtype=np.int64)
        for i, row in enumerate(proba):
            out[i, self.choose(row)] = 1
        return out



def _initial_bias(z0: np.ndarray, T: np.ndarray) -> np.ndarray:
    """Multi-label start: each bias where the mean zero-shot logits of positives and negatives meet."""
    K = z0.shape[1]
    b0 = np.empty(K)
    for k in range(K):
        pos, neg = z0[T[:, k] > 0, k], z0[T[:, k] == 0, k]
        b0[k] = -0.5 * (pos.mean() + neg.mean()) if len(pos) and len(neg) else -float(np.quantile(z0[:, k], 0.9))
    return b0


def _anchored_loss(theta, Xc, W0, c0, targets, lam, bias_penalty, multiple):
    """Loss and gradient of PromptAnchoredHead at theta = (V = W - W0 flattened, c = logit offsets).

    targets: (n, K) float32 indicators (multiple) or (n,) class indices.
    """
    n, d = Xc.shape
    K = len(W0)
    V = theta[:K * d].reshape(K, d)
    c = theta[K * d:]
    Z = Xc @ (W0 + V.astype(np.float32)).T + c.astype(np.float32)
    if multiple:
        loss = float((np.logaddexp(0, Z) - targets * Z).sum(dtype=np.float64)) / n  # BCE with logits
        G = (sigmoid(Z) - targets) / n
    else:
        rows = np.arange(n)
        zmax = Z.max(axis=1, keepdims=True)
        E = np.exp(Z - zmax)
        S = E.sum(axis=1, keepdims=True)
        loss = float((np.log(S).ravel() + zmax.ravel() - Z[rows, targets]).sum(dtype=np.float64)) / n
        G = E / S
        G[rows, targets] -= 1.0
        G /= n
    dc = c - c0
    loss += lam * float((V * V).sum()) + bias_penalty * float(dc @ dc)
    gV = (G.T @ Xc).astype(np.float64) + 2 * lam * V
    gc = G.sum(axis=0, dtype=np.float64) + 2 * bias_penalty * dc
    return loss, np.concatenate([gV.ravel(), gc])
