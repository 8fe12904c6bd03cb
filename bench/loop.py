"""The learning loop against a real Label Studio at 10k and 100k tasks (issue #12).

    .venv/bin/python -m bench.loop --n 10000 --runs 20 --json [--dataset ag_news|banking77]
                                   [--out DIR] [--store-cache DIR] [--pace 2.5] [--jitter 0.5]

What runs (one process drives everything; all on this machine):

1. A real Label Studio 1.23.2 (tests/ls_server.py) with one text classification project (one
   <Choice> per class of the data set) and N tasks imported through the import API in chunks:
   the data set's texts, repeated with a suffix " #k" to reach N, the true class in ``data.truth``.
2. The embedding store, prepared before the backend starts: the backend's own store code
   (backend.embed.store) writes one record per task, keyed by (project id, task id) and the hash of
   the task's text, into MODEL_DIR/chroma, so the backend finds every task embedded. The data set's
   distinct texts are embedded once with the real MiniLM (the backend's encoder) and cached under
   --store-cache; **a repeated text " #k" gets the vector of its original** (embedding 100,000 texts
   with MiniLM on 2 shared cores takes over an hour; the backend never sees the difference, since
   the record's hash is that of the task's own text). The built Chroma directory is cached per
   (data set, N, project id, first task id) and copied for the next run: a fresh Label Studio gives
   the same ids.
3. The backend as users run it (scripts/serve.sh: gunicorn, 1 worker), the real MiniLM,
   UNCERTAINTY_SAMPLING=true, QUEUE_BATCH=50, LABEL_STUDIO_URL = a counting HTTP proxy in front of
   Label Studio (with LABEL_STUDIO_URL and LABEL_STUDIO_API_KEY set, the backend ignores the
   hostname /setup sends: backend/runtime/connections.py), so every API request the backend makes
   is counted with its bytes. Label Studio's own calls to the backend (/setup, /predict, webhooks)
   go direct.
4. Connect (POST /api/ml/): the cold start (full reconcile, COLD_START_SAMPLE tasks embedded, the
   first batch ranked and written under the backend's title) is timed until Label Studio's queue
   serves that batch.
5. A simulated annotator: GET /api/projects/<id>/next/, POST the true label, wait --pace +- --jitter
   seconds, repeat, until --runs trained versions have reached Label Studio's queue.

Measured, per training run k (version v_k, trained on labels 1..L_k):
- **serving**: seconds from an annotation's submission to the first version trained on it serving
  (GET /status process.serving, which is what /setup answers), and
- **queue**: to that version's batch leading Label Studio's queue: the proxy sees the batch's import
  (rows under the title; matched to v_k by its task ids and scores in MODEL_DIR/rankings), and a
  poller confirms that the lowest-score unlabeled task under the title (the task /next serves with
  uncertainty sampling, asked through the Data Manager's ordering) belongs to it. The time is the
  end of the import when the first look after it confirms, else the first confirming look.
  Each annotation is a sample: "oldest" is a run's first annotation (it waited longest), p50/p95
  pool the annotations of runs 1-5 and of runs 16-20 (a run covers 1-3 annotations).
- the run's phases and reconcile (/status training.last_run), its ranking summary (last_ranking),
  and the backend's Label Studio requests and bytes during the run (proxy; requests that look like
  background pre-annotation -- listings of more than QUEUE_BATCH ids, imports of more than QUEUE_BATCH
  rows not under the title -- are counted apart).
After the last run: predictions Label Studio holds (GET /api/projects/<id>/model-versions/) against
N + 2 x QUEUE_BATCH; a "Retrieve predictions" of random unlabeled tasks (tasks left without a
prediction of ours afterwards are "retrieved without a stored prediction"); the served model's
accuracy on random unlabeled tasks through the backend's /predict.

One run per invocation on a shared 2-core machine: timings are noisy, nothing here asserts on them.
"""
from __future__ import annotations

import argparse
import http.client
import json
import multiprocessing
import os
import random
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from html import escape
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, unquote, urlsplit

import numpy as np
import requests

REPO = Path(__file__).resolve().parent.parent
TITLE = "clip-al-bench"
QUEUE_BATCH = 50
IMPORT_CHUNK = 5000


def log(*args):
    print(f"[loop {time.strftime('%H:%M:%S')}]", *args, file=sys.stderr, flush=True)


# -- data ---------------------------------------------------------------------------------------------
def dataset(name: str, n: int) -> tuple[list[str], list[str], list[str], np.ndarray]:
    """(label names, N texts, N true labels, base index per task): the texts repeated with " #k"."""
    from bench.datasets import load_raw

    raw = load_raw(name)
    names = [lab.output if hasattr(lab, "output") else str(lab) for lab in raw.labels]
    base = np.arange(n) % len(raw.items)
    texts = [raw.items[b] + (f" #{i // len(raw.items)}" if i >= len(raw.items) else "") for i, b in enumerate(base)]
    truth = [names[int(raw.y[b])] for b in base]
    return names, texts, truth, base


def label_config(names: list[str]) -> str:
    choices = "\n".join(f'    <Choice value="{escape(n, quote=True)}"/>' for n in names)
    return ('<View>\n  <Text name="text" value="$text"/>\n  <Choices name="label" toName="text" choice="single">\n'
            f"{choices}\n  </Choices>\n</View>")


def choice(label: str) -> list[dict]:
    return [{"from_name": "label", "to_name": "text", "type": "choices", "value": {"choices": [label]}}]


