"""The refresher keeps the rollups equal to a recompute from scratch whatever happens: late events re-open their
day, refreshers run at once, a refresh dies half-way, writes interleave with refreshes, a learner is forgotten."""

from __future__ import annotations

import threading
import time
from datetime import UTC, datetime, timedelta

import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from analytics.rollup_world import cells, load_world, window, world_and_truth, write
from cohort.analytics import summary_table
from cohort.analytics.metric_query import MetricQuery
from cohort.analytics.rollup_metric import late_slices_sql
from cohort.analytics.rollup_refresh import RollupRefresher, RollupRefreshThread
from cohort.analytics.rollup_tables import COLUMNS, ROLLUP_TABLES
from cohort.store.clickhouse_store import ClickHouseStore
from cohort.store.duckdb_store import DuckDbStore


def _open(kind: str, tmp_path, request):
    if kind == "duckdb":
        return DuckDbStore(tmp_path / "store.duckdb")
    return ClickHouseStore(request.getfixturevalue("clickhouse_dsn"),
                           database=request.getfixturevalue("clickhouse_database"))


@pytest.fixture(params=["duckdb", "clickhouse"])
def store(request, tmp_path):
    store = _open(request.param, tmp_path, request)
    yield store
    store.close()


_SUMMARY_COLUMNS = tuple(n for n in summary_table.NAMES if n not in ("computed_at", "version"))


def snapshot(store) -> dict[str, list[tuple]]:
    """Every rollup table's rows and the workflow summaries (ClickHouse: the newest version of each, tombstones
    left out), sorted, without the version."""
    final = " FINAL" if store.capabilities.sql_dialect == "clickhouse" else ""
    out = {}
    for table in (*ROLLUP_TABLES, summary_table.TABLE):
        columns = _SUMMARY_COLUMNS if table == summary_table.TABLE else \
            tuple(name for name, _, _ in (*COLUMNS[table][0], *COLUMNS[table][1]))
        names = ", ".join(columns)
        rows = store.query(f"SELECT {names} FROM {table}{final}", None, 1_000_000, 60.0).rows
        out[table] = sorted((tuple(orjson.dumps(v).decode() if isinstance(v, orjson.Fragment) else str(v)
                                   for v in row) for row in rows))
    return out


def from_scratch(store) -> dict[str, list[tuple]]:
    """What the rollups must hold: every slice recomputed now."""
    start, end = window()
    RollupRefresher(store).recompute(None, start.date() - timedelta(days=30), end.date() + timedelta(days=1))
    return snapshot(store)


def _count(store, sql: str) -> int:
    if store.capabilities.sql_dialect == "clickhouse":
        sql = sql.replace("count(*)", "count()")
    return int(store.query(sql, None, 1, 30.0).rows[0][0])


def test_a_refresh_equals_a_recompute_and_the_daily_tables_reconcile(store):
    load_world(store)
    assert RollupRefresher(store).refresh() > 0
    assert _count(store, "SELECT count(*) FROM rollup_dirty") == 0
    refreshed = snapshot(store)
    assert all(refreshed[table] for table in (*ROLLUP_TABLES, summary_table.TABLE))
    assert from_scratch(store) == refreshed
    final = " FINAL" if store.capabilities.sql_dialect == "clickhouse" else ""
    plays = _count(store, f"SELECT sum(plays) FROM content_days{final}")
    assert plays == _count(store, f"SELECT sum(content_plays) FROM learner_hours{final}") > 0
    assert _count(store, f"SELECT sum(attempts) FROM item_days{final}") == \
        _count(store, "SELECT count(*) FROM telemetry WHERE eid = 'ASSESS'") > 0
    completed = _count(store, f"SELECT sum(completed) FROM content_days{final}")
    assert 0 < completed <= plays


