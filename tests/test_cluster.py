"""Scaling on existing engines: a real Redis and a real Chroma server, the backend with 2 gunicorn workers
(scripts/serve.sh) and 2 RQ training workers (scripts/worker.sh), annotations through /webhook."""
import os
import signal
import subprocess
import sys
import threading
import time
import uuid
import zlib
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
import requests

from backend.runtime.redis_jobs import TrainingFailed
from backend.state.annotations import AnnotationLog
from backend.runtime.build import build_runtime
from backend.embed.encoders import encoder_id
from backend.embed.store import collection_name, open_store
from backend.config import Settings, SettingsError
from tests.helpers import REPO_ROOT, BackendProcess, backend_env, encoder_spec, store_kwargs, wait_until
from tests.ls_server import free_port
from tests.test_crash_recovery import SMS_CONFIG, _event, _reports


def _start(cmd, log_path, env=None) -> subprocess.Popen:
    with open(log_path, "a") as log:
        return subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True)


def _stop(proc: subprocess.Popen, sig=signal.SIGTERM) -> None:
    if proc.poll() is None:
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            pass
        proc.wait(timeout=30)


class Cluster:
    def __init__(self, tmp, redis_port, chroma_port):
        self.tmp = tmp
        self.chroma_port = chroma_port
        self.env = backend_env(tmp, WORKERS=2, REDIS_URL=f"redis://127.0.0.1:{redis_port}/0",
                               CHROMA_HOST="127.0.0.1", CHROMA_PORT=chroma_port,
                               TRAINING_WATCHDOG_S=1, TRAINING_LOCK_TTL_S=10, CHROMA_TIMEOUT=5)
        self.web = BackendProcess(self.env, tmp / "backend.log", free_port())
        self.url = self.web.url
        self.workers: list[subprocess.Popen] = []

    def start_worker(self) -> subprocess.Popen:
        env = {**os.environ, "VENV": sys.prefix, **self.env}
        worker = _start(["bash", str(REPO_ROOT / "scripts" / "worker.sh")], self.tmp / f"worker{len(self.workers)}.log",
                        env)
        self.workers.append(worker)
        return worker

    def trained(self, project: str, labels: int, timeout=120) -> dict:
        """Wait until every recorded change is trained on; the newest report, which must cover `labels`."""
        log = AnnotationLog(self.tmp / "models" / "annotations.sqlite3")

        def done():
            generation, trained, _ = log.generations(project)
            reports = _reports(self.url, project)
            return trained == generation and reports and reports[-1]["labels"] == labels and reports[-1]

        return wait_until(done, timeout=timeout)

    def metrics(self) -> dict:
        return requests.get(self.url + "/status", timeout=10).json()

    def serving_everywhere(self, project: str, version: str, timeout=60) -> set:
        """Predict and read /status (new connections: either gunicorn worker answers) until 2 pids serve it."""
        seen: dict[int, str] = {}
        probe = {"tasks": [{"id": 99999, "data": {"text": "WINNER! claim your prize"}}], "project": project,
                 "label_config": SMS_CONFIG}

        def both():
            requests.post(self.url + "/predict", json=probe, timeout=60)  # builds the model in whichever answers
            process = self.metrics()["process"]
            seen[process["pid"]] = process["serving"].get(project)
            return len(seen) >= 2 and all(v == version for v in seen.values())

        wait_until(both, timeout=timeout, step=0.05)
        return set(seen)


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("cluster")
    redis_port, chroma_port = free_port(), free_port()
    procs = [_start(["redis-server", "--port", str(redis_port), "--bind", "127.0.0.1", "--save", "",
                     "--appendonly", "no"], tmp / "redis.log"),
             _start([os.path.join(sys.prefix, "bin", "chroma"), "run", "--path", str(tmp / "chroma"),
                     "--host", "127.0.0.1", "--port", str(chroma_port)], tmp / "chroma.log")]
    cluster = Cluster(tmp, redis_port, chroma_port)
    cluster.redis, cluster.chroma = procs
    try:
        wait_until(lambda: _up(f"http://127.0.0.1:{chroma_port}/api/v2/heartbeat"), timeout=60)
        for _ in range(2):
            cluster.start_worker()
        cluster.web.start()
        wait_until(lambda: cluster.metrics()["training"].get("workers") == 2, timeout=60)
        yield cluster
    finally:
        cluster.web.kill()
        for proc in cluster.workers + procs:
            _stop(proc)


