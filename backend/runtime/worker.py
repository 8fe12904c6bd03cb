"""Training worker: `python -m backend.runtime.worker` (or `clip-backend-worker`, scripts/worker.sh) runs
training jobs from Redis (redis_jobs.py).

Configure it like the web app (same MODEL_DIR on a shared volume, same CHROMA_* and encoder settings) plus
REDIS_URL. Jobs run in this process (rq's SimpleWorker, no fork per job), so encoder weights load once.
"""
from __future__ import annotations

import logging
import signal
import sys
import threading

import redis
from rq import Queue, SimpleWorker

from ..config import Settings, SettingsError
from .build import worker_runtime


def maintenance_interval(settings: Settings) -> int:
    """Seconds between RQ's maintenance tasks: restarting a dead scheduler, cleaning registries."""
    return int(max(1, min(60, 3 * settings.training_watchdog_s)))


def main() -> int:
    try:
        settings = Settings.from_env()
    except SettingsError as exc:
        print(f"configuration error: {exc}", file=sys.stderr)
        return 2
    if not settings.redis_url:
        print("configuration error: REDIS_URL is not set; the worker takes training jobs from Redis "
              "(e.g. REDIS_URL=redis://localhost:6379/0, the same as the web app's)", file=sys.stderr)
        return 2
    logging.basicConfig(level=settings.log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    connection = worker_runtime(settings).scheduler.redis
    try:
        connection.ping()
    except redis.RedisError as exc:
        print(f"cannot reach Redis at REDIS_URL: {exc}", file=sys.stderr)
        return 1
    log = logging.getLogger(__name__)
    if not settings.chroma_host:
        log.warning("no CHROMA_HOST: this worker opens the embedded store under %s; only safe when no other "
                    "process writes it at the same time (set CHROMA_HOST to share a Chroma server)",
                    settings.resolved_chroma_path)
    stopping = threading.Event()
    while True:
        worker = _rq_worker(settings, connection)
        log.info("training worker %s on queue %r: %s", worker.name, settings.rq_queue, settings)
        try:
            # the scheduler runs retries that wait (RQ Retry intervals); one worker at a time holds it
            worker.work(with_scheduler=True, logging_level=settings.log_level)
        except redis.RedisError as exc:  # RQ's teardown met the same lost connection
            log.warning("training worker %s: %s", worker.name, exc)
        if worker._shutdown_requested_date is not None:  # SIGTERM / SIGINT, idle or after the job: RQ stopped
            return 0
        # RQ quits its loop on any error outside a job, a Redis restart included: wait for Redis and take
        # jobs again in this process (encoder weights stay loaded) rather than leave the queue without a worker
        log.warning("training worker %s stopped unexpectedly; starting again once Redis answers", worker.name)
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, lambda *_: stopping.set())
        while not stopping.wait(1.0) and not _answers(connection):
            pass
        if stopping.is_set():
            return 0


def _rq_worker(settings: Settings, connection) -> SimpleWorker:
    # RQ restarts a scheduler that died (a Redis restart kills it: retries and scheduled jobs then never
    # run) only in its maintenance tasks, every 10 minutes by default and only between two waits for a
    # job (worker_ttl - 15 s each): both a few watchdog periods here. An idle worker killed -9 also
    # leaves the worker list after worker_ttl.
    interval = maintenance_interval(settings)
    return SimpleWorker([Queue(settings.rq_queue, connection=connection)], connection=connection,
                        maintenance_interval=interval, worker_ttl=interval + 15)


def _answers(connection) -> bool:
    try:
        return bool(connection.ping())
    except redis.RedisError:
        return False


if __name__ == "__main__":
    sys.exit(main())
