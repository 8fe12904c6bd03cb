#!/usr/bin/env bash
# Run a training worker: takes training jobs from Redis (REDIS_URL) and trains with the same
# MODEL_DIR / CHROMA_* / encoder settings as the web app (scripts/serve.sh). Start as many as you like,
# on any machine that shares MODEL_DIR. Creates .venv on first run.
source "$(dirname "${BASH_SOURCE[0]}")/_env.sh"
cd "$ROOT"
exec "$VENV/bin/python" -m backend.runtime.worker
