"""Classifier heads on frozen, L2-normalized embeddings, as scikit-learn estimators (the interface is
in head_base.py). ZeroShotHead and LogisticHead live here; the prompt-prior family cross-validation
chooses from is in prompt_prior.py, and PromptAnchoredHead (prompt_anchored.py) stays loadable for
versions that served it. Pickles of the former ``backend.heads`` classes load into these.
"""
from __future__ import annotations

import warnings

import numpy as np
from sklearn.linear_model import LogisticRegression

from .head_base import BLAS_THREADS, Head, _as_float32, blas_limit, sigmoid, softmax  # noqa: F401  (re-exported)
from .prompt_anchored import PromptAnchoredHead  # noqa: F401  (re-exported: old versions pickled it here)
from .prompt_prior import DEFAULT_PRIOR_C, PRIOR_C_GRID, PromptPriorHead  # noqa: F401


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


def candidate_heads(prototypes: np.ndarray, logit_scale: float, multiple: bool,
                    grid=PRIOR_C_GRID) -> list[Head]:
    """Unfitted candidates: zero-shot, then the prompt-prior family along its C path (strongest first)."""
    return [ZeroShotHead(prototypes, logit_scale, multiple=multiple)] + [
        PromptPriorHead(prototypes, logit_scale, C=C, multiple=multiple) for C in grid]