def base_embeddings(name: str, count: int, cache: Path) -> np.ndarray:
    """The first ``count`` distinct texts of the data set, embedded by the backend's MiniLM (cached)."""
    from bench.datasets import load_raw, text_encoder

    cache.mkdir(parents=True, exist_ok=True)
    for path in sorted(cache.glob(f"base_{name}_*.npy")):
        if int(path.stem.rsplit("_", 1)[1]) >= count:
            return np.load(path)[:count]
    raw = load_raw(name)
    log(f"embedding {count} distinct {name} texts with MiniLM (cached under {cache}; minutes)")
    started = time.perf_counter()
    X = text_encoder().encode_items(raw.items[:count])
    log(f"embedded in {time.perf_counter() - started:.0f}s")
    np.save(cache / f"base_{name}_{count}.npy", X)
    return X


def _build_store(path: str, project: str, encoder: str, first_id: int, texts: list[str], vectors_file: str,
                 base: list[int]) -> None:
    """In a child process (Chroma is closed when it exits): one record per task, as the backend writes it."""
    from backend.embed.store import StoredItem, content_hash, open_store

    X = np.load(vectors_file)
    store = open_store(path=path)
    items = [StoredItem(first_id + i, "text", content_hash(t), X[b]) for i, (t, b) in enumerate(zip(texts, base))]
    for start in range(0, len(items), 10000):
        store.put_many(project, encoder, items[start:start + 10000])
    assert store.count(project, encoder) == len(items)


def prepare_store(target: Path, cache: Path, name: str, texts: list[str], base: np.ndarray, project: int,
                  first_id: int, encoder: str) -> dict:
    """MODEL_DIR/chroma holding every task's embedding; built once per key, copied after."""
    started = time.perf_counter()
    key = cache / f"chroma_{name}_{len(texts)}_p{project}_t{first_id}_{encoder[:60]}"
    built = False
    if not (key / "done").exists():
        if key.exists():
            shutil.rmtree(key)
        X = base_embeddings(name, int(base.max()) + 1, cache)
        vectors = cache / f"_vectors_{os.getpid()}.npy"
        np.save(vectors, X)
        log(f"writing {len(texts)} records into a Chroma store (cached as {key})")
        ctx = multiprocessing.get_context("spawn")
        child = ctx.Process(target=_build_store, args=(str(key), str(project), encoder, first_id, texts,
                                                       str(vectors), [int(b) for b in base]))
        child.start()
        child.join()
        vectors.unlink(missing_ok=True)
        if child.exitcode != 0:
            raise RuntimeError(f"building the Chroma store failed (exit {child.exitcode})")
        (key / "done").write_text("ok")
        built = True
    if target.exists():
        shutil.rmtree(target)
    shutil.copytree(key, target, ignore=shutil.ignore_patterns("done"))
    return {"seconds": round(time.perf_counter() - started, 1), "built": built, "cache": str(key)}


# -- the counting proxy ---------------------------------------------------------------------------------
HOP = {"connection", "keep-alive", "proxy-authenticate", "proxy-authorization", "te", "trailers",
       "transfer-encoding", "upgrade", "content-length", "host"}


class CountingProxy:
    """HTTP/1.1 reverse proxy to Label Studio that records every request: time, method, path, bytes
    each way (request line + headers + body; status line + headers + body), and for imports of
    predictions their rows' tasks, scores and model versions."""

    def __init__(self, upstream: str):
        self.upstream = urlsplit(upstream)
        self.records: list[dict] = []
        self.lock = threading.Lock()
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):
                pass

            def _body(self) -> bytes:
                if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
                    out = b""
                    while True:
                        size = int(self.rfile.readline().strip().split(b";")[0], 16)
                        if size == 0:
                            self.rfile.readline()
                            return out
                        out += self.rfile.read(size)
                        self.rfile.readline()
                length = int(self.headers.get("Content-Length") or 0)
                return self.rfile.read(length) if length else b""

            def _upstream(self, method, body, headers):
                for attempt in (0, 1):
                    conn = getattr(self, "_conn", None)
                    if conn is None:
                        conn = self._conn = http.client.HTTPConnection(proxy.upstream.hostname, proxy.upstream.port,
                                                                       timeout=900)
                    try:
                        conn.request(method, self.path, body=body or None, headers=headers)
                        resp = conn.getresponse()
                        return resp, resp.read()
                    except (http.client.HTTPException, OSError):
                        conn.close()
                        self._conn = None
                        if attempt:
                            raise

            def _forward(self):
                started = time.time()
                body = self._body()
                headers = {k: v for k, v in self.headers.items() if k.lower() not in HOP}
                headers["Host"] = proxy.upstream.netloc
                if body:
                    headers["Content-Length"] = str(len(body))
                resp, data = self._upstream(self.command, body, headers)
                self.send_response_only(resp.status, resp.reason)
                out_headers = [(k, v) for k, v in resp.getheaders() if k.lower() not in HOP]
                for k, v in out_headers:
                    self.send_header(k, v)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(data)
                self.wfile.flush()
                ended = time.time()
                request_bytes = len(self.requestline) + 2 + len(str(self.headers)) + len(body)
                response_bytes = (15 + len(resp.reason or "") + sum(len(k) + len(v) + 4 for k, v in out_headers)
                                  + 24 + len(data))
                record = {"t0": started, "t1": ended, "method": self.command, "path": self.path.split("?", 1)[0],
                          "status": resp.status, "out": request_bytes, "in": response_bytes}
                proxy._describe(record, self.path, body)
                with proxy.lock:
                    proxy.records.append(record)

            do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = do_HEAD = _forward

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, name="proxy", daemon=True)

    @staticmethod
    def _describe(record: dict, path: str, body: bytes) -> None:
        """What kind of request: imports of predictions (rows), listings of chosen ids, filtered listings."""
        if record["method"] == "POST" and "/import/predictions" in path:
            try:
                rows = json.loads(body)
                record["rows"] = len(rows)
                record["versions"] = sorted({str(r.get("model_version")) for r in rows})
                if rows and all(r.get("model_version") == TITLE for r in rows):
                    record["batch"] = {int(r["task"]): float(r["score"]) for r in rows}
            except (ValueError, TypeError, KeyError):
                pass
        if record["method"] in ("POST", "PATCH") and urlsplit(path).path.startswith("/api/predictions/"):
            try:  # one row of the batch, created or updated in place (flows/publish.py)
                row = json.loads(body)
                if row.get("model_version") == TITLE:
                    record["batch"] = {int(row["task"]): float(row["score"])}
            except (ValueError, TypeError, KeyError, AttributeError):
                pass
        query = parse_qs(urlsplit(path).query).get("query")
        if query:
            try:
                q = json.loads(unquote(query[0]))
                included = (q.get("selectedItems") or {}).get("included")
                if included is not None:
                    record["ids"] = len(included)
                if "updated_at" in json.dumps(q.get("filters") or {}):
                    record["changed_since"] = True
            except (ValueError, AttributeError):
                pass

    def start(self) -> "CountingProxy":
        self.thread.start()
        return self

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()

    def snapshot(self) -> list[dict]:
        with self.lock:
            return list(self.records)


