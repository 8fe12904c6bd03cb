#!/usr/bin/env bash
# Run the ML backend on PORT (default 9090) with gunicorn. Creates .venv on first run.
# Configuration is by environment variables; see README.md.
source "$(dirname "${BASH_SOURCE[0]}")/_env.sh"
cd "$ROOT"
exec "$VENV/bin/gunicorn" \
  --bind "${HOST:-0.0.0.0}:${PORT:-9090}" \
  --workers "${WORKERS:-1}" \
  --threads "${THREADS:-8}" \
  --timeout "${GUNICORN_TIMEOUT:-300}" \
  --access-logfile - \
  "backend.web:create_app()"
