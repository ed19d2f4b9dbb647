#!/usr/bin/env bash
# Create .venv and install Cohort with its test dependencies. Safe to run again.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
# redis-server: the scale-out footprint's state, started by the tests on 127.0.0.1
if ! command -v redis-server >/dev/null 2>&1; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    apt-get install -y -q redis-server >/dev/null || { apt-get update -q >/dev/null && apt-get install -y -q redis-server >/dev/null; }
    systemctl disable --now redis-server >/dev/null 2>&1 || true  # tests start their own
  else
    echo "setup: redis-server is missing (apt-get install redis-server); scale-out tests need it" >&2
  fi
fi
# chromium: the browser the dashboard's tests (tests/web) drive through playwright, at /usr/bin/chromium
if [ ! -x /usr/bin/chromium ]; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    apt-get install -y -q chromium >/dev/null || { apt-get update -q >/dev/null && apt-get install -y -q chromium >/dev/null; }
  else
    echo "setup: chromium is missing (apt-get install chromium); the dashboard's browser tests need it" >&2
  fi
fi
if [ ! -x .venv/bin/python ]; then
  "$PYTHON" -m venv .venv
fi
.venv/bin/python -m pip install --quiet --disable-pip-version-check --upgrade pip
.venv/bin/python -m pip install --quiet --disable-pip-version-check -e '.[test]'
