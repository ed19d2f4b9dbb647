"""Store.stream_rows over both stores: every row once, in batches, in bounded memory, ended by the consumer or
the time limit, errors coded — what exports and the lake rely on."""

from __future__ import annotations

import threading
import time

import psutil
import pyarrow as pa
import pytest

from cohort.core.errors import CohortError, ErrorCode
from cohort.store.base import QueryTimeout, Store
from cohort.store.clickhouse_store import ClickHouseStore
from cohort.store.duckdb_store import DuckDbStore
from store.test_store_contract import batch, write

NOW_MS = int(time.time() * 1000)
SQL = {
    "duckdb": {
        "numbers": "SELECT i, repeat('x', 200) || i::VARCHAR AS pad FROM range({n}) t(i)",
        "slow": "SELECT count(*) AS n FROM range(100000000) a, range(100000000) b WHERE a.range + b.range = -1",
        "endless": "SELECT i FROM range(1000000000000) t(i)",
    },
    "clickhouse": {
        "numbers": "SELECT number AS i, concat(repeat('x', 200), toString(number)) AS pad FROM numbers({n})",
        "slow": "SELECT count() AS n FROM numbers(1000000000000000)",
        "endless": "SELECT number AS i FROM numbers(1000000000000)",
    },
}


@pytest.fixture(params=["duckdb", "clickhouse"])
def store(request, tmp_path):
    if request.param == "duckdb":
        store: Store = DuckDbStore(tmp_path / "store.duckdb")
    else:
        store = ClickHouseStore(request.getfixturevalue("clickhouse_dsn"),
                                database=request.getfixturevalue("clickhouse_database"))
    yield store
    store.close()


def sql(store: Store, name: str, **fmt) -> str:
    return SQL[store.capabilities.sql_dialect][name].format(**fmt)


@pytest.fixture
def event(sample_events):
    """A real event as `mid` of `channel`."""
    def make(mid: str, channel: str) -> dict:
        copy = dict(sample_events[0], mid=mid)
        copy["context"] = {**copy["context"], "channel": channel}
        return copy
    return make


def test_every_row_once_in_batches_of_the_asked_size(store):
    seen: list[int] = []
    sizes = []
    for part in store.stream_rows(sql(store, "numbers", n=250_000), None, batch_rows=10_000, timeout_s=60):
        assert isinstance(part, pa.RecordBatch) and part.schema.names == ["i", "pad"]
        sizes.append(part.num_rows)
        seen.extend(part.column("i").to_pylist())
    assert sorted(seen) == list(range(250_000))
    assert len(sizes) >= 10 and max(sizes) <= 70_000  # streamed in parts, never one result


def test_stored_rows_stream_with_their_columns(store, event):
    write(store, batch([event(f"m{i}", "tenant-a" if i % 3 else "tenant-b") for i in range(30)], 1))
    parts = list(store.stream_rows("SELECT mid, channel, ets FROM telemetry WHERE channel = 'tenant-a'", None,
                                   batch_rows=7, timeout_s=30))
    table = pa.Table.from_batches(parts)
    assert sorted(table.column("mid").to_pylist()) == sorted(f"m{i}" for i in range(30) if i % 3)
    assert set(table.column("channel").to_pylist()) == {"tenant-a"}
    assert pa.types.is_timestamp(table.schema.field("ets").type)


def test_closing_the_stream_ends_the_query_and_the_store_goes_on(store, event):
    rows = store.stream_rows(sql(store, "endless"), None, batch_rows=1000, timeout_s=60)
    first = next(rows)
    assert first.num_rows > 0
    started = time.monotonic()
    rows.close()
    assert time.monotonic() - started < 5
    write(store, batch([event("after-close", "tenant-a")], 2))  # nothing of the stream holds the store
    assert store.query("SELECT count(*) FROM telemetry", None, 10, 10).rows[0][0] == 1


def test_time_limit_ends_the_stream(store):
    started = time.monotonic()
    with pytest.raises(QueryTimeout):
        for _ in store.stream_rows(sql(store, "slow"), None, batch_rows=1000, timeout_s=1.0):
            pass
    assert time.monotonic() - started < 15


def test_engine_errors_are_coded(store):
    with pytest.raises(CohortError) as raised:
        list(store.stream_rows("SELECT no_such_column FROM telemetry", None, batch_rows=100, timeout_s=10))
    assert raised.value.code in (ErrorCode.QUERY_FAILED, ErrorCode.QUERY_INVALID)


def test_a_stream_does_not_block_writes(store, event):
    """Embedded: the stream reads its own snapshot, the writer commits beside it. (The embedded ClickHouse engine
    serialises calls on a connection, but the stream has a connection of its own.)"""
    write(store, batch([event(f"s{i}", "tenant-a") for i in range(5)], 1))
    rows = store.stream_rows("SELECT mid FROM telemetry", None, batch_rows=2, timeout_s=30)
    next(rows)
    done = threading.Event()

    def writer():
        write(store, batch([event("while-streaming", "tenant-a")], 2))
        done.set()

    thread = threading.Thread(target=writer)
    thread.start()
    thread.join(30)
    rows.close()
    assert done.is_set()


def test_memory_stays_flat_over_a_large_result(store):
    """3 M rows of ~210 bytes (~630 MB as text; well over 1 GB as Python or Arrow values) stream with the process
    growing by about half the text or less (the embedded ClickHouse engine's own caches are in this process too,
    and grow with what earlier tests of the worker read: measured 180–310 MB)."""
    process = psutil.Process()
    before = process.memory_info().rss
    peak = before
    total = 0
    for part in store.stream_rows(sql(store, "numbers", n=3_000_000), None, batch_rows=50_000, timeout_s=300):
        total += part.num_rows
        peak = max(peak, process.memory_info().rss)
    assert total == 3_000_000
    assert peak - before < 400 * 1024 * 1024, f"grew {(peak - before) >> 20} MB"
