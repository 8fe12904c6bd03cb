"""Classifier heads on frozen embeddings, with scikit-learn's predict_proba shape."""
from __future__ import annotations

import numpy as np


def softmax(logits: np.ndarray) -> np.ndarray:
    z = logits - logits.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


class ZeroShotHead:
    """Cosine similarity to label prototypes, scaled by the encoder's temperature, softmaxed."""

    name = "zero-shot"

    def __init__(self, prototypes: np.ndarray, logit_scale: float):
        self.prototypes = np.asarray(prototypes, dtype=np.float32)
        self.logit_scale = float(logit_scale)

    def predict_proba(self, embeddings: np.ndarray) -> np.ndarray:
        return softmax(self.logit_scale * (np.asarray(embeddings, dtype=np.float32) @ self.prototypes.T))


def choose_labels(proba_row: np.ndarray, multiple: bool, relative_threshold: float = 0.5) -> list[int]:
    """Indices of chosen labels: the top one, plus (multi-choice) any within relative_threshold of it."""
    top = int(np.argmax(proba_row))
    if not multiple:
        return [top]
    cutoff = proba_row[top] * relative_threshold
    return [i for i in np.argsort(-proba_row) if proba_row[i] >= cutoff]
