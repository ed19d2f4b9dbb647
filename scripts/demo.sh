#!/usr/bin/env bash
# Set up (if needed) and run the demo: a server on ./cohort-demo-data (a previous demo's data is reused;
# --reset starts afresh) with synthetic telemetry loaded.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec .venv/bin/cohort demo "$@"
