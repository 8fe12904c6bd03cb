"""Pre-embed a whole Label Studio project, or a folder of images / .txt files, into the embedding store
the server reads, so later /predict calls are served from the cache.

    # a Label Studio project (tasks listed with label-studio-sdk, files fetched like the server does)
    clip-backend-embed --label-studio-url http://localhost:8080 --api-key $TOKEN --project 3

    # a folder (images, or .txt files for a <Text> config)
    clip-backend-embed --folder ~/imports/batch-17

(or `python -m backend.cli.embed_project ...`). Same model and store as the server: settings come from
the environment (CLIP_MODEL, CLIP_PRETRAINED, TEXT_MODEL, MODEL_DIR / CHROMA_PATH / CHROMA_HOST, DEVICE,
BATCH_SIZE, FETCH_WORKERS), and embedding goes through the model /predict uses, built the same way
(backend.runtime.build: concurrent fetch and decode, batched encoding, batched Chroma writes).

Resumable: every batch goes to the store's write-behind as soon as it is encoded (large upserts from a
background thread, at most 16,384 records waiting: the store's pace holds the encoder back, not memory),
and items already stored (same task, field and content hash) are skipped. Interrupt at any time (Ctrl-C:
what was encoded is written before the command exits; kill -9: at most the waiting records are lost) and
run the same command again: it embeds only what is missing.
Prints a progress bar (stderr) and a summary: embedded, skipped (already stored), failed, items/s.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import logging
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from itertools import islice
from pathlib import Path

from tqdm import tqdm

from ..config import Settings, SettingsError
from ..embed.write_behind import flush_all, for_store
from ..labelstudio.client import LabelStudioAPI
from ..labelstudio.labelconfig import ConfigError
from ..model import ClipClassifier
from ..runtime.build import build_model
from ..runtime.connections import Connection

REPO = Path(__file__).resolve().parents[2]  # the checkout: label_config/ holds the default configs

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif", ".tif", ".tiff"}
TEXT_SUFFIXES = {".txt"}


@dataclass
class Source:
    """What to embed: the tasks (an iterator, so embedding starts before a listing ends) and where they go."""
    tasks: Iterator[dict]
    total: int | None
    label_config: str
    store_project: str
    description: str
    settings: Settings  # the folder's own document root for a folder
    url: str | None = None  # Label Studio's, to download task data with the API key
    api_key: str | None = None


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
        self.bar = tqdm(total=total, unit=unit, dynamic_ncols=True, file=sys.stderr, disable=disable,
                        mininterval=0.5, smoothing=0.1)
        self.count = 0

    def update(self, n: int) -> None:
        self.count += n
        self.bar.update(n)

    def close(self) -> None:
        self.bar.close()


def build_parser() -> argparse.ArgumentParser:
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
    return parser


def folder_source(args, settings: Settings, fail) -> Source:
    folder = args.folder.expanduser().resolve()
    if not folder.is_dir():
        fail(f"--folder {args.folder} is not a directory")
    tasks, kind = folder_tasks(folder, args.kind)
    if not tasks:
        fail(f"no {'image' if kind == 'image' else '.txt'} files under {folder}")
    config_path = args.label_config or REPO / "label_config" / (
        "image_classification.xml" if kind == "image" else "text_classification.xml")
    if not config_path.is_file():  # installed from a wheel: the checkout's label_config/ is not there
        fail(f"no labeling config at {config_path}: pass --label-config <file.xml>")
    return Source(
        tasks=iter(tasks), total=len(tasks), label_config=config_path.read_text(),
        store_project=args.store_project or f"folder-{hashlib.sha1(str(folder).encode()).hexdigest()[:10]}",
        description=str(folder),
        settings=settings.model_copy(update={"local_files_document_root": folder}))  # the fetcher reads only here


def label_studio_source(args, settings: Settings, fail) -> Source:
    url = args.label_studio_url or settings.label_studio_url
    api_key = args.api_key or settings.label_studio_api_key
    if not url or not api_key:
        fail("--project needs --label-studio-url and --api-key (or LABEL_STUDIO_URL/_API_KEY)")
    client = LabelStudioAPI(url, api_key).client
    project = client.projects.get(id=args.project)
    return Source(
        tasks=label_studio_tasks(client, args.project, page_size=min(max(args.chunk, 100), 1000)),
        total=getattr(project, "task_number", None),
        label_config=args.label_config.read_text() if args.label_config else project.label_config,
        store_project=str(args.project), description=f"{url} project {args.project}",
        settings=settings, url=url, api_key=api_key)


def project_model(source: Source) -> ClipClassifier:
    """The model /predict would build for this project, on the same store, encoders and fetcher settings."""
    return build_model(source.settings, source.store_project, source.label_config, _connection(source))


def _connection(source: Source) -> Connection | None:
    """The Label Studio the command line named (its URL with its key); None: the environment's."""
    return Connection(source.url, source.api_key, "cli") if source.url else None


