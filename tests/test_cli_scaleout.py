"""The scale-out commands refuse a configuration they cannot run with a clear message and exit status 2,
before they touch any engine."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest


def cohort(*args: str, **env: str) -> subprocess.CompletedProcess:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("COHORT_")}
    return subprocess.run([sys.executable, "-m", "cohort.cli", *args], env={**clean, **env}, capture_output=True,
                          text=True, timeout=60)


@pytest.mark.parametrize("role", ["worker", "store-writer"])
def test_a_role_without_the_engines_it_needs_names_the_missing_settings(role):
    result = cohort(role, COHORT_FOOTPRINT="scaleout")
    assert result.returncode == 2
    assert "COHORT_KAFKA_BOOTSTRAP_SERVERS" in result.stderr and "COHORT_REDIS_URL" in result.stderr


def test_a_worker_on_the_embedded_footprint_is_refused():
    result = cohort("worker", COHORT_KAFKA_BOOTSTRAP_SERVERS="127.0.0.1:9", COHORT_REDIS_URL="redis://127.0.0.1:9",
                    COHORT_CLICKHOUSE_DSN="chdb:///tmp/x")
    assert result.returncode == 2 and "COHORT_FOOTPRINT=scaleout" in result.stderr


def test_a_store_writer_is_refused_on_the_embedded_clickhouse_engine_which_serve_owns():
    result = cohort("store-writer", COHORT_FOOTPRINT="scaleout", COHORT_KAFKA_BOOTSTRAP_SERVERS="127.0.0.1:9",
                    COHORT_REDIS_URL="redis://127.0.0.1:9", COHORT_CLICKHOUSE_DSN="chdb:///tmp/x")
    assert result.returncode == 2 and "cohort serve" in result.stderr


def test_serve_on_the_scaleout_footprint_without_engines_names_the_missing_settings(tmp_path):
    result = cohort("serve", "--data-dir", str(tmp_path), COHORT_FOOTPRINT="scaleout")
    assert result.returncode == 2 and "COHORT_CLICKHOUSE_DSN" in result.stderr


def test_an_unknown_footprint_is_refused():
    result = cohort("serve", "--data-dir", "/tmp/never", COHORT_FOOTPRINT="cluster")
    assert result.returncode == 2 and "COHORT_FOOTPRINT='cluster'" in result.stderr
    assert "Traceback" not in result.stderr