def test_late_events_reopen_their_day_and_the_metric_changes(store):
    load_world(store)
    refresher = RollupRefresher(store)
    refresher.refresh()
    start, end = window()
    _, truth, uploads = world_and_truth()
    tenant = truth.tenants[0]
    query = MetricQuery(start, end, "day", "none", tenant, None)
    before = cells(store, "content_plays", query)
    late_before = _late(store, query)
    play = next(e for upload in uploads for e in upload
                if e["eid"] == "START" and e["context"]["channel"] == tenant and e["context"]["env"] == "contentplayer")
    late_day = datetime.fromtimestamp(play["ets"] / 1000, UTC).replace(hour=0, minute=0, second=0, microsecond=0)
    arrival = late_day + timedelta(days=5, hours=3)  # acknowledged five days after it happened
    write(store, [{**play, "mid": "late-" + play["mid"]}], offset=9_000, received_ms=int(arrival.timestamp() * 1000))
    bucket = int(late_day.timestamp())
    assert refresher.refresh() == 1  # only that (tenant, day) slice
    after = cells(store, "content_plays", query)
    assert after[(bucket, None)][0] == before[(bucket, None)][0] + 1
    assert {k: v for k, v in after.items() if k[0] != bucket} == {k: v for k, v in before.items() if k[0] != bucket}
    assert after == cells(store, "content_plays", query, raw=True)
    # the world was stored today, so each of its days is late already; the new late event re-opened one again
    late_after = _late(store, query)
    day = late_day.date().isoformat()
    assert late_after[day] > late_before[day]
    assert {k: v for k, v in late_after.items() if k != day} == {k: v for k, v in late_before.items() if k != day}


def _late(store, query: MetricQuery) -> dict[str, int]:
    statement = late_slices_sql(query, store.capabilities.sql_dialect, datetime.now(UTC))
    rows = store.query(statement.sql, statement.params, 100, 30.0).rows
    assert all(int(refreshed) == 1 for _, _, refreshed in rows)
    return {str(day): int(at) for day, at, _ in rows}


def test_two_refreshers_at_once_leave_correct_rollups(store):
    load_world(store)
    errors: list[BaseException] = []

    def run():
        try:
            RollupRefresher(store).refresh()
        except BaseException as exc:  # noqa: BLE001
            errors.append(exc)

    threads = [threading.Thread(target=run) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)
    assert not errors
    RollupRefresher(store).refresh()  # whatever one left marked
    assert snapshot(store) == from_scratch(store)


def test_a_refresh_that_dies_half_way_is_finished_by_the_next(store):
    load_world(store)
    RollupRefresher(store).refresh()
    good = snapshot(store)
    _, _, uploads = world_and_truth()
    write(store, [{**e, "mid": "more-" + e["mid"]} for e in uploads[3]], offset=7_000)

    def crash():
        raise RuntimeError("the process died here")

    with pytest.raises(RuntimeError):
        RollupRefresher(store, after_delete=crash).refresh()
    assert _count(store, "SELECT count(*) FROM rollup_dirty") > 0  # the marks stay until a refresh completes
    if store.capabilities.sql_dialect == "duckdb":
        assert snapshot(store) == good  # the delete was rolled back with the rest
    assert RollupRefresher(store).refresh() > 0
    assert snapshot(store) == from_scratch(store) != good


def test_duckdb_refreshes_one_day_per_transaction(tmp_path):
    """A refresh of many marked days commits each day on its own: one day failing (here the third) keeps the days
    before it done and their marks gone, its own and later marks kept; the next refresh finishes them. So what one
    transaction holds in memory is a day's events, whatever the number of days marked (a recompute of a month)."""
    store = DuckDbStore(tmp_path / "store.duckdb")
    try:
        load_world(store)
        days = _count(store, "SELECT count(DISTINCT day) FROM rollup_dirty")
        assert days >= 4
        calls = []

        def fail_on_the_third_day():
            calls.append(1)
            if len(calls) == 3:
                raise RuntimeError("out of memory")

        with pytest.raises(RuntimeError):
            RollupRefresher(store, after_delete=fail_on_the_third_day).refresh()
        assert _count(store, "SELECT count(*) FROM rollup_state") > 0  # the first two days' slices
        assert _count(store, "SELECT count(DISTINCT day) FROM rollup_dirty") == days - 2
        assert RollupRefresher(store).refresh() > 0
        assert _count(store, "SELECT count(*) FROM rollup_dirty") == 0
        assert snapshot(store) == from_scratch(store)
    finally:
        store.close()


