"""Text query -> the most similar unlabeled embedded tasks (cross-modal for images: CLIP's text tower).

Only items already in the store are searched: nothing is embedded here.
"""
from __future__ import annotations

import numpy as np

from ..embed.prompts import query_prompts
from ..labelstudio.labelconfig import Target
from .project_model import ProjectModel

HINT = ("only embedded tasks are searchable: in Label Studio select tasks → Actions → Retrieve "
        "predictions, or run clip-backend-embed for the project")


class SearchError(ValueError):
    """A search request the model cannot serve (e.g. an unknown object tag); the message says why."""


def search_target(model: ProjectModel, to_name: str | None = None) -> Target:
    """The target whose items a search looks at: the one on object tag ``to_name``, else the first."""
    if to_name is None:
        return model.config.targets[0]
    for target in model.config.targets:
        if target.to_name == to_name:
            return target
    known = sorted({t.to_name for t in model.config.targets})
    raise SearchError(f"to_name {to_name!r} is not an object tag with <Choices> in the labeling config; "
                      f"known: {known}")


def query_embedding(model: ProjectModel, query: str, target: Target) -> np.ndarray:
    """The query as a unit vector in the target's embedding space. Images: CLIP's text tower, the
    query filled into CLIP's prompt templates ("a photo of a horse.", ...) plus the query itself,
    averaged; text: the project's text encoder embeds the query like an item. "a | b" averages both."""
    model.load()
    encoder = model.encoders[target.to_name]
    prompts = query_prompts(query, encoder.templates if target.modality == "image" else ())
    if not prompts:
        raise SearchError("the query is empty")
    mean = np.asarray(encoder.encode_prompts(prompts), dtype=np.float32).mean(axis=0)
    return mean / max(float(np.linalg.norm(mean)), 1e-12)


def search(model: ProjectModel, query: str, k: int = 20, exclude_task_ids=(), to_name: str | None = None) -> dict:
    """The k embedded tasks most similar to ``query``, best first, leaving out ``exclude_task_ids``.

    Returns {"query", "model_version", "encoder", "to_name", "embedded", "results": [{"task", "score"
    (cosine similarity), "field"}]} and a "hint" when nothing could be found."""
    target = search_target(model, to_name)
    enc_id = model.encoder_ids[target.to_name]
    response = {"query": query, "model_version": model.model_version, "encoder": enc_id,
                "to_name": target.to_name, "embedded": 0, "results": []}
    if model.store is None:
        response["hint"] = "the embedding store is unavailable (see the server log); nothing can be searched"
        return response
    total = model.store.count(model.project_id, enc_id)  # records of every field stored with this encoder
    response["embedded"] = total
    if total == 0:
        response["hint"] = f"no task of project {model.project_id} is embedded yet; {HINT}"
        return response
    vector = query_embedding(model, query, target)
    exclude = {int(t) for t in exclude_task_ids}
    hits = model.store.nearest(model.project_id, enc_id, vector, k, target.to_name, exclude, total=total)
    response["results"] = [{"task": task, "score": score, "field": target.to_name} for task, score in hits]
    if not hits:
        response["hint"] = f"every embedded task is labeled or none has a {target.to_name!r} item; {HINT}"
    model.stats.update(searches=1)
    return response
