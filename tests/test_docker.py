"""The Docker deployment (docker/): compose files validated by docker-compose itself, plus light static
checks of the Dockerfiles against the repository. No image is built and no Docker engine is needed.

`docker-compose ... config` parses, validates and interpolates the compose files; the tests assert on
its output. A missing docker-compose is a failure, not a skip: scripts/test.sh installs it with apt.
"""
from __future__ import annotations

import ast
import importlib.metadata
import os
import re
import shlex
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from tests.ls_server import LABEL_STUDIO_VERSION

ROOT = Path(__file__).resolve().parents[1]
DOCKER = ROOT / "docker"
COMPOSE = DOCKER / "docker-compose.yml"
COMPOSE_GPU = DOCKER / "docker-compose.gpu.yml"
ENV_EXAMPLE = DOCKER / ".env.example"
DOCKERFILES = [DOCKER / "Dockerfile", DOCKER / "Dockerfile.cuda"]
SERVICES = {"label-studio", "backend", "worker", "chroma", "redis"}
BACKEND_ROLES = ("backend", "worker")


def _compose_command() -> list[str]:
    if shutil.which("docker-compose"):
        return ["docker-compose"]
    if shutil.which("docker") and subprocess.run(["docker", "compose", "version"], capture_output=True).returncode == 0:
        return ["docker", "compose"]
    pytest.fail("docker-compose is not installed, so the compose files cannot be validated: "
                "`apt-get install docker-compose` (scripts/test.sh does this when run as root or with sudo)")


def _clean_env() -> dict[str, str]:
    """The caller's environment minus every variable the compose files interpolate (and COMPOSE_*), so
    the result depends only on the compose files and the env file given."""
    names = set()
    for path in (COMPOSE, COMPOSE_GPU):
        names |= set(re.findall(r"\$\{(\w+)", path.read_text()))
    return {k: v for k, v in os.environ.items() if k not in names and not k.startswith(("COMPOSE_", "DOCKER_"))}