def embed_all(model: ClipClassifier, task_iter: Iterator[dict], chunk_size: int, bar: _Bar) -> tuple[int, bool]:
    """Embed every target of the tasks, chunk by chunk: (tasks seen, interrupted by Ctrl-C)."""
    seen = 0
    interrupted = False
    try:
        while True:
            chunk = list(islice(task_iter, chunk_size))
            if not chunk:
                break
            seen += len(chunk)
            for control in model.controls:
                before = bar.count
                model.embed(control, chunk, progress=bar, writes="behind")  # the store writes as we go
                bar.update(len(chunk) - (bar.count - before))  # tasks without data never reach the pipeline
    except KeyboardInterrupt:
        interrupted = True  # every encoded batch is written below: a re-run continues from here
    finally:
        bar.close()
        flush_all()
    return seen, interrupted


def summarize(model: ClipClassifier, seen: int, elapsed: float, interrupted: bool) -> dict:
    stats = model.stats
    summary = {
        "tasks": seen,
        "embedded": stats["embeddings_computed"],
        "skipped": stats["embeddings_cached"],
        "failed": stats["items_failed"],
        "seconds": round(elapsed, 2),
        "items_per_s": round(stats["embeddings_computed"] / elapsed, 2) if elapsed > 0 else 0.0,
        "interrupted": interrupted,
        "store_project": model.project_id,
    }
    if model.store is not None:  # embedded but not stored (a failing store): the next run embeds them again
        behind = for_store(model.store)
        summary["not_stored"] = behind.failed + behind.dropped
    return summary


def print_summary(result: dict, model: ClipClassifier, elapsed: float) -> None:
    interrupted = result["interrupted"]
    unit = "images/s" if any(c.target.modality == "image" for c in model.controls) else "texts/s"
    print(f"{'interrupted after' if interrupted else 'done:'} {result['tasks']} tasks in {elapsed:.1f}s: "
          f"embedded {result['embedded']}, skipped {result['skipped']} (already stored), "
          f"failed {result['failed']}, {result['items_per_s']:.2f} {unit}"
          + ("; run the same command again to continue" if interrupted else ""))


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if bool(args.folder) == bool(args.project is not None):
        parser.error("give either --folder or --label-studio-url/--api-key/--project")
    try:
        settings = Settings.from_env()
    except SettingsError as exc:
        parser.error(f"configuration error: {exc}")
    logging.basicConfig(level=max(logging.WARNING, logging.getLevelName(settings.log_level)),
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    source = (folder_source if args.folder else label_studio_source)(args, settings, parser.error)
    task_iter, total = source.tasks, source.total
    if args.limit is not None:
        task_iter = islice(task_iter, args.limit)
        total = min(total, args.limit) if total is not None else args.limit

    try:
        model = project_model(source)
    except ConfigError as exc:
        parser.error(f"unsupported labeling config: {exc}")
    store = source.settings.chroma_host or source.settings.resolved_chroma_path
    print(f"embedding {source.description} into {store} "
          f"(store project {source.store_project!r}, encoders {', '.join(sorted(set(model.encoder_ids.values())))})",
          file=sys.stderr, flush=True)
    t_load = time.perf_counter()
    model.load()
    print(f"model loaded in {time.perf_counter() - t_load:.1f}s", file=sys.stderr, flush=True)

    bar = _Bar(total * len(model.controls) if total is not None else None, "item", args.no_progress)
    started = time.perf_counter()
    seen, interrupted = embed_all(model, task_iter, args.chunk, bar)
    elapsed = time.perf_counter() - started
    result = summarize(model, seen, elapsed, interrupted)
    if args.json:
        print(json.dumps(result))
    else:
        print_summary(result, model, elapsed)
    return 130 if interrupted else 0


if __name__ == "__main__":
    sys.exit(main())
