"""One project's queue state under MODEL_DIR/rankings/, typed: the last ranked batch (the priority of every
task in it and the model_version it was pushed under, so the next run can replace it and /predict returns
the score Label Studio sorts by), the audit sample drawn so far, the tasks flagged labeled in the embedding
store, the label-error review's flags, and the marker that the project's sampling was switched once (a
user's later choice then stands).

Files (each replaced atomically): <project>.json (the ranking), <project>.audit.json, .labeled.json (task
ids), .audit_origin.json, .review.json, .review_shown.json, <project>.sampling.
"""
from __future__ import annotations

import json
import logging
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from .atomic import atomic_write_text

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Ranking:
    """The last batch ranked and pushed to Label Studio."""
    model_version: str | None  # the serving version that ranked it
    strategy: str | None
    priorities: dict[int, float]  # task id -> queue priority (lower = served first)
    pushed_as: str | None = None  # the model_version its predictions carry in Label Studio (the queue's)
    audit: list[int] = field(default_factory=list)  # tasks of the batch in the audit sample
    created_at: float | None = None


@dataclass
class ReviewFlags:
    """What the label-error review tab flagged, and what people reviewed since."""
    flagged: dict[int, float] = field(default_factory=dict)  # task -> when it was flagged
    reviewed: dict[int, str] = field(default_factory=dict)  # task -> its labels (JSON) when re-annotated after


# every /predict reads the ranking: parse the file again only when it changed
_cache: dict[Path, tuple[float, Ranking]] = {}
_cache_lock = threading.Lock()


class ProjectState:
    def __init__(self, model_dir: Path, project: str):
        self.directory = Path(model_dir) / "rankings"
        self.project = str(project)

    def _path(self, name: str | None = None, suffix: str = ".json") -> Path:
        return self.directory / (f"{self.project}{'.' + name if name else ''}{suffix}")

    # -- the last ranked batch -------------------------------------------------------------------
    def save_ranking(self, model_version: str, strategy: str, priorities: dict[int, float],
                     pushed_as: str | None = None, audit: list[int] = ()) -> Path:
        """pushed_as: the model_version the batch's predictions carry in Label Studio (the queue's)."""
        # atomic: readers in other workers see the old or the new ranking, never half
        return atomic_write_text(self._path(), json.dumps({
            "model_version": model_version, "strategy": strategy, "created_at": time.time(),
            "pushed_as": pushed_as or model_version, "audit": [int(t) for t in audit],
            "priorities": {str(k): v for k, v in priorities.items()}}))

    def ranking(self) -> Ranking | None:
        path = self._path()
        try:
            mtime = path.stat().st_mtime
        except OSError:
            return None
        with _cache_lock:
            cached = _cache.get(path)
            if cached and cached[0] == mtime:
                return cached[1]
        try:
            raw = json.loads(path.read_text())
            ranking = Ranking(raw.get("model_version"), raw.get("strategy"),
                              {int(k): float(v) for k, v in raw.get("priorities", {}).items()},
                              raw.get("pushed_as"), [int(t) for t in raw.get("audit", [])], raw.get("created_at"))
        except (OSError, ValueError, TypeError, AttributeError) as exc:
            logger.warning("unreadable ranking %s: %s", path, exc)
            return None
        with _cache_lock:
            _cache[path] = (mtime, ranking)
        return ranking

    def ranked_version(self) -> str | None:
        ranking = self.ranking()
        return ranking.model_version if ranking else None

    def saved_priorities(self, model_version: str) -> dict[int, float]:
        """{task id: priority} of the last ranking, if it was made for this model version."""
        ranking = self.ranking()
        if ranking is None or ranking.model_version != model_version:
            return {}
        return ranking.priorities

    # -- task id sets: the audit sample drawn so far, the tasks flagged labeled in the store ---------
    def audit_draws(self) -> set[int]:
        return self._ids("audit")

    def save_audit_draws(self, task_ids) -> Path:
        return self._save_ids("audit", task_ids)

    def audit_origin(self) -> tuple[int, int] | None:
        """(labels, audit items labeled) when the audit started drawing or last resumed; None: not yet."""
        raw = self._document("audit_origin")
        try:
            return (int(raw["labels"]), int(raw["audit"])) if raw else None
        except (KeyError, ValueError, TypeError):
            return None

    def save_audit_origin(self, labels: int, audited: int) -> Path:
        return atomic_write_text(self._path("audit_origin"), json.dumps({"labels": int(labels), "audit": int(audited)}))

    def labeled_flags(self) -> set[int]:
        return self._ids("labeled")

    def save_labeled_flags(self, task_ids) -> Path:
        return self._save_ids("labeled", task_ids)

    def _ids(self, name: str) -> set[int]:
        try:
            return {int(t) for t in json.loads(self._path(name).read_text())}
        except FileNotFoundError:
            return set()
        except (OSError, ValueError, TypeError) as exc:
            logger.warning("unreadable %s set of project %s: %s", name, self.project, exc)
            return set()

    def _save_ids(self, name: str, task_ids) -> Path:
        return atomic_write_text(self._path(name), json.dumps(sorted(int(t) for t in task_ids)))

    # -- the label-error review ----------------------------------------------------------------------
    def review_flags(self) -> ReviewFlags:
        raw = self._document("review")
        try:
            return ReviewFlags({int(t): float(at) for t, at in raw.get("flagged", {}).items()},
                               {int(t): str(labels) for t, labels in raw.get("reviewed", {}).items()})
        except (ValueError, TypeError, AttributeError) as exc:
            logger.warning("unreadable review state of project %s: %s", self.project, exc)
            return ReviewFlags()

    def save_review_flags(self, flags: ReviewFlags) -> Path:
        return atomic_write_text(self._path("review"), json.dumps({
            "flagged": {str(t): at for t, at in flags.flagged.items()},
            "reviewed": {str(t): labels for t, labels in flags.reviewed.items()}}))

    def review_shown_at(self) -> float:
        """When the review tab was last updated in Label Studio (0: never)."""
        try:
            return float(self._document("review_shown").get("at", 0))
        except (ValueError, TypeError):
            return 0.0

    def mark_review_shown(self, at: float, shown: list | None = None) -> Path:
        """``shown``: what the tab shows now (flows/review.py compares it to skip rewriting the same)."""
        return atomic_write_text(self._path("review_shown"), json.dumps({"at": at, "shown": shown}))

    def review_shown(self) -> list | None:
        """What the review tab was last written with (None: unknown)."""
        shown = self._document("review_shown").get("shown")
        return shown if isinstance(shown, list) else None

    def _document(self, name: str) -> dict:
        """A small JSON document ({} when there is none yet)."""
        try:
            value = json.loads(self._path(name).read_text())
            return value if isinstance(value, dict) else {}
        except FileNotFoundError:
            return {}
        except (OSError, ValueError) as exc:
            logger.warning("unreadable %s state of project %s: %s", name, self.project, exc)
            return {}

    # -- sampling switched once (UNCERTAINTY_SAMPLING=true) ------------------------------------------
    def sampling_switched(self) -> bool:
        return self._path(suffix=".sampling").exists()

    def mark_sampling_switched(self, previous: str | None) -> Path:
        """Remember that the project's sampling was switched (and from what)."""
        return atomic_write_text(self._path(suffix=".sampling"), json.dumps({"previous": previous, "at": time.time()}))