def _up(url) -> bool:
    try:
        return requests.get(url, timeout=2).ok
    except requests.RequestException:
        return False


def _send(url, project, messages, start=0):
    for i, (label, text) in enumerate(messages, start=start):
        assert requests.post(url + "/webhook", json=_event(project, i, label, text), timeout=5).status_code == 201


def test_web_workers_share_one_store_on_the_chroma_server(cluster, sms_messages):
    tasks = [{"id": i, "data": {"text": text}} for i, (_, text) in enumerate(sms_messages[:80])]
    body = {"tasks": tasks, "project": "31", "label_config": SMS_CONFIG}
    per_pid: dict[int, dict] = {}

    def both_answered():
        versions = {r["model_version"] for r in requests.post(cluster.url + "/predict", json=body, timeout=120)
                    .json()["results"]}
        assert len(versions) == 1
        for _ in range(6):
            m = cluster.metrics()
            per_pid[m["process"]["pid"]] = m["counters"]
        return len([c for c in per_pid.values() if c.get("predict_requests")]) >= 2

    wait_until(both_answered, timeout=120, step=0)
    computed = sum(c.get("embeddings_computed", 0) for c in per_pid.values())
    assert computed == 80  # embedded once in the whole cluster; the other worker read them from Chroma
    assert all(c["embeddings_cached"] + c["embeddings_computed"] == 80 * c["predict_requests"]
               for c in per_pid.values() if c.get("predict_requests"))
    settings = Settings.from_env(cluster.env)
    name = collection_name("31", encoder_id("text", encoder_spec(settings)))
    collection = open_store(**store_kwargs(settings)).client.get_collection(name)
    assert collection.count() == 80  # each task once


def test_rq_workers_train_and_every_web_worker_serves_the_new_version(cluster, sms_messages):
    _send(cluster.url, 32, sms_messages[:60])
    version = cluster.trained("32", 60)["version"]
    assert len(cluster.serving_everywhere("32", version)) == 2
    probe = {"tasks": [{"id": 99999, "data": {"text": "WINNER! claim your prize"}}], "project": "32",
             "label_config": SMS_CONFIG}
    assert requests.post(cluster.url + "/predict", json=probe, timeout=30).json()["results"][0]["model_version"] \
        == version
    training = cluster.metrics()["training"]
    assert training["mode"] == "rq" and training["runs"]["32"] >= 1 and not training["failures"].get("32")


def test_no_annotation_lost_when_a_worker_is_killed_mid_job(cluster, sms_messages):
    log = AnnotationLog(cluster.tmp / "models" / "annotations.sqlite3")
    total = 300
    sender = threading.Thread(target=_send, args=(cluster.url, 33, sms_messages[:total]))
    sender.start()
    # a worker holds the project's training lock while annotations keep arriving
    holder = wait_until(lambda: cluster.metrics()["training"]["locks"].get("33"), timeout=60, step=0.02)
    pid = int(holder.split(":")[1])
    victim = next(w for w in cluster.workers if w.pid == pid)
    generation, trained, _ = log.generations("33")
    _stop(victim, signal.SIGKILL)
    assert generation > trained  # the killed run had untrained annotations
    sender.join()
    # its lock expires, the watchdog re-queues, the surviving worker trains everything
    final = cluster.trained("33", total)
    assert len(cluster.serving_everywhere("33", final["version"])) == 2
    cluster.workers.remove(victim)
    # /status no longer counts the killed worker (RQ kept its key as long as the job's hour-long timeout)
    wait_until(lambda: cluster.metrics()["training"]["workers"] == len(cluster.workers), timeout=60)


def _redis_values(client):
    """Every value in Redis, as bytes (RQ's job data zlib-decompressed too)."""
    for key in client.scan_iter():
        kind = client.type(key).decode()
        if kind == "string":
            values = [client.get(key)]
        elif kind == "hash":
            values = list(client.hgetall(key).values())
        elif kind == "list":
            values = client.lrange(key, 0, -1)
        else:
            values = list(client.smembers(key)) if kind == "set" else client.zrange(key, 0, -1) if kind == "zset" else []
        for value in values:
            yield key + b"=" + (value or b"")
            try:
                yield zlib.decompress(value)
            except (zlib.error, TypeError):
                pass


