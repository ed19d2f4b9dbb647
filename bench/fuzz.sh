#!/usr/bin/env bash
# Bench-mode fuzzing: the hypothesis suites for /v1/telemetry and /v1/query with many more cases
# than CI runs (default 100,000 per suite). Usage: bash bench/fuzz.sh [EXAMPLES]
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
COHORT_FUZZ_EXAMPLES="${1:-100000}" exec .venv/bin/python -m pytest tests/api/test_api_fuzz.py tests/api/test_query_fuzz.py tests/api/test_query_fuzz_clickhouse.py \
  -q -p no:randomly -s --hypothesis-show-statistics --timeout 7200
