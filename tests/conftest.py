from pathlib import Path

import pytest

from backend.config import Settings
from tests.helpers import DATA_DIR, BackendProcess, backend_env
from tests.ls_server import LabelStudioServer, ensure_label_studio_venv, free_port


@pytest.fixture
def settings(tmp_path) -> Settings:
    return Settings.from_env(backend_env(tmp_path, LOCAL_FILES_DOCUMENT_ROOT=DATA_DIR))


@pytest.fixture(scope="session")
def cifar_images() -> dict[str, list[Path]]:
    root = DATA_DIR / "cifar10-test"
    if not root.is_dir():
        pytest.fail(f"shared data not found at {root} (set SHARED_DATA)")
    return {d.name: sorted(d.glob("*.jpg")) for d in sorted(root.iterdir()) if d.is_dir()}


@pytest.fixture(scope="session")
def sms_messages() -> list[tuple[str, str]]:
    """(label, text) pairs of the SMS Spam Collection."""
    lines = (DATA_DIR / "sms_spam" / "SMSSpamCollection").read_text(encoding="utf-8").splitlines()[1:]
    return [tuple(line.split("\t", 1)) for line in lines if "\t" in line]


@pytest.fixture(scope="session")
def label_studio():
    """A real Label Studio 1.23.2 on a free 127.0.0.1 port (temp data dir), shared by the session.

    Installs label-studio into LS_VENV (default <repo>/.venv-ls) if missing.
    """
    venv = ensure_label_studio_venv()
    with LabelStudioServer(venv) as ls:
        print(f"\n[label_studio] up at {ls.url} after {ls.startup_seconds:.1f}s (log {ls.log_path})")
        yield ls


@pytest.fixture(scope="session")
def backend(label_studio, tmp_path_factory):
    """Our backend as users run it: scripts/serve.sh, configured with a personal access token,
    opted in to switching projects to uncertainty sampling."""
    tmp = tmp_path_factory.mktemp("backend")
    env = backend_env(tmp, LABEL_STUDIO_URL=label_studio.url,
                      LABEL_STUDIO_API_KEY=label_studio.create_personal_access_token(),
                      UNCERTAINTY_SAMPLING="true", QUEUE_BATCH="12")
    server = BackendProcess(env, tmp / "backend.log", free_port()).start()
    yield server.url
    server.kill()
