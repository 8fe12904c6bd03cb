#!/usr/bin/env python
"""Pre-embed a whole Label Studio project, or a folder of images / .txt files, into the embedding store
the server reads, so later /predict calls are served from the cache.

    # a Label Studio project (tasks listed with label-studio-sdk, files fetched like the server does)
    .venv/bin/python scripts/embed_project.py --label-studio-url http://localhost:8080 --api-key $TOKEN --project 3

    # a folder (images, or .txt files for a <Text> config)
    .venv/bin/python scripts/embed_project.py --folder ~/imports/batch-17

Same model and store as the server: settings come from the environment (CLIP_MODEL, CLIP_PRETRAINED,
TEXT_MODEL, MODEL_DIR / CHROMA_PATH / CHROMA_HOST, DEVICE, BATCH_SIZE, FETCH_WORKERS), and embedding
goes through backend.model.ClipClassifier, i.e. the /predict pipeline (concurrent fetch and decode,
batched encoding, batched Chroma writes).

Resumable: every batch is stored as soon as it is encoded, and items already stored (same task,
field and content hash) are skipped. Interrupt at any time (Ctrl-C) and run the same command again.
Prints a progress bar (stderr) and a summary: embedded, skipped (already stored), failed, items/s.
"""
from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import logging
import sys
import time
from itertools import islice
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif", ".tif", ".tiff"}
TEXT_SUFFIXES = {".txt"}


def folder_tasks(folder: Path, kind: str) -> tuple[list[dict], str]:
    """Tasks for the files of a folder (recursive, sorted), and the kind ("image" or "text").

    Task ids are stable (derived from the relative path), so a re-run finds what an earlier run stored.
    """
    files = sorted(p for p in folder.rglob("*") if p.is_file() and not p.name.startswith("."))
    images = [p for p in files if p.suffix.lower() in IMAGE_SUFFIXES]
    texts = [p for p in files if p.suffix.lower() in TEXT_SUFFIXES]
    if kind == "auto":
        kind = "image" if len(images) >= len(texts) else "text"
    tasks = []
    for path in images if kind == "image" else texts:
        rel = path.relative_to(folder).as_posix()
        task_id = int(hashlib.sha1(rel.encode()).hexdigest()[:12], 16)  # 48 bits: stable, fits Chroma ints
        if kind == "image":
            data = {"image": f"/data/local-files/?d={rel}"}
        else:
            data = {"text": path.read_text(encoding="utf-8", errors="replace")}
        tasks.append({"id": task_id, "data": data})
    return tasks, kind


def label_studio_tasks(client, project: int, page_size: int):
    """Tasks of a project, page by page (embedding starts before the listing ends)."""
    for task in client.tasks.list(project=project, fields="all", page_size=page_size):
        yield {"id": task.id, "data": task.data}


