"""Annotation -> record: what a Label Studio webhook says is written to the annotation log before it
is acknowledged, so nothing is lost between the event and the training run that uses it."""
from __future__ import annotations

import logging

from ..labelstudio.protocol import WebhookEvent, annotation_fields
from ..state.annotations import AnnotationLog, AnnotationRecord

logger = logging.getLogger(__name__)


def annotation_record(annotation: dict, task: dict) -> AnnotationRecord:
    return AnnotationRecord(*annotation_fields(annotation, task))


def record_event(log: AnnotationLog, event: WebhookEvent) -> dict:
    """Record an event durably. A payload we cannot read still requests a run: with Label Studio
    reachable, the run reconciles with its API, so the annotation is not lost."""
    project, label_config = event.project, event.label_config
    try:
        if event.action in ("ANNOTATION_CREATED", "ANNOTATION_UPDATED"):
            if not isinstance(event.annotation, dict) or "id" not in event.annotation:
                raise ValueError("payload has no annotation with an id")
            task = event.task if isinstance(event.task, dict) else {"id": event.annotation.get("task")}
            log.record(project, annotation_record(event.annotation, task), label_config)
            return {"status": "accepted", "recorded": 1}
        if event.action == "ANNOTATIONS_DELETED":
            ids = event.deleted_ids  # entries without a usable id are skipped; the others are recorded
            result = {"status": "accepted", "recorded": log.delete(project, ids, label_config)}
            if len(ids) < len(event.annotations or []):
                result["warning"] = f"{len(event.annotations) - len(ids)} entries without a Label Studio id skipped"
            return result
        log.want_full_reconcile(project, label_config)  # START_TRAINING: the user asks for a full sync
        return {"status": "accepted", "recorded": 0}
    except (ValueError, TypeError, KeyError, OverflowError) as exc:
        logger.warning("project %s: unreadable %s payload (%s); reconciling on the next run", project,
                       event.action, exc)
        log.request_training(project, label_config)
        return {"status": "accepted", "recorded": 0, "warning": str(exc)}
