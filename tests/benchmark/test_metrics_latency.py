"""The metrics benchmark's store growth: its copied rollup rows are exactly what a refresh of the copied
telemetry computes, so latencies measured over grown stores are those of refreshed ones."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta

from cohort.analytics import sketch_table
from cohort.analytics.distinct_sketch import Sketch, count
from cohort.analytics.metric_answer import QueryBounds, answer_metric
from cohort.analytics.metrics import METRICS, TELEMETRY_METRICS
from cohort.analytics.rollup_refresh import RollupRefresher
from cohort.analytics.rollup_tables import COLUMNS, ROLLUP_TABLES
from cohort.benchmark.metrics_latency import base_outcomes, grow, mark_day_again, requests, summaries, timed
from cohort.store.duckdb_store import DuckDbStore

BOUNDS = QueryBounds(row_limit=100_000, timeout_s=60.0, max_result_bytes=1 << 24, max_memory_bytes=1 << 31)


def _rows(store: DuckDbStore, table: str) -> list[tuple]:
    # lists as text: the store hands them back as JSON fragments, which do not compare
    columns = ", ".join(f"CAST({name} AS VARCHAR)" if duck.endswith("[]") else name
                        for name, duck, _ in (*COLUMNS[table][0], *COLUMNS[table][1]))
    return [tuple(row) for row in store.query(f"SELECT {columns} FROM {table} ORDER BY ALL", None, 1_000_000, 120.0).rows]


def _sketches(store: DuckDbStore) -> list[tuple]:
    """learner_sketches' rows, with each sketch as its distinct count (an exact set's hashes may be listed in
    another order) and totals to 6 decimals (sums of doubles in another order)."""
    out = []
    for table in sketch_table.TABLES:
        rows = store.query(f"SELECT * EXCLUDE (version) FROM {table} ORDER BY ALL", None, 1_000_000, 120.0)
        kinds = [i for i, name in enumerate(rows.columns) if name in sketch_table.KINDS]
        out += [tuple(count(Sketch.parse(v)) if i in kinds and v is not None else round(v, 6) if isinstance(v, float)
                      else v for i, v in enumerate(row)) for row in rows.rows]
    return out


def _one(store: DuckDbStore, sql: str) -> tuple:
    return tuple(store.query(sql, None, 1, 60.0).rows[0])


def test_grown_rollups_equal_a_refresh_of_the_grown_telemetry(tmp_path):
    store = DuckDbStore(tmp_path / "store.duckdb")
    base, tenant, school = base_outcomes(days=3, learners=2)
    for outcome in base:
        store.write_batch(outcome, failed_at_ms=0)
    RollupRefresher(store).refresh()
    one, learners = _one(store, "SELECT count(*), count(DISTINCT actor_id) FROM telemetry")
    grow(store, 3)
    assert _one(store, "SELECT count(*), count(DISTINCT mid), count(DISTINCT actor_id) FROM telemetry") == \
        (3 * one, 3 * one, 3 * learners)
    grown = {table: _rows(store, table) for table in ROLLUP_TABLES}
    sketches = _sketches(store)
    assert all(grown.values()) and sketches
    first, last = (date.fromisoformat(str(d)[:10]) for d in _one(store, "SELECT min(ets), max(ets) FROM telemetry"))
    assert RollupRefresher(store).recompute(None, first, last) > 0  # every slice again, from the grown telemetry
    assert {table: _rows(store, table) for table in ROLLUP_TABLES} == grown
    assert _sketches(store) == sketches
    # the benchmark's requests answer over the grown store as over raw telemetry
    end = last + timedelta(days=1)
    queries = requests(tenant, school, datetime(end.year, end.month, end.day, tzinfo=UTC))
    for query in queries[::5]:
        for name in ("active_learners", "sessions", "time_spent"):
            now = datetime.now(UTC)
            rolled = answer_metric(store, METRICS[name], query, suppressed=False, k=5, bounds=BOUNDS, now=now)
            raw = answer_metric(store, TELEMETRY_METRICS[name], query, suppressed=False, k=5, bounds=BOUNDS, now=now)
            assert rolled["series"] == raw["series"] and rolled["series"], (name, query)
    mark_day_again(store, tenant, last)  # the newest day marked: read from telemetry, still exact
    assert [str(d) for (d,) in store.query("SELECT DISTINCT day FROM rollup_dirty", None, 10, 60.0).rows] == [str(last)]
    for query in queries[::5]:
        now = datetime.now(UTC)
        rolled = answer_metric(store, METRICS["content_plays"], query, suppressed=False, k=5, bounds=BOUNDS, now=now)
        raw = answer_metric(store, TELEMETRY_METRICS["content_plays"], query, suppressed=False, k=5, bounds=BOUNDS,
                            now=now)
        assert rolled["series"] == raw["series"], query
    got = summaries(timed(store, {"sessions": METRICS["sessions"]}, queries[:2], 1))
    assert got["all"]["requests"] == 2 and set(got["per_kind"]) == {"by=none", "by=none scoped"}
    store.close()
