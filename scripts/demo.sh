#!/usr/bin/env bash
# Set up (if needed) and run the demo: a server on a fresh data dir with synthetic telemetry loaded.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec .venv/bin/cohort demo "$@"
