"""Replace a file atomically: readers (other workers, a restarted process) see the old content or the
new, never half, and after a crash the new content is on disk or not there at all."""
from __future__ import annotations

import os
import uuid
from pathlib import Path


def atomic_write_bytes(path: Path, data: bytes) -> Path:
    """Write ``data`` to a temporary file beside ``path``, fsync it, rename it over ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    # beside the target (os.replace is atomic within one filesystem); a unique name per writer; not
    # mkstemp, whose 0600 would hide the file from a worker running as another user
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
    try:
        with open(tmp, "xb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path


def atomic_write_text(path: Path, text: str) -> Path:
    return atomic_write_bytes(path, text.encode("utf-8"))


def fsync_file(path: Path) -> None:
    """Flush a file written by other code (pickle, a report) to disk before it is renamed into place."""
    if Path(path).is_file():
        with open(path, "rb") as f:
            os.fsync(f.fileno())