def test_a_setup_token_never_reaches_redis_or_model_dir(cluster, sms_messages):
    import redis

    token = "setup-secret-" + uuid.uuid4().hex
    setup = {"project": "34", "schema": SMS_CONFIG, "hostname": f"http://127.0.0.1:{free_port()}",
             "access_token": token}
    assert requests.post(cluster.url + "/setup", json=setup, timeout=60).status_code == 200
    _send(cluster.url, 34, sms_messages[:30])
    cluster.trained("34", 30)
    client = redis.Redis.from_url(cluster.env["REDIS_URL"])
    assert any(b"train_project" in value for value in _redis_values(client))  # the jobs are there, and scanned
    assert not [v[:80] for v in _redis_values(client) if token.encode() in v]
    files = [p for p in (cluster.tmp / "models").rglob("*") if p.is_file()]
    assert files and not [p for p in files if token.encode() in p.read_bytes()]
    training = cluster.metrics()["training"]  # no LABEL_STUDIO_URL/API_KEY: said, not silently dropped
    assert training["workers_reach_label_studio"] is False and "LABEL_STUDIO_API_KEY" in training["label_studio_warning"]


def test_settings_for_redis_and_chroma_server_are_validated_and_secrets_hidden():
    with pytest.raises(SettingsError, match="REDIS_URL"):
        Settings.from_env({"REDIS_URL": "http://localhost:6379"})
    with pytest.raises(SettingsError, match="CHROMA_SSL"):
        Settings.from_env({"CHROMA_SSL": "maybe"})
    settings = Settings.from_env({"REDIS_URL": "redis://:hunter2@db:6379/0", "CHROMA_AUTH_TOKEN": "tok-42",
                                  "TRAINING_WATCHDOG_S": "2.5"})
    assert settings.rq_queue == "clip-backend" and settings.training_watchdog_s == 2.5
    assert "hunter2" not in repr(settings) and "tok-42" not in repr(settings)


def test_chroma_auth_token_is_sent_as_a_bearer_token():
    seen = []

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self):
            seen.append(self.headers.get("Authorization"))
            self.send_response(401)
            self.end_headers()

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        settings = Settings.from_env({"CHROMA_HOST": "127.0.0.1", "CHROMA_PORT": str(server.server_port),
                                      "CHROMA_AUTH_TOKEN": "tok-42"})
        with pytest.raises(Exception):
            open_store(**store_kwargs(settings)).client.heartbeat()
    finally:
        server.shutdown()
    assert seen and all(h == "Bearer tok-42" for h in seen)


def test_worker_without_redis_url_explains_what_to_set():
    env = {k: v for k, v in os.environ.items() if k != "REDIS_URL"}
    done = subprocess.run([sys.executable, "-m", "backend.runtime.worker"], env=env, capture_output=True, text=True,
                          cwd=REPO_ROOT, timeout=60)
    assert done.returncode == 2 and "REDIS_URL is not set" in done.stderr


def test_watchdog_requeues_only_projects_that_nobody_trains(cluster, tmp_path):

    # its own queue on the cluster's Redis, so the running workers leave these jobs alone
    jobs = build_runtime(Settings.from_env({**cluster.env, "RQ_QUEUE": "watchdog-test",
                                            "MODEL_DIR": str(tmp_path)})).scheduler
    log = jobs.loop.log
    for project in ("1", "2", "3", "4"):
        log.request_training(project, SMS_CONFIG)
    log.mark_trained("4", 1)  # nothing to do
    jobs.redis.set(jobs.key("lock", "1"), "host:1:x", ex=30)  # a live worker trains it
    jobs.redis.set(jobs.key("failed", "2"), 1)  # failed at this generation: left to RQ's retry and the next event
    assert jobs.requeue_stalled() == ["3"]
    assert jobs.requeue_stalled() == []  # already pending
    log.request_training("2")  # a new event after the failure
    jobs.redis.delete(jobs.key("lock", "1"))  # the holder died and its lock expired
    assert sorted(jobs.requeue_stalled()) == ["1", "2"]
    assert sorted(job.args[0] for job in jobs.queue.jobs) == ["1", "2", "3"]
    jobs.queue.empty()


