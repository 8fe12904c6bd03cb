"""Label prompts: each label becomes an ensemble of sentences whose mean embedding is its prototype."""
from __future__ import annotations

from typing import Protocol, Sequence

import numpy as np


class Label(Protocol):
    """What a prompt needs of a label (labelstudio.labelconfig.ChoiceLabel has it): its names and an
    optional hint, several parts separated by "|"."""

    @property
    def names(self) -> Sequence[str]: ...

    @property
    def hint(self) -> str | None: ...


def label_prompts(label: Label, templates: tuple[str, ...]) -> list[str]:
    """Every template filled with every name of the label, plus each part of the hint verbatim.

    A hint may hold several descriptions or example items separated by "|"; examples written
    like real items make the strongest prompts for sentence encoders.
    """
    prompts = [template.format(name) for name in label.names for template in templates]
    if label.hint:
        prompts.extend(part.strip() for part in label.hint.split("|") if part.strip())
    return list(dict.fromkeys(prompts))


def label_prototypes(encoder, labels: Sequence[Label]) -> np.ndarray:
    """(n_labels, dim) unit vectors: the normalized mean of each label's prompt embeddings."""
    per_label = [label_prompts(label, encoder.templates) for label in labels]
    flat = [p for prompts in per_label for p in prompts]
    emb = encoder.encode_prompts(flat)
    protos, start = [], 0
    for prompts in per_label:
        mean = emb[start:start + len(prompts)].mean(axis=0)
        protos.append(mean / max(np.linalg.norm(mean), 1e-12))
        start += len(prompts)
    return np.stack(protos).astype(np.float32)


def query_prompts(query: str, templates: tuple[str, ...] = ()) -> list[str]:
    """A free-text search query as prompts: each "|"-separated part verbatim, and, with templates
    (CLIP's prompt ensemble for images), filled into each of them: "horse" -> "a photo of a horse.", ..."""
    parts = [part.strip() for part in query.split("|") if part.strip()]
    return list(dict.fromkeys([template.format(part) for part in parts for template in templates] + parts))
