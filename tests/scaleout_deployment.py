"""The scale-out footprint as users run it: `cohort serve` and N `cohort worker` processes, configured
only by COHORT_* settings, on the tests' engines (Tansu, redis-server) and an embedded ClickHouse
engine of its own (chdb: one process per path, so `serve` owns it and runs the store writer)."""

from __future__ import annotations

import pytest

from cohort.benchmark.scaleout_deployment import ScaleoutDeployment
from engines import QUICK_GROUP
from support import app_client

__all__ = ["QUICK_GROUPS", "ScaleoutDeployment", "scaleout", "scaleout_client", "scaleout_settings"]

# The tests' deployments run their roles with QUICK_GROUP (engines.py): with the roles' FAST_GROUPS (session 6 s)
# every role's join took ~3.6 s, and a restarted store writer or a new worker waited ~11 s for its partitions
# after each kill (~2 s so), which the tests that kill processes wait for again and again.
QUICK_GROUPS = {"COHORT_KAFKA_SESSION_TIMEOUT_SECONDS": str(QUICK_GROUP["session_timeout_s"]),
                "COHORT_KAFKA_HEARTBEAT_INTERVAL_SECONDS": str(QUICK_GROUP["heartbeat_interval_s"]),
                "COHORT_KAFKA_MAX_POLL_INTERVAL_SECONDS": str(QUICK_GROUP["max_poll_interval_s"])}


@pytest.fixture
def scaleout(tmp_path, kafka_bootstrap, redis_url, unique_topic):
    deployment = ScaleoutDeployment(tmp_path / "scaleout", kafka_bootstrap, redis_url, unique_topic,
                                    env=QUICK_GROUPS).start()
    yield deployment
    deployment.stop()


@pytest.fixture
def scaleout_settings(tmp_path, kafka_bootstrap, redis_url, unique_topic, clickhouse_dsn, clickhouse_database):
    """Settings of an in-process scale-out node on the session's engines (the chdb engine of this test process)."""
    from cohort.security.secrets import load_or_create_secrets
    from cohort.settings import Settings

    secrets_file = tmp_path / "secrets.json"  # scale-out: made once, shared by every role
    load_or_create_secrets(Settings(footprint="embedded", secrets_file=secrets_file))
    return Settings(footprint="scaleout", data_dir=tmp_path / "data", kafka_bootstrap_servers=kafka_bootstrap,
                    secrets_file=secrets_file,
                    redis_url=redis_url, clickhouse_dsn=clickhouse_dsn, clickhouse_database=clickhouse_database,
                    kafka_raw_topic=f"{unique_topic}-raw", kafka_processed_topic=f"{unique_topic}-processed",
                    kafka_consumer_group=f"{unique_topic}-pipeline", kafka_store_group=f"{unique_topic}-store",
                    kafka_partitions=2, pipeline_batch_events=1000, kafka_session_timeout_seconds=QUICK_GROUP["session_timeout_s"],
                    kafka_heartbeat_interval_seconds=QUICK_GROUP["heartbeat_interval_s"],
                    kafka_max_poll_interval_seconds=QUICK_GROUP["max_poll_interval_s"],
                    pseudonym_cache_seconds=1)  # short: a forget's test sees a new pseudonym within seconds


@pytest.fixture
def scaleout_client(scaleout_settings):
    """The API on the scale-out footprint in this process (its node runs the store writer), with one worker
    beside it on a thread, as `cohort worker` would run it."""
    from cohort.pipeline.scaleout_roles import RoleThread, build_worker

    with app_client(scaleout_settings, raise_server_exceptions=False) as client:
        worker = RoleThread(build_worker(scaleout_settings), "worker")
        worker.start()
        try:
            yield client
        finally:
            worker.stop()
