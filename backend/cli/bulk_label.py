"""Bulk pre-labeling by text search: find the unlabeled tasks most similar to a query with the backend's
POST /search, show them for review, and import them into Label Studio as predictions of one label
(annotators accept or fix them in the UI), or, with --accept, as annotations.

    clip-backend-bulk-label --backend http://localhost:9090 \\
        --label-studio http://localhost:8080 --api-key $TOKEN --project 3 \\
        --query "a horse in a field" --label horse --k 50 --min-score 0.25

Predictions get model_version "search:<query>" and score = cosine similarity. Label Studio shows them in
the labeling editor; to pre-fill the editor with them (or sort and filter by them in the Data Manager)
pick that version under Settings → Annotation → "Use predictions to prelabel tasks".

Only embedded tasks are found: run "Retrieve predictions" on the tasks (or clip-backend-embed)
first. Tasks that have annotations in Label Studio, or already hold this prediction, are skipped.
--accept creates annotations directly (asks first unless --yes); each one reaches the backend as a
webhook like any annotation, so the model trains on them.

Exit status: 0 done (or nothing to do), 1 aborted at the prompt, 2 bad arguments or a failed request.
"""
from __future__ import annotations

import argparse
import sys

import requests

from ..flows.bulk_label import (
    BulkLabelError,
    choice_result,
    choose_target,
    create_annotations,
    import_predictions,
    reviewable,
)
from ..labelstudio.client import LabelStudioAPI


class Failure(Exception):
    """A problem the user can fix; printed without a traceback, exit status 2."""


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--backend", required=True, help="backend URL, e.g. http://localhost:9090")
    p.add_argument("--backend-auth", metavar="USER:PASS", help="basic auth of the backend (BASIC_AUTH_USER/PASS)")
    p.add_argument("--label-studio", required=True, help="Label Studio URL, e.g. http://localhost:8080")
    p.add_argument("--api-key", required=True, help="Label Studio legacy token or personal access token")
    p.add_argument("--project", required=True, type=int, help="Label Studio project id")
    p.add_argument("--query", required=True, help='what to look for, e.g. "a horse" ("a | b" searches both)')
    p.add_argument("--label", required=True, help="the choice to give the matches (a <Choice> of the config)")
    p.add_argument("--k", type=int, default=50, help="how many matches to ask for (1-1000, default 50)")
    p.add_argument("--min-score", type=float, default=None, help="drop matches with a lower similarity")
    p.add_argument("--from-name", help="the <Choices> name, when the config has several")
    p.add_argument("--accept", action="store_true", help="create annotations instead of predictions")
    p.add_argument("--yes", action="store_true", help="with --accept: do not ask for confirmation")
    args = p.parse_args(argv)
    if not 1 <= args.k <= 1000:
        p.error("--k must be from 1 to 1000")
    if not args.query.strip():
        p.error("--query must not be empty")
    return args


def search(args, label_config: str, target) -> dict:
    auth = tuple(args.backend_auth.split(":", 1)) if args.backend_auth else None
    body = {"query": args.query, "k": args.k, "project": str(args.project), "label_config": label_config,
            "to_name": target.to_name}
    try:
        resp = requests.post(args.backend.rstrip("/") + "/search", json=body, auth=auth, timeout=300)
    except requests.RequestException as exc:
        raise Failure(f"cannot reach the backend at {args.backend}: {exc}") from None
    try:
        payload = resp.json()
    except ValueError:
        payload = {"error": resp.text[:300]}
    if resp.status_code != 200:
        raise Failure(f"backend /search answered {resp.status_code}: {payload.get('error', payload)}")
    return payload


def snippet(data: dict, target, width: int = 60) -> str:
    value = data.get(target.data_key) if isinstance(data, dict) else None
    text = "" if value is None else str(value)
    if target.modality == "image":
        text = text.split("?d=")[-1].rsplit("/", 1)[-1]  # the file name of an upload, URL or local file
    text = " ".join(text.split())
    return text if len(text) <= width else text[:width - 1] + "…"


def main(argv=None) -> int:
    args = parse_args(argv)
    client = LabelStudioAPI(args.label_studio.rstrip("/"), args.api_key, timeout=120).client
    try:
        label_config = client.projects.get(id=args.project).label_config
        target, output = choose_target(label_config, args.from_name, args.label)
        found = search(args, label_config, target)
    except (Failure, BulkLabelError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2

    hits = found.get("results") or []
    if args.min_score is not None:
        hits = [h for h in hits if h["score"] >= args.min_score]
    version = f"search:{args.query}"
    rows, skipped = reviewable(client, hits, output, accept=args.accept, version=version, project=args.project)
    print(f"query {args.query!r} → {target.from_name}={output!r} ({found.get('encoder')}, "
          f"{found.get('embedded', 0)} embedded items searched)")
    if not rows:
        print(f"no match to label{': ' + found['hint'] if found.get('hint') else ''}"
              + "".join(f"; {n} {why}" for why, n in skipped.items() if n))
        return 0
    show(rows, skipped, target)
    result = choice_result(target, output)
    if args.accept:
        return annotate(client, args, rows, result, target, output)
    predictions(client, args.project, rows, result, version)
    return 0


def show(rows: list, skipped: dict, target) -> None:
    print(f"{'#':>3}  {'task':>8}  {'score':>6}  data")
    for rank, (hit, task) in enumerate(rows, 1):
        print(f"{rank:>3}  {hit['task']:>8}  {hit['score']:>6.3f}  {snippet(getattr(task, 'data', {}), target)}")
    notes = [f"{n} {why}" for why, n in skipped.items() if n]
    if notes:
        print("skipped: " + ", ".join(notes))


def annotate(client, args, rows: list, result: list[dict], target, output: str) -> int:
    """--accept: annotations (after a y/N prompt unless --yes); 1 when the user says no."""
    if not args.yes:
        answer = input(f"create {len(rows)} annotations {target.from_name}={output!r} in project "
                       f"{args.project}? [y/N] ")
        if answer.strip().lower() not in ("y", "yes"):
            print("aborted: nothing created")
            return 1
    created = create_annotations(client, [hit["task"] for hit, _ in rows], result)
    print(f"created {created} annotations")
    return 0


def predictions(client, project: int, rows: list, result: list[dict], version: str) -> None:
    count = import_predictions(client, project, [hit for hit, _ in rows], result, version)
    print(f"imported {count} predictions with model_version {version!r}: review them in "
          "Label Studio (to pre-fill the editor, pick that version under Settings → Annotation)")


if __name__ == "__main__":
    sys.exit(main())