class _Bar:
    """tqdm wrapper that counts what it was told, so tasks the pipeline never saw can be topped up."""

    def __init__(self, total: int | None, unit: str, disable: bool):
        from tqdm import tqdm

        self.bar = tqdm(total=total, unit=unit, dynamic_ncols=True, file=sys.stderr, disable=disable,
                        mininterval=0.5, smoothing=0.1)
        self.count = 0

    def update(self, n: int) -> None:
        self.count += n
        self.bar.update(n)

    def close(self) -> None:
        self.bar.close()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    src = parser.add_argument_group("source (one of)")
    src.add_argument("--folder", type=Path, help="folder of images or .txt files (recursive)")
    src.add_argument("--label-studio-url", help="Label Studio address, e.g. http://localhost:8080")
    src.add_argument("--api-key", help="Label Studio legacy token or personal access token")
    src.add_argument("--project", type=int, help="Label Studio project id")
    parser.add_argument("--label-config", type=Path,
                        help="labeling config XML (default: the project's; for a folder "
                             "label_config/image_classification.xml or text_classification.xml)")
    parser.add_argument("--kind", choices=("auto", "image", "text"), default="auto",
                        help="folder only: embed images or .txt files (auto: whichever there are more of)")
    parser.add_argument("--store-project",
                        help="store key for a folder (default: folder-<hash of its path>); a Label Studio "
                             "project always uses its id, like the server")
    parser.add_argument("--limit", type=int, help="stop after this many tasks (a re-run continues)")
    parser.add_argument("--chunk", type=int, default=2048, help="tasks handed to the pipeline at a time")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.add_argument("--json", action="store_true", help="print the summary as one JSON object")
    args = parser.parse_args(argv)

    if bool(args.folder) == bool(args.project is not None):
        parser.error("give either --folder or --label-studio-url/--api-key/--project")

    from backend.model import ClipClassifier
    from backend.settings import Settings, SettingsError
    from backend.store import EmbeddingStore

    try:
        settings = Settings.from_env()
    except SettingsError as exc:
        parser.error(f"configuration error: {exc}")
    logging.basicConfig(level=max(logging.WARNING, logging.getLevelName(settings.log_level)),
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")

    total: int | None
    if args.folder:
        folder = args.folder.expanduser().resolve()
        if not folder.is_dir():
            parser.error(f"--folder {args.folder} is not a directory")
        tasks, kind = folder_tasks(folder, args.kind)
        if not tasks:
            parser.error(f"no {'image' if kind == 'image' else '.txt'} files under {folder}")
        settings = dataclasses.replace(settings, local_files_document_root=folder)  # the fetcher reads only here
        config_path = args.label_config or REPO / "label_config" / (
            "image_classification.xml" if kind == "image" else "text_classification.xml")
        label_config = config_path.read_text()
        store_project = args.store_project or f"folder-{hashlib.sha1(str(folder).encode()).hexdigest()[:10]}"
        task_iter = iter(tasks)
        total = len(tasks)
        url = api_key = None
        source = str(folder)
    else:
        url = args.label_studio_url or settings.label_studio_url
        api_key = args.api_key or settings.label_studio_api_key
        if not url or not api_key:
            parser.error("--project needs --label-studio-url and --api-key (or LABEL_STUDIO_URL/_API_KEY)")
        from label_studio_sdk import LabelStudio

        client = LabelStudio(base_url=url, api_key=api_key, timeout=60)
        project = client.projects.get(id=args.project)
        label_config = args.label_config.read_text() if args.label_config else project.label_config
        store_project = str(args.project)
        task_iter = label_studio_tasks(client, args.project, page_size=min(max(args.chunk, 100), 1000))
        total = getattr(project, "task_number", None)
        source = f"{url} project {args.project}"
    if args.limit is not None:
        task_iter = islice(task_iter, args.limit)
        total = min(total, args.limit) if total is not None else args.limit

    from backend.fetch import Fetcher

    store = EmbeddingStore.from_settings(settings)
    model = ClipClassifier(store_project, label_config, settings, store=store,
                           fetcher=Fetcher(settings, label_studio_url=url, api_key=api_key))
    print(f"embedding {source} into {settings.chroma_host or settings.resolved_chroma_path} "
          f"(store project {store_project!r}, encoders {', '.join(sorted(set(model.encoder_ids.values())))})",
          file=sys.stderr, flush=True)
    t_load = time.perf_counter()
    model.load()
    print(f"model loaded in {time.perf_counter() - t_load:.1f}s", file=sys.stderr, flush=True)

    targets = model.config.targets
    bar = _Bar(total * len(targets) if total is not None else None, "item", args.no_progress)
    started = time.perf_counter()
    seen = 0
    interrupted = False
    try:
        while True:
            chunk = list(islice(task_iter, args.chunk))
            if not chunk:
                break
            seen += len(chunk)
            for target in targets:
                before = bar.count
                model.embed(target, chunk, progress=bar)
                bar.update(len(chunk) - (bar.count - before))  # tasks without data never reach the pipeline
    except KeyboardInterrupt:
        interrupted = True  # every encoded batch is already stored: a re-run continues from here
    finally:
        bar.close()
    elapsed = time.perf_counter() - started
    stats = model.stats
    summary = {
        "tasks": seen,
        "embedded": stats["embeddings_computed"],
        "skipped": stats["embeddings_cached"],
        "failed": stats["items_failed"],
        "seconds": round(elapsed, 2),
        "items_per_s": round(stats["embeddings_computed"] / elapsed, 2) if elapsed > 0 else 0.0,
        "interrupted": interrupted,
        "store_project": store_project,
    }
    if args.json:
        print(json.dumps(summary))
    else:
        unit = "images/s" if any(t.modality == "image" for t in targets) else "texts/s"
        print(f"{'interrupted after' if interrupted else 'done:'} {seen} tasks in {elapsed:.1f}s: "
              f"embedded {summary['embedded']}, skipped {summary['skipped']} (already stored), "
              f"failed {summary['failed']}, {summary['items_per_s']:.2f} {unit}"
              + ("; run the same command again to continue" if interrupted else ""))
    return 130 if interrupted else 0


if __name__ == "__main__":
    sys.exit(main())
