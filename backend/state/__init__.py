"""Durable things in MODEL_DIR: the annotation log (annotations), model versions (versions), the last
queue ranking (rankings), written atomically (atomic).

Components take explicit paths; nothing here reads Settings or knows Label Studio's formats.
"""
from .annotations import AnnotationLog, AnnotationRecord, Binding, LabeledTask, ReconcileRefused
from .atomic import atomic_write_bytes, atomic_write_text
from .rankings import (load_ranking, ranked_version, sampling_marker_exists, save_ranking, saved_priorities,
                       write_sampling_marker)
from .versions import ModelVersion, VersionStore, VersionUnpickler

__all__ = [
    "AnnotationLog", "AnnotationRecord", "Binding", "LabeledTask", "ModelVersion", "ReconcileRefused", "VersionStore",
    "VersionUnpickler",
    "atomic_write_bytes", "atomic_write_text", "load_ranking", "ranked_version", "sampling_marker_exists",
    "save_ranking", "saved_priorities", "write_sampling_marker",
]
