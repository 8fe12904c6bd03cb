#!/usr/bin/env python
"""Print (or open) the evaluation report of a project's model version.

    python scripts/report.py --project 3                 # latest version, from MODEL_DIR
    python scripts/report.py --project 3 --version 2 --open
    python scripts/report.py --project 3 --url http://localhost:9090   # from a running backend
    python scripts/report.py --project 3 --json
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import webbrowser
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


def load(args) -> tuple[dict, str | None]:
    """(report, path or URL of its HTML page)."""
    if args.url:
        import requests

        base = args.url.rstrip("/")
        page = f"{base}/reports/{args.version}?project={args.project}"
        resp = requests.get(page + "&format=json", timeout=30)
        if resp.status_code != 200:
            sys.exit(f"{resp.status_code}: {resp.text[:300]}")
        return resp.json(), page
    from backend.versions import VersionStore

    store = VersionStore(Path(args.model_dir))
    version = store.latest(args.project) if args.version == "latest" else store.find(args.project, args.version.lstrip("v"))
    if version is None:
        sys.exit(f"no model version {args.version!r} for project {args.project} under {args.model_dir}")
    report = version.report()
    if report is None:
        sys.exit(f"version {version.name} has no report")
    return report, str(version.directory / "report.html")


def summary(report: dict) -> str:
    lines = [f"version     {report.get('version')}",
             f"chosen head {report.get('head')}  (selection: {report.get('selection')})"]
    counts = report.get("counts", {})
    if counts:
        lines.append("labels      " + ", ".join(f"{k}={v}" for k, v in counts.items()))
    test = report.get("test") or {}
    for key in ("accuracy", "macro_f1", "roc_auc", "ece"):
        if test.get(key) is not None:
            lines.append(f"test {key:<7}{test[key]:.4f}")
    if report.get("candidates"):
        lines.append("candidates  " + ", ".join(
            f"{c.get('name')}={c.get('val_score', float('nan')):.3f}" for c in report["candidates"]))
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--project", required=True)
    parser.add_argument("--version", default="latest", help="latest, a number, or a model_version name")
    parser.add_argument("--model-dir", default=os.environ.get("MODEL_DIR", "./models"))
    parser.add_argument("--url", help="read from a running backend instead of MODEL_DIR")
    parser.add_argument("--json", action="store_true", help="print the whole report as JSON")
    parser.add_argument("--open", action="store_true", help="open the HTML report in a browser")
    args = parser.parse_args()
    report, page = load(args)
    print(json.dumps(report, indent=2) if args.json else summary(report))
    if args.open and page:
        if page.startswith("http"):
            webbrowser.open(page)
        else:
            webbrowser.open(Path(page).resolve().as_uri())
        print(f"opened {page}", file=sys.stderr)
    elif page:
        print(f"HTML report: {page}", file=sys.stderr)


if __name__ == "__main__":
    main()
