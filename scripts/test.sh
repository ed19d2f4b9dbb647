#!/usr/bin/env bash
# Set up (if needed) and run the whole test suite: static type check of src/ (mypy: every implementation
# matches its contract), then unit, API, fuzz and end-to-end tests with real servers and engines.
# With arguments, only pytest runs, with them.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
if [ "$#" -eq 0 ]; then
  .venv/bin/mypy
  # Test files run in parallel processes (pytest-xdist), each file whole in one process (its module fixtures
  # start once); many tests wait on servers and engines more than they compute. COHORT_TEST_WORKERS=0: one process.
  set -- -n "${COHORT_TEST_WORKERS:-2}" --dist loadfile
fi
exec .venv/bin/python -m pytest "$@"