def compose_config(*files: Path, env_file: Path, command: list[str] | None = None) -> dict:
    args = (command or _compose_command()) + ["--env-file", str(env_file)]
    for f in files:
        args += ["-f", str(f)]
    proc = subprocess.run(args + ["config"], cwd=ROOT, env=_clean_env(), capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, f"{shlex.join(args)} config failed:\n{proc.stderr}"
    return yaml.safe_load(proc.stdout)


@pytest.fixture(scope="module")
def empty_env(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("compose") / "empty.env"
    path.write_text("")
    return path


@pytest.fixture(scope="module", params=["defaults", ".env.example"])
def config(request, empty_env) -> dict:
    """The base compose file, with the defaults written into it and with docker/.env.example."""
    return compose_config(COMPOSE, env_file=empty_env if request.param == "defaults" else ENV_EXAMPLE)


@pytest.fixture(scope="module")
def gpu_config(empty_env) -> dict:
    return compose_config(COMPOSE, COMPOSE_GPU, env_file=empty_env)


# --- helpers that read both docker-compose 1.29's and docker compose v2's `config` output ---

def volume_mounts(service: dict) -> dict[str, str]:
    """target -> source of the service's volumes (short 'src:dst[:mode]' or long syntax)."""
    mounts = {}
    for v in service.get("volumes", []):
        if isinstance(v, str):
            source, target = v.split(":")[:2]
        else:
            source, target = v.get("source"), v["target"]
        mounts[target] = source
    return mounts


def environment(service: dict) -> dict[str, str]:
    env = service.get("environment") or {}
    if isinstance(env, list):
        env = dict(item.split("=", 1) for item in env)
    return {k: "" if v is None else str(v) for k, v in env.items()}


def as_argv(command) -> list[str]:
    return shlex.split(command) if isinstance(command, str) else list(command)


def published_ports(service: dict) -> list[str]:
    out = []
    for p in service.get("ports", []):
        out.append(str(p["published"]) if isinstance(p, dict) else str(p).split(":")[0])
    return out


# --- the compose stack ---

def test_five_services_with_named_volumes(config):
    assert set(config["services"]) == SERVICES
    named = set(config["volumes"])
    assert {"models", "chroma-data", "redis-data", "label-studio-data"} <= named
    for name, service in config["services"].items():
        for target, source in volume_mounts(service).items():
            assert source in named, f"{name}: {target} is not on a named volume ({source})"


def test_backend_and_worker_are_one_image_sharing_model_dir(config):
    backend, worker = (config["services"][s] for s in BACKEND_ROLES)
    assert backend["build"] == worker["build"]
    assert Path(backend["build"]["context"]).resolve() == ROOT
    assert backend["build"]["dockerfile"] == "docker/Dockerfile"
    assert backend["image"] == worker["image"]
    for service in (backend, worker):
        env = environment(service)
        assert env["MODEL_DIR"] == "/data/models"
        assert volume_mounts(service)["/data/models"] == "models"
    assert environment(backend)["WORKERS"] == "2"
    # the same settings everywhere but the web server's own
    web_only = {"PORT", "WORKERS", "THREADS"}
    assert {k: v for k, v in environment(backend).items() if k not in web_only} == environment(worker)


def test_services_are_wired_by_name(config):
    services = config["services"]
    for role in BACKEND_ROLES:
        env = environment(services[role])
        assert env["CHROMA_HOST"] == "chroma" and env["CHROMA_PORT"] == "8000"
        assert re.fullmatch(r"redis://redis:6379(/\d+)?", env["REDIS_URL"])
        assert env["LABEL_STUDIO_URL"] == "http://label-studio:8080"
        assert env["RQ_QUEUE"] == "clip-backend"
        # the backend's API key is Label Studio's legacy token for its first user
        assert env["LABEL_STUDIO_API_KEY"] == environment(services["label-studio"])["LABEL_STUDIO_USER_TOKEN"]
    assert "8000" in str(services["chroma"]["healthcheck"]["test"])  # the port CHROMA_PORT names


def test_backend_settings_accept_the_compose_environment(config):
    """The values compose passes (empty strings for unset options included) are valid settings."""
    from backend.config import Settings

    for role in BACKEND_ROLES:
        settings = Settings.from_env(environment(config["services"][role]))
        assert settings.chroma_host == "chroma" and settings.chroma_port == 8000
        assert settings.model_dir == Path("/data/models")
        assert settings.label_studio_url == "http://label-studio:8080" and settings.label_studio_api_key
        assert settings.basic_auth_user is None and settings.chroma_auth_token is None
        assert settings.redis_url and settings.rq_queue == "clip-backend"
        assert settings.device == "cpu"


def test_label_studio_may_call_an_in_network_backend(config):
    ls = config["services"]["label-studio"]
    assert ls["image"] == f"heartexlabs/label-studio:{LABEL_STUDIO_VERSION}"  # the version the e2e tests use
    env = environment(ls)
    assert env["ML_BLOCK_LOCAL_IP"] == "false"
    assert env["SSRF_PROTECTION_ENABLED"] == "false"
    assert env["LABEL_STUDIO_ENABLE_LEGACY_API_TOKEN"] == "true"
    assert env["LABEL_STUDIO_USERNAME"] and env["LABEL_STUDIO_PASSWORD"]
    assert 0 < len(env["LABEL_STUDIO_USER_TOKEN"]) <= 40  # Label Studio's token column
    assert volume_mounts(ls)["/label-studio/data"] == "label-studio-data"


def test_worker_runs_the_rq_worker_and_scales(config):
    worker = config["services"]["worker"]
    assert as_argv(worker["command"]) == ["python", "-m", "backend.runtime.worker"]
    assert (ROOT / "backend" / "runtime" / "worker.py").is_file(), "the worker command names backend/runtime/worker.py"
    assert "if __name__ == \"__main__\":" in (ROOT / "backend" / "runtime" / "worker.py").read_text()
    # --scale worker=N needs no fixed name and no host port
    assert "container_name" not in worker and not worker.get("ports")
    # its healthcheck is its own (the image's probes the web server's /health)
    assert "backend.runtime.worker" not in str(worker["healthcheck"]) and "rq" in str(worker["healthcheck"]["test"])


def test_every_service_has_a_healthcheck_and_waits_for_healthy_dependencies(config):
    services = config["services"]
    for name, service in services.items():
        check = service.get("healthcheck")
        assert check and check.get("test") and not check.get("disable"), f"{name} has no healthcheck"
    expected = {"backend": {"chroma", "redis", "label-studio"}, "worker": {"chroma", "redis"}}
    for name, deps in expected.items():
        depends_on = services[name]["depends_on"]
        assert set(depends_on) == deps
        assert {d["condition"] for d in depends_on.values()} == {"service_healthy"}


def test_chroma_server_matches_the_client_and_redis_persists_the_queue(config):
    chroma, redis_service = config["services"]["chroma"], config["services"]["redis"]
    image, tag = chroma["image"].split(":")
    assert image == "chromadb/chroma"
    client = importlib.metadata.version("chromadb")
    assert tag.split(".")[:2] == client.split(".")[:2], f"chroma server {tag} vs chromadb client {client}"
    assert volume_mounts(chroma)["/data"] == "chroma-data"  # persist_path of the 1.x image
    assert redis_service["image"].split(":")[1].split(".")[0] == "7"
    argv = as_argv(redis_service["command"])
    assert argv[argv.index("--appendonly") + 1] == "yes"
    assert volume_mounts(redis_service)["/data"] == "redis-data"


def test_only_the_user_facing_services_publish_ports(config):
    services = config["services"]
    assert published_ports(services["label-studio"]) == ["8080"]
    assert published_ports(services["backend"]) == ["9090"]
    for name in ("worker", "chroma", "redis"):
        assert not services[name].get("ports"), f"{name} should stay on the compose network"


def test_gpu_override(gpu_config):
    services = gpu_config["services"]
    assert set(services) == SERVICES
    for role in BACKEND_ROLES:
        service = services[role]
        assert service["build"]["dockerfile"] == "docker/Dockerfile.cuda"
        assert Path(service["build"]["context"]).resolve() == ROOT
        assert environment(service)["DEVICE"] == "cuda"
        devices = service["deploy"]["resources"]["reservations"]["devices"]
        assert devices[0]["driver"] == "nvidia" and "gpu" in devices[0]["capabilities"]
        assert volume_mounts(service)["/data/models"] == "models"
    assert services["backend"]["image"] == services["worker"]["image"] != "clip-backend:latest"
    assert as_argv(services["worker"]["command"]) == ["python", "-m", "backend.runtime.worker"]


def test_compose_v2_accepts_the_same_files(empty_env):
    """Where the Docker CLI's compose plugin (v2) is installed, it must accept the files too."""
    if not shutil.which("docker") or subprocess.run(["docker", "compose", "version"],
                                                    capture_output=True).returncode != 0:
        pytest.skip("docker compose v2 is not installed here (docker-compose 1.29 validated the files)")
    for files in ((COMPOSE,), (COMPOSE, COMPOSE_GPU)):
        config = compose_config(*files, env_file=empty_env, command=["docker", "compose"])
        assert set(config["services"]) == SERVICES


# --- the Dockerfiles: static checks, no build ---

def instructions(path: Path) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with continuation lines joined and comments dropped."""
    text = re.sub(r"\\\n", " ", "\n".join(l for l in path.read_text().splitlines() if not l.lstrip().startswith("#")))
    return [(line.split(None, 1)[0].upper(), line.split(None, 1)[1] if " " in line.strip() else "")
            for line in text.splitlines() if line.strip()]


def one(path: Path, name: str) -> str:
    found = [args for instr, args in instructions(path) if instr == name]
    assert len(found) == 1, f"{path.name}: expected one {name}, found {len(found)}"
    return found[0]


def _env_sh_default(name: str) -> str:
    match = re.search(r"\$\{" + name + r":-([^}]+)\}", (ROOT / "scripts" / "_env.sh").read_text())
    assert match, f"scripts/_env.sh has no default for {name}"
    return match.group(1)


def _version_tuple(v: str) -> tuple[int, ...]:
    return tuple(int(x) for x in re.match(r"\d+(\.\d+)*", v).group(0).split("."))


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.name)
def test_dockerfile_serves_what_the_repo_has(dockerfile):
    cmd = one(dockerfile, "CMD")
    # the web server's gunicorn target exists: backend/web/__init__.py exports create_app, defined in web/app.py
    assert '"backend.web:create_app()"' in cmd and "gunicorn" in cmd
    tree = ast.parse((ROOT / "backend" / "web" / "app.py").read_text())
    assert "create_app" in {n.name for n in tree.body if isinstance(n, ast.FunctionDef)}
    assert "from .app import create_app" in (ROOT / "backend" / "web" / "__init__.py").read_text()
    # the same flags as scripts/serve.sh
    serve = (ROOT / "scripts" / "serve.sh").read_text()
    for flag in ("--bind", "--workers", "--threads", "--timeout", "--access-logfile"):
        assert flag in cmd and flag in serve, flag
    healthcheck = one(dockerfile, "HEALTHCHECK")
    assert "/health" in healthcheck and "python" in healthcheck and "curl" not in healthcheck
    assert "9090" in one(dockerfile, "EXPOSE")
    user = one(dockerfile, "USER")
    assert user not in ("root", "0")
    env = " ".join(args for instr, args in instructions(dockerfile) if instr == "ENV")
    assert "MODEL_DIR=/data/models" in env
    assert ("DEVICE=cuda" if dockerfile.name.endswith(".cuda") else "DEVICE=cpu") in env


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.name)
def test_dockerfile_pins_the_torch_pair_the_project_uses(dockerfile):
    args = dict(a.split("=", 1) for instr, a in instructions(dockerfile) if instr == "ARG" and "=" in a)
    torch, torchvision = args["TORCH_VERSION"], args["TORCHVISION_VERSION"]
    assert torch == _env_sh_default("TORCH_VERSION") and torchvision == _env_sh_default("TORCHVISION_VERSION")
    pyproject = (ROOT / "pyproject.toml").read_text()
    for name, pinned in (("torch", torch), ("torchvision", torchvision)):
        minimum = re.search(rf'"{name}>=([\d.]+)"', pyproject).group(1)
        assert _version_tuple(pinned) >= _version_tuple(minimum), f"{name}=={pinned} < pyproject's >={minimum}"
    if dockerfile.name == "Dockerfile":
        assert args["TORCH_INDEX_URL"] == "https://download.pytorch.org/whl/cpu"


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.name)
def test_dockerfile_copies_only_what_exists_and_is_not_ignored(dockerfile):
    ignored = {l.strip() for l in (ROOT / ".dockerignore").read_text().splitlines()
               if l.strip() and not l.startswith("#")}
    assert {".git", ".venv*", "models", "data"} <= ignored
    for instr, args in instructions(dockerfile):
        if instr == "COPY" and "--from" not in args:
            for source in args.split()[:-1]:
                assert (ROOT / source).exists(), f"{dockerfile.name}: COPY {source}: no such path in the repo"
                assert source.rstrip("/") not in ignored, f"{dockerfile.name}: COPY {source} is in .dockerignore"
