"""The store's write-behind (backend/embed/write_behind.py) on a real embedded Chroma: bounded backlog,
large coalesced upserts, read-your-writes, a stalled store never blocking a /predict-style call, and a
bulk embed killed with SIGKILL losing nothing but not-yet-written embeddings, which a re-run embeds."""
import hashlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from backend.cli.embed_project import folder_tasks
from backend.config import Settings
from backend.embed.encoders import encoder_id, get_encoder
from backend.embed.fetch import Fetcher
from backend.embed.pipeline import Item, embed_items
from backend.embed.store import StoredItem, open_store, record_id
from backend.embed.write_behind import WriteBehind, for_store
from tests.helpers import DATA_DIR, REPO_ROOT, backend_env, encoder_spec, fetcher_kwargs


class GatedStore:
    """The real store, whose writes wait for ``gate`` (failure injection: a stalled Chroma) and are recorded."""

    def __init__(self, store):
        self.inner = store
        self.gate = threading.Event()
        self.batches: list[int] = []

    def put_many(self, project, encoder_id, items):
        self.gate.wait()
        self.batches.append(len(items))
        self.inner.put_many(project, encoder_id, items)

    def __getattr__(self, name):
        return getattr(self.inner, name)


def _records(n: int, first: int = 0, dim: int = 8) -> list[StoredItem]:
    rng = np.random.default_rng(first)
    return [StoredItem(first + i, "image", f"h{first + i}", rng.standard_normal(dim).astype(np.float32))
            for i in range(n)]


def test_backlog_is_bounded_coalesced_and_readable_before_it_is_written(tmp_path):
    store = GatedStore(open_store(path=tmp_path / "chroma"))
    behind = WriteBehind(store, max_pending=100, max_batch=64)
    assert behind.put("1", "enc", _records(30)) == 30  # the writer takes these and stalls on the gate
    time.sleep(0.2)
    for k in range(1, 5):  # small puts while the writer is stalled: they wait together
        behind.put("1", "enc", _records(10, first=100 * k))
    assert behind.put("1", "enc", _records(80, first=1000), block=False) == 30  # 70 waiting: room for 30
    assert behind.dropped == 50 and behind.backlog == 100

    blocked = threading.Thread(target=behind.put, args=("1", "enc", _records(5, first=5000)))
    blocked.start()
    time.sleep(0.3)
    assert blocked.is_alive()  # a bulk put waits for room: memory stays bounded

    waiting = behind.pending("1", "enc", [record_id(100, "image"), record_id(5000, "image"), "nope:image"])
    assert set(waiting) == {record_id(100, "image")}  # served from memory before it is in Chroma
    np.testing.assert_array_equal(waiting[record_id(100, "image")].embedding, _records(10, first=100)[0].embedding)

    store.gate.set()
    blocked.join(timeout=60)
    assert behind.flush(timeout=60) and behind.backlog == 0
    assert store.count("1", "enc") == 30 + 40 + 30 + 5
    assert store.batches[0] == 30 and max(store.batches[1:]) == 64 and len(store.batches) <= 4  # coalesced


def test_a_stalled_store_never_blocks_a_predict_call(tmp_path):
    settings = Settings.from_env(backend_env(tmp_path, LOCAL_FILES_DOCUMENT_ROOT=DATA_DIR / "cifar10-test"))
    encoder = get_encoder("image", encoder_spec(settings))
    fetcher = Fetcher(**fetcher_kwargs(settings))
    items = [Item(task_id=i, field="image", source=f"cat/{i:04d}.jpg") for i in range(6)]
    store = GatedStore(open_store(path=tmp_path / "chroma"))

    def load(item):
        return fetcher.load_image(item.source)

    first = embed_items(items, encoder, load, store, "5", workers=2, writes="drop")  # returns: gate still shut
    assert first.computed == 6 and store.count("5", encoder.id) == 0
    again = embed_items(items, encoder, load, store, "5", workers=2, writes="drop")
    assert (again.cached, again.computed) == (6, 0)  # from the backlog
    for a, b in zip(first.embeddings, again.embeddings):
        np.testing.assert_array_equal(a, b)
    store.gate.set()
    assert for_store(store).flush(timeout=60) and store.count("5", encoder.id) == 6


