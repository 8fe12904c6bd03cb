#!/usr/bin/env bash
# Run the test suite. Creates .venv (with test extras) and, on first use by the end-to-end tests,
# a separate .venv-ls with Label Studio 1.23.2. The tests also start a real Redis server and
# validate the docker-compose file, and drive a real browser: missing Debian packages (redis-server,
# docker-compose, chromium) are
# installed with apt when run as root or with sudo. Extra arguments go to pytest.
source "$(dirname "${BASH_SOURCE[0]}")/_env.sh" test
cd "$ROOT"
need=()
command -v redis-server >/dev/null || need+=(redis-server)
command -v docker-compose >/dev/null || need+=(docker-compose)
# the search page's browser tests (Playwright drives Debian's chromium, nothing is downloaded by Playwright)
[ -x /usr/bin/chromium ] || need+=(chromium)
if [ "${#need[@]}" -gt 0 ] && command -v apt-get >/dev/null; then
  SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo -n"
  echo "[setup] installing ${need[*]} with apt-get" >&2
  $SUDO apt-get update -qq >/dev/null 2>&1 || true
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null \
    || echo "[setup] could not install ${need[*]}; the tests that need them will fail" >&2
fi
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1
set +e
"$VENV/bin/python" -m pytest "$@"
rc=$?
[ "$rc" -eq 5 ] && { echo "no tests collected" >&2; exit 1; }
exit "$rc"
