"""Classifier heads on frozen, L2-normalized embeddings, as scikit-learn estimators.

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
import warnings

import numpy as np
from scipy.optimize import minimize, minimize_scalar
from sklearn.base import BaseEstimator, clone
from sklearn.linear_model import LogisticRegression
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


class ZeroShotHead(Head):
    """Cosine similarity to label prototypes, scaled by the encoder's temperature, softmaxed.

    Multiple choice keeps the softmax and chooses every label whose probability is at least
    relative_threshold times the top one; its score treats p / p_top as the per-class decision
    score with threshold relative_threshold.
    """

    name = "zero-shot"

    def __init__(self, prototypes: np.ndarray, logit_scale: float, multiple: bool = False,
                 relative_threshold: float = 0.5):
        self.prototypes = prototypes
        self.logit_scale = logit_scale
        self.multiple = multiple
        self.relative_threshold = relative_threshold

    @property
    def n_classes_(self) -> int:
        return len(self.prototypes)

    @property
    def thresholds(self) -> np.ndarray | None:
        return np.full(self.n_classes_, float(self.relative_threshold)) if self.multiple else None

    def fit(self, X=None, Y=None) -> "ZeroShotHead":
        return self

    def predict_proba(self, X) -> np.ndarray:
        prototypes = np.asarray(self.prototypes, dtype=np.float32)
        return softmax(float(self.logit_scale) * (_as_float32(X) @ prototypes.T))

    def decision_row(self, proba_row):
        t = np.full(len(proba_row), float(self.relative_threshold))
        return proba_row / max(proba_row.max(), 1e-30), t

    def report_params(self) -> dict:
        return {"logit_scale": float(self.logit_scale), "multiple": bool(self.multiple)}


class LogisticHead(Head):
    """scikit-learn LogisticRegression: multinomial (single choice) or one binary model per class.

    Classes absent from training get probability 0 (single choice) or a constant 0/1 (multiple
    choice, a class that is always or never present); K columns always (n_classes, or taken
    from Y at the first fit when None).
    Embeddings are unit vectors with small coordinates, so useful C values are large (10-100).
    """

    n_classes = None  # absent from pickles of the former module (they carry K)

    def __init__(self, C: float = 30.0, multiple: bool = False, n_classes: int | None = None,
                 max_iter: int = 300):
        self.C = C
        self.multiple = multiple
        self.n_classes = n_classes
        self.max_iter = max_iter
        self.K = int(n_classes) if n_classes is not None else 0  # 0: taken from Y at fit
        self.models: list = []  # single: [LogisticRegression or None]; multiple: one per class
        self.classes_: np.ndarray = np.zeros(0, dtype=np.int64)
        self.constant: np.ndarray = np.zeros(self.K)  # probability used where no model is fitted

    def __setstate__(self, state):
        # the former module cloned with n_classes=K; keep that for clones of old pickles
        if "n_classes" not in state:
            state = {**state, "n_classes": state.get("K") or None}
        super().__setstate__(state)

    @property
    def name(self) -> str:
        return f"logistic(C={float(self.C):g})"

    @property
    def n_classes_(self) -> int:
        return self.K

    def _lr(self) -> LogisticRegression:
        return LogisticRegression(C=float(self.C), max_iter=int(self.max_iter), tol=1e-4)

    def _fit(self, X, Y):
        if not self.K:
            self.K = int(Y.shape[1]) if self.multiple else int(Y.max(initial=-1)) + 1
        self.constant = np.zeros(self.K)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # ConvergenceWarning on tiny data: harmless here
            if self.multiple:
                self._fit_per_class(X, Y)
            else:
                self._fit_multinomial(X, Y)

    def _fit_per_class(self, X, Y):
        self.models = []
        for k in range(self.K):
            y = Y[:, k].astype(int) if len(Y) else np.zeros(0, int)
            if len(y) and 0 < y.sum() < len(y):
                self.models.append(self._lr().fit(X, y))
            else:
                self.models.append(None)
                self.constant[k] = float(y.mean()) if len(y) else 0.0

    def _fit_multinomial(self, X, Y):
        self.classes_ = np.unique(Y)
        if len(self.classes_) >= 2:
            self.models = [self._lr().fit(X, Y)]
            return
        self.models = [None]
        if len(self.classes_) == 1:
            self.constant[self.classes_[0]] = 1.0
        else:  # no data at all: uniform
            self.constant[:] = 1.0 / self.K

    def predict_proba(self, X) -> np.ndarray:
        X = _as_float32(X)
        out = np.tile(self.constant, (len(X), 1))
        if self.multiple:
            for k, model in enumerate(self.models):
                if model is not None:
                    out[:, k] = model.predict_proba(X)[:, 1]
        elif self.models and self.models[0] is not None:
            out[:] = 0.0
            out[:, self.models[0].classes_] = self.models[0].predict_proba(X)
        return out

    def report_params(self) -> dict:
        return {"C": float(self.C), "multiple": bool(self.multiple)}


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


def _initial_bias(z0: np.ndarray, T: np.ndarray) -> np.ndarray:
    """Multi-label start: each bias where the mean zero-shot logits of positives and negatives meet."""
    K = z0.shape[1]
    b0 = np.empty(K)
    for k in range(K):
        pos, neg = z0[T[:, k] > 0, k], z0[T[:, k] == 0, k]
        b0[k] = -0.5 * (pos.mean() + neg.mean()) if len(pos) and len(neg) else -float(np.quantile(z0[:, k], 0.9))
    return b0


class PromptAnchoredHead(Head):
    """A linear head initialised at the zero-shot classifier and L2-regularised toward it.

    logits = X @ W.T + b with W0 = logit_scale * prototypes, minimising

        mean CE(logits, Y) + (lam0 / n) * ||W - W0||^2 + bias_penalty * ||b||^2

    (softmax CE for single choice; per-class sigmoid BCE summed over classes for multiple choice).
    The prior's weight shrinks as 1/n, so with a handful of labels the head stays near zero-shot
    (and keeps predicting classes it has no examples of), while with many it approaches plain
    supervised training. Fitted with L-BFGS on an analytic gradient (float32 matmuls).
    """

    def __init__(self, prototypes: np.ndarray, logit_scale: float, lam: float = 1e-3, multiple: bool = False,
                 bias_penalty: float = 1e-4, max_iter: int = 100):
        self.prototypes = prototypes
        self.logit_scale = logit_scale
        self.lam = lam
        self.multiple = multiple
        self.bias_penalty = bias_penalty
        self.max_iter = max_iter
        self._start()
        self.n_iter_ = 0

    def _start(self) -> None:
        """The unfitted (zero-shot) weights; before fitting, multiple choice puts logit 0 at cosine 0.3."""
        scale = float(self.logit_scale)
        self.W0 = (scale * np.asarray(self.prototypes, dtype=np.float32)).astype(np.float32)
        self.W = self.W0.copy()
        self.b = np.zeros(len(self.W0), dtype=np.float32)
        if self.multiple:
            self.b[:] = -0.3 * scale

    @property
    def name(self) -> str:
        return f"prompt-anchored(lam={float(self.lam):g})"

    @property
    def n_classes_(self) -> int:
        return len(self.prototypes)

    def _fit(self, X, Y):
        self._start()
        n = len(X)
        if n == 0:
            return
        # Optimise on centred embeddings (much better conditioned: sentence embeddings share a
        # large common component); logits = Xc @ W.T + c, with c = b + W @ mu.
        mu = X.mean(axis=0)
        Xc = X - mu
        W0 = self.W0
        if self.multiple:
            targets = Y.astype(np.float32)
            b0 = _initial_bias(X @ W0.T, targets)
        else:
            targets = Y
            b0 = np.zeros(len(W0))
        c0 = b0 + (W0 @ mu).astype(np.float64)  # so the start is exactly the zero-shot logits (+ b0)
        args = (Xc, W0, c0, targets, float(self.lam) / n, float(self.bias_penalty), bool(self.multiple))
        res = minimize(_anchored_loss, np.concatenate([np.zeros(W0.size), c0]), args=args, jac=True,
                       method="L-BFGS-B", options={"maxiter": int(self.max_iter), "gtol": 1e-6})
        self.W = (W0 + res.x[:W0.size].reshape(W0.shape)).astype(np.float32)
        self.b = (res.x[W0.size:] - self.W.astype(np.float64) @ mu).astype(np.float32)
        self.n_iter_ = int(res.nit)

    def predict_proba(self, X) -> np.ndarray:
        Z = _as_float32(X) @ self.W.T + self.b
        return sigmoid(Z.astype(np.float64)) if self.multiple else softmax(Z.astype(np.float64))

    def report_params(self) -> dict:
        return {"lam": float(self.lam), "logit_scale": float(self.logit_scale), "multiple": bool(self.multiple)}


def _prior_scale(S: np.ndarray, Y: np.ndarray, logit_scale: float, multiple: bool) -> tuple[float, np.ndarray]:
    """(tau, b0): the scale at which the prompts' cosine similarities S explain the labels best (maximum
    likelihood; multiple choice also fits one bias per class), searched in [0, 3 * logit_scale].

    A weak pull toward the encoder's own logit_scale (worth one label) keeps one or two labels from
    sending tau to a bound."""
    n, K = S.shape
    top = 3.0 * float(logit_scale)
    if multiple:
        def loss(theta):
            tau, b = theta[0], theta[1:]
            Z = tau * S + b
            P = sigmoid(Z)
            G = (P - Y) / n
            value = float((np.logaddexp(0, Z) - Y * Z).sum()) / n + (tau - logit_scale) ** 2 / (n * logit_scale ** 2)
            return value, np.concatenate([[float((G * S).sum()) + 2 * (tau - logit_scale) / (n * logit_scale ** 2)],
                                          G.sum(axis=0)])
        start = np.concatenate([[logit_scale], _initial_bias(logit_scale * S, Y)])
        res = minimize(loss, start, jac=True, method="L-BFGS-B", bounds=[(0.0, top)] + [(None, None)] * K)
        return float(res.x[0]), res.x[1:]
    rows = np.arange(n)

    def nll(tau):
        Z = tau * S
        Z = Z - Z.max(axis=1, keepdims=True)
        return float((np.log(np.exp(Z).sum(axis=1)) - Z[rows, Y]).mean()) + (tau - logit_scale) ** 2 / (n * logit_scale ** 2)
    return float(minimize_scalar(nll, bounds=(0.0, top), method="bounded").x), np.zeros(K)


class PromptPriorHead(Head):
    """Logistic regression regularised toward the label prompts: one family from zero-shot to supervised.

    logits = X @ W.T + b, minimising

        mean loss(logits, Y) + ||W - tau * prototypes||^2 / (2 C n) + bias_penalty * ||b - b0||^2

    (softmax cross-entropy for single choice, per-class sigmoid BCE for multiple choice). ``tau`` is the
    prompts' own scale, fitted on the training labels by maximum likelihood before W (the temperature at
    which zero-shot explains them best): large when the prompts predict the labels, near 0 when they do
    not, so the prior is only as strong as the labels say it is. With no labels the head is the zero-shot
    head; the prior's pull shrinks as 1/n, so with many labels it is plain logistic regression of
    inverse strength C (and exactly that when the encoder has no text tower: prototypes of zeros).
    Selection (selection.py) chooses C by cross-validation. Fitted with L-BFGS on an analytic gradient;
    ``warm_start`` starts from the previous fit's weights (cheap refits along a C path or in CV folds).
    """

    def __init__(self, prototypes: np.ndarray, logit_scale: float, C: float = 100.0, multiple: bool = False,
                 bias_penalty: float = 1e-4, max_iter: int = 200, warm_start: bool = False, tol: float = 1e-6):
        self.prototypes = prototypes
        self.logit_scale = logit_scale
        self.C = C
        self.multiple = multiple
        self.bias_penalty = bias_penalty
        self.max_iter = max_iter
        self.warm_start = warm_start
        self.tol = tol

    @property
    def name(self) -> str:
        return f"prompt-prior(C={float(self.C):g})"

    @property
    def n_classes_(self) -> int:
        return len(self.prototypes)

    def _fit(self, X, Y):
        P = np.asarray(self.prototypes, dtype=np.float32)
        n = len(X)
        previous = (getattr(self, "W_", None), getattr(self, "b_", None)) if self.warm_start else (None, None)
        if n == 0:
            self.prior_scale_, self.n_iter_ = float(self.logit_scale), 0
            self.W_ = (self.prior_scale_ * P).astype(np.float32)
            self.b_ = np.full(len(P), -0.3 * self.prior_scale_ if self.multiple else 0.0, dtype=np.float32)
            return
        targets = Y.astype(np.float32) if self.multiple else Y
        tau, b0 = _prior_scale(X @ P.T, targets, float(self.logit_scale), bool(self.multiple))
        self.prior_scale_ = tau
        W0 = (tau * P).astype(np.float32)
        # centred embeddings condition the problem far better (sentence embeddings share a large common
        # component): logits = Xc @ W.T + c with c = b + W @ mu
        mu = X.mean(axis=0)
        Xc = X - mu
        c0 = b0 + (W0 @ mu).astype(np.float64)
        start = np.concatenate([np.zeros(W0.size), c0])
        W_prev, b_prev = previous
        if W_prev is not None and W_prev.shape == W0.shape:
            start = np.concatenate([(W_prev - W0).ravel().astype(np.float64), b_prev + (W_prev @ mu).astype(np.float64)])
        args = (Xc, W0, c0, targets, 1.0 / (2.0 * float(self.C) * n), float(self.bias_penalty), bool(self.multiple))
        res = minimize(_anchored_loss, start, args=args, jac=True, method="L-BFGS-B",
                       options={"maxiter": int(self.max_iter), "gtol": float(self.tol)})
        self.W_ = (W0 + res.x[:W0.size].reshape(W0.shape)).astype(np.float32)
        self.b_ = (res.x[W0.size:] - self.W_.astype(np.float64) @ mu).astype(np.float32)
        self.n_iter_ = int(res.nit)

    def _weights(self) -> tuple[np.ndarray, np.ndarray]:
        if hasattr(self, "W_"):
            return self.W_, self.b_
        P = np.asarray(self.prototypes, dtype=np.float32)  # unfitted: the zero-shot classifier
        scale = float(self.logit_scale)
        return scale * P, np.full(len(P), -0.3 * scale if self.multiple else 0.0, dtype=np.float32)

    @property
    def W(self) -> np.ndarray:
        """Per-class weight rows (the queue strategies use them as class anchors)."""
        return self._weights()[0]

    def predict_proba(self, X) -> np.ndarray:
        W, b = self._weights()
        Z = (_as_float32(X) @ W.T + b).astype(np.float64)
        return sigmoid(Z) if self.multiple else softmax(Z)

    def report_params(self) -> dict:
        return {"C": float(self.C), "prior_scale": None if not hasattr(self, "prior_scale_") else
                round(float(self.prior_scale_), 3), "logit_scale": float(self.logit_scale),
                "multiple": bool(self.multiple)}


PRIOR_C_GRID = (3.0, 10.0, 30.0, 100.0, 300.0)  # the regularisation path cross-validation chooses from
DEFAULT_PRIOR_C = 100.0  # served while there are too few labels to cross-validate


def candidate_heads(prototypes: np.ndarray, logit_scale: float, multiple: bool,
                    grid=PRIOR_C_GRID) -> list[Head]:
    """Unfitted candidates: zero-shot, then the prompt-prior family along its C path (strongest first)."""
    return [ZeroShotHead(prototypes, logit_scale, multiple=multiple)] + [
        PromptPriorHead(prototypes, logit_scale, C=C, multiple=multiple) for C in grid]
