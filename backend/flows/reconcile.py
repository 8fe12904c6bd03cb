"""Training run, stage 1: Label Studio's annotations become the log's truth (reconcile), and before the
first trained version the cold-start sample is embedded.

A run's Label Studio traffic does not grow with the project: annotations arrive by webhook (already in
the log), and a run only lists the tasks Label Studio changed since the last one (of those created since,
only the annotated: an import has nothing to reconcile). Every annotated task
is listed when asked (START_TRAINING), on a project's first run, and at most every FULL_RECONCILE_S
after the batch is published; the tasks without annotations are never listed on a run's path: before
the first batch a few random pages give the cold-start sample if the store lacks one, and the sweep
that finds every task not embedded yet runs in the background (flows/preannotate.py).
"""
from __future__ import annotations

import time

import numpy as np

from ..labelstudio.client import LabelStudioAPI
from ..model import ClipClassifier
from ..state.annotations import AnnotationLog
from .record import annotation_record

RECONCILE_SLACK_S = 5.0  # an incremental reconcile re-reads this much before the last one (clock skew)
COLD_START_PAGE = 100  # tasks per page of the cold-start sample: many small random pages, nearly uniform


def full_reconcile_due(log: AnnotationLog, api: LabelStudioAPI | None, project: str,
                       every_s: float | None = None) -> bool:
    """At the start of a run (``every_s`` None): asked for (START_TRAINING) or never done. After it: the
    last full one is older than ``every_s`` (FULL_RECONCILE_S)."""
    if api is None:
        return False
    _, full_at, wanted = log.reconcile_state(project)
    if every_s is None:
        return wanted or full_at is None
    return time.time() - full_at > every_s


def reconcile(log: AnnotationLog, api: LabelStudioAPI | None, project: str, label_config: str | None, full: bool,
              bound_url: str | None = None, seen: dict | None = None) -> bool:
    """Make Label Studio's annotations the log's truth: of every annotated task (full: one listing as long
    as the project's annotated tasks), or of the tasks Label Studio changed since the last reconcile.
    Returns whether it was full. ``bound_url``: a /setup URL to record as working once this succeeds.
    Raises ReconcileRefused, changing nothing, when Label Studio lists none of the recorded labels
    (replace_all): likely the wrong Label Studio, not a wipe."""
    if api is None:
        return False
    started = time.time()
    reconciled_at, _, _ = log.reconcile_state(project)
    full = full or reconciled_at is None
    if full:
        labeled_pairs = api.annotated_tasks(int(project))
        log.replace_all(project, [annotation_record(a, t) for a, t in labeled_pairs], label_config)
        listed = len(labeled_pairs)
    else:
        since = reconciled_at - RECONCILE_SLACK_S
        labeled_pairs, changed, first_new = api.changed_tasks(int(project), since)
        # a task created since the last look that has no live annotation left (deleted, or made a skip) is in
        # neither listing: re-read the log's labeled tasks created since then that were not listed (usually none)
        unlisted = [] if first_new is None else sorted(log.live_task_ids_from(project, first_new) - set(changed))
        if unlisted:
            labeled_pairs = labeled_pairs + api.labeled_among(int(project), unlisted)
            changed = list(changed) + unlisted  # a task Label Studio no longer lists has no annotations
        log.apply_changes(project, changed, [annotation_record(a, t) for a, t in labeled_pairs])
        listed = len(changed)
    if seen is not None:
        seen.update(full=full, tasks=listed)
    log.mark_reconciled(project, started, full=full)
    if bound_url:
        log.mark_reached(project, bound_url)
    return full


def cold_start_pool(api: LabelStudioAPI | None, model: ClipClassifier, labeled: set[int]) -> int:
    """Before the first trained version the first batch is ranked from the store: unless it holds
    COLD_START_SAMPLE unlabeled records already, embed up to that many unannotated tasks from random pages
    of Label Studio's listing (a few requests, whatever the project's size). Returns how many were embedded."""
    store, wanted = model.primary.store, model.queue.cold_start_sample
    if store is None or api is None:  # Chroma unavailable: tasks are embedded when Label Studio asks
        return 0
    if store.count() - len(labeled) >= wanted:
        return 0
    project = int(model.project_id)
    first, total = api.unannotated_page(project, 1, COLD_START_PAGE)
    pages = -(-total // COLD_START_PAGE)
    rng = np.random.default_rng(project if model.project_id.isdigit() else 0)
    picked: dict[int, dict] = {}
    for page in rng.permutation(pages)[:4 * -(-wanted // COLD_START_PAGE)] + 1:
        tasks = first if page == 1 else api.unannotated_page(project, int(page), COLD_START_PAGE)[0]
        picked.update((t["id"], t) for t in store.missing(tasks))
        if len(picked) >= wanted:
            break
    now = list(picked.values())[:wanted]
    if now:
        model.embed_tasks(now)
    return len(now)
