"""The metrics served from the rollups equal the raw-event metrics exactly (every metric × granularity × group-by
× scope, on DuckDB and ClickHouse), and the learning world's ground truth; before, during and after refresh."""

from __future__ import annotations

import itertools
from datetime import timedelta

import pytest

from analytics.rollup_world import cells, load_world, window, world_and_truth, write
from cohort.analytics.metric_query import GROUP_BYS, MetricQuery
from cohort.analytics.metrics import METRICS
from cohort.analytics.rollup_refresh import RollupRefresher
from cohort.security.identity import Scope
from cohort.store.clickhouse_store import ClickHouseStore
from cohort.store.duckdb_store import DuckDbStore

GRANULARITIES = ("day", "week", "month", "all")


def _open(kind: str, tmp_path, request):
    if kind == "duckdb":
        return DuckDbStore(tmp_path / "store.duckdb")
    return ClickHouseStore(request.getfixturevalue("clickhouse_dsn"),
                           database=request.getfixturevalue("clickhouse_database"))


@pytest.fixture(params=["duckdb", "clickhouse"])
def store(request, tmp_path):
    store = _open(request.param, tmp_path, request)
    load_world(store)
    yield store
    store.close()


def scopes() -> list[Scope | None]:
    world, _, _ = world_and_truth()
    tenant = _tenant()
    batch = min(b.id for b in world.batches.values() if b.tenant == tenant)
    course = min(c.id for c in world.courses.values() if c.tenant == tenant)
    school = min(c.rollup["l3"] for c in world.classes.values() if c.rollup["l1"] == tenant)
    return [None, Scope.parse(f"batch:{batch}"), Scope.parse(f"course:{course}"), Scope.parse(f"rollup.l3:{school}")]


def cuts(dialect: str) -> list[tuple]:
    """Every metric × granularity × group-by × scope on DuckDB; on ClickHouse (chdb answers a statement in tens of
    ms) every group-by and scope once per metric, and every granularity."""
    if dialect == "duckdb":
        return list(itertools.product(sorted(METRICS), GRANULARITIES, GROUP_BYS, scopes()))
    return sorted({*itertools.product(sorted(METRICS), ("day",), GROUP_BYS, [None]),
                   *itertools.product(sorted(METRICS), GRANULARITIES, ("rollup.l3",), scopes())}, key=str)


def _tenant() -> str:
    return world_and_truth()[1].tenants[0]


def test_every_cut_equals_the_raw_metric_before_and_after_refresh(store):
    start, end = window()
    tenant = _tenant()
    assert store.query("SELECT count() FROM rollup_dirty" if store.capabilities.sql_dialect == "clickhouse"
                       else "SELECT count(*) FROM rollup_dirty", None, 1, 10.0).rows[0][0] > 0
    refresher = RollupRefresher(store)
    for refreshed in (False, True):
        if refreshed:
            assert refresher.refresh() > 0
            assert store.query("SELECT count(*) FROM learner_hours", None, 1, 10.0).rows[0][0] > 0
        checked = 0
        for name, granularity, by, scope in cuts(store.capabilities.sql_dialect):
            query = MetricQuery(start, end, granularity, by, tenant, scope)
            assert METRICS[name].reads_rollups(query)
            got = cells(store, name, query)
            assert got == cells(store, name, query, raw=True), (name, granularity, by, scope, refreshed)
            checked += bool(got)
        assert checked > len(cuts(store.capabilities.sql_dialect)) // 2  # most cuts are not empty


def test_daily_figures_equal_the_worlds_ground_truth(store):
    RollupRefresher(store).refresh()
    _, truth, _ = world_and_truth()
    start, end = window()
    for tenant in truth.tenants:
        query = MetricQuery(start, end, "day", "none", tenant, None)
        got = {name: {bucket: value for (bucket, _), (value, _) in cells(store, name, query).items()}
               for name in METRICS}
        for day in truth.days():
            second = int((start + timedelta(days=(day - truth.start).days)).timestamp())
            assert got["active_learners"].get(second, 0) == truth.active_learners(tenant, day)
            assert got["active_devices"].get(second, 0) == truth.active_devices(tenant, day)
            assert got["sessions"].get(second, 0) == truth.sessions(tenant, day)
            assert got["content_plays"].get(second, 0) == truth.content_plays(tenant, day)
            assert got["qr_scans"].get(second, 0) == truth.qr_scans(tenant, day)
            assert got["time_spent"].get(second, 0) == pytest.approx(truth.time_spent(tenant, day), abs=1e-6)


def test_an_admin_without_tenant_and_a_window_off_the_hour(store):
    RollupRefresher(store).refresh()
    start, end = window()
    for name in METRICS:
        query = MetricQuery(start, end, "week", "rollup.l1", None, None)
        assert cells(store, name, query) == cells(store, name, query, raw=True)
        odd = MetricQuery(start + timedelta(minutes=7), end, "day", "none", _tenant(), None)
        assert not METRICS[name].reads_rollups(odd)  # answered from telemetry, exactly
        assert cells(store, name, odd) == cells(store, name, odd, raw=True)


def test_rows_written_after_a_refresh_count_at_once(store):
    refresher = RollupRefresher(store)
    refresher.refresh()
    start, end = window()
    tenant = _tenant()
    query = MetricQuery(start, end, "all", "none", tenant, None)
    before = cells(store, "content_plays", query)
    _, _, uploads = world_and_truth()
    play = next(e for upload in uploads for e in upload
                if e["eid"] == "START" and e["context"]["channel"] == tenant and e["context"]["env"] == "contentplayer")
    write(store, [{**play, "mid": "again-" + play["mid"]}], offset=10_000)
    after = cells(store, "content_plays", query)
    (key, (plays, _)), = before.items()
    assert after[key][0] == plays + 1  # read from telemetry while its slice is marked
    refresher.refresh()
    assert cells(store, "content_plays", query) == after == cells(store, "content_plays", query, raw=True)
