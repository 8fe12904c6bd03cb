"""Classifier heads on frozen, L2-normalized embeddings, with scikit-learn's fit/predict_proba shape.

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

Heads hold only plain attributes and numpy arrays (plus a fitted scikit-learn estimator for
LogisticHead), so they pickle.
"""
from __future__ import annotations

import warnings

import numpy as np
from scipy.optimize import minimize
from threadpoolctl import threadpool_limits

# Fitting runs its BLAS calls single-threaded: these matrices are small, and multi-threaded
# OpenBLAS on a busy machine (server threads, encoders) is 5-20x slower than one thread.
# threadpool_limits is process-wide while it is held. None = leave the BLAS default.
BLAS_THREADS: int | None = 1


def softmax(logits: np.ndarray) -> np.ndarray:
    z = logits - logits.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


def sigmoid(z: np.ndarray) -> np.ndarray:
    return 0.5 * (1.0 + np.tanh(0.5 * z))  # overflow-free


def choose_labels(proba_row: np.ndarray, multiple: bool, relative_threshold: float = 0.5) -> list[int]:
    """Zero-shot rule on a softmax row: the top label, plus (multi-choice) any within relative_threshold of it."""
    top = int(np.argmax(proba_row))
    if not multiple:
        return [top]
    cutoff = proba_row[top] * relative_threshold
    return [int(i) for i in np.argsort(-proba_row, kind="stable") if proba_row[i] >= cutoff]


def _as_float32(X) -> np.ndarray:
    X = np.asarray(X, dtype=np.float32)
    if X.ndim == 1:
        X = X[None, :]
    return X


def _decision_certainty(p: np.ndarray, t: np.ndarray) -> np.ndarray:
    """Per-class certainty of the decision p >= t, in [0.5, 1]; equals max(p, 1 - p) when t = 0.5."""
    t = np.clip(t, 1e-6, 1 - 1e-6)
    above = 0.5 + 0.5 * (p - t) / (1 - t)
    below = 0.5 + 0.5 * (t - p) / t
    return np.clip(np.where(p >= t, above, below), 0.5, 1.0)


def best_f1_threshold(p: np.ndarray, y: np.ndarray, default: float = 0.5) -> float:
    """The threshold on scores p that maximises F1 for binary labels y (midpoints between scores).

    Ties go to the threshold nearest the default; a class with no positives (or no negatives)
    keeps the default.
    """
    p = np.asarray(p, dtype=np.float64)
    y = np.asarray(y).astype(bool)
    n_pos = int(y.sum())
    if n_pos == 0 or n_pos == len(y):
        return default
    order = np.argsort(-p, kind="stable")
    ps, ys = p[order], y[order]
    tp = np.cumsum(ys)  # predicting the top i+1 items positive
    k = np.arange(1, len(ps) + 1)
    f1 = 2 * tp / (k + n_pos)
    # only cut where the next score differs (a threshold cannot split equal scores)
    valid = np.append(ps[:-1] > ps[1:], True)
    nxt = np.append(ps[1:], ps[-1] - 1e-3)
    cuts = (ps + nxt) / 2
    f1, cuts = f1[valid], cuts[valid]
    best = f1.max()
    candidates = cuts[f1 >= best - 1e-12]
    return float(np.clip(candidates[np.argmin(np.abs(candidates - default))], 0.02, 0.98))


