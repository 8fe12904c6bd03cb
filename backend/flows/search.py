"""Text query -> the most similar unlabeled embedded tasks (cross-modal for images: CLIP's text tower).

Only items already in the store are searched: nothing is embedded here.
"""
from __future__ import annotations

import numpy as np

from ..embed.prompts import query_prompts
from ..model import ChoicesControl, ClipClassifier

HINT = ("only embedded tasks are searchable: in Label Studio select tasks → Actions → Retrieve "
        "predictions, or run clip-backend-embed for the project")


class SearchError(ValueError):
    """A search request the model cannot serve (e.g. an unknown object tag); the message says why."""


def search_target(model: ClipClassifier, to_name: str | None = None) -> ChoicesControl:
    """The control whose items a search looks at: the one on object tag ``to_name``, else the primary."""
    if to_name is None:
        return model.primary
    for control in model.controls:
        if control.to_name == to_name:
            return control
    known = sorted({c.to_name for c in model.controls})
    raise SearchError(f"to_name {to_name!r} is not an object tag with <Choices> in the labeling config; "
                      f"known: {known}")


def query_embedding(model: ClipClassifier, query: str, control: ChoicesControl) -> np.ndarray:
    """The query as a unit vector in the target's embedding space. Images: CLIP's text tower, the
    query filled into CLIP's prompt templates ("a photo of a horse.", ...) plus the query itself,
    averaged; text: the project's text encoder embeds the query like an item. "a | b" averages both."""
    model.load()
    encoder = control.encoder
    prompts = query_prompts(query, encoder.templates if control.target.modality == "image" else ())
    if not prompts:
        raise SearchError("the query is empty")
    mean = np.asarray(encoder.encode_prompts(prompts), dtype=np.float32).mean(axis=0)
    return mean / max(float(np.linalg.norm(mean)), 1e-12)


def search(model: ClipClassifier, query: str, k: int = 20, exclude_task_ids=(), to_name: str | None = None) -> dict:
    """The k embedded tasks most similar to ``query``, best first, leaving out ``exclude_task_ids``.

    Returns {"query", "model_version", "encoder", "to_name", "embedded", "results": [{"task", "score"
    (cosine similarity), "field"}]} and a "hint" when nothing could be found."""
    control = search_target(model, to_name)
    response = {"query": query, "model_version": model.model_version, "encoder": control.encoder_id,
                "to_name": control.to_name, "embedded": 0, "results": []}
    if control.store is None:
        response["hint"] = "the embedding store is unavailable (see the server log); nothing can be searched"
        return response
    total = control.store.count()  # records of every field stored with this encoder
    response["embedded"] = total
    if total == 0:
        response["hint"] = f"no task of project {model.project_id} is embedded yet; {HINT}"
        return response
    vector = query_embedding(model, query, control)
    exclude = {int(t) for t in exclude_task_ids}
    hits = control.store.nearest(vector, k, exclude, total=total)
    response["results"] = [{"task": task, "score": score, "field": control.to_name} for task, score in hits]
    if not hits:
        response["hint"] = f"every embedded task is labeled or none has a {control.to_name!r} item; {HINT}"
    model.stats.update(searches=1)
    return response
