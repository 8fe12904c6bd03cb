"""Print (or open) the evaluation report of a project's model version.

    clip-backend-report --project 3                 # latest version, from MODEL_DIR
    clip-backend-report --project 3 --version 2 --open
    clip-backend-report --project 3 --url http://localhost:9090   # from a running backend
    clip-backend-report --project 3 --json

(or `python -m backend.cli.report ...`)
"""
from __future__ import annotations

import argparse
import json
import sys
import webbrowser
from pathlib import Path

import requests

from ..config import Settings, SettingsError
from ..state.versions import VersionStore


def load(args) -> tuple[dict, str | None]:
    """(report, path or URL of its HTML page)."""
    if args.url:
        base = args.url.rstrip("/")
        page = f"{base}/reports/{args.version}?project={args.project}"
        resp = requests.get(page + "&format=json", timeout=30)
        if resp.status_code != 200:
            sys.exit(f"{resp.status_code}: {resp.text[:300]}")
        return resp.json(), page
    store = VersionStore(Path(args.model_dir))
    version = store.latest(args.project) if args.version == "latest" else store.find(args.project, args.version.lstrip("v"))
    if version is None:
        sys.exit(f"no model version {args.version!r} for project {args.project} under {args.model_dir}")
    report = version.report()
    if report is None:
        sys.exit(f"version {version.name} has no report")
    return report, str(version.directory / "report.html")


def _fmt(value) -> str:
    return "n/a" if value is None else f"{value:.3f}"


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
            f"{c.get('name')}={_fmt(c.get('val_score'))}" for c in report["candidates"]))
    return "\n".join(lines)


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--project", required=True)
    parser.add_argument("--version", default="latest", help="latest, a number, or a model_version name")
    parser.add_argument("--model-dir", help="where the versions are (default: MODEL_DIR, else ./models)")
    parser.add_argument("--url", help="read from a running backend instead of MODEL_DIR")
    parser.add_argument("--json", action="store_true", help="print the whole report as JSON")
    parser.add_argument("--open", action="store_true", help="open the HTML report in a browser")
    args = parser.parse_args(argv)
    if args.model_dir is None and not args.url:
        try:
            args.model_dir = str(Settings.from_env().model_dir)  # MODEL_DIR as the server reads it
        except SettingsError as exc:
            parser.error(f"configuration error: {exc} (or give --model-dir)")
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
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
    return 0


if __name__ == "__main__":
    sys.exit(main())
