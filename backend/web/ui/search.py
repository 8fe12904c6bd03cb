"""Search for the page: a text query (the text tower of the project's encoder) or "more like this"
from a task, over the project's embedded unlabeled items, best first, a page at a time.

One HNSW query without a metadata filter (EmbeddingStore.nearest: labeled tasks and other fields are
dropped from an over-fetched answer, no embeddings read), because a Chroma metadata filter reads every
record's metadata (0.6-0.8 s a query at 100,000 records). Pages are prefixes of one ranking: page n asks for the top
(n + 1) * size and shows the tail, so nothing is kept between requests.
"""
from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np

from ...flows.search import SearchError, query_embedding
from ...model import ChoicesControl, ClipClassifier

MAX_RESULTS = 5000  # the deepest a query pages ("load more"), and the most tasks one selection holds
MAX_QUERY_CHARS = 2000


@dataclass
class Ranked:
    hits: list[tuple[int, float]]  # (task id, cosine similarity), best first
    more: bool  # a next page may exist
    embedded: int  # records in the collection
    took_ms: float


def like_vector(control: ChoicesControl, task: int) -> np.ndarray:
    """The stored embedding of a task's item ("more like this")."""
    found = control.store.embeddings([int(task)])
    if int(task) not in found:
        raise SearchError(f"task {task} is not embedded: only embedded tasks have neighbours")
    vector = np.asarray(found[int(task)], np.float32)
    return vector / max(float(np.linalg.norm(vector)), 1e-12)


def ranked(model: ClipClassifier, control: ChoicesControl, *, query: str | None, like: int | None,
           labeled: set[int], offset: int, limit: int) -> Ranked:
    """Hits offset..offset+limit of the ranking for a text query or a task's neighbours (the task
    itself left out), unlabeled tasks only."""
    started = time.perf_counter()
    if control.store is None:
        raise SearchError("the embedding store is unavailable (see the server log); nothing can be searched")
    embedded = control.store.count()
    if embedded == 0:
        return Ranked([], False, 0, 0.0)
    if like is not None:
        vector, skip = like_vector(control, like), {int(like)}
    else:
        vector, skip = query_embedding(model, query or "", control), set()
    wanted = min(offset + limit, MAX_RESULTS)
    hits = control.store.nearest(vector, wanted, set(labeled) | skip, total=embedded)
    more = len(hits) >= wanted and wanted < MAX_RESULTS
    return Ranked(hits[offset:wanted], more, embedded, (time.perf_counter() - started) * 1000)


def snippet(value, width: int = 280) -> str:
    """A task's text for the grid (escaped where it is shown, never here)."""
    text = " ".join(str(value if value is not None else "").split())
    return text if len(text) <= width else text[:width - 1] + "…"
