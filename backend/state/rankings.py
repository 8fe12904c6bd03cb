"""The state of each project's labeling queue, under MODEL_DIR/rankings/: the last ranked batch (the
priority of every task in it and the model_version it was pushed under, so the next run can replace it
and /predict returns the same score Label Studio sorts by), the audit sample drawn so far, the tasks
flagged labeled in the embedding store, and the marker that the project's sampling was switched once
(a user's later choice then stands)."""
from __future__ import annotations

import json
import logging
import threading
import time
from pathlib import Path

from .atomic import atomic_write_text

logger = logging.getLogger(__name__)


def _rankings_dir(model_dir: Path) -> Path:
    return Path(model_dir) / "rankings"


def _ranking_path(model_dir: Path, project: str) -> Path:
    return _rankings_dir(model_dir) / f"{project}.json"


def save_ranking(model_dir: Path, project: str, model_version: str, strategy: str,
                 priorities: dict[int, float], pushed_as: str | None = None, audit: list[int] = ()) -> Path:
    """pushed_as: the model_version the batch's predictions carry in Label Studio (the queue's)."""
    # atomic: readers in other workers see the old or the new ranking, never half
    return atomic_write_text(_ranking_path(model_dir, project), json.dumps({
        "model_version": model_version, "strategy": strategy, "created_at": time.time(),
        "pushed_as": pushed_as or model_version, "audit": [int(t) for t in audit],
        "priorities": {str(k): v for k, v in priorities.items()}}))


# every /predict reads the ranking: parse the file again only when it changed
_cache: dict[Path, tuple[float, dict]] = {}
_cache_lock = threading.Lock()


def load_ranking(model_dir: Path, project: str) -> dict | None:
    path = _ranking_path(model_dir, project)
    try:
        mtime = path.stat().st_mtime
    except OSError:
        return None
    with _cache_lock:
        cached = _cache.get(path)
        if cached and cached[0] == mtime:
            return cached[1]
    try:
        ranking = json.loads(path.read_text())
        ranking["priorities"] = {int(k): float(v) for k, v in ranking.get("priorities", {}).items()}
    except (OSError, ValueError) as exc:
        logger.warning("unreadable ranking %s: %s", path, exc)
        return None
    with _cache_lock:
        _cache[path] = (mtime, ranking)
    return ranking


def ranked_version(model_dir: Path, project: str) -> str | None:
    ranking = load_ranking(model_dir, project)
    return ranking.get("model_version") if ranking else None


def saved_priorities(model_dir: Path, project: str, model_version: str) -> dict[int, float]:
    """{task id: priority} of the last ranking, if it was made for this model version."""
    ranking = load_ranking(model_dir, project)
    if not ranking or ranking.get("model_version") != model_version:
        return {}
    return ranking["priorities"]


# -- sampling switched once (UNCERTAINTY_SAMPLING=true) ----------------------------------------------
def _sampling_marker(model_dir: Path, project: str) -> Path:
    return _rankings_dir(model_dir) / f"{project}.sampling"


def sampling_marker_exists(model_dir: Path, project: str) -> bool:
    return _sampling_marker(model_dir, project).exists()


def write_sampling_marker(model_dir: Path, project: str, previous: str | None) -> Path:
    """Remember that the project's sampling was switched (and from what)."""
    return atomic_write_text(_sampling_marker(model_dir, project),
                             json.dumps({"previous": previous, "at": time.time()}))


# -- task id sets: the audit sample, the tasks flagged labeled in the store --------------------------
def _ids_path(model_dir: Path, project: str, name: str) -> Path:
    return _rankings_dir(model_dir) / f"{project}.{name}.json"


def load_ids(model_dir: Path, project: str, name: str) -> set[int]:
    try:
        return {int(t) for t in json.loads(_ids_path(model_dir, project, name).read_text())}
    except FileNotFoundError:
        return set()
    except (OSError, ValueError, TypeError) as exc:
        logger.warning("unreadable %s set of project %s: %s", name, project, exc)
        return set()


def save_ids(model_dir: Path, project: str, name: str, ids) -> Path:
    return atomic_write_text(_ids_path(model_dir, project, name), json.dumps(sorted(int(t) for t in ids)))


def load_state(model_dir: Path, project: str, name: str) -> dict:
    """A small JSON document of the project's queue state ({} when there is none yet)."""
    try:
        value = json.loads(_ids_path(model_dir, project, name).read_text())
        return value if isinstance(value, dict) else {}
    except FileNotFoundError:
        return {}
    except (OSError, ValueError) as exc:
        logger.warning("unreadable %s state of project %s: %s", name, project, exc)
        return {}


def save_state(model_dir: Path, project: str, name: str, value: dict) -> Path:
    return atomic_write_text(_ids_path(model_dir, project, name), json.dumps(value))
