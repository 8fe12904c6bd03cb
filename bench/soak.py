"""Soak a live backend: concurrent /predict clients while a storm of annotation webhooks trains it,
optionally crashing and restarting it mid-run. Loopback or your own test hosts only.

    python -m bench.soak --url http://127.0.0.1:9090 --json
    python -m bench.soak --url http://127.0.0.1:9090 --clients 50 --webhooks 1000 --duration 60 \\
        --restart-cmd 'pkill -9 -f "backend.web:create_app" ; PORT=9090 scripts/serve.sh >/tmp/b.log 2>&1 &' --json

Prints one JSON object (--json): requests, errors, annotations_sent, annotations_trained, p95_ms,
restarts_survived (plus details). Requests that fail while the backend restarts are retried, as
Label Studio users would; `errors` counts requests that still failed.

--mixed: image /predict clients whose tasks mix ordinary images with slow ones (a loopback server
dripping a byte every second: each ends at the backend's FETCH_DEADLINE) and heavy ones (few-KB PNGs of
15 and 64 megapixels), while /health and /webhook are polled. Start the backend with
ALLOWED_FETCH_HOSTS=127.0.0.1 on the same host (peak RSS is read from /proc):

    python -m bench.soak --url http://127.0.0.1:9090 --mixed --clients 8 --requests 200 --duration 90 --json

prints errors (5xx other than 503, timeouts, connection errors), busy_503 (PREDICT_CONCURRENCY
answers), health_p99_ms / webhook_p99_ms under the load, per-kind task outcomes and the backend
process's RSS before the load and its peak (VmHWM).
"""
from __future__ import annotations

import argparse
import json
import random
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import requests

from bench.hostile import HostileServer

ROOT = Path(__file__).resolve().parent.parent
SMS = ROOT.parent / "shared" / "data" / "sms_spam" / "SMSSpamCollection"


def messages() -> list[tuple[str, str]]:
    if SMS.exists():
        lines = SMS.read_text(encoding="utf-8").splitlines()[1:]
        return [tuple(line.split("\t", 1)) for line in lines if "\t" in line]
    words = "free prize call now win cash hello see you later love dinner tonight meeting".split()
    rng = random.Random(0)
    return [("spam" if i % 5 == 0 else "ham", " ".join(rng.choices(words, k=8))) for i in range(3000)]


