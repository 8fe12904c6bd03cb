#!/usr/bin/env bash
# Run the test suite. Creates .venv (with test extras) and, on first use by the end-to-end tests,
# a separate .venv-ls with Label Studio 1.23.2. Extra arguments go to pytest.
source "$(dirname "${BASH_SOURCE[0]}")/_env.sh" test
cd "$ROOT"
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1
set +e
"$VENV/bin/python" -m pytest "$@"
rc=$?
[ "$rc" -eq 5 ] && { echo "no tests collected" >&2; exit 1; }
exit "$rc"
