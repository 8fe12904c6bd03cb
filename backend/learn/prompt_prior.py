"""PromptPriorHead: logistic regression regularised toward the label prompts, one family from zero-shot
(strong prior) to supervised (weak prior); cross-validation chooses C along PRIOR_C_GRID."""
from __future__ import annotations

import numpy as np
from scipy.optimize import minimize, minimize_scalar

from .head_base import Head, _anchored_loss, _as_float32, _initial_bias, sigmoid, softmax


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