def is_background(record: dict) -> bool:
    """Requests of the background pre-annotation (chunks of up to 1,000 tasks), not of a run."""
    if record.get("rows") and not record.get("batch") and record["rows"] > QUEUE_BATCH:
        return True
    return record.get("ids", 0) > QUEUE_BATCH


# -- watching ---------------------------------------------------------------------------------------------
class Monitor:
    """Polls the backend's /status, its saved ranking (MODEL_DIR/rankings) and the head of Label Studio's
    queue (the lowest-score unlabeled task under the title, as uncertainty sampling orders them)."""

    def __init__(self, ls, backend_url: str, project: int, model_dir: Path, interval: float):
        self.ls, self.backend, self.project, self.model_dir = ls, backend_url, project, model_dir
        self.interval = interval
        self.serving_seen: dict[str, float] = {}  # version -> first time /status showed it serving
        self.runs_seen: dict[int, dict] = {}  # generation -> {"t": first seen, **last_run}
        self.rankings_seen: dict[str, dict] = {}  # version -> {"t", "priorities"} (MODEL_DIR/rankings)
        self.heads: list[tuple[float, float, int | None]] = []  # (asked at, answered at, head task id)
        self.last_ranking: dict = {}
        self.status: dict = {}
        self.stop_event = threading.Event()
        self.errors = 0
        self.thread = threading.Thread(target=self._loop, name="monitor", daemon=True)

    def start(self) -> "Monitor":
        self.thread.start()
        return self

    def stop(self) -> None:
        self.stop_event.set()
        self.thread.join(30)

    def head(self) -> int | None:
        """The task Label Studio's uncertainty sampling serves next (ignoring locks): lowest score first
        among unlabeled tasks holding a prediction under the project's model version (the title)."""
        query = {"filters": {"conjunction": "and", "items": [
            {"filter": "filter:tasks:predictions_model_versions", "operator": "contains", "type": "List",
             "value": [TITLE]},
            {"filter": "filter:tasks:total_annotations", "operator": "equal", "type": "Number", "value": 0}]},
            "ordering": ["tasks:predictions_score"]}
        body = self.ls.get("/api/tasks/", params={"project": self.project, "page": 1, "page_size": 1,
                                                  "fields": "task_only", "query": json.dumps(query)}, timeout=60)
        tasks = body.get("tasks") if isinstance(body, dict) else body
        return int(tasks[0]["id"]) if tasks else None

    def poll_once(self) -> None:
        now = time.time()
        try:
            status = requests.get(self.backend + "/status", timeout=30).json()
        except (requests.RequestException, ValueError):
            self.errors += 1
            return
        self.status = status
        p = str(self.project)
        serving = (status.get("process") or {}).get("serving", {}).get(p)
        if serving and serving not in self.serving_seen:
            self.serving_seen[serving] = now
        training = status.get("training") or {}
        last_run = (training.get("last_run") or {}).get(p)
        if last_run and last_run.get("generation") not in self.runs_seen:
            self.runs_seen[last_run["generation"]] = {"t": now, **last_run}
        self.last_ranking = (training.get("last_ranking") or {}).get(p) or {}
        from backend.state.project_state import ProjectState

        ranking = ProjectState(self.model_dir, p).ranking()
        if ranking and ranking.model_version not in self.rankings_seen:
            self.rankings_seen[ranking.model_version] = {"t": now, "priorities": dict(ranking.priorities)}
        asked = time.time()
        try:
            head = self.head()
        except Exception:  # a slow or busy Label Studio: the next look tries again
            self.errors += 1
            return
        self.heads.append((asked, time.time(), head))

    def _loop(self) -> None:
        while not self.stop_event.is_set():
            started = time.time()
            self.poll_once()
            self.stop_event.wait(max(0.0, self.interval - (time.time() - started)))


