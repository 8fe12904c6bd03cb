"""Which Label Studio a project's API calls and downloads go to, and with which token.

The rule: the environment's key only ever goes to the environment's URL, and a URL from a request
(/setup's ``hostname``) only ever goes with that request's own token. So:

  LABEL_STUDIO_URL + LABEL_STUDIO_API_KEY   both from the environment; /setup's hostname and token are ignored
  LABEL_STUDIO_URL alone                    the environment's URL with the token /setup sent
  no LABEL_STUDIO_URL                       the URL and token /setup sent together (LABEL_STUDIO_API_KEY unused)

A /setup URL becomes the project's binding. Once a reconcile through it has succeeded (it reached
Label Studio: ``AnnotationLog.mark_reached``), a /setup naming another URL is refused with
BindingConflict; the binding is kept in the annotation log (URL only: tokens stay in memory), so a
restart keeps it. To move a project to another Label Studio, set LABEL_STUDIO_URL.
"""
from __future__ import annotations

import logging
import threading
from dataclasses import dataclass, field

from ..config import Settings
from ..labelstudio.client import LabelStudioAPI
from ..state.annotations import AnnotationLog

logger = logging.getLogger(__name__)


class BindingConflict(Exception):
    """/setup named another Label Studio than the one the project already reached (HTTP 409)."""


@dataclass(frozen=True)
class Connection:
    url: str | None
    token: str | None = field(default=None, repr=False)
    source: str = "none"  # "environment", "environment+setup" (env URL, /setup's token), "setup", "none"

    @property
    def complete(self) -> bool:
        return bool(self.url and self.token)

    @property
    def from_setup(self) -> bool:
        """The URL came from a /setup request (not from LABEL_STUDIO_URL)."""
        return self.source == "setup"

    @classmethod
    def environment(cls, settings: Settings) -> Connection:
        """LABEL_STUDIO_URL with LABEL_STUDIO_API_KEY; the key alone is never used (no URL to pair it with)."""
        if not settings.label_studio_url:
            return cls(None, None, "none")
        return cls(settings.label_studio_url, settings.label_studio_api_key, "environment")


class Connections:
    """What /setup taught this process (URL and token, in memory), the bindings in the log, and the rule."""

    def __init__(self, settings: Settings, log: AnnotationLog):
        self.settings = settings
        self.log = log
        self._taught: dict[str, tuple[str | None, str | None]] = {}  # project -> (url, token) of its last /setup
        self._lock = threading.Lock()
        if settings.label_studio_api_key and not settings.label_studio_url:
            logger.warning("LABEL_STUDIO_API_KEY is set without LABEL_STUDIO_URL: the key is not used (it never "
                           "goes to a URL named by a request); set LABEL_STUDIO_URL to use it")

    def learn(self, project: str, url: str | None, token: str | None) -> None:
        """What a /setup sent. Raises BindingConflict when ``url`` is not the URL the project reached."""
        if url and not self.settings.label_studio_url:  # with LABEL_STUDIO_URL, /setup's hostname is ignored
            bound = self.log.binding(project)
            if bound.reached_at is not None and bound.url != url:
                raise BindingConflict(
                    f"project {project} is bound to a Label Studio this backend has reached; /setup named "
                    f"another one ({url}). Not rebinding: set LABEL_STUDIO_URL to move projects to another "
                    "Label Studio")
            if bound.url != url:
                logger.info("project %s: bound to the Label Studio at %s", project, url)
                self.log.bind(project, url)
        if url or token:
            with self._lock:
                self._taught[project] = (url, token)

    def taught(self, project: str) -> tuple[str | None, str | None]:
        """(url, token) of the project's last /setup in this process (what RQ jobs hand to workers)."""
        with self._lock:
            return self._taught.get(project, (None, None))

    def connection(self, project: str) -> Connection:
        env = Connection.environment(self.settings)
        url, token = self.taught(project)
        if env.complete:
            return env
        if env.url:
            return Connection(env.url, token, "environment+setup")
        if url is None:  # after a restart: the bound URL, without a token until the next /setup
            url, token = self.log.binding(project).url, None
        return Connection(url, token, "setup") if url else Connection(None, None, "none")

    def api(self, project: str) -> LabelStudioAPI | None:
        """The API client of the project's Label Studio; None without a URL and a token."""
        connection = self.connection(str(project))
        return LabelStudioAPI(connection.url, connection.token) if connection.complete else None