def _embed_cli(folder: Path, env: dict, *extra) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "backend.cli.embed_project", "--folder", str(folder), "--json",
                             "--chunk", "16", *extra], cwd=REPO_ROOT, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, start_new_session=True)


def test_kill_9_during_a_bulk_embed_loses_only_unwritten_embeddings(tmp_path):
    folder = tmp_path / "import"
    folder.mkdir()
    for cls in ("cat", "dog", "ship"):
        for src in sorted((DATA_DIR / "cifar10-test" / cls).glob("*.jpg"))[:10]:
            shutil.copyfile(src, folder / f"{cls}_{src.name}")
    total = 30
    env = {**os.environ, **backend_env(tmp_path), "BATCH_SIZE": "8", "FETCH_WORKERS": "2", "LOG_LEVEL": "WARNING"}
    env.pop("CHROMA_PATH", None)

    doomed = _embed_cli(folder, env)
    seen, progress = "", 0
    while progress < 8:  # kill once a few batches are through (the progress bar counts encoded items)
        chunk = doomed.stderr.read(64)
        if not chunk:
            pytest.fail(f"the embed command ended before it was killed:\n{seen[-2000:]}")
        seen += chunk
        progress = max([int(n) for n in re.findall(r"(\d+)/30", seen)] or [0])
    os.killpg(doomed.pid, signal.SIGKILL)
    doomed.wait(timeout=30)
    assert doomed.returncode == -signal.SIGKILL

    settings = Settings.from_env(backend_env(tmp_path))
    encoder_id_ = encoder_id("image", encoder_spec(settings))
    project = f"folder-{hashlib.sha1(str(folder.resolve()).encode()).hexdigest()[:10]}"  # the CLI's key
    listed, _ = folder_tasks(folder, "image")
    ids = [record_id(t["id"], "image") for t in listed]
    kept = _stored(settings, project, encoder_id_, ids)
    assert len(kept) < total

    rerun = _embed_cli(folder, env)
    out, err = rerun.communicate(timeout=600)
    assert rerun.returncode == 0, err[-3000:]
    summary = json.loads(out.strip().splitlines()[-1])
    assert summary["skipped"] == len(kept) and summary["embedded"] == total - len(kept) and summary["failed"] == 0
    assert summary.get("not_stored", 0) == 0

    # the store is consistent: one record per image, a unit vector each, the survivors unchanged (weights are
    # random with CLIP_PRETRAINED=none, so another process's embeddings cannot be compared with this one's)
    stored = _stored(settings, project, encoder_id_, ids)
    assert len(stored) == total and all(np.array_equal(stored[k], v) for k, v in kept.items())
    norms = np.linalg.norm(np.stack(list(stored.values())), axis=1)
    assert np.allclose(norms, 1.0, atol=1e-4)


def _stored(settings: Settings, project: str, encoder_id: str, ids: list[str]) -> dict[str, np.ndarray]:
    """The records in the store, read by a fresh process (Chroma caches a path's state per process)."""
    script = ("import json, sys; from backend.embed.store import open_store; a = json.loads(sys.argv[1]); "
              "s = open_store(path=a['path']); n = s.count(a['project'], a['encoder']); "
              "e = s.embeddings(a['project'], a['encoder'], a['ids']); "
              "print(json.dumps({'count': n, 'embeddings': {k: v.tolist() for k, v in e.items()}}))")
    args = json.dumps({"path": str(settings.resolved_chroma_path), "project": project, "encoder": encoder_id,
                       "ids": ids})
    done = subprocess.run([sys.executable, "-c", script, args], cwd=REPO_ROOT, capture_output=True, text=True,
                          timeout=300, check=False)
    assert done.returncode == 0, done.stderr[-3000:]
    got = json.loads(done.stdout.strip().splitlines()[-1])
    assert got["count"] == len(got["embeddings"])  # no record without its vector, no duplicates
    return {k: np.asarray(v, np.float32) for k, v in got["embeddings"].items()}