# -- the annotator -------------------------------------------------------------------------------------------
class Annotator:
    def __init__(self, ls, project: int, pace: float, jitter: float, seed: int):
        self.ls, self.project, self.pace, self.jitter = ls, project, pace, jitter
        self.rng = random.Random(seed)
        self.done: list[dict] = []  # {"i", "task", "t" (submitted), "t_done", "served_from_batch", "ours"}
        self.stop_event = threading.Event()
        self.errors: list[str] = []
        self.server_errors = 0  # 5xx answers to /next or the annotation (SQLite: "database is locked")
        self.thread = threading.Thread(target=self._loop, name="annotator", daemon=True)

    def start(self) -> "Annotator":
        self.thread.start()
        return self

    def stop(self) -> None:
        self.stop_event.set()
        self.thread.join(120)

    def _loop(self) -> None:
        from backend.model import BACKEND_VERSION

        while not self.stop_event.is_set():
            try:
                asked = time.time()
                task = self.ls.get(f"/api/projects/{self.project}/next/", timeout=120)
                got = time.time()
                versions = [p.get("model_version") for p in task.get("predictions") or []]
                submitted = time.time()
                self.ls.create_annotation(task["id"], choice(task["data"]["truth"]))
                self.done.append({"i": len(self.done) + 1, "task": int(task["id"]), "t": submitted,
                                  "t_done": time.time(), "next_s": round(got - asked, 3),
                                  "title": TITLE in versions,
                                  "ours": any(v == TITLE or BACKEND_VERSION.match(str(v)) for v in versions)})
            except Exception as exc:  # noted; the loop goes on (Label Studio busy, no task left...)
                self.errors.append(f"{type(exc).__name__}: {str(exc)[:300]}")
                self.server_errors += bool(re.search(r" -> 5\d\d:", str(exc)))
                if len(self.errors) > 50:
                    return
            self.stop_event.wait(max(0.2, self.pace + self.rng.uniform(-self.jitter, self.jitter)))


# -- analysis --------------------------------------------------------------------------------------------------
def pct(values: list[float], q: float) -> float | None:
    if not values:
        return None
    return round(float(np.percentile(np.asarray(values, dtype=float), q)), 2)


def batch_pushes(records: list[dict]) -> list[dict]:
    """Imports of rows under the title (the queue's batches), in order: {"t0", "t1", "batch"}."""
    return [r for r in records if r.get("batch")]


def match_push(pushes: list[dict], priorities: dict[int, float], after: float) -> dict | None:
    """The import of this ranking's batch: same tasks and scores (the first such after ``after``)."""
    want = {int(k): round(float(v), 6) for k, v in priorities.items()}
    for i, push in enumerate(pushes):
        if push["t1"] < after:
            continue
        # the batch arrives in parts (flows/publish.py): the new tasks (one import or one create each),
        # then the tasks staying in the batch updated in place; it leads from the first part
        merged: dict[int, float] = {}
        for j in range(i, len(pushes)):
            merged.update({k: round(v, 6) for k, v in pushes[j]["batch"].items()})
            if merged == want:
                return {**push, "batch": merged, "parts": j - i + 1}
            if any(want.get(k) != v for k, v in merged.items()):
                break
    return None


def queue_time(push: dict, heads: list[tuple[float, float, int | None]], tasks: set[int]) -> tuple[float | None, str]:
    """When the batch led Label Studio's queue: the end of its import if the first look that started
    after it saw a batch task at the head; else the first look that did (and how it was decided)."""
    later = [h for h in heads if h[0] >= push["t1"]]
    if not later:
        return None, "no look after the import"
    if later[0][2] in tasks:
        return push["t1"], "import end (confirmed by the next look)"
    for asked, _, head in later:
        if head in tasks:
            return asked, "first look showing the batch at the head"
    return None, "never seen at the head"


def window_traffic(records: list[dict], start: float, end: float) -> dict:
    inside = [r for r in records if start <= r["t0"] <= end]
    run = [r for r in inside if not is_background(r)]
    bg = [r for r in inside if is_background(r)]
    return {"requests": len(run), "bytes_out": sum(r["out"] for r in run), "bytes_in": sum(r["in"] for r in run),
            "background_requests": len(bg), "background_bytes": sum(r["out"] + r["in"] for r in bg),
            "by_endpoint": _by_endpoint(run)}


def _by_endpoint(records: list[dict]) -> dict[str, int]:
    out: dict[str, int] = {}
    for r in records:
        path = r["path"]
        parts = ["<id>" if p.isdigit() else p for p in path.strip("/").split("/")]
        key = f"{r['method']} /{'/'.join(parts)}/" + ("?updated_at" if r.get("changed_since") else
                                                      "?ids" if "ids" in r else "")
        out[key] = out.get(key, 0) + 1
    return dict(sorted(out.items()))


