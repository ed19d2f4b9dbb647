"""The metrics served from the rollups equal the raw-event metrics exactly, on DuckDB and ClickHouse, and the
learning world's ground truth: before a refresh (every day marked), after it (none), and with one day marked
again; read as the API reads them (the marked days first) and by the statement lineage shows.

The cuts are a pairwise covering subset of metric × granularity × group-by × scope (every pair of values of
any two of them at least once: 44 cuts instead of 672), which still puts every metric through every
granularity, group-by and scope kind, and through both rollup tables (learner_days and learner_hours)."""

from __future__ import annotations

import itertools
from datetime import timedelta
from functools import cache

import duckdb
import pytest

from analytics.rollup_world import cells, first_tenant, load_world, open_store, window, world_and_truth, write
from cohort.analytics.metric_query import GROUP_BYS, MetricQuery
from cohort.analytics.metrics import METRICS
from cohort.analytics.rollup_metric import MarkedSlices, marked_slices_sql, rows_table
from cohort.analytics.rollup_refresh import RollupRefresher
from cohort.security.identity import Scope

GRANULARITIES = ("day", "week", "month", "all")


@pytest.fixture(params=["duckdb", "clickhouse"])
def store(request, tmp_path):
    store = open_store(request.param, tmp_path, request)
    load_world(store)
    yield store
    store.close()


def scopes() -> list[Scope | None]:
    world, _, _ = world_and_truth()
    tenant = first_tenant()
    batch = min(b.id for b in world.batches.values() if b.tenant == tenant)
    course = min(c.id for c in world.courses.values() if c.tenant == tenant)
    school = min(c.rollup["l3"] for c in world.classes.values() if c.rollup["l1"] == tenant)
    return [None, Scope.parse(f"batch:{batch}"), Scope.parse(f"course:{course}"), Scope.parse(f"rollup.l3:{school}")]


def pairwise(*factors: tuple) -> list[tuple]:
    """Rows in which every pair of values of any two factors appears at least once (greedy, deterministic)."""
    pairs = list(itertools.combinations(range(len(factors)), 2))
    uncovered = {(i, a, j, b) for i, j in pairs for a in range(len(factors[i])) for b in range(len(factors[j]))}
    rows = []
    while uncovered:
        best = max(itertools.product(*(range(len(f)) for f in factors)),
                   key=lambda row: sum((i, row[i], j, row[j]) in uncovered for i, j in pairs))
        uncovered -= {(i, best[i], j, best[j]) for i, j in pairs}
        rows.append(tuple(f[k] for f, k in zip(factors, best)))
    return rows


@cache
def cuts() -> tuple[tuple, ...]:
    return tuple(pairwise(tuple(sorted(METRICS)), GRANULARITIES, GROUP_BYS, tuple(scopes())))


def test_the_cuts_cover_every_pair_and_both_tables():
    chosen = cuts()
    assert len(chosen) < 60
    values = (sorted(METRICS), GRANULARITIES, GROUP_BYS, [str(s) for s in scopes()])
    as_text = [(name, granularity, by, str(scope)) for name, granularity, by, scope in chosen]
    for i, j in itertools.combinations(range(4), 2):
        assert {(row[i], row[j]) for row in as_text} == set(itertools.product(values[i], values[j])), (i, j)
    start, end = window()
    tables = {rows_table(MetricQuery(start, end, g, by, first_tenant(), scope)) for _, g, by, scope in chosen}
    assert tables == {"learner_days", "learner_hours"}


def _marked(store) -> int:
    sql = "SELECT count() FROM rollup_dirty" if store.capabilities.sql_dialect == "clickhouse" else \
        "SELECT count(*) FROM rollup_dirty"
    return int(store.query(sql, None, 1, 10.0).rows[0][0])


