"""Run a real Label Studio (1.23.2) for integration tests and talk to it with plain `requests`.

Importable without pytest. Typical use::

    from tests.ls_server import LabelStudioServer, ensure_label_studio_venv

    venv = ensure_label_studio_venv()
    with LabelStudioServer(venv) as ls:
        pid = ls.create_project("p", LABEL_CONFIG)
        task_ids = ls.import_files(pid, ["/path/a.jpg"])   # data.image == "/data/upload/<pid>/<uuid>-a.jpg"
        ml_id = ls.connect_ml_backend(pid, "http://127.0.0.1:9090")
        ls.retrieve_predictions(pid)                       # synchronous: one POST /predict for all tasks
        tasks = ls.list_tasks(pid)                         # each task has "predictions"

Environment knobs:
  LS_VENV                  venv holding Label Studio (default <repo>/.venv-ls)
  LS_STARTUP_TIMEOUT       seconds to wait for /health (default 180)
  LS_KEEP_DATA=1           keep the temp data dir after stop (for debugging)
"""

from __future__ import annotations

import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Iterable

import requests

LABEL_STUDIO_VERSION = "1.23.2"
REPO_ROOT = Path(__file__).resolve().parent.parent


def default_venv_dir() -> Path:
    return Path(os.environ.get("LS_VENV") or REPO_ROOT / ".venv-ls")