class Head:
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

    def _clone(self) -> "Head":
        raise NotImplementedError

    # -- shared -------------------------------------------------------------------------------
    @property
    def n_classes(self) -> int:
        raise NotImplementedError

    def fit(self, X, Y) -> "Head":
        if BLAS_THREADS is None:
            return self._fit_all(X, Y)
        with threadpool_limits(limits=BLAS_THREADS, user_api="blas"):
            return self._fit_all(X, Y)

    def _fit_all(self, X, Y) -> "Head":
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
        K = self.n_classes
        thresholds = np.full(K, 0.5)
        n = len(X)
        if n < self.min_items_for_threshold_tuning:
            return thresholds
        folds = np.random.default_rng(0).permutation(n) % self.threshold_folds
        oof = np.zeros((n, K), dtype=np.float64)
        for f in range(self.threshold_folds):
            head = self._clone()
            head._fit(X[folds != f], Y[folds != f])
            oof[folds == f] = head.predict_proba(X[folds == f])
        for k in range(K):
            if Y[:, k].sum() >= 2 and (1 - Y[:, k]).sum() >= 2:
                thresholds[k] = best_f1_threshold(oof[:, k], Y[:, k])
        return thresholds

    def _decision_row(self, proba_row: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(per-class decision scores, thresholds) for multiple choice."""
        t = self.thresholds if self.thresholds is not None else np.full(len(proba_row), 0.5)
        return proba_row, t

    def choose(self, proba_row) -> list[int]:
        row = np.asarray(proba_row, dtype=np.float64).ravel()
        top = int(np.argmax(row))
        if not self.multiple:
            return [top]
        p, t = self._decision_row(row)
        chosen = [int(i) for i in np.argsort(-p, kind="stable") if p[i] >= t[i]]
        return chosen or [top]

    def score(self, proba_row) -> float:
        row = np.asarray(proba_row, dtype=np.float64).ravel()
        if not self.multiple:
            return float(np.clip(row.max(), 0.0, 1.0))
        p, t = self._decision_row(row)
        return float(_decision_certainty(p, t).min())

    def decisions(self, proba: np.ndarray) -> np.ndarray:
        """(n, K) 0/1 matrix of chosen labels for a probability matrix."""
        out = np.zeros(proba.shape, dtype=np.int64)
        for i, row in enumerate(proba):
            out[i, self.choose(row)] = 1
        return out

    def params(self) -> dict:
        return {}

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.params().items())
        return f"{type(self).__name__}({args})"


class ZeroShotHead(Head):
    """Cosine similarity to label prototypes, scaled by the encoder's temperature, softmaxed.

    Multiple choice keeps the softmax and chooses every label whose probability is at least
    relative_threshold times the top one (choose_labels); its score treats p / p_top as the
    per-class decision score with threshold relative_threshold.
    """

    name = "zero-shot"

    def __init__(self, prototypes: np.ndarray, logit_scale: float, multiple: bool = False,
                 relative_threshold: float = 0.5):
        self.prototypes = np.asarray(prototypes, dtype=np.float32)
        self.logit_scale = float(logit_scale)
        self.multiple = bool(multiple)
        self.relative_threshold = float(relative_threshold)
        self.thresholds = np.full(len(self.prototypes), self.relative_threshold) if self.multiple else None

    @property
    def n_classes(self) -> int:
        return len(self.prototypes)

    def fit(self, X=None, Y=None) -> "ZeroShotHead":
        return self

    def predict_proba(self, X) -> np.ndarray:
        return softmax(self.logit_scale * (_as_float32(X) @ self.prototypes.T))

    def _decision_row(self, proba_row):
        return proba_row / max(proba_row.max(), 1e-30), np.full(len(proba_row), self.relative_threshold)

    def params(self) -> dict:
        return {"logit_scale": self.logit_scale, "multiple": self.multiple}


class LogisticHead(Head):
    """scikit-learn LogisticRegression: multinomial (single choice) or one binary model per class.

    Classes absent from training get probability 0 (single choice) or a constant 0/1 (multiple
    choice, a class that is always or never present); K columns always.
    Embeddings are unit vectors with small coordinates, so useful C values are large (10-100).
    """

    def __init__(self, C: float = 30.0, multiple: bool = False, n_classes: int | None = None,
                 max_iter: int = 300):
        self.K = int(n_classes) if n_classes is not None else 0  # 0: taken from Y at fit
        self.C = float(C)
        self.multiple = bool(multiple)
        self.max_iter = int(max_iter)
        self.name = f"logistic(C={self.C:g})"
        self.models: list = []  # single: [LogisticRegression or None]; multiple: one per class
        self.classes_: np.ndarray = np.zeros(0, dtype=np.int64)
        self.constant: np.ndarray = np.zeros(self.K)  # probability used where no model is fitted

    @property
    def n_classes(self) -> int:
        return self.K

    def _clone(self) -> "LogisticHead":
        return LogisticHead(C=self.C, multiple=self.multiple, n_classes=self.K, max_iter=self.max_iter)

    def _lr(self):
        from sklearn.linear_model import LogisticRegression

        return LogisticRegression(C=self.C, max_iter=self.max_iter, tol=1e-4)

    def _fit(self, X, Y):
        if not self.K:
            self.K = int(Y.shape[1]) if self.multiple else int(Y.max(initial=-1)) + 1
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # ConvergenceWarning on tiny data: harmless here
            if self.multiple:
                self.models = []
                self.constant = np.zeros(self.K)
                for k in range(self.K):
                    y = Y[:, k].astype(int) if len(Y) else np.zeros(0, int)
                    if len(y) and 0 < y.sum() < len(y):
                        self.models.append(self._lr().fit(X, y))
                    else:
                        self.models.append(None)
                        self.constant[k] = float(y.mean()) if len(y) else 0.0
            else:
                self.classes_ = np.unique(Y)
                self.constant = np.zeros(self.K)
                if len(self.classes_) >= 2:
                    self.models = [self._lr().fit(X, Y)]
                else:
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

    def params(self) -> dict:
        return {"C": self.C, "multiple": self.multiple}


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
        self.prototypes = np.asarray(prototypes, dtype=np.float32)
        self.logit_scale = float(logit_scale)
        self.lam = float(lam)
        self.multiple = bool(multiple)
        self.bias_penalty = float(bias_penalty)
        self.max_iter = int(max_iter)
        self.name = f"prompt-anchored(lam={self.lam:g})"
        self.W0 = (self.logit_scale * self.prototypes).astype(np.float32)
        self.W = self.W0.copy()
        self.b = np.zeros(len(self.prototypes), dtype=np.float32)
        if self.multiple:  # before fitting: a zero-shot-like rule (logit 0 at cosine 0.3)
            self.b[:] = -0.3 * self.logit_scale
        self.n_iter_ = 0

    @property
    def n_classes(self) -> int:
        return len(self.prototypes)

    def _clone(self) -> "PromptAnchoredHead":
        return PromptAnchoredHead(self.prototypes, self.logit_scale, lam=self.lam, multiple=self.multiple,
                                  bias_penalty=self.bias_penalty, max_iter=self.max_iter)

    def _fit(self, X, Y):
        K, d = self.W0.shape
        n = len(X)
        self.W = self.W0.copy()
        self.b = np.zeros(K, dtype=np.float32)
        if self.multiple:
            self.b[:] = -0.3 * self.logit_scale
        if n == 0:
            return
        lam = self.lam / n
        # Optimise on centred embeddings (much better conditioned: sentence embeddings share a
        # large common component); logits = Xc @ W.T + c, with c = b + W @ mu.
        mu = X.mean(axis=0)
        Xc = X - mu
        W0f = self.W0
        z0 = X @ W0f.T
        if self.multiple:
            T = Y.astype(np.float32)
            # start each bias where the mean zero-shot logits of positives and negatives meet
            b0 = np.empty(K)
            for k in range(K):
                pos, neg = z0[T[:, k] > 0, k], z0[T[:, k] == 0, k]
                b0[k] = -0.5 * (pos.mean() + neg.mean()) if len(pos) and len(neg) else -float(np.quantile(z0[:, k], 0.9))
        else:
            rows = np.arange(n)
            b0 = np.zeros(K)
        c0 = b0 + (W0f @ mu).astype(np.float64)  # so the start is exactly the zero-shot logits (+ b0)
        Kd = K * d

        def objective(theta):
            V = theta[:Kd].reshape(K, d)
            c = theta[Kd:]
            Z = Xc @ (W0f + V.astype(np.float32)).T + c.astype(np.float32)
            if self.multiple:
                loss = float((np.logaddexp(0, Z) - T * Z).sum(dtype=np.float64)) / n  # BCE with logits
                G = (sigmoid(Z) - T) / n
            else:
                zmax = Z.max(axis=1, keepdims=True)
                E = np.exp(Z - zmax)
                S = E.sum(axis=1, keepdims=True)
                loss = float((np.log(S).ravel() + zmax.ravel() - Z[rows, Y]).sum(dtype=np.float64)) / n
                G = E / S
                G[rows, Y] -= 1.0
                G /= n
            dc = c - c0
            loss += lam * float((V * V).sum()) + self.bias_penalty * float(dc @ dc)
            gV = (G.T @ Xc).astype(np.float64) + 2 * lam * V
            gc = G.sum(axis=0, dtype=np.float64) + 2 * self.bias_penalty * dc
            return loss, np.concatenate([gV.ravel(), gc])

        res = minimize(objective, np.concatenate([np.zeros(Kd), c0]), jac=True, method="L-BFGS-B",
                       options={"maxiter": self.max_iter, "gtol": 1e-6})
        self.W = (W0f + res.x[:Kd].reshape(K, d)).astype(np.float32)
        self.b = (res.x[Kd:] - self.W.astype(np.float64) @ mu).astype(np.float32)
        self.n_iter_ = int(res.nit)

    def predict_proba(self, X) -> np.ndarray:
        Z = _as_float32(X) @ self.W.T + self.b
        return sigmoid(Z.astype(np.float64)) if self.multiple else softmax(Z.astype(np.float64))

    def params(self) -> dict:
        return {"lam": self.lam, "logit_scale": self.logit_scale, "multiple": self.multiple}


def candidate_heads(prototypes: np.ndarray, logit_scale: float, multiple: bool) -> list[Head]:
    """Unfitted candidates, simplest first (selection breaks ties toward the front)."""
    K = len(prototypes)
    return [
        ZeroShotHead(prototypes, logit_scale, multiple=multiple),
        LogisticHead(C=10.0, multiple=multiple, n_classes=K),
        PromptAnchoredHead(prototypes, logit_scale, lam=1e-2, multiple=multiple),
        PromptAnchoredHead(prototypes, logit_scale, lam=1e-3, multiple=multiple),
        PromptAnchoredHead(prototypes, logit_scale, lam=1e-4, multiple=multiple),
    ]