def _one_day_again(store, offset: int) -> None:
    """A copy (new mids) of the tenant's events of one day: that day is marked, the others stay refreshed."""
    _, _, uploads = world_and_truth()
    events = [e for upload in uploads for e in upload if e["context"]["channel"] == first_tenant()]
    day = sorted({e["ets"] // 86_400_000 for e in events})[3]
    write(store, [{**e, "mid": "again-" + e["mid"]} for e in events if e["ets"] // 86_400_000 == day], offset)


def test_every_cut_equals_the_raw_metric_before_during_and_after_refresh(store):
    start, end = window()
    tenant = first_tenant()
    queries = [(name, MetricQuery(start, end, granularity, by, tenant, scope)) for name, granularity, by, scope in cuts()]
    assert all(METRICS[name].reads_rollups(query) for name, query in queries)
    assert _marked(store) > 0
    raw = [cells(store, name, query, raw=True) for name, query in queries]
    assert sum(bool(cut) for cut in raw) > len(raw) // 2  # most cuts are not empty
    for (name, query), expected in zip(queries, raw):  # every day marked: read from telemetry
        assert cells(store, name, query) == expected, (name, query, "marked")
    refresher = RollupRefresher(store)
    assert refresher.refresh() > 0 and _marked(store) == 0
    for (name, query), expected in zip(queries, raw):  # nothing marked: read from the rollups only
        assert cells(store, name, query) == expected, (name, query, "refreshed")
    _one_day_again(store, offset=20_000)
    assert _marked(store) > 0
    again = [cells(store, name, query, raw=True) for name, query in queries]
    assert again != raw
    for (name, query), expected in zip(queries, again):  # one day from telemetry, the others from the rollups
        assert cells(store, name, query) == expected, (name, query, "one day marked")


def test_lineages_statement_equals_the_raw_metric_with_one_day_marked(store):
    """The statement that finds the marks itself (what lineage shows, and an admin's over every tenant)."""
    RollupRefresher(store).refresh()
    _one_day_again(store, offset=20_000)
    start, end = window()
    seen: set[str] = set()
    for name, granularity, by, scope in cuts():
        if name in seen:
            continue
        seen.add(name)
        query = MetricQuery(start, end, granularity, by, first_tenant(), scope)
        assert cells(store, name, query, general=True) == cells(store, name, query, raw=True), (name, query)
    assert seen == set(METRICS)


def _marked_slices(store, query: MetricQuery) -> MarkedSlices:
    marks = marked_slices_sql(query, store.capabilities.sql_dialect)
    assert marks is not None
    return MarkedSlices.of(store.query(marks.sql, marks.params, 1000, 10.0).rows)


def test_a_day_marked_by_batches_reads_its_rollups_and_only_the_events_past_its_refresh(store):
    """DuckDB: a refreshed day marked again by a batch keeps its rollup rows and adds the events past the offset
    its refresh covered, not the whole day; ClickHouse reads it whole. Either way the figures equal telemetry's,
    and a forget (its rollups may hold what it deleted) makes the day whole again."""
    start, end = window()
    tenant = first_tenant()
    query = MetricQuery(start, end, "day", "none", tenant, None)
    assert _marked_slices(store, query).deltas == {}  # never refreshed: every marked day whole
    RollupRefresher(store).refresh()
    _one_day_again(store, offset=20_000)
    marked = _marked_slices(store, query)
    assert len(marked.days) == 1
    duckdb = store.capabilities.sql_dialect == "duckdb"
    if duckdb:
        (day, covered), = marked.deltas.items()
        assert marked.whole == () and 0 < covered < 20_000
        statement = METRICS["sessions"].cell_sql(query, "duckdb", marked.whole, marked.deltas).sql
        assert f"log_offset > {covered}" in statement and "NOT IN" not in statement
        added = store.query(f"SELECT count(*) FROM telemetry WHERE channel = '{tenant}' AND log_offset > {covered}",
                            None, 1, 10.0).rows[0][0]
        assert int(added) > 0  # only the batch written since
    else:
        assert marked.deltas == {} and len(marked.whole) == 1
    for name, granularity, by, scope in cuts():
        cut = MetricQuery(start, end, granularity, by, tenant, scope)
        assert cells(store, name, cut) == cells(store, name, cut, raw=True), (name, cut)
    final = " FINAL" if not duckdb else ""
    learner = str(store.query(f"SELECT actor_id FROM learner_days{final} WHERE tenant = '{tenant}' AND "
                              "actor_type = 'User' ORDER BY actor_id LIMIT 1", None, 1, 10.0).rows[0][0])
    store.forget_rows(tenant, learner)
    forgotten = _marked_slices(store, query)
    assert forgotten.deltas == {} and len(forgotten.whole) >= 1
    for name in METRICS:
        cut = MetricQuery(start, end, "week", "rollup.l3", tenant, None)
        assert cells(store, name, cut) == cells(store, name, cut, raw=True), name


def test_a_store_refreshed_before_covered_offsets_reads_its_marked_days_whole(tmp_path, request):
    store = open_store("duckdb", tmp_path, request)
    load_world(store)
    RollupRefresher(store).refresh()
    store.close()
    with duckdb.connect(str(tmp_path / "store.duckdb")) as con:  # as a store from before the column was added
        con.execute("ALTER TABLE rollup_state DROP COLUMN covered_offset")
    store = open_store("duckdb", tmp_path, request)  # which adds it, empty
    try:
        _one_day_again(store, offset=20_000)
        start, end = window()
        query = MetricQuery(start, end, "week", "none", first_tenant(), None)
        marked = _marked_slices(store, query)
        assert marked.deltas == {} and len(marked.whole) == 1
        for name in METRICS:
            assert cells(store, name, query) == cells(store, name, query, raw=True), name
        RollupRefresher(store).refresh()  # the next refresh records the offset
        _one_day_again(store, offset=30_000)
        assert len(_marked_slices(store, query).deltas) == 1
    finally:
        store.close()


def test_with_nothing_marked_the_statement_reads_the_rollup_only():
    start, end = window()
    for name, metric in METRICS.items():
        for dialect in ("duckdb", "clickhouse"):
            daily = metric.cell_sql(MetricQuery(start, end, "week", "rollup.l3", "t1", None), dialect, ())
            assert "learner_days" in daily.sql and "telemetry" not in daily.sql and "rollup_dirty" not in daily.sql
            hourly = metric.cell_sql(MetricQuery(start, end, "week", "object_id", "t1", None), dialect, ())
            assert "learner_hours" in hourly.sql and "telemetry" not in hourly.sql
            marked = metric.cell_sql(MetricQuery(start, end, "day", "none", "t1", None), dialect, (start.date(),))
            assert "telemetry" in marked.sql and "rollup_dirty" not in marked.sql
            general = metric.cell_sql(MetricQuery(start, end, "day", "none", "t1", None), dialect)
            assert "rollup_dirty" in general.sql  # lineage's statement finds the marks itself


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


def test_an_admin_without_tenant_and_windows_off_the_day_and_the_hour(store):
    RollupRefresher(store).refresh()
    _one_day_again(store, offset=30_000)
    start, end = window()
    for name in METRICS:
        query = MetricQuery(start, end, "week", "rollup.l1", None, None)
        assert cells(store, name, query) == cells(store, name, query, raw=True)
        hours = MetricQuery(start + timedelta(hours=5), end - timedelta(hours=3), "day", "rollup.l3", first_tenant(), None)
        assert rows_table(hours) == "learner_hours"  # whole hours, not whole days
        assert cells(store, name, hours) == cells(store, name, hours, raw=True)
        odd = MetricQuery(start + timedelta(minutes=7), end, "day", "none", first_tenant(), None)
        assert not METRICS[name].reads_rollups(odd)  # answered from telemetry, exactly
        assert cells(store, name, odd) == cells(store, name, odd, raw=True)


def test_rows_written_after_a_refresh_count_at_once(store):
    refresher = RollupRefresher(store)
    refresher.refresh()
    start, end = window()
    tenant = first_tenant()
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


def test_a_forgotten_learner_leaves_every_rollup_table(store):
    refresher = RollupRefresher(store)
    refresher.refresh()
    start, end = window()
    tenant = first_tenant()
    final = " FINAL" if store.capabilities.sql_dialect == "clickhouse" else ""
    learner = str(store.query(f"SELECT actor_id FROM learner_days{final} WHERE tenant = '{tenant}' AND "
                              "actor_type = 'User' ORDER BY actor_id LIMIT 1", None, 1, 10.0).rows[0][0])
    store.forget_rows(tenant, learner)
    left = store.query(f"SELECT count(*) FROM learner_days{final} WHERE actor_id = '{learner}'", None, 1, 10.0)
    assert int(left.rows[0][0]) == 0
    for name in METRICS:  # the figures lose the learner at once, and still equal telemetry's
        query = MetricQuery(start, end, "week", "rollup.l3", tenant, None)
        assert cells(store, name, query) == cells(store, name, query, raw=True)
    assert refresher.refresh() > 0  # the forget marked the learner's days: their sketches are computed again
    for name in METRICS:  # a group only the learner had is gone from the sketches too (ClickHouse: older version)
        for by in ("none", "rollup.l4", "object_id"):
            query = MetricQuery(start, end, "day", by, tenant, None)
            assert cells(store, name, query) == cells(store, name, query, raw=True), (name, by)


@pytest.mark.parametrize("table", ["learner_days", "learner_sketches"])
@pytest.mark.parametrize("kind", ["duckdb", "clickhouse"])
def test_a_store_refreshed_before_a_table_existed_is_backfilled(request, tmp_path, kind, table):
    """Rollups refreshed by an earlier version have no learner_days (or learner_sketches) rows: opening the store
    marks their slices again (backfill_marks), so the figures come from telemetry (exact) until the next refresh
    fills the table; opened again after that, nothing is marked."""
    kind = request.node.callspec.params["kind"]
    store = open_store(kind, tmp_path, request)
    try:
        load_world(store)
        RollupRefresher(store).refresh()
        if kind == "clickhouse":
            store.rollup_client().command(f"TRUNCATE TABLE {table}")
        else:
            with store.rollup_transaction() as con:
                con.execute(f"DELETE FROM {table}").fetchall()
    finally:
        store.close()
    store = open_store(kind, tmp_path, request)  # what an upgrade does: the same data, opened by this version
    try:
        slices = int(store.query("SELECT count(*) FROM rollup_state", None, 1, 10.0).rows[0][0])
        assert _marked(store) == slices > 0
        start, end = window()
        query = MetricQuery(start, end, "week", "rollup.l3", first_tenant(), None)
        assert rows_table(query) == "learner_days"
        for name in METRICS:
            assert cells(store, name, query) == cells(store, name, query, raw=True)
        assert RollupRefresher(store).refresh() == slices and _marked(store) == 0
    finally:
        store.close()
    store = open_store(kind, tmp_path, request)
    try:
        assert _marked(store) == 0  # the table holds rows: nothing to backfill
        for name in METRICS:
            assert cells(store, name, query) == cells(store, name, query, raw=True)
    finally:
        store.close()
