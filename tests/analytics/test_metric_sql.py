"""Every metric's SQL, run on both real engines (DuckDB in a file, ClickHouse through chdb), against events
with figures worked out by hand, and against the real sample (both dialects must agree on every cut)."""

from __future__ import annotations

import time
from datetime import UTC, datetime

import orjson
import pytest

from analytics.metric_events import (D1, D1_S, D2_S, D3, EXPECTED_A_BY_SCHOOL, EXPECTED_A_DAILY,
                                     EXPECTED_B_DAILY, TENANT_A, TENANT_B, all_events, write_events)
from cohort.analytics.metric_query import GRANULARITIES, GROUP_BYS, MetricQuery
from cohort.analytics.metric_sql import freshness_sql
from cohort.analytics.metrics import METRICS
from cohort.security.identity import Scope
from cohort.store.clickhouse_store import ClickHouseStore
from cohort.store.duckdb_store import DuckDbStore
from support import SAMPLE_FILE

NOW_MS = int(time.time() * 1000)


def _open(kind: str, tmp_path, request):
    if kind == "duckdb":
        return DuckDbStore(tmp_path / "store.duckdb")
    return ClickHouseStore(request.getfixturevalue("clickhouse_dsn"),
                           database=request.getfixturevalue("clickhouse_database"))


@pytest.fixture(params=["duckdb", "clickhouse"])
def store(request, tmp_path):
    store = _open(request.param, tmp_path, request)
    write_events(store, all_events())
    yield store
    store.close()


def cells(store, name: str, query: MetricQuery) -> dict[tuple[int, str | None], tuple[float, int]]:
    statement = METRICS[name].cell_sql(query, store.capabilities.sql_dialect)
    rows = store.query(statement.sql, statement.params, 10_000, 30.0).rows
    buckets = [int(row[0]) for row in rows]
    assert buckets == sorted(buckets)  # ordered by bucket (then group), so answers are stable
    return {(int(bucket), group): (value, int(learners)) for bucket, group, value, learners in rows}


def q(tenant: str | None, granularity: str = "day", by: str = "none", scope: Scope | None = None,
      start: datetime = D1, end: datetime = D3) -> MetricQuery:
    return MetricQuery(start, end, granularity, by, tenant, scope)


@pytest.mark.parametrize("name", sorted(METRICS))
def test_each_metric_by_school_and_day_is_exact(store, name):
    assert cells(store, name, q(TENANT_A, by="rollup.l3")) == EXPECTED_A_BY_SCHOOL[name]


@pytest.mark.parametrize("name", sorted(METRICS))
def test_daily_totals_per_tenant_never_mix_tenants(store, name):
    daily_a = {bucket: value for (bucket, _), (value, _) in cells(store, name, q(TENANT_A)).items()}
    daily_b = {bucket: value for (bucket, _), (value, _) in cells(store, name, q(TENANT_B)).items()}
    assert daily_a == EXPECTED_A_DAILY[name]
    assert daily_b == EXPECTED_B_DAILY[name]


@pytest.mark.parametrize("name", sorted(METRICS))
def test_a_scope_keeps_to_its_school(store, name):
    school_1 = cells(store, name, q(TENANT_A, by="rollup.l3", scope=Scope.parse("rollup.l3:school-1")))
    assert school_1 == {key: value for key, value in EXPECTED_A_BY_SCHOOL[name].items() if key[1] == "school-1"}


def test_admin_without_tenant_sees_both_tenants(store):
    both = cells(store, "content_plays", q(None))
    assert both == {(D1_S, None): (35 + 11, 35 + 11), (D2_S, None): (12, 12)}


def test_the_window_is_half_open_and_to_the_millisecond(store):
    # a1's D1 play: START at 00:01, END at 00:02; a window ending at 00:02 exactly leaves the END out
    query = MetricQuery(D1, D1.replace(minute=2), "all", "none", TENANT_A, None)
    assert cells(store, "content_plays", query) == {(D1_S, None): (1, 1)}
    assert cells(store, "time_spent", query) == {}


@pytest.mark.parametrize("granularity", ["week", "month", "all"])
def test_coarser_buckets_add_up(store, granularity):
    # D1, D2 lie in one week (Monday 2026-03-02) and one month; "all" is named by the window's start
    start = datetime(2026, 3, 1, tzinfo=UTC)
    expected_bucket = {"week": D1_S, "month": int(start.timestamp()), "all": int(start.timestamp())}[granularity]
    plays = cells(store, "content_plays", q(TENANT_A, granularity, start=start))
    assert plays == {(expected_bucket, None): (47, 35)}  # 35 plays on D1, 12 on D2; 35 distinct learners
    learners = cells(store, "active_learners", q(TENANT_A, granularity, start=start))
    assert learners == {(expected_bucket, None): (35, 35)}  # a1..a12 on both days count once


def test_hourly_buckets(store):
    hourly = cells(store, "content_plays", q(TENANT_B, "hour"))
    assert hourly == {(D1_S, None): (11, 11)}  # w1..w11 start at minutes 1..11 of D1's first hour


def test_freshness_is_the_newest_acknowledgement_of_the_tenant(store):
    dialect = store.capabilities.sql_dialect
    for tenant, count in ((TENANT_A, 12 * 3 * 2 + 3 * 3 + 20 * 3 + 1 + 4), (TENANT_B, 11 * 3), ("tenant-none", 0)):
        statement = freshness_sql(q(tenant), dialect)
        newest_ms, n = store.query(statement.sql, statement.params, 1, 10.0).rows[0]
        assert n == count
        if count:
            assert 0 <= time.time() * 1000 - int(newest_ms) < 60_000  # written by the fixture just now


@pytest.fixture(scope="module")
def sample_stores(tmp_path_factory, clickhouse_dsn):
    events = [orjson.loads(line) for line in SAMPLE_FILE.read_bytes().splitlines()]
    duck = DuckDbStore(tmp_path_factory.mktemp("sample") / "store.duckdb")
    house = ClickHouseStore(clickhouse_dsn, database=f"sample_{NOW_MS}")
    for store in (duck, house):
        write_events(store, events)
    yield duck, house
    duck.close()
    house.close()


@pytest.mark.parametrize("name", sorted(METRICS))
def test_both_dialects_agree_on_the_real_sample(sample_stores, name):
    duck, house = sample_stores
    start, end = datetime(2019, 8, 1, tzinfo=UTC), datetime(2019, 8, 31, tzinfo=UTC)
    nonempty = 0
    # every group-by with two granularities, every granularity at least twice, both tenant forms in turn
    tenants = (None, "505c7c48ac6dc1edc9b08f21db5a571d")
    cuts = [(GRANULARITIES[(i + shift) % len(GRANULARITIES)], by, tenants[(i + shift) % 2])
            for i, by in enumerate(GROUP_BYS) for shift in (0, 2)]
    assert {g for g, _, _ in cuts} == set(GRANULARITIES) and {b for _, b, _ in cuts} == set(GROUP_BYS)
    for granularity, by, tenant in cuts:
        query = MetricQuery(start, end, granularity, by, tenant, None)
        in_duck, in_house = cells(duck, name, query), cells(house, name, query)
        assert in_duck == in_house, (granularity, by, tenant)
        nonempty += bool(in_duck)
    assert nonempty > 0