class Soak:
    def __init__(self, args):
        self.args = args
        self.url = args.url.rstrip("/")
        self.config = (ROOT / "label_config" / "sms_spam.xml").read_text()
        self.data = messages()
        self.lock = threading.Lock()
        self.latencies: list[float] = []
        self.requests = 0
        self.errors = 0
        self.error_samples: list[str] = []
        self.stop = threading.Event()

    def call(self, path: str, body: dict, retry_for: float = 60.0) -> requests.Response | None:
        deadline = time.time() + retry_for
        while True:
            started = time.perf_counter()
            try:
                resp = requests.post(self.url + path, json=body, timeout=120)
                if resp.status_code < 500:
                    with self.lock:
                        self.requests += 1
                        self.latencies.append((time.perf_counter() - started) * 1000)
                        if resp.status_code >= 400:
                            self.errors += 1
                            self.error_samples.append(f"{path} {resp.status_code} {resp.text[:120]}")
                    return resp
                reason = f"{path} HTTP {resp.status_code}"
            except requests.RequestException as exc:
                reason = f"{path} {type(exc).__name__}"
            if time.time() > deadline:  # still failing after retries: a real error
                with self.lock:
                    self.requests += 1
                    self.errors += 1
                    self.error_samples.append(reason)
                return None
            time.sleep(0.5)

    def predict_client(self, seed: int) -> None:
        rng = random.Random(seed)
        while not self.stop.is_set():
            batch = rng.sample(range(len(self.data)), rng.choice([1, 1, 1, 5, 20]))
            tasks = [{"id": 100_000 + i, "data": {"text": self.data[i][1]}} for i in batch]
            self.call("/predict", {"tasks": tasks, "project": str(self.args.project), "label_config": self.config})

    def webhook(self, i: int) -> None:
        label, text = self.data[i % len(self.data)]
        self.call("/webhook", {
            "action": "ANNOTATION_CREATED", "project": {"id": self.args.project, "label_config": self.config},
            "task": {"id": 500_000 + i, "data": {"text": text}},
            "annotation": {"id": 500_000 + i, "task": 500_000 + i, "was_cancelled": False,
                           "result": [{"from_name": "label", "to_name": "text", "type": "choices",
                                       "value": {"choices": [label]}}]}})

    def healthy(self, timeout: float = 180) -> bool:
        deadline = time.time() + timeout
        while time.time() < deadline:
            try:
                if requests.get(self.url + "/health", timeout=2).status_code == 200:
                    return True
            except requests.RequestException:
                pass
            time.sleep(0.5)
        return False

    def trained_labels(self) -> int:
        try:
            reports = requests.get(f"{self.url}/reports?project={self.args.project}", timeout=10).json()["reports"]
        except (requests.RequestException, ValueError, KeyError):
            return 0
        return max((r.get("labels") or 0 for r in reports), default=0)

    def run(self) -> dict:
        args = self.args
        if not self.healthy(30):
            sys.exit(f"no backend answering at {self.url}/health")
        self.call("/setup", {"project": str(args.project), "schema": self.config})
        started = time.time()
        clients = [threading.Thread(target=self.predict_client, args=(seed,), daemon=True)
                   for seed in range(args.clients)]
        for thread in clients:
            thread.start()
        restarts = 0
        with ThreadPoolExecutor(max_workers=16) as pool:
            half = args.webhooks // 2
            list(pool.map(self.webhook, range(half)))
            if args.restart_cmd:
                time.sleep(1.0)  # let training start, then crash it
                subprocess.run(args.restart_cmd, shell=True, check=False)
                time.sleep(1.0)
                if self.healthy():
                    restarts += 1
            list(pool.map(self.webhook, range(half, args.webhooks)))
        while time.time() - started < args.duration:
            time.sleep(0.5)
        self.stop.set()
        for thread in clients:
            thread.join(timeout=130)
        deadline = time.time() + args.train_timeout
        trained = self.trained_labels()
        while trained < args.webhooks and time.time() < deadline:
            time.sleep(1)
            trained = self.trained_labels()
        lat = sorted(self.latencies) or [0.0]
        return {
            "requests": self.requests, "errors": self.errors,
            "annotations_sent": args.webhooks, "annotations_trained": trained,
            "annotations_lost": max(0, args.webhooks - trained),
            "p50_ms": round(lat[len(lat) // 2], 1), "p95_ms": round(lat[int(len(lat) * 0.95) - 1], 1),
            "restarts_survived": restarts, "clients": args.clients, "seconds": round(time.time() - started, 1),
            "error_samples": self.error_samples[:5],
        }


def _pct(values: list[float], q: float) -> float:
    ordered = sorted(values) or [0.0]
    return round(ordered[min(len(ordered) - 1, int(len(ordered) * q))], 1)


def _rss_mb(pid: int, field: str) -> float | None:
    """VmRSS (now) or VmHWM (peak) of a local process, in MB; None where /proc cannot tell."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return round(int(line.split()[1]) / 1024, 1)
    except (OSError, ValueError):
        pass
    return None


class MixedSoak:
    """Image /predict load with slow and heavy items mixed in; /health and /webhook latency under it."""

    KINDS = {"ok": "/ok.jpg?n={n}", "slow": "/drip?bytes=2000&every=1&n={n}",
             "heavy": "/heavy.png?side=3900&n={n}", "bomb": "/heavy.png?side=8000&n={n}"}

    def __init__(self, args, hostile: HostileServer):
        self.args, self.url, self.hostile = args, args.url.rstrip("/"), hostile
        self.config = (ROOT / "label_config" / "image_classification.xml").read_text()
        self.lock, self.stop = threading.Lock(), threading.Event()
        self.next_id, self.sent = 700_000, 0
        self.predict_ms: list[float] = []
        self.probe_ms: dict[str, list[float]] = {"health": [], "webhook": []}
        self.errors, self.busy, self.samples = 0, 0, []
        self.outcomes = {kind: {"predicted": 0, "skipped": 0} for kind in self.KINDS}

    def _kind(self, rng: random.Random) -> str:
        r = rng.random()
        slow, heavy = self.args.slow_fraction, self.args.heavy_fraction
        return "slow" if r < slow else ("heavy" if rng.random() < 0.5 else "bomb") if r < slow + heavy else "ok"

    def _error(self, what: str) -> None:
        with self.lock:
            self.errors += 1
            self.samples.append(what[:160])

    def _predict(self, kinds: list[str]) -> None:
        with self.lock:
            ids = list(range(self.next_id, self.next_id + len(kinds)))
            self.next_id += len(kinds)
        tasks = [{"id": i, "data": {"image": self.hostile.url + self.KINDS[k].format(n=i)}} for i, k in zip(ids, kinds)]
        started = time.perf_counter()
        try:
            resp = requests.post(self.url + "/predict", json={"tasks": tasks, "project": str(self.args.project),
                                                              "label_config": self.config}, timeout=180)
        except requests.RequestException as exc:
            return self._error(f"/predict {type(exc).__name__}")
        with self.lock:
            self.predict_ms.append((time.perf_counter() - started) * 1000)
        if resp.status_code == 503 and resp.headers.get("Retry-After"):
            with self.lock:
                self.busy += 1
            return time.sleep(float(resp.headers["Retry-After"]))
        if resp.status_code != 200:
            return self._error(f"/predict HTTP {resp.status_code} {resp.text[:100]}")
        with self.lock:
            for kind, result in zip(kinds, resp.json()["results"]):
                self.outcomes[kind]["predicted" if result else "skipped"] += 1

    def client(self, seed: int) -> None:
        rng = random.Random(seed)
        while not self.stop.is_set():
            with self.lock:
                if self.sent >= self.args.requests:
                    return
                self.sent += 1
            self._predict([self._kind(rng) for _ in range(rng.choice([1, 2, 4, 8]))])

    def probe(self, name: str) -> None:
        """GET /health or an ignored webhook event every 0.25 s; a timeout counts as an error and 10 s."""
        event = {"action": "PROJECT_UPDATED", "project": {"id": self.args.project}}
        while not self.stop.is_set():
            started = time.perf_counter()
            try:
                resp = (requests.get(self.url + "/health", timeout=10) if name == "health"
                        else requests.post(self.url + "/webhook", json=event, timeout=10))
                if resp.status_code >= 300:
                    self._error(f"/{name} HTTP {resp.status_code}")
            except requests.RequestException as exc:
                self._error(f"/{name} {type(exc).__name__}")
            with self.lock:
                self.probe_ms[name].append((time.perf_counter() - started) * 1000)
            self.stop.wait(0.25)

    def run(self) -> dict:
        args = self.args
        requests.post(self.url + "/setup", json={"project": str(args.project), "schema": self.config}, timeout=60)
        self._predict(["ok"])  # the model loads: not part of the load
        pid = requests.get(self.url + "/status", timeout=10).json()["process"]["pid"]
        rss_before, started = _rss_mb(pid, "VmRSS"), time.time()
        threads = [threading.Thread(target=self.probe, args=(name,), daemon=True) for name in self.probe_ms]
        threads += [threading.Thread(target=self.client, args=(seed,), daemon=True) for seed in range(args.clients)]
        for thread in threads:
            thread.start()
        for thread in threads[2:]:
            thread.join(timeout=max(0.0, args.duration - (time.time() - started)))
        self.stop.set()
        for thread in threads:
            thread.join(timeout=200)
        return {
            "predict_requests": len(self.predict_ms) - 1, "errors": self.errors, "busy_503": self.busy,
            "predict_p50_ms": _pct(self.predict_ms, 0.5), "predict_p95_ms": _pct(self.predict_ms, 0.95),
            "health_probes": len(self.probe_ms["health"]), "health_p99_ms": _pct(self.probe_ms["health"], 0.99),
            "health_max_ms": _pct(self.probe_ms["health"], 1.0), "webhook_p99_ms": _pct(self.probe_ms["webhook"], 0.99),
            "tasks": self.outcomes, "backend_pid": pid, "rss_before_mb": rss_before,
            "rss_now_mb": _rss_mb(pid, "VmRSS"), "peak_rss_mb": _rss_mb(pid, "VmHWM"),
            "clients": args.clients, "seconds": round(time.time() - started, 1), "error_samples": self.samples[:5],
        }


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--url", required=True)
    parser.add_argument("--clients", type=int, default=50, help="concurrent /predict clients")
    parser.add_argument("--webhooks", type=int, default=1000, help="annotation events in the storm")
    parser.add_argument("--duration", type=float, default=30, help="minimum seconds of /predict load")
    parser.add_argument("--project", type=int, default=9001)
    parser.add_argument("--restart-cmd", help="shell command that crashes and restarts the backend mid-run")
    parser.add_argument("--train-timeout", type=float, default=300)
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--mixed", action="store_true", help="image load with slow and heavy items (see above)")
    parser.add_argument("--requests", type=int, default=200, help="--mixed: at most this many /predict calls")
    parser.add_argument("--slow-fraction", type=float, default=0.1, help="--mixed: share of slow-drip items")
    parser.add_argument("--heavy-fraction", type=float, default=0.2, help="--mixed: share of 15/64 Mpx PNGs")
    args = parser.parse_args(argv)
    if args.mixed:
        with HostileServer() as hostile:
            result = MixedSoak(args, hostile).run()
    else:
        result = Soak(args).run()
    print(json.dumps(result) if args.json else "\n".join(f"{key:>20}: {value}" for key, value in result.items()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