@settings(max_examples=8, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(steps=st.lists(st.sampled_from(["write", "refresh", "refresh-in-thread"]), min_size=3, max_size=10))
def test_the_marks_never_skip_a_row_however_writes_and_refreshes_interleave(tmp_path_factory, steps):
    store = DuckDbStore(tmp_path_factory.mktemp("interleave") / "store.duckdb")
    try:
        _, _, uploads = world_and_truth()
        offset, pending = 0, list(uploads)
        threads = []
        for step in steps:
            if step == "write" and pending:
                offset += 1
                write(store, [e for upload in pending[:20] for e in upload], offset)
                pending = pending[20:]
            elif step == "refresh":
                RollupRefresher(store).refresh()
            else:  # a refresher racing the next writes
                thread = threading.Thread(target=RollupRefresher(store).refresh)
                thread.start()
                threads.append(thread)
        for thread in threads:
            thread.join(60)
        RollupRefresher(store).refresh()
        assert snapshot(store) == from_scratch(store)
    finally:
        store.close()


def test_writers_and_a_refresher_at_once_on_clickhouse(request, tmp_path):
    store = _open("clickhouse", tmp_path, request)
    try:
        _, _, uploads = world_and_truth()
        stop = threading.Event()

        def refresh_loop():
            refresher = RollupRefresher(store)
            while not stop.is_set():
                refresher.refresh()
                time.sleep(0.01)

        refreshing = threading.Thread(target=refresh_loop)
        refreshing.start()
        try:
            for at in range(0, len(uploads), 40):
                write(store, [e for upload in uploads[at:at + 40] for e in upload], at + 1)
        finally:
            stop.set()
            refreshing.join(120)
        RollupRefresher(store).refresh()
        assert snapshot(store) == from_scratch(store)
    finally:
        store.close()


def test_forget_removes_the_learners_rollup_rows(store):
    load_world(store)
    RollupRefresher(store).refresh()
    _, truth, _ = world_and_truth()
    tenant = truth.tenants[0]
    final = " FINAL" if store.capabilities.sql_dialect == "clickhouse" else ""
    learner = str(store.query(f"SELECT actor_id FROM learner_hours{final} WHERE tenant = '{tenant}' AND "
                              "actor_type = 'User' LIMIT 1", None, 1, 30.0).rows[0][0])
    other = _count(store, f"SELECT count(*) FROM learner_hours{final} WHERE actor_id <> '{learner}'")
    forgotten = store.forget_rows(tenant, learner)
    assert forgotten.telemetry > 0
    for table in ROLLUP_TABLES:
        assert _count(store, f"SELECT count(*) FROM {table}{final} WHERE actor_id = '{learner}'") == 0
    assert _count(store, f"SELECT count(*) FROM learner_hours{final} WHERE actor_id <> '{learner}'") == other
    assert _count(store, f"SELECT count(*) FROM workflow_summaries{final} WHERE uid = '{learner}'") == 0
    assert snapshot(store) == from_scratch(store)  # and a recompute does not bring them back
    assert _count(store, f"SELECT count(*) FROM workflow_summaries{final} WHERE uid = '{learner}'") == 0


def test_rows_a_racing_refresh_lands_after_a_forget_are_swept_on_clickhouse(request, tmp_path):
    """ClickHouse has no lock between a refresh and a forget, and they may run in different processes (a `cohort
    store-writer` refreshes, `serve` forgets): a refresh whose INSERT … SELECT read a learner's events just before
    the forget deleted them lands its rows after the forget's deletes. The forget leaves a tombstone, and every
    refresh sweeps the rows of learners forgotten within the hour, after its own inserts."""
    store = _open("clickhouse", tmp_path, request)
    try:
        load_world(store)
        RollupRefresher(store).refresh()
        _, truth, uploads = world_and_truth()
        tenant = truth.tenants[0]
        learner = str(store.query(f"SELECT actor_id FROM learner_hours FINAL WHERE tenant = '{tenant}' AND "
                                  "actor_type = 'User' ORDER BY actor_id LIMIT 1", None, 1, 30.0).rows[0][0])
        client = store.rollup_client()
        held = {}  # the learner's rows as a refresh computed them before the forget
        for table, column in summary_table.LEARNER_ROWS:
            result = client.query(f"SELECT * FROM {table} WHERE {column} = {{a:String}}", parameters={"a": learner})
            held[table] = (list(result.column_names), [list(row) for row in result.result_rows])
        assert held["learner_hours"][1] and held[summary_table.TABLE][1]
        write(store, [{**e, "mid": "race-" + e["mid"]} for e in uploads[3]], offset=8_000)  # something to refresh

        def forget_then_the_racing_insert_lands():
            assert store.forget_rows(tenant, learner).telemetry > 0
            for table, (columns, rows) in held.items():
                client.insert(table, rows, column_names=columns, settings={"insert_deduplicate": 0})
            assert _count(store, f"SELECT count(*) FROM learner_hours WHERE actor_id = '{learner}'") > 0

        RollupRefresher(store, after_delete=forget_then_the_racing_insert_lands).refresh()
        for table in ROLLUP_TABLES:
            assert _count(store, f"SELECT count(*) FROM {table} WHERE actor_id = '{learner}'") == 0, table
        assert _count(store, f"SELECT count(*) FROM workflow_summaries WHERE uid = '{learner}'") == 0
        RollupRefresher(store).refresh()  # the forget's own marks: the learner's days recomputed without them
        assert _count(store, f"SELECT count(*) FROM learner_hours WHERE actor_id = '{learner}'") == 0
    finally:
        store.close()


class _SlowRefresher:
    """Stands in for a refresh of a big day: each takes `seconds`."""

    def __init__(self, seconds: float):
        self.seconds = seconds
        self.busy = 0.0
        self.runs = 0
        self.last = 0.0

    def refresh(self) -> int:
        began = time.monotonic()
        time.sleep(self.seconds)
        self.last = time.monotonic() - began  # longer than asked when the machine is busy
        self.busy += self.seconds
        self.runs += 1
        return 1


def test_refreshing_takes_at_most_its_busy_share_of_the_time():
    slow = _SlowRefresher(0.2)
    thread = RollupRefreshThread(slow, interval_s=0.01, max_busy_share=0.25)  # type: ignore[arg-type]
    began = time.monotonic()
    thread.start()
    time.sleep(2.0)
    thread.stop()
    elapsed = time.monotonic() - began
    assert slow.runs >= 2  # it keeps refreshing ...
    assert slow.busy / elapsed <= 0.25 + 0.2 / elapsed  # ... but waits 3 × a refresh's time after each one
    assert thread.last_wait_s == pytest.approx(3 * slow.last, abs=0.05)  # 0.6 s on an idle machine


def test_a_quick_refresh_waits_the_interval():
    thread = RollupRefreshThread(_SlowRefresher(0.0), interval_s=5.0, max_busy_share=0.25)  # type: ignore[arg-type]
    assert thread.wait_after(0.1) == 5.0 and thread.wait_after(4.0) == pytest.approx(12.0)
    with pytest.raises(ValueError):
        RollupRefreshThread(_SlowRefresher(0.0), max_busy_share=0)  # type: ignore[arg-type]
