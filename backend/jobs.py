"""Training as RQ jobs on Redis (when REDIS_URL is set): web processes enqueue, `python -m backend.worker`
processes (any machine sharing MODEL_DIR) train.

The durable state stays the AnnotationLog in MODEL_DIR: a job trains until the project's generation is
trained, with the same loop as the in-process thread (Trainer._loop). Redis only coordinates:

  <queue>:pending:<project>   SET NX by enqueue, so a burst of events queues one job; deleted by the job that
                              takes the lock (a job that finds the lock held exits: the holder trains its events)
  <queue>:lock:<project>      one trainer per project; its value names the holder (host:pid:nonce); a short
                              TTL renewed by a heartbeat, so the lock of a worker killed mid-run expires soon
  <queue>:failed:<project>    the generation whose run failed: the watchdog leaves it to the next event
  <queue>:runs, :failures, :last_error, :last_ranking   hashes for /metrics (all workers together)

The web app's watchdog re-queues projects with untrained generations, a free lock and no pending job:
that is how a run lost with its worker (kill -9, a machine gone) is redone.
"""
from __future__ import annotations

import json
import logging
import os
import socket
import threading
import time
import uuid

import redis
from rq import Queue, Retry, Worker

from .settings import Settings

logger = logging.getLogger(__name__)

JOB_TIMEOUT_S = 3600
PENDING_TTL_S = 600  # a pending marker whose job got lost only delays the watchdog this long
RETRY = dict(max=2, interval=[10, 60])  # ordinary failures (Label Studio or Chroma briefly unreachable)


class TrainingFailed(RuntimeError):
    """The run failed; RQ retries the job (the last good version keeps serving)."""


