"""The store tests run on the session's embedded ClickHouse engine (see tests/clickhouse_engine.py)."""

from clickhouse_engine import clickhouse_database, clickhouse_dsn  # noqa: F401 (fixtures)