def test_a_job_steps_aside_from_a_held_lock_and_a_failed_run_is_recorded_for_retry(cluster, tmp_path):

    settings = Settings.from_env({**cluster.env, "RQ_QUEUE": "failure-test", "MODEL_DIR": str(tmp_path)})
    jobs = build_runtime(settings).scheduler
    jobs.loop.log.request_training("7")  # no labeling config known: the run cannot train

    jobs.redis.set(jobs.key("pending", "7"), 1, ex=600)
    jobs.redis.set(jobs.key("lock", "7"), "other-host:1:x", ex=30)
    assert "another worker" in jobs.run_job("7")  # returns at once, no worker left waiting
    assert 0 < jobs.redis.ttl(jobs.key("pending", "7")) <= settings.training_lock_ttl_s + 1  # lapses with the lock

    jobs.redis.delete(jobs.key("lock", "7"))
    jobs.loop.last_ranking["7"] = {"model_version": "v1", "ranked": 3}  # a queue re-ranking this worker did
    with pytest.raises(TrainingFailed):  # RQ retries it
        jobs.run_job("7")
    status = jobs.status()
    assert status["last_ranking"] == {"7": {"model_version": "v1", "ranked": 3}}  # visible from every web worker
    assert status["failures"] == {"7": 1} and "label_config" in status["last_error"]["7"]
    assert status["locks"] == {} and not jobs.redis.exists(jobs.key("pending", "7"))
    assert jobs.requeue_stalled() == []  # the watchdog leaves a failed generation alone
    jobs.queue.empty()


def test_non_ascii_project_id_webhook_is_refused_and_creates_nothing(cluster, sms_messages):
    log = AnnotationLog(cluster.tmp / "models" / "annotations.sqlite3")
    before = sorted(log.projects_needing_training()), sorted(os.listdir(cluster.tmp / "models"))
    for shadow in ("\uff11", "\u0661\u0662", "\uff15", "\u216b", "\u00b2"):  # int("１") == 1: another project
        event = {**_event(1, 0, "spam", sms_messages[0][1]), "action": "START_TRAINING"}
        event["project"] = {"id": shadow, "label_config": SMS_CONFIG}
        answer = requests.post(cluster.url + "/webhook", json=event, timeout=5)
        assert answer.status_code == 400 and "not a Label Studio project id" in answer.text
    assert (sorted(log.projects_needing_training()), sorted(os.listdir(cluster.tmp / "models"))) == before
    assert log.generations("1")[0] == 0


def test_a_run_that_loses_its_lock_publishes_nothing_and_the_new_holder_trains_once(cluster, tmp_path,
                                                                                      sms_messages, monkeypatch):
    from backend.flows import training_run
    from backend.flows.record import record_event
    from backend.labelstudio.protocol import parse_webhook

    settings = Settings.from_env({**cluster.env, "RQ_QUEUE": "fence-test", "MODEL_DIR": str(tmp_path)})
    runtime = build_runtime(settings)
    jobs, log = runtime.scheduler, runtime.log
    for i, (label, text) in enumerate(sms_messages[:30]):
        record_event(log, parse_webhook(_event(41, i, label, text)))
    select_heads = training_run.select_heads

    def stalled_past_the_ttl(*args, **kwargs):
        # failure injection: while this worker selects heads, its lock expires and another worker takes it
        chosen = select_heads(*args, **kwargs)
        jobs.redis.set(jobs.key("lock", "41"), "other-host:1:x", ex=30)
        return chosen

    monkeypatch.setattr(training_run, "select_heads", stalled_past_the_ttl)
    jobs.run_job("41")
    assert runtime.versions.all("41") == []  # nothing saved, nothing published
    generation, trained, _ = log.generations("41")
    assert trained < generation and "LockLost" in jobs.loop.last_error["41"]
    monkeypatch.setattr(training_run, "select_heads", select_heads)
    jobs.redis.delete(jobs.key("lock", "41"))  # the other holder is done (it would have trained this snapshot)
    jobs.run_job("41")
    versions = runtime.versions.all("41")
    assert [v.meta["generation"] for v in versions] == [generation]  # exactly one version for the snapshot
    jobs.queue.empty()


def test_two_namespaces_on_one_chroma_server_keep_their_own_embeddings(cluster):
    import numpy as np

    from backend.embed.store import StoredItem, content_hash

    settings = Settings.from_env(cluster.env)
    a, c = (open_store(**{**store_kwargs(settings), "namespace": ns}) for ns in ("dep-a", "dep-c"))
    rng = np.random.default_rng(0)
    texts = {"a": [f"deployment A's task {i}" for i in range(100)], "c": [f"C: flippin {i}" for i in range(100)]}
    vectors = {k: rng.normal(size=(100, 8)).astype(np.float32) for k in texts}
    for store, k in ((a, "a"), (c, "c")):  # same project, same task ids, other data
        store.put_many("1", "enc", [StoredItem(i, "text", content_hash(t), v)
                                    for i, (t, v) in enumerate(zip(texts[k], vectors[k]))])
    for store, k in ((a, "a"), (c, "c")):
        found = store.get_many("1", "enc", [(i, "text", content_hash(t)) for i, t in enumerate(texts[k])])
        assert len(found) == 100 and all(np.allclose(found[f"{i}:text"], vectors[k][i]) for i in range(100))
    # a read for the other deployment's data (the hash of its text) finds nothing to serve
    assert a.get_many("1", "enc", [(i, "text", content_hash(t)) for i, t in enumerate(texts["c"])]) == {}
    assert a.unlabeled_index("1", "enc", "text").collection.count() == 100