def ensure_label_studio_venv(venv_dir: str | os.PathLike | None = None) -> Path:
    """Return the venv dir, creating it and installing label-studio if `bin/label-studio` is missing."""
    venv_dir = Path(venv_dir) if venv_dir else default_venv_dir()
    exe = venv_dir / "bin" / "label-studio"
    if exe.exists():
        return venv_dir
    py = venv_dir / "bin" / "python"
    try:
        if not py.exists():
            print(f"[ls_server] creating venv {venv_dir}", flush=True)
            subprocess.run([sys.executable, "-m", "venv", str(venv_dir)], check=True)
        print(f"[ls_server] installing label-studio=={LABEL_STUDIO_VERSION} into {venv_dir} "
              "(several minutes)", flush=True)
        subprocess.run([str(py), "-m", "pip", "install", "-q", "--upgrade", "pip"], check=True)
        subprocess.run([str(py), "-m", "pip", "install", f"label-studio=={LABEL_STUDIO_VERSION}"], check=True)
    except (subprocess.CalledProcessError, OSError) as e:
        raise RuntimeError(
            f"Could not install label-studio=={LABEL_STUDIO_VERSION} into {venv_dir}: {e}. "
            f"Install it manually: {py} -m pip install label-studio=={LABEL_STUDIO_VERSION}"
        ) from e
    if not exe.exists():
        raise RuntimeError(f"label-studio installed but {exe} not found")
    print("[ls_server] label-studio installed", flush=True)
    return venv_dir


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class LabelStudioAPI:
    """Thin `requests` wrapper around the Label Studio REST API (legacy-token auth)."""

    url: str
    token: str

    @property
    def headers(self) -> dict:
        return {"Authorization": f"Token {self.token}"}

    # -- low level -------------------------------------------------------
    def request(self, method: str, path: str, *, expect: Iterable[int] | None = None, **kw) -> requests.Response:
        headers = {**self.headers, **kw.pop("headers", {})}
        kw.setdefault("timeout", 300)
        r = requests.request(method, self.url + path, headers=headers, **kw)
        ok = r.status_code in expect if expect else r.ok
        if not ok:
            raise RuntimeError(f"{method} {path} -> {r.status_code}: {r.text[:2000]}")
        return r

    def get(self, path, **kw):
        return self.request("GET", path, **kw).json()

    def post(self, path, json=None, **kw):
        return self.request("POST", path, json=json, **kw).json()

    def patch(self, path, json=None, **kw):
        return self.request("PATCH", path, json=json, **kw).json()

    # -- projects / tasks -------------------------------------------------
    def create_project(self, title: str, label_config: str, **fields) -> int:
        return self.post("/api/projects/", {"title": title, "label_config": label_config, **fields})["id"]

    def get_project(self, project_id: int) -> dict:
        return self.get(f"/api/projects/{project_id}/")

    def set_project(self, project_id: int, **fields) -> dict:
        """PATCH project fields, e.g. set_project(pid, model_version="x", label_config=...)."""
        return self.patch(f"/api/projects/{project_id}/", fields)

    def _new_task_ids(self, project_id: int, before: set[int]) -> list[int]:
        return [t["id"] for t in self.list_tasks(project_id) if t["id"] not in before]

    def import_files(self, project_id: int, paths: Iterable[str | os.PathLike]) -> list[int]:
        """Multipart upload -> one task per file, data.<first object name> == "/data/upload/<pid>/<uuid8>-<name>"."""
        before = {t["id"] for t in self.list_tasks(project_id)}
        paths = [Path(p) for p in paths]
        # LS iterates request.FILES.items(): every file needs its own form-field name
        files = [(f"file{i}", (p.name, p.read_bytes())) for i, p in enumerate(paths)]
        r = self.post(f"/api/projects/{project_id}/import", files=files)
        if r.get("task_count", len(paths)) != len(paths):
            raise RuntimeError(f"import of {len(paths)} files created {r.get('task_count')} tasks: {r}")
        return self._new_task_ids(project_id, before)

    def import_tasks(self, project_id: int, tasks: list[dict]) -> list[int]:
        """Import JSON tasks, e.g. [{"text": "..."}] or [{"data": {...}, "predictions": [...]}]."""
        before = {t["id"] for t in self.list_tasks(project_id)}
        self.post(f"/api/projects/{project_id}/import", tasks)
        return self._new_task_ids(project_id, before)

    def list_tasks(self, project_id: int, page_size: int = 100) -> list[dict]:
        """All tasks of a project with `predictions` and `annotations` included (paged)."""
        out, page = [], 1
        while True:
            r = self.request(
                "GET", "/api/tasks/",
                params={"project": project_id, "fields": "all", "page": page, "page_size": page_size},
                expect=(200, 404),
            )
            if r.status_code == 404:  # past the last page
                break
            body = r.json()
            tasks = body["tasks"] if isinstance(body, dict) else body
            out.extend(tasks)
            total = body.get("total") if isinstance(body, dict) else None
            if not tasks or len(tasks) < page_size or (total is not None and len(out) >= total):
                break
            page += 1
        return out

    def get_task(self, task_id: int) -> dict:
        return self.get(f"/api/tasks/{task_id}/")

    def list_predictions(self, task_id: int | None = None, project_id: int | None = None) -> list[dict]:
        params = {k: v for k, v in (("task", task_id), ("project", project_id)) if v is not None}
        return self.get("/api/predictions/", params=params)

    def create_annotation(self, task_id: int, result: list[dict], **fields) -> dict:
        """POST /api/tasks/<id>/annotations/ (fires ANNOTATION_CREATED webhooks synchronously)."""
        return self.post(f"/api/tasks/{task_id}/annotations/", {"result": result, **fields})

    def update_annotation(self, annotation_id: int, result: list[dict], **fields) -> dict:
        return self.patch(f"/api/annotations/{annotation_id}/", {"result": result, **fields})

    def delete_annotation(self, annotation_id: int) -> None:
        self.request("DELETE", f"/api/annotations/{annotation_id}/")

    # -- ML backends ------------------------------------------------------
    def connect_ml_backend(self, project_id: int, url: str, title: str = "test-backend", **fields) -> int:
        """POST /api/ml/ -> LS calls GET <url>/health and POST <url>/setup synchronously (400 if they fail).
        Side effect: LS auto-creates a project webhook to <url>/webhook for ALL actions."""
        body = {"project": project_id, "url": url, "title": title, **fields}
        return self.post("/api/ml/", body)["id"]

    def get_ml_backend(self, ml_id: int) -> dict:
        return self.get(f"/api/ml/{ml_id}")

    def list_ml_backends(self, project_id: int) -> list[dict]:
        return self.get("/api/ml/", params={"project": project_id})

    def train_ml_backend(self, ml_id: int) -> requests.Response:
        """POST /api/ml/<id>/train -> LS POSTs {"action": "START_TRAINING", "project": {...}} to <url>/webhook."""
        return self.request("POST", f"/api/ml/{ml_id}/train", json={}, expect=(200, 500))

    def run_action(self, project_id: int, action: str, selected: dict | None = None) -> dict:
        """Data Manager action (runs synchronously without Redis)."""
        body = {"selectedItems": selected or {"all": True, "excluded": []}}
        return self.post("/api/dm/actions/", body, params={"id": action, "project": project_id})

    def retrieve_predictions(self, project_id: int, task_ids: list[int] | None = None) -> dict:
        """Data Manager "Retrieve predictions": one POST /predict with all selected tasks that have no
        prediction for the backend's current model_version. Synchronous; predictions are stored on return."""
        selected = {"all": False, "included": task_ids} if task_ids else None
        return self.run_action(project_id, "retrieve_tasks_predictions", selected)

    # -- webhooks ---------------------------------------------------------
    def add_webhook(self, project_id: int | None, url: str, actions: list[str] | None = None,
                    send_payload: bool = True, headers: dict | None = None) -> int:
        """actions=None -> send_for_all_actions. Action names e.g. ANNOTATION_CREATED, ANNOTATION_UPDATED,
        ANNOTATIONS_DELETED, TASKS_CREATED, PROJECT_UPDATED."""
        body = {"url": url, "send_payload": send_payload, "send_for_all_actions": actions is None,
                "actions": actions or [], "headers": headers or {}, "is_active": True}
        if project_id is not None:
            body["project"] = project_id
        return self.post("/api/webhooks/", body)["id"]

    def list_webhooks(self, project_id: int | None = None) -> list[dict]:
        return self.get("/api/webhooks/", params={"project": project_id} if project_id else None)

    # -- tokens / files ---------------------------------------------------
    def create_personal_access_token(self) -> str:
        """Create (once per user) a Personal Access Token (JWT refresh token) via POST /api/token/.
        Works on a fresh LS 1.23.2: org JWT setting api_tokens_enabled is true by default.
        A second call would be 409 ("You already have a valid token"), so the PAT is cached."""
        pat = getattr(self, "_pat", None)
        if pat is None:
            pat = self._pat = self.post("/api/token/")["token"]
        return pat

    def pat_access_token(self, pat: str | None = None) -> str:
        """Exchange a PAT for a short-lived access token: use as `Authorization: Bearer <access>`."""
        pat = pat or self.create_personal_access_token()
        r = requests.post(self.url + "/api/token/refresh/", json={"refresh": pat}, timeout=30)
        r.raise_for_status()
        return r.json()["access"]

    def download(self, url_or_path: str, headers: dict | None = None) -> bytes:
        """Fetch a task URL such as "/data/upload/1/abc-x.jpg" (relative to LS) with the token."""
        url = url_or_path if url_or_path.startswith("http") else self.url + url_or_path
        r = requests.get(url, headers=self.headers if headers is None else headers, timeout=60)
        r.raise_for_status()
        return r.content


