"""The model Label Studio talks to, shaped like label-studio-ml's LabelStudioMLBase: setup() when a
project connects, predict(tasks, context) returns one prediction per task, fit(event, data) learns
from annotations. Each method is a short hand-off to a flow (backend.flows); heavy state (encoders,
heads, the embedding store) lives in the process's Runtime and is shared by every request.
"""
from __future__ import annotations

import logging

from .flows.preannotate import predict_in_time
from .flows.project_model import ProjectModel
from .flows.record import record_event
from .flows.search import search
from .labelstudio.protocol import parse_webhook
from .runtime.process import Runtime
from .state.rankings import ranked_version

logger = logging.getLogger(__name__)


class ClipClassifier:
    def __init__(self, project_id: str, label_config: str | None, runtime: Runtime):
        self.project_id = project_id
        self.label_config = label_config
        self.runtime = runtime
        self.services = runtime.services

    @property
    def model(self) -> ProjectModel:
        """The project's shared model (raises when no labeling config is known for the project)."""
        return self.services.model(self.project_id, self.label_config)

    @property
    def model_version(self) -> str:
        return self.model.model_version

    def setup(self, hostname: str | None = None, access_token: str | None = None) -> str:
        """A project connects: remember it, load weights in the background (Label Studio waits only a
        few seconds), and rank the queue from zero-shot before the first annotation (cold start)."""
        self.services.remember(self.project_id, self.label_config, hostname, access_token)
        model = self.model
        self.services.warm_up(model)  # a small pool per process, not a thread per /setup
        if self.services.connection(self.project_id).complete and not model.trained \
                and ranked_version(self.services.settings.model_dir, self.project_id) != model.model_version:
            self.services.log.request_training(self.project_id, self.label_config)
            self.runtime.scheduler.notify(self.project_id)
        return model.model_version

    def predict(self, tasks: list, context: dict | None = None, **kwargs) -> list:
        """One entry per task: a prediction whose score is the task's queue priority, or [] for a task
        that has no item or is not ready within PREDICT_TIMEOUT (then imported in the background)."""
        results, late = predict_in_time(self.model, tasks, self.services.queue,
                                        self.services.settings.predict_timeout_s)
        if late:
            self.runtime.preannotator.submit(self.project_id, self.label_config, late)
        return results

    def preannotate(self, tasks: list) -> int:
        """Newly imported tasks: embed, predict and import them in the background (unless
        PREANNOTATE_IMPORTS=false); returns how many were queued."""
        if not self.services.settings.preannotate_imports:
            return 0
        return self.runtime.preannotator.submit(self.project_id, self.label_config, tasks)

    def fit(self, event: str, data: dict, **kwargs) -> dict:
        """A webhook event (ANNOTATION_CREATED, ...) and its payload: record it durably, retrain in the
        background, return at once."""
        result = record_event(self.services.log, parse_webhook({**data, "action": event}))
        self.runtime.scheduler.notify(self.project_id)
        return result

    def search(self, query: str, k: int = 20, to_name: str | None = None) -> dict:
        """The k unlabeled embedded tasks most similar to a text query."""
        labeled = {t.task_id for t in self.services.log.labeled_tasks(self.project_id)}
        return search(self.model, query, k, exclude_task_ids=labeled, to_name=to_name)