def analyse(annotations: list[dict], reports: list[dict], monitor: Monitor, records: list[dict], runs: int) -> dict:
    """Per run: versions in order of their label counts, each annotation mapped to the first version
    trained on it."""
    versions = sorted((r for r in reports if r.get("labels") is not None), key=lambda r: r.get("number") or 0)
    pushes = batch_pushes(records)
    run_gens = sorted(monitor.runs_seen.items())
    out = []
    previous_labels = 0
    for k, report in enumerate(versions, start=1):
        name, labels = report["version"], int(report["labels"])
        covered = [a for a in annotations if previous_labels < a["i"] <= labels]
        previous_labels = max(previous_labels, labels)
        serving_at = monitor.serving_seen.get(name)
        ranking = monitor.rankings_seen.get(name)
        push = match_push(pushes, ranking["priorities"], covered[0]["t"] if covered else 0) if ranking else None
        queue_at, how = queue_time(push, monitor.heads, set(push["batch"])) if push else (None, "no import seen")
        run = next((r for _, r in run_gens if r.get("version") == name), None)
        row = {"run": k, "version": name, "labels": labels, "annotations": len(covered),
               "serving_s": [round(serving_at - a["t"], 2) for a in covered] if serving_at else [],
               "queue_s": [round(queue_at - a["t"], 2) for a in covered] if queue_at else [],
               "queue_how": how, "batch": len(push["batch"]) if push else None}
        if run:
            end, seconds = run["t"], float(run.get("seconds") or 0)
            row.update(phases=run.get("phases"), reconciled=run.get("reconciled"), run_seconds=seconds,
                       traffic=window_traffic(records, end - seconds - 0.5, end))
        out.append(row)
    return {"runs": out[:max(runs, len(out))]}


def summarize(rows: list[dict], runs: int) -> dict:
    def pooled(key, first, last):
        return [v for r in rows if first <= r["run"] <= last for v in r[key]]

    def oldest(key, k):
        r = next((r for r in rows if r["run"] == k), None)
        return max(r[key]) if r and r[key] else None

    early, late = (1, 5), (max(1, runs - 4), runs)
    out = {}
    for key in ("serving_s", "queue_s"):
        a, b = pooled(key, *early), pooled(key, *late)
        out[key] = {f"p50_runs_{early[0]}_{early[1]}": pct(a, 50), f"p95_runs_{early[0]}_{early[1]}": pct(a, 95),
                    f"p50_runs_{late[0]}_{late[1]}": pct(b, 50), f"p95_runs_{late[0]}_{late[1]}": pct(b, 95),
                    "p50_all": pct(pooled(key, 1, runs), 50), "p95_all": pct(pooled(key, 1, runs), 95),
                    "run_2_oldest": oldest(key, 2), f"run_{runs}_oldest": oldest(key, runs),
                    "samples_early": len(a), "samples_late": len(b)}
        if out[key][f"p50_runs_{early[0]}_{early[1]}"] and out[key][f"p50_runs_{late[0]}_{late[1]}"]:
            out[key]["late_over_early_p50"] = round(out[key][f"p50_runs_{late[0]}_{late[1]}"] /
                                                    out[key][f"p50_runs_{early[0]}_{early[1]}"], 2)
    phases = [r for r in rows if r.get("phases") and r["run"] <= runs]
    if phases:
        out["run_seconds"] = {f"run_{r['run']}": r["run_seconds"] for r in phases if r["run"] in (1, 2, runs)}
        out["run_seconds_p50"] = pct([r["run_seconds"] for r in phases], 50)
        names = sorted({k for r in phases for k in r["phases"]})
        out["phase_p50_s"] = {n: pct([r["phases"].get(n, 0.0) for r in phases], 50) for n in names}
        out["reconciled_tasks_max"] = max((r.get("reconciled") or {}).get("tasks", 0) for r in phases)
        out["reconciled_full_runs"] = sum(1 for r in phases if (r.get("reconciled") or {}).get("full"))
        traffic = [r["traffic"] for r in phases if r.get("traffic")]
        out["requests_per_run_p50"] = pct([t["requests"] for t in traffic], 50)
        out["requests_per_run_max"] = max((t["requests"] for t in traffic), default=None)
        out["kib_per_run_p50"] = pct([(t["bytes_out"] + t["bytes_in"]) / 1024 for t in traffic], 50)
        out["kib_per_run_max"] = round(max(((t["bytes_out"] + t["bytes_in"]) / 1024 for t in traffic), default=0), 1)
    return out


