"""A throw-away PostgreSQL server (Debian's `postgresql` package) for Label Studio in the benchmarks,
as large teams run it: Label Studio's DJANGO_DB=default with the POSTGRE_* settings.

    with PostgresServer() as pg:
        LabelStudioServer(extra_env=pg.label_studio_env())
"""
from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

from tests.ls_server import free_port


def _bin_dir() -> Path:
    found = sorted(Path("/usr/lib/postgresql").glob("*/bin/initdb"))
    if not found:
        raise RuntimeError("PostgreSQL not installed: apt-get install postgresql")
    return found[-1].parent


class PostgresServer:
    def __init__(self, database: str = "labelstudio"):
        self.database, self.port, self.bin = database, free_port(), _bin_dir()
        self.data: Path | None = None
        # initdb refuses to run as root: then the server runs as Debian's postgres user
        self.as_user = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []

    def _run(self, *cmd: str) -> None:
        subprocess.run([*self.as_user, *cmd], check=True, capture_output=True, timeout=120)

    def start(self) -> PostgresServer:
        self.data = Path(tempfile.mkdtemp(prefix="bench-pg-"))
        if self.as_user:
            shutil.chown(self.data, "postgres", "postgres")
        self._run(str(self.bin / "initdb"), "-D", str(self.data / "db"), "-A", "trust", "-U", "postgres")
        self._run(str(self.bin / "pg_ctl"), "-D", str(self.data / "db"), "-l", str(self.data / "postgres.log"), "-w",
                  "-o", f"-p {self.port} -k {self.data} -c listen_addresses=127.0.0.1", "start")
        self._run(str(self.bin / "createdb"), "-h", "127.0.0.1", "-p", str(self.port), "-U", "postgres", self.database)
        return self

    def label_studio_env(self) -> dict:
        return {"DJANGO_DB": "default", "POSTGRE_NAME": self.database, "POSTGRE_USER": "postgres",
                "POSTGRE_PASSWORD": "", "POSTGRE_HOST": "127.0.0.1", "POSTGRE_PORT": str(self.port)}

    def stop(self) -> None:
        if self.data is None:
            return
        try:
            self._run(str(self.bin / "pg_ctl"), "-D", str(self.data / "db"), "-m", "fast", "stop")
        except subprocess.SubprocessError:
            time.sleep(1)
        shutil.rmtree(self.data, ignore_errors=True)
        self.data = None

    def __enter__(self) -> PostgresServer:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
