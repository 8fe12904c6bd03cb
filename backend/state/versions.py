"""Model versions on disk: MODEL_DIR/projects/<project>/versions/<NNNN>/ holds heads.pkl, meta.json and
the evaluation report. A version is written in a temporary directory and renamed into place, and
LATEST is replaced atomically, so a crash mid-write never corrupts the serving model.

heads.pkl files written before the package was layered name classes by their old module paths;
VersionUnpickler loads them from the new ones (RENAMED_MODULES)."""
from __future__ import annotations

import json
import os
import pickle
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from .atomic import atomic_write_text, fsync_file

# old module path -> new one, for classes inside heads.pkl (strings only: state never imports learn)
RENAMED_MODULES = {"backend.heads": "backend.learn.heads"}


def _renamed(module: str, name: str) -> tuple[str, str]:
    return RENAMED_MODULES.get(module, module), name


class VersionUnpickler(pickle.Unpickler):
    """pickle.Unpickler that finds classes moved since the pickle was written."""

    def find_class(self, module: str, name: str):
        return super().find_class(*_renamed(module, name))


@dataclass
class ModelVersion:
    number: int
    name: str  # the model_version string Label Studio sees
    directory: Path
    meta: dict

    def load_heads(self) -> dict:
        with open(self.directory / "heads.pkl", "rb") as f:
            return VersionUnpickler(f).load()

    def report(self) -> dict | None:
        path = self.directory / "report.json"
        return json.loads(path.read_text()) if path.exists() else None


class VersionStore:
    def __init__(self, model_dir: Path):
        self.root = Path(model_dir) / "projects"

    def _versions_dir(self, project: str) -> Path:
        return self.root / str(project) / "versions"

    def save(self, project: str, name_of, heads: dict, meta: dict, write_extras=None) -> ModelVersion:
        """Write a new version named name_of(number); write_extras(directory, number) may add files
        (the report) before the version goes live."""
        versions = self._versions_dir(project)
        versions.mkdir(parents=True, exist_ok=True)
        number = self._next_number(versions)
        name = name_of(number)
        tmp = Path(tempfile.mkdtemp(prefix=".tmp-", dir=versions))
        try:
            with open(tmp / "heads.pkl", "wb") as f:
                pickle.dump(heads, f, protocol=pickle.HIGHEST_PROTOCOL)
            meta = {**meta, "number": number, "name": name, "created_at": time.time()}
            if write_extras is not None:
                write_extras(tmp, number)
            (tmp / "meta.json").write_text(json.dumps(meta, indent=2))  # last: marks the version complete
            for path in tmp.iterdir():
                fsync_file(path)
            final = versions / f"{number:04d}"
            os.rename(tmp, final)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        self._write_latest(versions, number)
        return ModelVersion(number, name, final, meta)

    def _next_number(self, versions: Path) -> int:
        numbers = [int(p.name) for p in versions.iterdir() if p.name.isdigit()] if versions.is_dir() else []
        return max(numbers, default=0) + 1

    def next_number(self, project: str) -> int:
        return self._next_number(self._versions_dir(project))

    def _write_latest(self, versions: Path, number: int) -> None:
        atomic_write_text(versions / "LATEST", str(number))

    def latest_number(self, project: str) -> int | None:
        """Cheap: one small file read, so every predict can check for a newer version."""
        try:
            return int((self._versions_dir(project) / "LATEST").read_text().strip())
        except (OSError, ValueError):
            return None

    def get(self, project: str, number: int) -> ModelVersion | None:
        directory = self._versions_dir(project) / f"{number:04d}"
        try:
            meta = json.loads((directory / "meta.json").read_text())
        except (OSError, ValueError):
            return None
        return ModelVersion(number, meta["name"], directory, meta)

    def latest(self, project: str) -> ModelVersion | None:
        number = self.latest_number(project)
        if number is not None:
            version = self.get(project, number)
            if version is not None:
                return version
        # LATEST missing or pointing at an incomplete version: fall back to the newest complete one
        for v in reversed(self.all(project)):
            return v
        return None

    def all(self, project: str) -> list[ModelVersion]:
        versions = self._versions_dir(project)
        if not versions.is_dir():
            return []
        found = (self.get(project, int(p.name)) for p in sorted(versions.iterdir()) if p.name.isdigit())
        return [v for v in found if v is not None]

    def find(self, project: str, name_or_number: str) -> ModelVersion | None:
        for v in self.all(project):
            if name_or_number in (v.name, str(v.number), f"{v.number:04d}"):
                return v
        return None

    def projects(self) -> list[str]:
        return sorted(p.name for p in self.root.iterdir() if p.is_dir()) if self.root.is_dir() else []

