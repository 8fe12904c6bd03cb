"""Everything that knows Label Studio: its labeling configs (labelconfig), its wire formats
(protocol: ids, annotation results, predictions, webhooks) and its API (client).

Pure functions and explicit parameters; nothing here reads Settings or knows the other packages.
"""
from .client import AuthError, LabelStudioAPI, LabelStudioAuth, latest_live_annotation
from .labelconfig import ChoiceLabel, ConfigError, ParsedConfig, Target, parse_label_config
from .protocol import (TRAIN_EVENTS, UNCERTAINTY_SAMPLING, UNLABELED_FILTER, AnnotationFields, IgnoredEvent,
                       ProtocolError, WebhookEvent, annotation_fields, choice_region, choices_from_result,
                       parse_webhook, prediction, project_id, task_id)

__all__ = [
    "AnnotationFields", "AuthError", "ChoiceLabel", "ConfigError", "IgnoredEvent", "LabelStudioAPI",
    "LabelStudioAuth", "ParsedConfig", "ProtocolError", "TRAIN_EVENTS", "Target", "UNCERTAINTY_SAMPLING",
    "UNLABELED_FILTER", "WebhookEvent", "annotation_fields", "choice_region", "choices_from_result",
    "latest_live_annotation", "parse_label_config", "parse_webhook", "prediction", "project_id", "task_id",
]
