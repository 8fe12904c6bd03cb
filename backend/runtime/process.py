"""What one process runs on: its services, its training scheduler and its background pre-annotation."""
from __future__ import annotations

from dataclasses import dataclass

from ..config import Settings
from .preannotation import PreAnnotator
from .redis_jobs import RedisScheduler
from .services import Services
from .training import Scheduler, ThreadScheduler, TrainingLoop


def make_scheduler(services: Services) -> Scheduler:
    """RQ jobs on Redis when REDIS_URL is set, else threads in this process."""
    loop = TrainingLoop(services)
    return RedisScheduler(loop) if services.settings.redis_url else ThreadScheduler(loop)


@dataclass
class Runtime:
    services: Services
    scheduler: Scheduler
    preannotator: PreAnnotator

    @classmethod
    def build(cls, settings: Settings) -> "Runtime":
        services = Services(settings)
        scheduler, preannotator = make_scheduler(services), PreAnnotator(services)
        scheduler.loop.sweep_later = preannotator.sweep  # tasks not embedded yet, listed in the background
        return cls(services, scheduler, preannotator)