class LabelStudioClient(LabelStudioAPI):
    """API helpers against an already running Label Studio."""

    def __init__(self, url: str, token: str):
        self.url = url.rstrip("/")
        self.token = token


class LabelStudioServer(LabelStudioAPI):
    """Start Label Studio on a free 127.0.0.1 port with a throw-away data dir (context manager)."""

    def __init__(self, venv_dir: str | os.PathLike | None = None, port: int | None = None,
                 startup_timeout: float | None = None, extra_env: dict | None = None,
                 email: str = "admin@example.com", password: str = "Passw0rd-ls-test"):
        self.venv_dir = Path(venv_dir) if venv_dir else default_venv_dir()
        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.token = secrets.token_hex(20)  # legacy API token (40 hex chars)
        self.email, self.password = email, password
        self.startup_timeout = float(startup_timeout or os.environ.get("LS_STARTUP_TIMEOUT", 180))
        self.extra_env = extra_env or {}
        self.data_dir: Path | None = None
        self.log_path: Path | None = None
        self.proc: subprocess.Popen | None = None
        self.startup_seconds: float | None = None

    def env(self) -> dict:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("LABEL_STUDIO_", "DJANGO_"))}
        env.pop("HOST", None)  # HOST would turn into settings.HOSTNAME
        env.pop("VIRTUAL_ENV", None)
        env.update({
            "LABEL_STUDIO_BASE_DATA_DIR": str(self.data_dir),
            "LABEL_STUDIO_USERNAME": self.email,
            "LABEL_STUDIO_PASSWORD": self.password,
            "LABEL_STUDIO_USER_TOKEN": self.token,
            "LABEL_STUDIO_ENABLE_LEGACY_API_TOKEN": "true",
            "LABEL_STUDIO_DISABLE_SIGNUP_WITHOUT_LINK": "true",
            "DJANGO_DB": "sqlite",
            "ML_BLOCK_LOCAL_IP": "false",       # else LS refuses ML backends on 127.0.0.1
            "SSRF_PROTECTION_ENABLED": "false",  # else webhooks/ML urls on loopback are blocked
            "LATEST_VERSION_CHECK": "false",     # no call to pypi.org on start
            "COLLECT_ANALYTICS": "false",
            "SENTRY_DSN": "",
            "FRONTEND_SENTRY_DSN": "",
            "PYTHONUNBUFFERED": "1",
            "LOG_LEVEL": os.environ.get("LS_LOG_LEVEL", "INFO"),
        })
        env.update(self.extra_env)
        return env

    def start(self) -> "LabelStudioServer":
        exe = self.venv_dir / "bin" / "label-studio"
        if not exe.exists():
            raise RuntimeError(f"{exe} missing; call ensure_label_studio_venv() first")
        self.data_dir = Path(tempfile.mkdtemp(prefix="ls-data-"))
        self.log_path = self.data_dir / "label-studio.log"
        cmd = [str(exe), "start", "--no-browser", "--internal-host", "127.0.0.1", "--port", str(self.port),
               "--data-dir", str(self.data_dir)]
        t0 = time.monotonic()
        log = open(self.log_path, "wb")
        self.proc = subprocess.Popen(cmd, env=self.env(), cwd=str(self.data_dir), stdout=log,
                                     stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                     start_new_session=True)
        log.close()
        deadline = t0 + self.startup_timeout
        while True:
            if self.proc.poll() is not None:
                self._fail(f"Label Studio exited with code {self.proc.returncode}")
            if time.monotonic() > deadline:
                self._fail(f"Label Studio did not become healthy within {self.startup_timeout:.0f}s")
            try:
                r = requests.get(self.url + "/health", timeout=2)
                if r.ok:
                    # LS silently picks port+1 if the port is taken: make sure it is ours and auth works
                    requests.get(self.url + "/api/current-user/whoami", headers=self.headers,
                                 timeout=10).raise_for_status()
                    break
            except requests.RequestException:
                pass
            time.sleep(0.5)
        self.startup_seconds = time.monotonic() - t0
        return self

    def log_tail(self, n: int = 60) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-n:])
        except (OSError, AttributeError):
            return "<no log>"

    def _fail(self, msg: str):
        tail = self.log_tail()
        self.stop(keep_data=True)
        raise RuntimeError(f"{msg} (url {self.url}, log {self.log_path}). Last log lines:\n{tail}")

    def stop(self, keep_data: bool | None = None) -> None:
        if self.proc is not None and self.proc.poll() is None:
            try:
                os.killpg(self.proc.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                try:
                    os.killpg(self.proc.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
                self.proc.wait(timeout=10)
        self.proc = None
        if keep_data is None:
            keep_data = os.environ.get("LS_KEEP_DATA") == "1"
        if self.data_dir and not keep_data:
            shutil.rmtree(self.data_dir, ignore_errors=True)

    def __enter__(self) -> "LabelStudioServer":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


if __name__ == "__main__":  # manual: python tests/ls_server.py  -> starts LS and waits
    with LabelStudioServer(ensure_label_studio_venv()) as ls:
        print(f"Label Studio up at {ls.url} in {ls.startup_seconds:.1f}s; token {ls.token}; log {ls.log_path}")
        try:
            while True:
                time.sleep(3600)
        except KeyboardInterrupt:
            pass