class RedisJobs:
    def __init__(self, settings: Settings, connection_of=None):
        self.settings = settings
        self.redis = redis.Redis.from_url(settings.redis_url)
        self.queue = Queue(settings.rq_queue, connection=self.redis)
        self.connection_of = connection_of  # project -> (Label Studio url, token), e.g. ModelRegistry.connection
        self.ttl = settings.training_lock_ttl_s
        self._watchdog: threading.Thread | None = None

    def _key(self, kind: str, project: str = "") -> str:
        return f"{self.settings.rq_queue}:{kind}" + (f":{project}" if project else "")

    # -- web side ----------------------------------------------------------------------------
    def enqueue(self, project: str) -> bool:
        """Queue a training job unless one is already waiting to start; False if none was queued."""
        pending = self._key("pending", project)
        try:
            if not self.redis.set(pending, 1, nx=True, ex=PENDING_TTL_S):
                return False
            try:
                self.queue.enqueue("backend.jobs.train_project", project, *self._connection_args(project),
                                   job_timeout=JOB_TIMEOUT_S, retry=Retry(**RETRY),
                                   description=f"train project {project}")  # not the args: they may hold a token
            except BaseException:
                self.redis.delete(pending)
                raise
        except redis.RedisError as exc:  # the event is recorded; the watchdog queues it once Redis is back
            logger.warning("project %s: cannot queue training on Redis (%s); retrying from the watchdog", project, exc)
            return False
        return True

    def _connection_args(self, project: str) -> tuple:
        # Only what /setup told this process: workers read LABEL_STUDIO_URL/API_KEY from their own environment.
        url, token = self.connection_of(project) if self.connection_of else (None, None)
        return (None if url == self.settings.label_studio_url else url,
                None if token == self.settings.label_studio_api_key else token)

    def requeue_stalled(self, log) -> list[str]:
        """Queue projects with untrained changes that nobody is training or about to train."""
        queued = []
        for project in log.projects_needing_training():
            if self.redis.exists(self._key("lock", project), self._key("pending", project)):
                continue
            failed = self.redis.get(self._key("failed", project))
            if failed is not None and int(failed) >= log.generations(project)[0]:
                continue  # failed at this generation: retried by RQ, then on the next event
            if self.enqueue(project):
                queued.append(project)
        if queued:
            logger.info("watchdog: re-queued training for projects %s", queued)
        return queued

    def start_watchdog(self, log) -> None:
        if self._watchdog is not None:
            return

        def watch():
            while True:
                time.sleep(self.settings.training_watchdog_s)
                try:
                    self.requeue_stalled(log)
                except Exception as exc:  # Redis down: next tick
                    logger.warning("training watchdog: %s", exc)

        self._watchdog = threading.Thread(target=watch, name="training-watchdog", daemon=True)
        self._watchdog.start()

    def busy(self, project: str | None = None) -> bool:
        try:
            if project:
                return bool(self.redis.exists(self._key("lock", project), self._key("pending", project)))
            return bool(self.locks()) or len(self.queue) > 0
        except redis.RedisError:
            return False

    def locks(self) -> dict[str, str]:
        """project -> holder of its training lock."""
        prefix = self._key("lock", "")
        held = {}
        for key in self.redis.scan_iter(match=prefix + ":*"):
            holder = self.redis.get(key)
            if holder is not None:
                held[key.decode().rsplit(":", 1)[1]] = holder.decode()
        return held

    def status(self) -> dict:
        """The /metrics "training" section: true for the whole cluster, not just this process."""
        def decoded(name):
            return {k.decode(): v.decode() for k, v in self.redis.hgetall(self._key(name)).items()}

        try:
            locks = self.locks()
            return {"mode": "rq", "queue": self.queue.name, "queued": len(self.queue),
                    "workers": Worker.count(queue=self.queue), "locks": locks,
                    "runs": {k: int(v) for k, v in decoded("runs").items()},
                    "failures": {k: int(v) for k, v in decoded("failures").items()},
                    "last_error": decoded("last_error"), "busy": bool(locks) or len(self.queue) > 0,
                    "last_ranking": {k: json.loads(v) for k, v in decoded("last_ranking").items()}}
        except redis.RedisError as exc:
            return {"mode": "rq", "queue": self.queue.name, "error": f"Redis unreachable: {exc}"}

    # -- worker side -------------------------------------------------------------------------
    def run(self, project: str, trainer) -> str:
        """Body of a job: under the project's lock, train until every recorded generation is trained."""
        pending = self._key("pending", project)
        lock = self.redis.lock(self._key("lock", project), timeout=self.ttl, thread_local=False)
        holder = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        if not lock.acquire(blocking=False, token=holder):
            # The holder re-reads the generation before it stops and once more after it lets go (below), so
            # it trains our events; no worker waits idle. The marker stays (no job per event meanwhile) but
            # lapses soon in case the holder is dead: then the watchdog queues the project again.
            self.redis.expire(pending, int(self.ttl) + 1)
            return f"project {project}: another worker is training it"
        self.redis.delete(pending)  # events from now on queue a new job
        stop = threading.Event()
        beat = threading.Thread(target=self._heartbeat, args=(lock, stop), name=f"lock-{project}", daemon=True)
        beat.start()
        runs, failures = trainer.runs[project], trainer.failures[project]
        try:
            ok = trainer._loop(project)
        finally:
            stop.set()
            beat.join()
            try:
                lock.release()
            except redis.exceptions.LockError:
                pass  # expired (worker stalled past the TTL); nothing to release
        # Events recorded after the loop's last look found the lock held or the marker set: queue them now.
        self.redis.delete(pending)
        generation, trained, _ = trainer.log.generations(project)
        if ok and generation > trained:
            self.enqueue(project)
        with self.redis.pipeline() as pipe:
            pipe.hincrby(self._key("runs"), project, trainer.runs[project] - runs)
            if project in trainer.last_ranking:  # the queue re-ranking happened here, in the worker
                pipe.hset(self._key("last_ranking"), project, json.dumps(trainer.last_ranking[project]))
            if ok:
                pipe.delete(self._key("failed", project))
            else:
                pipe.hincrby(self._key("failures"), project, trainer.failures[project] - failures)
                pipe.hset(self._key("last_error"), project, trainer.last_error.get(project, "unknown"))
                pipe.set(self._key("failed", project), trainer.log.generations(project)[0])
            pipe.execute()
        if not ok:
            raise TrainingFailed(f"project {project}: {trainer.last_error.get(project)}")
        return f"project {project}: trained generation {trainer.log.generations(project)[1]}"

    def _heartbeat(self, lock, stop: threading.Event) -> None:
        while not stop.wait(self.ttl / 3):
            try:
                lock.extend(self.ttl, replace_ttl=True)
            except (redis.RedisError, redis.exceptions.LockError) as exc:
                logger.warning("cannot extend the training lock %s: %s", lock.name, exc)


_registry = None  # one ModelRegistry per worker process: encoder weights load once, not per job
_registry_lock = threading.Lock()


def worker_registry(settings: Settings | None = None):
    global _registry
    with _registry_lock:
        if _registry is None:
            from .server import ModelRegistry

            _registry = ModelRegistry(settings or Settings.from_env())
        return _registry


def train_project(project: str, url: str | None = None, token: str | None = None) -> str:
    """The RQ job. url/token: what /setup told the web app, used when the worker's environment has none."""
    registry = worker_registry()
    registry.remember(project, None, url, token)
    return registry.trainer.jobs.run(project, registry.trainer)
