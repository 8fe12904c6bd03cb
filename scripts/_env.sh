# Sourced by serve.sh and test.sh: make sure the project's virtualenv exists and is up to date.
# VENV (default .venv in the repo) is created with the current python3 and reinstalled only when
# pyproject.toml changes (a stamp file records its hash).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${VENV:-$ROOT/.venv}"
PYTHON="${PYTHON:-python3}"
EXTRAS="${1:-}"

ensure_venv() {
  local hash stamp
  hash="$(sha1sum "$ROOT/pyproject.toml" | cut -c1-12)"
  stamp="$VENV/.installed-$hash${EXTRAS:+-$EXTRAS}"
  # an install with extras also satisfies a plain one
  if [ -z "$EXTRAS" ] && compgen -G "$VENV/.installed-$hash*" >/dev/null; then return 0; fi
  if [ ! -x "$VENV/bin/python" ]; then
    echo "[setup] creating virtualenv $VENV" >&2
    "$PYTHON" -m venv "$VENV"
  fi
  if [ ! -f "$stamp" ]; then
    echo "[setup] installing the backend${EXTRAS:+ with [$EXTRAS]} into $VENV (first run takes a few minutes)" >&2
    "$VENV/bin/python" -m pip install --quiet --upgrade pip
    # torch + torchvision first, pinned as a pair that imports together (open_clip needs torchvision)
    "$VENV/bin/python" -m pip install --quiet "torch==${TORCH_VERSION:-2.14.1}" "torchvision==${TORCHVISION_VERSION:-0.29.1}"
    "$VENV/bin/python" -m pip install --quiet -e "$ROOT${EXTRAS:+[$EXTRAS]}"
    find "$VENV" -maxdepth 1 -name '.installed-*' ! -name ".installed-$hash*" -delete
    touch "$stamp"
  fi
}
ensure_venv
