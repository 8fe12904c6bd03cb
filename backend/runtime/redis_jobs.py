"""Training as RQ jobs on Redis (REDIS_URL): web processes enqueue, `python -m backend.runtime.worker`
processes (any machine sharing MODEL_DIR) train.

The durable state stays the annotation log in MODEL_DIR: a job runs the same TrainingLoop as the
in-process thread. Redis only coordinates:

  <queue>:pending:<project>   SET NX by enqueue, so a burst of events queues one job; deleted by the job that
                              takes the lock (a job that finds the lock held exits: the holder trains its events)
  <queue>:lock:<project>      one trainer per project; its value names the holder (host:pid:nonce); a short
                              TTL renewed by a heartbeat, so the lock of a worker killed mid-run expires soon
  <queue>:failed:<project>    the generation whose run failed: the watchdog leaves it to the next event
  <queue>:runs, :failures, :last_error, :last_ranking, :last_run   hashes for /status (all workers together)

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
from rq import Queue, Retry, Worker, get_current_job

from ..config import Settings
from .connections import Connection
from ..flows.training_run import LockLost
from .training import ThreadScheduler, TrainingLoop

logger = logging.getLogger(__name__)

JOB_TIMEOUT_S = 3600
PENDING_TTL_S = 600  # a pending marker whose job got lost only delays the watchdog this long
RETRY = dict(max=2, interval=[10, 60])  # ordinary failures (Label Studio or Chroma briefly unreachable)


class TrainingFailed(RuntimeError):
    """The run failed; RQ retries the job (the last good version keeps serving)."""


class RedisScheduler:
    def __init__(self, loop: TrainingLoop, settings: Settings):
        self.loop = loop
        self.settings = settings
        self.redis = redis.Redis.from_url(self.settings.redis_url)
        self.queue = Queue(self.settings.rq_queue, connection=self.redis)
        self.ttl = self.settings.training_lock_ttl_s
        self._watchdog: threading.Thread | None = None

    def key(self, kind: str, project: str = "") -> str:
        return f"{self.settings.rq_queue}:{kind}" + (f":{project}" if project else "")

    # -- web side ----------------------------------------------------------------------------
    def notify(self, project: str) -> None:
        self.enqueue(project)

    def enqueue(self, project: str) -> bool:
        """Queue a training job unless one is already waiting to start; False if none was queued."""
        pending = self.key("pending", project)
        try:
            if not self.redis.set(pending, 1, nx=True, ex=PENDING_TTL_S):
                return False
            try:
                # the project id only: no URL or token ever goes into Redis (job data, the AOF on disk)
                self.queue.enqueue(train_project, project, job_timeout=JOB_TIMEOUT_S, retry=Retry(**RETRY),
                                   description=f"train project {project}")
            except BaseException:
                self.redis.delete(pending)
                raise
        except redis.RedisError as exc:  # the event is recorded; the watchdog queues it once Redis is back
            logger.warning("project %s: cannot queue training on Redis (%s); retrying from the watchdog", project, exc)
            return False
        return True

    def workers_reach_label_studio(self) -> str | None:
        """None when workers can reach Label Studio (LABEL_STUDIO_URL and LABEL_STUDIO_API_KEY, which they
        read from their own environment), else why not: a /setup token stays in the web process that got it."""
        if Connection.environment(self.settings).complete:
            return None
        return ("LABEL_STUDIO_URL and LABEL_STUDIO_API_KEY are not both set: RQ training workers take Label "
                "Studio's address and key from their environment only (a /setup token never leaves the web "
                "process that received it), so training runs on the recorded annotations without reaching "
                "Label Studio: no reconcile, no queue batch. Set both on the web app and on every worker")

    def requeue_stalled(self) -> list[str]:
        """Queue projects with untrained changes that nobody is training or about to train."""
        log = self.loop.log
        queued = []
        for project in log.projects_needing_training():
            if self.redis.exists(self.key("lock", project), self.key("pending", project)):
                continue
            failed = self.redis.get(self.key("failed", project))
            if failed is not None and int(failed) >= log.generations(project)[0]:
                continue  # failed at this generation: retried by RQ, then on the next event
            if self.enqueue(project):
                queued.append(project)
        if queued:
            logger.info("watchdog: re-queued training for projects %s", queued)
        return queued

    def start(self) -> list[str]:
        """Queue what is untrained, then keep checking: workers elsewhere may die mid-run."""
        if (why := self.workers_reach_label_studio()) is not None:
            logger.warning("%s", why)
        pending = self.loop.log.projects_needing_training()
        for project in pending:
            self.enqueue(project)
        if self._watchdog is None:
            self._watchdog = threading.Thread(target=self._watch, name="training-watchdog", daemon=True)
            self._watchdog.start()
        return pending

    def _watch(self) -> None:
        while True:
            time.sleep(self.settings.training_watchdog_s)
            try:
                self.requeue_stalled()
            except Exception as exc:  # Redis down: next tick
                logger.warning("training watchdog: %s", exc)

    def busy(self, project: str | None = None) -> bool:
        try:
            if project:
                return bool(self.redis.exists(self.key("lock", project), self.key("pending", project)))
            return bool(self.locks()) or len(self.queue) > 0
        except redis.RedisError:
            return False

    def locks(self) -> dict[str, str]:
        """project -> holder of its training lock."""
        held = {}
        for key in self.redis.scan_iter(match=self.key("lock", "") + ":*"):
            holder = self.redis.get(key)
            if holder is not None:
                held[key.decode().rsplit(":", 1)[1]] = holder.decode()
        return held

    def status(self) -> dict:
        """The /status "training" section: true for the whole cluster, not just this process."""
        def decoded(name):
            return {k.decode(): v.decode() for k, v in self.redis.hgetall(self.key(name)).items()}

        try:
            locks = self.locks()
            return {"mode": "rq", "queue": self.queue.name, "queued": len(self.queue),
                    "workers": len(Worker.all(queue=self.queue)), "locks": locks,  # live ones only
                    "runs": {k: int(v) for k, v in decoded("runs").items()},
                    "failures": {k: int(v) for k, v in decoded("failures").items()},
                    "last_error": decoded("last_error"), "busy": bool(locks) or len(self.queue) > 0,
                    "last_ranking": {k: json.loads(v) for k, v in decoded("last_ranking").items()},
                    "last_run": {k: json.loads(v) for k, v in decoded("last_run").items()},
                    "workers_reach_label_studio": self.workers_reach_label_studio() is None,
                    "label_studio_warning": self.workers_reach_label_studio()}
        except redis.RedisError as exc:
            return {"mode": "rq", "queue": self.queue.name, "error": f"Redis unreachable: {exc}"}

    # -- worker side -------------------------------------------------------------------------
    def run_job(self, project: str) -> str:
        """Body of a job: under the project's lock, train until every recorded generation is trained."""
        pending = self.key("pending", project)
        lock = self.redis.lock(self.key("lock", project), timeout=self.ttl, thread_local=False)
        holder = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        if not lock.acquire(blocking=False, token=holder):
            # The holder re-reads the generation before it stops and once more after it lets go (below), so
            # it trains our events; no worker waits idle. The marker stays (no job per event meanwhile) but
            # lapses soon in case the holder is dead: then the watchdog queues the project again.
            self.redis.expire(pending, int(self.ttl) + 1)
            return f"project {project}: another worker is training it"
        self.redis.delete(pending)  # events from now on queue a new job
        worker_key = _current_worker_key()
        self._shorten_worker_ttl(worker_key)  # from the moment it holds the lock: it may be killed at once
        time.sleep(ThreadScheduler.burst_wait_s)  # as the thread scheduler: let a burst of events land first
        runs, failures = self.loop.runs[project], self.loop.failures[project]
        ok = self._run_locked(project, lock, worker_key)
        # Events recorded after the loop's last look found the lock held or the marker set: queue them now.
        self.redis.delete(pending)
        log = self.loop.log
        generation, trained, _ = log.generations(project)
        if ok and generation > trained:
            self.enqueue(project)
        self._publish_counters(project, ok, runs, failures)
        if not ok:
            raise TrainingFailed(f"project {project}: {self.loop.last_error.get(project)}")
        return f"project {project}: trained generation {log.generations(project)[1]}"

    def _run_locked(self, project: str, lock, worker_key: str | None) -> bool:
        stop = threading.Event()
        beat = threading.Thread(target=self._heartbeat, args=(lock, stop, worker_key), name=f"lock-{project}",
                                daemon=True)
        beat.start()
        try:
            return self.loop.run(project, fence=lambda: self._still_held(lock))
        finally:
            stop.set()
            beat.join()
            try:
                lock.release()
            except redis.exceptions.LockError:
                pass  # expired (worker stalled past the TTL); nothing to release

    def _publish_counters(self, project: str, ok: bool, runs_before: int, failures_before: int) -> None:
        loop = self.loop
        with self.redis.pipeline() as pipe:
            pipe.hincrby(self.key("runs"), project, loop.runs[project] - runs_before)
            if project in loop.last_ranking:  # the queue re-ranking happened here, in the worker
                pipe.hset(self.key("last_ranking"), project, json.dumps(loop.last_ranking[project]))
            if project in loop.last_run:
                pipe.hset(self.key("last_run"), project, json.dumps(loop.last_run[project]))
            if ok:
                pipe.delete(self.key("failed", project))
            else:
                pipe.hincrby(self.key("failures"), project, loop.failures[project] - failures_before)
                pipe.hset(self.key("last_error"), project, loop.last_error.get(project, "unknown"))
                pipe.set(self.key("failed", project), loop.log.generations(project)[0])
            pipe.execute()

    @staticmethod
    def _still_held(lock) -> None:
        """The fence before a run saves or publishes: the lock still names this holder (a worker that stalled
        past the TTL, or lost Redis that long, may have been replaced by another one training the project)."""
        try:
            held = lock.owned()
        except redis.RedisError as exc:
            raise LockLost(f"cannot check the training lock ({exc}); stopping before saving or publishing") from None
        if not held:
            raise LockLost("the training lock expired (this worker stalled or lost Redis longer than "
                           "TRAINING_LOCK_TTL_S); stopping before saving or publishing")

    def _heartbeat(self, lock, stop: threading.Event, worker_key: str | None = None) -> None:
        """Renews the lock, and keeps the RQ worker's own key short-lived (_shorten_worker_ttl)."""
        while not stop.wait(self.ttl / 3):
            try:
                lock.extend(self.ttl, replace_ttl=True)
            except redis.exceptions.LockNotOwnedError:
                logger.warning("lost the training lock %s: the run stops before it saves or publishes", lock.name)
                return  # lost for good; the fence stops the run
            except (redis.RedisError, redis.exceptions.LockError) as exc:
                logger.warning("cannot extend the training lock %s: %s", lock.name, exc)
            self._shorten_worker_ttl(worker_key)

    def _shorten_worker_ttl(self, worker_key: str | None) -> None:
        """RQ sets a busy worker's key to live as long as its job may (an hour): keep it to 3 lock TTLs, so
        a worker killed -9 mid-job leaves the worker list (/status) soon after."""
        if not worker_key:
            return
        try:
            with self.redis.pipeline() as pipe:
                pipe.expire(worker_key, int(3 * self.ttl) + 1)
                pipe.expire(worker_key + ":executions", int(3 * self.ttl) + 1)
                pipe.execute()
        except redis.RedisError:
            pass


def _current_worker_key() -> str | None:
    """The RQ worker's own Redis key; None outside an RQ worker (tests call run_job directly)."""
    job = get_current_job()
    return f"{Worker.redis_worker_namespace_prefix}{job.worker_name}" if job and job.worker_name else None


def train_project(project: str, *_legacy) -> str:
    """The RQ job: the project id alone. The worker reaches Label Studio with its own environment's
    LABEL_STUDIO_URL/API_KEY. (_legacy: jobs queued by older versions carried a URL and token; ignored.)"""
    from .build import worker_runtime  # the worker process's runtime, built once by the composition root

    return worker_runtime().scheduler.run_job(project)
