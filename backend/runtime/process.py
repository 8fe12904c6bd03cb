"""What one process runs on (built by build.py): the annotation log, the versions, the Label Studio
connections, the project models, the training scheduler and the background pre-annotation; and the few
steps that take several of them (a project connecting, imported tasks)."""
from __future__ import annotations

from dataclasses import dataclass

from ..config import Settings
from ..labelstudio.client import LabelStudioAPI
from ..labelstudio.labelconfig import parse_label_config
from ..model import ClipClassifier
from ..state.annotations import AnnotationLog
from ..state.versions import VersionStore
from .connections import Connection, Connections
from .models import ModelFactory, ProjectModels
from .preannotation import PreAnnotator
from .training import Scheduler


@dataclass
class Runtime:
    settings: Settings
    log: AnnotationLog
    versions: VersionStore
    connections: Connections
    factory: ModelFactory
    models: ProjectModels
    scheduler: Scheduler
    preannotator: PreAnnotator | None  # None in an RQ training worker

    def model(self, project: str, label_config: str | None = None) -> ClipClassifier:
        """The shared model of the project's labeling config (the request's, else the last known one)."""
        return self.models.get(project, label_config)

    def connection(self, project: str) -> Connection:
        return self.connections.connection(str(project))

    def api(self, project: str) -> LabelStudioAPI | None:
        return self.connections.api(project)

    def setup(self, project: str, label_config: str, url: str | None, token: str | None) -> str:
        """A project connects (/setup): remember it, load weights in the background (Label Studio waits
        only a few seconds), and rank the queue from zero-shot before the first annotation (cold start).
        Returns the model version."""
        self.remember(project, label_config, url, token)
        model = self.model(project, label_config)
        self.models.warm_up(model)  # a small pool per process, not a thread per /setup
        if self.connection(project).complete and not model.trained \
                and model.state.ranked_version() != model.model_version:
            self.log.request_training(project, label_config)
            self.scheduler.notify(project)
        return model.model_version

    def remember(self, project: str, label_config: str | None, url: str | None, token: str | None) -> None:
        """What /setup sent. Raises BindingConflict when the project already reached another Label Studio
        (connections.py), ConfigError for a config we cannot serve; a servable config is kept in the
        annotation log (served after a restart without another /setup)."""
        if label_config:
            parse_label_config(label_config, self.settings.max_choices)  # one we cannot serve changes nothing
        before = self.connection(project)
        self.connections.learn(project, url, token)
        connection = self.connection(project)
        if connection != before:  # models built earlier download with the new URL and token from now on
            for model in self.models.built(project):
                model.fetcher = self.factory.fetcher(connection)
        if label_config:
            self.model(project, label_config)  # built now: setup() warms it up next
            if label_config != self.log.generations(project)[2]:
                self.log.set_label_config(project, label_config)

    def preannotate_imports(self, project: str, label_config: str | None, tasks: list) -> int:
        """Newly imported tasks (TASKS_CREATED): embed, predict and import them in the background (unless
        PREANNOTATE_IMPORTS=false); returns how many were queued."""
        if not self.settings.preannotate_imports or self.preannotator is None:
            return 0
        return self.preannotator.submit(project, label_config, tasks)

    def stats(self) -> dict:
        return self.models.stats()

    def serving(self) -> dict[str, str]:
        return self.models.serving()
