"""Re-rank the labeling queue: after every training run (and at cold start, from zero-shot), every
unlabeled task gets a prediction whose score is its queue priority (lower = label first), and Label
Studio is told to serve tasks in that order.

Priorities come from a query strategy (strategies.py): before any trained head, ColdStart
(typical items of each cluster, nudged toward a small zero-shot margin); after, QUEUE_STRATEGY
(default boundary retrieval). The strategy's batch of QUEUE_BATCH items takes priorities in
[0, 0.5) in query order, every other task 0.5 + 0.5 * (its pointwise priority), so the queue starts
with a diverse boundary batch and continues by uncertainty.

The priorities of the last ranking are saved under MODEL_DIR/rankings/, so /predict for a ranked
task returns the same score Label Studio already sorts by.
"""
from __future__ import annotations

import json
import logging
import os
import threading
import time
from pathlib import Path

import numpy as np

from .strategies import ColdStart, get_strategy

logger = logging.getLogger(__name__)

UNCERTAINTY_SAMPLING = "Uncertainty sampling"
UNLABELED_FILTER = {"conjunction": "and", "items": [
    {"filter": "filter:tasks:total_annotations", "operator": "equal", "type": "Number", "value": 0}]}


# -- priorities -----------------------------------------------------------------------------------
def queue_priorities(model, tasks: list[dict], inferred: dict, labeled: dict | None = None,
                     strategy: str = "boundary", batch: int = 50, seed: int = 0) -> dict[int, float]:
    """{task id: priority in [0, 1]} for the tasks (model.infer(tasks) gives ``inferred``); lower =
    label first. ``labeled`` maps from_name -> (embeddings, class index) of the annotated items, as
    the training run embedded them: the strategies use them as class anchors and avoid their
    near-duplicates."""
    priorities: dict[int, float] = {}
    for inference in inferred.values():
        target = inference.target
        trained = model.is_trained(target)
        chooser = get_strategy(strategy) if trained else ColdStart()
        if target.multiple or len(inference.indices) < 2:
            # strategies expect single-choice rows: rank by the head's own certainty
            per_item = np.clip([inference.head.score(row) for row in inference.proba], 0.0, 1.0)
        else:
            labeled_E, labeled_y = (labeled or {}).get(target.from_name, (None, None))
            per_item = chooser.priority(
                inference.proba, inference.embeddings, k=min(batch, len(inference.indices)),
                head=inference.head if trained else None, labeled_embeddings=labeled_E, labeled_y=labeled_y,
                prototypes=model.zero_shot_head(target).prototypes, rng=seed)
        for task_index, p in zip(inference.indices, per_item):
            task_id = tasks[task_index].get("id")
            if isinstance(task_id, int):
                priorities[task_id] = min(priorities.get(task_id, 1.0), round(float(p), 6))
    return priorities


def strategy_name(model, strategy: str) -> str:
    return strategy if model.trained else ColdStart.name


# -- saved rankings -------------------------------------------------------------------------------
def _ranking_path(model_dir: Path, project: str) -> Path:
    return Path(model_dir) / "rankings" / f"{project}.json"


def save_ranking(model_dir: Path, project: str, model_version: str, strategy: str,
                 priorities: dict[int, float]) -> Path:
    path = _ranking_path(model_dir, project)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(f".tmp{os.getpid()}")
    tmp.write_text(json.dumps({"model_version": model_version, "strategy": strategy, "created_at": time.time(),
                               "priorities": {str(k): v for k, v in priorities.items()}}))
    os.replace(tmp, path)  # readers in other workers see the old or the new ranking, never half
    return path


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


# -- publishing to Label Studio -------------------------------------------------------------------
def publish_ranking(api, project: str, model, unlabeled: list[dict], labeled: dict, settings) -> dict:
    """Rank the unlabeled tasks, push them as predictions of the serving version, make Label
    Studio order the queue by them. Returns a summary."""
    started = time.perf_counter()
    version = model.model_version
    inferred = model.infer(unlabeled)
    priorities = queue_priorities(model, unlabeled, inferred, labeled, settings.queue_strategy, settings.queue_batch)
    predictions = model.to_predictions(unlabeled, inferred, priorities)
    # tasks that got a prediction of this version meanwhile ("Retrieve predictions" while we ranked)
    # keep it: Label Studio would show two
    already = api.tasks_predicted_by(int(project), version) if unlabeled else set()
    rows = [{"task": task["id"], **p} for task, p in zip(unlabeled, predictions) if p and task["id"] not in already]
    pushed = {row["task"] for row in rows}
    strategy = strategy_name(model, settings.queue_strategy)
    save_ranking(settings.model_dir, project, version, strategy,
                 {t: p for t, p in priorities.items() if t in pushed})
    changes = {}  # the project is set up first, so a project showing our version is fully set up
    if settings.queue_view:
        changes["view"] = api.ensure_view(int(project), settings.queue_view, ["tasks:predictions_score"],
                                          UNLABELED_FILTER)
    if settings.uncertainty_sampling:
        changes["sampling"] = _switch_sampling_once(api, project, settings.model_dir)
    api.push_predictions(int(project), rows)
    # uncertainty sampling and the score column only look at predictions of the project's model_version
    api.set_model_version(int(project), version)
    summary = {"model_version": version, "strategy": strategy, "ranked": len(rows), "skipped": len(already),
               "seconds": round(time.perf_counter() - started, 3), **changes}
    logger.info("project %s: queue re-ranked: %s", project, summary)
    return summary


def _switch_sampling_once(api, project: str, model_dir: Path) -> str:
    """Opt-in (UNCERTAINTY_SAMPLING=true): switch the project to uncertainty sampling once. If a
    user later picks another sampling in Label Studio, that choice stands."""
    marker = Path(model_dir) / "rankings" / f"{project}.sampling"
    current = api.sampling(int(project))
    if marker.exists():
        return current or "unknown"
    if current != UNCERTAINTY_SAMPLING:
        api.set_sampling(int(project), UNCERTAINTY_SAMPLING)
        logger.info("project %s: sampling %r -> %r (UNCERTAINTY_SAMPLING=true)", project, current,
                    UNCERTAINTY_SAMPLING)
    marker.parent.mkdir(parents=True, exist_ok=True)
    marker.write_text(json.dumps({"previous": current, "at": time.time()}))
    return UNCERTAINTY_SAMPLING
