"""Durable things in MODEL_DIR: the annotation log (annotations), model versions (versions), each
project's queue state (project_state), written atomically (atomic).

Components take explicit paths; nothing here reads Settings or knows Label Studio's formats.
"""
from .annotations import AnnotationLog, AnnotationRecord, Binding, LabeledTask, ReconcileRefused
from .atomic import atomic_write_bytes, atomic_write_text
from .project_state import ProjectState, Ranking, ReviewFlags
from .versions import ModelVersion, VersionStore, VersionUnpickler

__all__ = [
    "AnnotationLog", "AnnotationRecord", "Binding", "LabeledTask", "ModelVersion", "ProjectState", "Ranking",
    "ReconcileRefused", "ReviewFlags", "VersionStore", "VersionUnpickler", "atomic_write_bytes", "atomic_write_text",
]