# -- the benchmark ---------------------------------------------------------------------------------------------
def import_tasks(ls, project: int, texts: list[str], truth: list[str]) -> dict:
    started = time.perf_counter()
    for start in range(0, len(texts), IMPORT_CHUNK):
        chunk = [{"text": t, "truth": y} for t, y in zip(texts[start:start + IMPORT_CHUNK],
                                                         truth[start:start + IMPORT_CHUNK])]
        ls.post(f"/api/projects/{project}/import", chunk, timeout=1800)
        if start and start % (4 * IMPORT_CHUNK) == 0:
            log(f"imported {start + len(chunk)}/{len(texts)} tasks")
    first = ls.get("/api/tasks/", params={"project": project, "page": 1, "page_size": 1})
    first = (first["tasks"] if isinstance(first, dict) else first)[0]["id"]
    for offset in (0, len(texts) // 2, len(texts) - 1):  # the import kept the order: ids first_id + i
        task = ls.get_task(first + offset)
        if task["data"]["text"] != texts[offset] or task["project"] != project:
            raise RuntimeError(f"task {first + offset} is not the {offset}th text: the ids do not follow the import")
    return {"seconds": round(time.perf_counter() - started, 1), "first_id": int(first)}


def wait(predicate, timeout: float, step: float = 0.25):
    deadline = time.time() + timeout
    while time.time() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(step)
    return None


def retrieve_check(ls, backend: str, project: int, ids: list[int], serving: str) -> dict:
    """Label Studio's "Retrieve predictions" on unlabeled tasks: which end up without a prediction of ours."""
    from backend.model import BACKEND_VERSION

    started = time.perf_counter()
    answer = ls.retrieve_predictions(project, ids)
    seconds = round(time.perf_counter() - started, 2)

    def missing():
        lacking = []
        for start in range(0, len(ids), 200):
            query = json.dumps({"selectedItems": {"all": False, "included": ids[start:start + 200]}})
            body = ls.get("/api/tasks/", params={"project": project, "fields": "all", "page_size": 500,
                                                  "query": query}, timeout=300)
            for task in body["tasks"] if isinstance(body, dict) else body:
                if not any(BACKEND_VERSION.match(str(p.get("model_version"))) or p.get("model_version") == TITLE
                           for p in task.get("predictions") or []):
                    lacking.append(task["id"])
        return lacking

    at_answer = missing()
    idle = wait(lambda: not (requests.get(backend + "/status", timeout=30).json().get("preannotation", {})
                             .get(str(project), {}).get("pending")), timeout=600, step=1.0)
    after = missing()
    return {"tasks": len(ids), "answer": answer.get("detail") if isinstance(answer, dict) else str(answer)[:200],
            "seconds": seconds, "serving": serving, "without_prediction_at_answer": len(at_answer),
            "without_prediction_after_background": len(after), "background_idle": bool(idle),
            "examples": after[:10]}


def pool_accuracy(backend: str, project: int, config: str, tasks: list[dict]) -> dict:
    """The served model on unlabeled tasks, through /predict (the embeddings come from the store)."""
    started = time.perf_counter()
    body = {"tasks": [{"id": t["id"], "data": {"text": t["text"]}} for t in tasks], "project": str(project),
            "label_config": config}
    results = requests.post(backend + "/predict", json=body, timeout=600).json()["results"]
    right = answered = 0
    version = None
    for task, result in zip(tasks, results):
        if not result:
            continue
        answered += 1
        version = result.get("model_version", version)
        chosen = result["result"][0]["value"]["choices"]
        right += int(chosen == [task["truth"]])
    return {"tasks": len(tasks), "answered": answered, "accuracy": round(right / max(answered, 1), 4),
            "version": version, "seconds": round(time.perf_counter() - started, 2)}


def run(args) -> dict:
    from backend.config import Settings
    from backend.embed.encoders import encoder_id
    from backend.runtime.models import encoder_spec
    from tests.helpers import BackendProcess, backend_env
    from tests.ls_server import LabelStudioServer, ensure_label_studio_venv, free_port

    wall = time.perf_counter()
    out_dir = Path(args.out or tempfile.mkdtemp(prefix=f"bench-loop-{args.n}-"))
    out_dir.mkdir(parents=True, exist_ok=True)
    cache = Path(args.store_cache)
    names, texts, truth, base = dataset(args.dataset, args.n)
    config = label_config(names)
    work = Path(tempfile.mkdtemp(prefix="bench-loop-work-"))
    env = backend_env(work, UNCERTAINTY_SAMPLING="true", QUEUE_BATCH=str(QUEUE_BATCH), LOG_LEVEL="INFO")
    encoder = encoder_id("text", encoder_spec(Settings.from_env(env)))
    result: dict = {"config": {"n": args.n, "runs": args.runs, "db": args.db, "sweep": args.sweep,
                               "dataset": args.dataset, "classes": len(names),
                               "pace_s": args.pace, "jitter_s": args.jitter, "queue_batch": QUEUE_BATCH,
                               "poll_s": args.poll, "seed": args.seed, "out": str(out_dir)},
                    "setup": {}}
    base_embeddings(args.dataset, int(base.max()) + 1, cache)  # before Label Studio: the CPU is ours
    ls = proxy = backend = monitor = annotator = pg = None
    try:
        db_env = {}
        if args.db == "postgresql":
            from bench.postgres import PostgresServer

            pg = PostgresServer().start()
            db_env = pg.label_studio_env()
        ls = LabelStudioServer(ensure_label_studio_venv(), extra_env={**db_env, "LS_LOG_LEVEL": "WARNING",
                                                                      "LOG_LEVEL": "WARNING"}).start()
        result["setup"]["label_studio_start_s"] = round(ls.startup_seconds, 1)
        log(f"Label Studio up at {ls.url} in {ls.startup_seconds:.0f}s")
        project = ls.create_project("loop bench", config)
        imported = import_tasks(ls, project, texts, truth)
        result["setup"]["import_s"] = imported["seconds"]
        log(f"imported {args.n} tasks in {imported['seconds']:.0f}s (project {project}, first task {imported['first_id']})")
        store = {"seconds": 0.0, "built": "no: the backend's sweep embeds"} if args.sweep else \
            prepare_store(Path(env["MODEL_DIR"]) / "chroma", cache, args.dataset, texts, base, project,
                          imported["first_id"], encoder)
        result["setup"]["store"] = store
        log(f"embedding store ready in {store['seconds']:.0f}s (built: {store['built']})")
        proxy = CountingProxy(ls.url).start()
        env.update(LABEL_STUDIO_URL=proxy.url, LABEL_STUDIO_API_KEY=ls.create_personal_access_token())
        started = time.perf_counter()
        backend = BackendProcess(env, out_dir / "backend.log", free_port()).start(timeout=300)
        result["setup"]["backend_start_s"] = round(time.perf_counter() - started, 1)
        monitor = Monitor(ls, backend.url, project, Path(env["MODEL_DIR"]), args.poll).start()

        # cold start: connect -> the first batch leads Label Studio's queue
        t_connect = time.time()
        ls.connect_ml_backend(project, backend.url, title=TITLE)
        t_connected = time.time()
        first = wait(lambda: monitor.heads and monitor.heads[-1][0] > t_connected and monitor.heads[-1][2],
                     timeout=args.cold_timeout, step=0.2)
        if not first:
            raise RuntimeError(f"no batch in Label Studio's queue {args.cold_timeout}s after connecting")
        t_first = next(h[0] for h in monitor.heads if h[0] > t_connected and h[2])
        pushes = batch_pushes(proxy.snapshot())
        cold_run = wait(lambda: next(iter(monitor.runs_seen.values()), None), timeout=120)
        result["cold_start"] = {
            "connect_s": round(t_connected - t_connect, 2),
            "first_batch_import_end_s": round(pushes[0]["t1"] - t_connect, 2) if pushes else None,
            "first_batch_served_s": round(t_first - t_connect, 2),
            "run": cold_run, "ranking": dict(monitor.last_ranking),
            "traffic": window_traffic(proxy.snapshot(), t_connect, t_first)}
        log(f"cold start: first batch leads the queue {t_first - t_connect:.1f}s after connecting "
            f"(run: {json.dumps(cold_run)})")

        # the annotator, until --runs trained versions reached the queue
        annotator = Annotator(ls, project, args.pace, args.jitter, args.seed).start()
        deadline = time.time() + args.loop_timeout
        trained = []
        while time.time() < deadline:
            trained = [r for r in monitor.runs_seen.values() if r.get("version")]
            if len(trained) >= args.runs:
                break
            if annotator.errors and not annotator.thread.is_alive():
                break
            time.sleep(1.0)
            if int(time.time()) % 30 == 0:
                log(f"{len(annotator.done)} annotations, {len(trained)} trained runs, preannotation "
                    f"{monitor.status.get('preannotation', {}).get(str(project))}")
        annotator.stop()
        wait(lambda: not monitor.status.get("training", {}).get("busy"), timeout=300, step=0.5)
        time.sleep(2 * args.poll + 1)
        monitor.stop()
        result["annotations"] = len(annotator.done)
        result["annotator_errors"] = annotator.errors[:5]
        result["annotator_5xx"] = annotator.server_errors
        result["served_from_batch"] = sum(1 for a in annotator.done if a["title"])
        result["served_without_our_prediction"] = sum(1 for a in annotator.done if not a["ours"])
        result["next_s_p50"] = pct([a["next_s"] for a in annotator.done], 50)
        result["monitor"] = {"looks": len(monitor.heads), "errors": monitor.errors,
                             "head_query_s_p50": pct([h[1] - h[0] for h in monitor.heads], 50)}
        records = proxy.snapshot()
        reports = requests.get(backend.url + "/reports", params={"project": project}, timeout=60).json()["reports"]
        analysis = analyse(annotator.done, reports, monitor, records, args.runs)
        result["runs"] = analysis["runs"]
        result["summary"] = summarize(result["runs"], args.runs)

        # what Label Studio holds, and checks on the served model
        held = ls.get(f"/api/projects/{project}/model-versions/")
        status = requests.get(backend.url + "/status", timeout=30).json()
        serving = status["process"]["serving"].get(str(project))
        result["final"] = {"model_versions": held, "held_total": sum(held.values()),
                           "bound": args.n + 2 * QUEUE_BATCH, "serving": serving,
                           "last_ranking": status["training"]["last_ranking"].get(str(project)),
                           "preannotation": status.get("preannotation", {}).get(str(project)),
                           "failures": status["training"].get("failures"),
                           "last_error": status["training"].get("last_error")}
        labeled = {a["task"] for a in annotator.done}
        result["final"]["audit_share"] = audit_share(Path(env["MODEL_DIR"]), project, labeled, args.pace)
        first_id = imported["first_id"]
        rng = random.Random(args.seed)
        pool = [i for i in rng.sample(range(args.n), min(args.n, 2 * args.sample + len(labeled)))
                if first_id + i not in labeled]
        accuracy_ids, retrieve_ids = pool[:args.sample], pool[args.sample:2 * args.sample]
        result["final"]["pool_accuracy"] = pool_accuracy(
            backend.url, project, config, [{"id": first_id + i, "text": texts[i], "truth": truth[i]}
                                           for i in accuracy_ids])
        if retrieve_ids:
            result["final"]["retrieve"] = retrieve_check(ls, backend.url, project,
                                                         [first_id + i for i in retrieve_ids], serving)
        held = ls.get(f"/api/projects/{project}/model-versions/")
        result["final"]["model_versions_after_checks"] = held
        result["final"]["held_total_after_checks"] = sum(held.values())
        (out_dir / "proxy.json").write_text(json.dumps(records))
        (out_dir / "annotations.json").write_text(json.dumps(annotator.done))
        (out_dir / "heads.json").write_text(json.dumps(monitor.heads))
        try:
            result["final"]["metrics_lines"] = [line for line in requests.get(backend.url + "/metrics", timeout=30)
                                                .text.splitlines() if "last_run_seconds{" in line]
        except requests.RequestException:
            pass
    finally:
        for thing in (annotator, monitor):
            if thing is not None:
                thing.stop()
        if backend is not None:
            try:
                backend.kill()
            except subprocess.TimeoutExpired:  # a run or the background sweep still finishing: no result lost
                import signal

                backend.kill(signal.SIGKILL)
        if proxy is not None:
            proxy.stop()
        if ls is not None:
            if ls.log_path and ls.log_path.exists():
                shutil.copy(ls.log_path, out_dir / "label-studio.log")
            ls.stop()
        if pg is not None:
            pg.stop()
        shutil.rmtree(work, ignore_errors=True)
    result["wall_s"] = round(time.perf_counter() - wall, 1)
    result["targets"] = targets(result)
    (out_dir / "result.json").write_text(json.dumps(result, indent=1))
    return result


def audit_share(model_dir: Path, project: int, labeled: set[int], pace: float) -> dict:
    """The audit items among the annotator's labels (the draws the backend remembers), at this pace."""
    path = model_dir / "rankings" / f"{project}.audit.json"
    draws = set(json.loads(path.read_text())) if path.exists() else set()
    n = len(draws & labeled)
    return {"audit": n, "labels": len(labeled), "share": round(n / len(labeled), 4) if labeled else None,
            "pace_s": pace, "text": f"{n} audit items of {len(labeled)} labels at {pace:g} s a label"}


def targets(result: dict) -> dict:
    s = result.get("summary", {})
    queue = s.get("queue_s", {})
    runs = result["config"]["runs"]
    final = result.get("final", {})
    retrieve = final.get("retrieve", {})
    return {
        "queue_p50_le_15s": {"value": queue.get("p50_all"), "met": (queue.get("p50_all") or 1e9) <= 15},
        f"runs_{max(1, runs - 4)}_{runs}_le_1.2x_runs_1_5": {"value": queue.get("late_over_early_p50"),
                                                          "met": (queue.get("late_over_early_p50") or 1e9) <= 1.2},
        "held_le_n_plus_2_batches": {"value": final.get("held_total_after_checks", final.get("held_total")),
                                     "bound": final.get("bound"),
                                     "met": (final.get("held_total_after_checks") or 0) <= (final.get("bound") or 0)},
        "retrieved_without_prediction_zero": {
            "value": retrieve.get("without_prediction_after_background"),
            "met": retrieve.get("without_prediction_after_background") == 0},
    }


def table(result: dict) -> str:
    lines = [f"N={result['config']['n']} {result['config']['dataset']}: "
             f"cold start {result.get('cold_start', {}).get('first_batch_served_s')} s to the first batch served",
             "run  labels  serving_s(oldest)  queue_s(oldest)  run_s  reconcile  tasks  requests  KiB"]
    for r in result.get("runs", []):
        t = r.get("traffic") or {}
        lines.append(f"{r['run']:>3}  {r['labels']:>6}  {max(r['serving_s'], default=float('nan')):>17.2f}  "
                     f"{max(r['queue_s'], default=float('nan')):>15.2f}  {r.get('run_seconds', float('nan')):>5.2f}  "
                     f"{(r.get('phases') or {}).get('reconcile', float('nan')):>9.2f}  "
                     f"{(r.get('reconciled') or {}).get('tasks', '-'):>5}  {t.get('requests', '-'):>8}  "
                     f"{(t.get('bytes_out', 0) + t.get('bytes_in', 0)) / 1024:>5.0f}")
    lines.append(f"annotator: {result.get('annotations')} annotations, {result.get('annotator_5xx')} answers 5xx")
    lines.append(json.dumps(result.get("summary"), indent=1))
    lines.append("audit share: " + str((result.get("final") or {}).get("audit_share", {}).get("text")))
    lines.append(json.dumps(result.get("targets"), indent=1))
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--n", type=int, default=10000, help="tasks in the project")
    ap.add_argument("--sweep", action="store_true",
                    help="no embedding store prepared: the backend's first-connect sweep embeds the project "
                         "while the annotator works (a new user's first hour)")
    ap.add_argument("--db", choices=("sqlite", "postgresql"), default="sqlite",
                    help="Label Studio's database: SQLite (its default) or a throw-away PostgreSQL (bench/postgres.py)")
    ap.add_argument("--runs", type=int, default=20, help="trained versions to wait for")
    ap.add_argument("--dataset", choices=("ag_news", "banking77"), default="ag_news")
    ap.add_argument("--out", help="directory for result.json, backend and Label Studio logs, proxy records")
    ap.add_argument("--store-cache", default=os.environ.get("LOOP_CACHE", "/tmp/loop_cache"),
                    help="embeddings and built Chroma stores, reused between runs")
    ap.add_argument("--pace", type=float, default=2.5, help="seconds between annotations (mean)")
    ap.add_argument("--jitter", type=float, default=0.5, help="+- seconds around --pace (uniform)")
    ap.add_argument("--poll", type=float, default=0.3, help="seconds between looks at /status and the queue head")
    ap.add_argument("--sample", type=int, default=1000, help="unlabeled tasks for the accuracy and retrieve checks")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--cold-timeout", type=float, default=1800)
    ap.add_argument("--loop-timeout", type=float, default=1800)
    ap.add_argument("--json", action="store_true", help="print the result as JSON (else a table)")
    args = ap.parse_args(argv)
    result = run(args)
    print(json.dumps(result) if args.json else table(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
