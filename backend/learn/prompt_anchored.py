"""PromptAnchoredHead: logistic regression anchored to the prompts by a fixed penalty (served before the
prompt-prior family replaced it; kept so those versions still load and serve)."""
from __future__ import annotations

import numpy as np
from scipy.optimize import minimize

from .head_base import Head, _anchored_loss, _as_float32, _initial_bias, sigmoid, softmax


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
