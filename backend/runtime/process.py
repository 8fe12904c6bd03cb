"""What one process runs on: its services and its training scheduler."""
from __future__ import annotations

from dataclasses import dataclass

from ..config import Settings
from .services import Services
from .training import Scheduler, make_scheduler


@dataclass
class Runtime:
    services: Services
    scheduler: Scheduler

    @classmethod
    def build(cls, settings: Settings) -> "Runtime":
        services = Services(settings)
        return cls(services, make_scheduler(services))
