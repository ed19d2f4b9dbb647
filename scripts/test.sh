#!/usr/bin/env bash
# Set up (if needed) and run the whole test suite: static type check of src/ (mypy: every implementation
# matches its contract), then unit, API, fuzz and end-to-end tests with real servers and engines.
# With arguments, only pytest runs, with them.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
if [ "$#" -eq 0 ]; then
  .venv/bin/mypy
fi
exec .venv/bin/python -m pytest "$@"