def test_an_existing_collection_is_adopted_once_by_a_new_namespace_without_reembedding(cluster):
    import numpy as np

    from backend.embed.store import StoredItem, content_hash

    settings = Settings.from_env(cluster.env)
    legacy = open_store(**store_kwargs(settings))  # CHROMA_NAMESPACE unset: the names of before
    vectors = np.eye(5, dtype=np.float32)
    legacy.put_many("36", "enc", [StoredItem(i, "text", content_hash(f"t{i}"), vectors[i]) for i in range(5)])
    adopted = open_store(**{**store_kwargs(settings), "namespace": "prod"})
    found = adopted.get_many("36", "enc", [(i, "text", content_hash(f"t{i}")) for i in range(5)])
    assert sorted(found) == [f"{i}:text" for i in range(5)]  # read back, not embedded again
    names = {c.name for c in legacy.client.list_collections()}
    assert collection_name("36", "enc", "prod") in names and collection_name("36", "enc") not in names


def test_a_paused_chroma_server_neither_hangs_predict_nor_holds_the_training_lock(cluster, sms_messages):
    log = AnnotationLog(cluster.tmp / "models" / "annotations.sqlite3")
    tasks = [{"id": 5000 + i, "data": {"text": text}} for i, (_, text) in enumerate(sms_messages[100:140])]
    body = {"tasks": tasks, "project": "38", "label_config": SMS_CONFIG}
    os.killpg(cluster.chroma.pid, signal.SIGSTOP)  # hung, not down: connections open, nothing answers
    try:
        started = time.monotonic()
        answer = requests.post(cluster.url + "/predict", json=body, timeout=90)
        elapsed = time.monotonic() - started
        # served without the cache (or a clear 503) within PREDICT_TIMEOUT, not after the pause
        assert elapsed < Settings.from_env(cluster.env).predict_timeout_s
        assert (answer.status_code == 200 and all(answer.json()["results"])) or \
            (answer.status_code == 503 and "Chroma" in answer.json()["error"])
        _send(cluster.url, 39, sms_messages[:20])

        def settled():  # trained without the cache, or failed: either way the lock is not held through the pause
            generation, trained, _ = log.generations("39")
            training = cluster.metrics()["training"]
            return (trained == generation or training["failures"].get("39")) and "39" not in training["locks"]

        wait_until(settled, timeout=60)
    finally:
        os.killpg(cluster.chroma.pid, signal.SIGCONT)
    _send(cluster.url, 39, sms_messages[20:30], start=20)
    cluster.trained("39", 30)  # and training goes on once Chroma answers again


def test_after_a_redis_restart_the_rq_scheduler_runs_retries_again(cluster, tmp_path):
    """Last in this module: Redis comes back empty. RQ's scheduler (in a worker) dies with the connection;
    a job scheduled afterwards must still run, within a few watchdog periods, not RQ's 10 minutes."""
    from datetime import timedelta

    import redis
    from rq import Queue
    from rq.job import Job

    from backend.runtime.redis_jobs import train_project

    port = cluster.env["REDIS_URL"].rsplit(":", 1)[1].split("/")[0]
    _stop(cluster.redis)
    time.sleep(3)  # the scheduler loop (interval 1 s) meets the closed connection and exits
    cluster.redis = _start(["redis-server", "--port", port, "--bind", "127.0.0.1", "--save", "",
                            "--appendonly", "no"], cluster.tmp / "redis.log")
    client = redis.Redis.from_url(cluster.env["REDIS_URL"])
    wait_until(lambda: _pings(client), timeout=30)
    queue = Queue("clip-backend", connection=client)
    job = queue.enqueue_in(timedelta(seconds=1), train_project, "40")  # as RQ's Retry schedules a retry
    wait_until(lambda: Job.fetch(job.id, connection=client).get_status() == "finished", timeout=90)


def _pings(client) -> bool:
    import redis

    try:
        return client.ping()
    except redis.RedisError:
        return False
