"""workflow_summaries' name and columns: the one declaration the store tables, the summariser and the SQL
catalog share.

Why apart from summary_table: the SQL checker's process reads the catalog, and summary_table needs pyarrow;
a process that only parses SQL should not load it (about 60 MB of the server's memory).
"""

from __future__ import annotations

TABLE = "workflow_summaries"
# (name, duckdb type, clickhouse type); ClickHouse adds `is_deleted` (its tombstones)
COLUMNS: tuple[tuple[str, str, str], ...] = (
    ("tenant", "VARCHAR", "LowCardinality(String)"),
    ("day", "DATE", "Date"),
    ("mid", "VARCHAR", "String"),
    ("type", "VARCHAR", "LowCardinality(String)"),
    ("mode", "VARCHAR", "LowCardinality(String)"),
    ("did", "VARCHAR", "String"),
    ("uid", "VARCHAR", "String"),
    ("sid", "VARCHAR", "String"),
    ("pdata_id", "VARCHAR", "LowCardinality(String)"),
    ("object_id", "VARCHAR", "String"),
    ("object_type", "VARCHAR", "LowCardinality(String)"),
    ("rollup_l1", "VARCHAR", "String"),
    ("rollup_l2", "VARCHAR", "String"),
    ("rollup_l3", "VARCHAR", "String"),
    ("rollup_l4", "VARCHAR", "String"),
    ("start_time", "TIMESTAMP", "DateTime64(3, 'UTC')"),
    ("end_time", "TIMESTAMP", "DateTime64(3, 'UTC')"),
    ("time_spent", "DOUBLE", "Float64"),
    ("time_diff", "DOUBLE", "Float64"),
    ("interact_events_count", "BIGINT", "Int64"),
    ("interact_events_per_min", "DOUBLE", "Float64"),
    ("event_count", "BIGINT", "Int64"),
    ("item_responses", "BIGINT", "Int64"),
    ("summary", "JSON", "String"),
    ("computed_at", "TIMESTAMP", "DateTime64(3, 'UTC')"),
    ("version", "UBIGINT", "UInt64"),
)
