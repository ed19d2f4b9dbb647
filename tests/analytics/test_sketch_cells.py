"""Metrics merged from learner_sketches, on DuckDB and ClickHouse: which requests they answer, that the stores'
SQL builds the registers this module defines, that estimated answers say so and stay within the stated error,
and that a forgotten learner's group leaves them."""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta

import numpy as np
import pytest

from analytics.rollup_world import (BOUNDS, cells, first_tenant, load_world, open_store, window, world_and_truth,
                                    write)
from cohort.analytics import sketch_cells, sketch_table
from cohort.analytics.distinct_sketch import RELATIVE_STANDARD_ERROR, Sketch, registers_of
from cohort.analytics.metric_answer import answer_metric, sketched_cells
from cohort.analytics.metric_query import MetricQuery
from cohort.analytics.metrics import METRICS, TELEMETRY_METRICS
from cohort.analytics.rollup_refresh import RollupRefresher
from cohort.analytics.sketch_cells import sketch_plan
from cohort.security.identity import Scope

COUNTS = ("active_learners", "active_devices", "sessions")


@pytest.fixture(params=["duckdb", "clickhouse"])
def store(request, tmp_path):
    store = open_store(request.param, tmp_path, request)
    load_world(store)
    yield store
    store.close()


def _answer(store, name: str, query: MetricQuery, raw: bool = False) -> dict:
    metric = TELEMETRY_METRICS[name] if raw else METRICS[name]
    return answer_metric(store, metric, query, suppressed=False, k=5, bounds=BOUNDS, now=datetime.now(UTC))


def test_which_requests_the_sketches_answer():
    start, end = window()
    tenant = first_tenant()
    school = Scope.parse("rollup.l3:s1")
    assert sketch_plan("sessions", MetricQuery(start, end, "week", "object_id", tenant, None)) is not None
    assert sketch_plan("time_spent", MetricQuery(start, end, "all", "pdata_id", tenant, school)) is not None
    assert sketch_plan("qr_scans", MetricQuery(start, end, "day", "rollup.l4", tenant, school)) is not None
    assert sketch_plan("sessions", MetricQuery(start, end, "day", "rollup.l3", tenant, school)) is not None
    refused = [
        ("sessions", MetricQuery(start, end, "day", "none", None, None)),  # every tenant: an admin's
        ("sessions", MetricQuery(start, end, "hour", "none", tenant, None)),
        ("sessions", MetricQuery(start + timedelta(hours=1), end, "day", "none", tenant, None)),  # not whole days
        ("sessions", MetricQuery(start, end, "day", "none", tenant, Scope.parse("batch:b1"))),  # batch scopes
        ("sessions", MetricQuery(start, end, "day", "rollup.l2", tenant, school)),  # a level above the scope's
        ("item_stats", MetricQuery(start, end, "day", "none", tenant, None)),  # not a rollup metric
    ]
    for name, query in refused:
        assert sketch_plan(name, query) is None, (name, query)


def test_small_cells_are_exact_and_say_so(store):
    RollupRefresher(store).refresh()
    start, end = window()
    world, _, _ = world_and_truth()
    schools = sorted({c.rollup["l3"] for c in world.classes.values() if c.rollup["l1"] == first_tenant()})
    two_schools = Scope.parse(f"rollup.l3:{','.join(schools[:2])}")  # an educator's schools: their union
    for query in (MetricQuery(start, end, "week", "object_id", first_tenant(), None),
                  MetricQuery(start, end, "month", "rollup.l3", first_tenant(), two_schools),  # a group per school
                  MetricQuery(start, end, "all", "none", first_tenant(), two_schools)):
        for name in METRICS:
            if sketch_plan(name, query) is None:
                continue
            answer = _answer(store, name, query)
            assert answer["exact"] is True and "estimate" not in answer
            assert answer["series"] == _answer(store, name, query, raw=True)["series"], (name, query)
            assert answer["series"], (name, query)


def test_a_day_written_since_the_refresh_is_sketched_from_telemetry_and_merged(store, monkeypatch):
    RollupRefresher(store).refresh()
    _, _, uploads = world_and_truth()
    events = [e for upload in uploads for e in upload if e["context"]["channel"] == first_tenant()]
    day = sorted({e["ets"] // 86_400_000 for e in events})[3]
    write(store, [{**e, "mid": "again-" + e["mid"], "context": {**e["context"], "sid": "again-" + str(e["context"].get(
        "sid"))}} for e in events if e["ets"] // 86_400_000 == day], offset=20_000)  # new sessions that day
    start, end = window()
    dialect = store.capabilities.sql_dialect
    for by in ("none", "object_id"):
        query = MetricQuery(start, end, "week", by, first_tenant(), None)
        for name in ("sessions", "time_spent"):
            sketched, exact = sketched_cells(store, METRICS[name], query, dialect, BOUNDS, time.monotonic() + 60)
            assert sketched is not None and exact  # the sketches answered, with the day marked
            assert _answer(store, name, query)["series"] == _answer(store, name, query, raw=True)["series"], name
    monkeypatch.setattr(sketch_cells, "MARKED_EXACT_ROWS", 0)  # the marked day's slots as registers
    query = MetricQuery(start, end, "all", "none", first_tenant(), None)
    estimated = _answer(store, "sessions", query)
    assert estimated["exact"] is False
    (cell,), (truth,) = estimated["series"], _answer(store, "sessions", query, raw=True)["series"]
    assert abs(cell["value"] - truth["value"]) <= max(1, 4 * RELATIVE_STANDARD_ERROR * truth["value"])


def test_the_stores_registers_are_the_modules_registers_of_the_stores_hashes(store, monkeypatch):
    """Every sketch as registers (no exact sets): the registers the store's SQL built for the tenant's learners
    of a day equal those this module computes from the same hashes (the store's own hash function)."""
    monkeypatch.setattr(sketch_table, "EXACT_ROWS", 0)
    RollupRefresher(store).refresh()
    clickhouse = store.capabilities.sql_dialect == "clickhouse"
    final, hashed = (" FINAL", "xxHash64(actor_id)") if clickhouse else ("", "hash(actor_id)")
    day = store.query(f"SELECT day FROM learner_days{final} WHERE tenant = '{first_tenant()}' GROUP BY day "
                      "ORDER BY count(DISTINCT actor_id) DESC, day LIMIT 1", None, 1, 30.0).rows[0][0]
    rows = store.query(f"SELECT DISTINCT {hashed} FROM learner_days{final} WHERE tenant = '{first_tenant()}' AND "
                       f"day = '{str(day)[:10]}' AND actor_type = 'User' AND actor_id <> ''", None, 10_000, 30.0).rows
    hashes = np.array([int(h) for (h,) in rows], dtype=np.uint64)
    assert len(hashes) > 3
    version = " ORDER BY version DESC LIMIT 1" if clickhouse else ""
    (text,), = store.query(f"SELECT learners FROM {sketch_table.TABLE}{final} WHERE tenant = '{first_tenant()}' AND "
                           f"day = '{str(day)[:10]}' AND scope_level = '' AND by_dim = 'none'{version}",
                           None, 1, 30.0).rows
    assert text.startswith("z")
    assert np.array_equal(Sketch.parse(text).registers, registers_of(hashes))


def test_estimated_answers_say_so_and_stay_within_the_stated_error(store, monkeypatch):
    monkeypatch.setattr(sketch_table, "EXACT_ROWS", 0)
    RollupRefresher(store).refresh()
    start, end = window()
    for by in ("none", "rollup.l3", "object_id"):
        query = MetricQuery(start, end, "all", by, first_tenant(), None)
        for name in COUNTS:
            answer = _answer(store, name, query)
            assert answer["exact"] is False
            assert answer["estimate"]["relative_standard_error"] == RELATIVE_STANDARD_ERROR
            raw = {(c["bucket"], c["group"]): c["value"] for c in _answer(store, name, query, raw=True)["series"]}
            got = {(c["bucket"], c["group"]): c["value"] for c in answer["series"]}
            assert got.keys() == raw.keys(), (name, by)
            for key, value in raw.items():  # small counts: linear counting, all but exact
                assert abs(got[key] - value) <= max(1, 4 * RELATIVE_STANDARD_ERROR * value), (name, by, key)
        plays = MetricQuery(start, end, "week", by, first_tenant(), None)  # sums are exact whatever the sketches
        exact_plays = _answer(store, "content_plays", plays, raw=True)["series"]
        assert _answer(store, "content_plays", plays)["series"] == exact_plays


def test_a_group_only_a_forgotten_learner_had_leaves_the_sketches(store):
    refresher = RollupRefresher(store)
    refresher.refresh()
    tenant = first_tenant()
    final = " FINAL" if store.capabilities.sql_dialect == "clickhouse" else ""
    lonely = store.query(f"SELECT any_value(actor_id), object_id FROM learner_hours{final} WHERE tenant = '{tenant}' "
                         "AND actor_type = 'User' AND object_id <> '' GROUP BY object_id "
                         "HAVING count(DISTINCT actor_id) = 1 LIMIT 1", None, 1, 30.0).rows
    if not lonely:  # make one: a learner's play of a content nobody else played
        pytest.fail("the world has no content played by one learner only")
    (learner, content), = lonely
    start, end = window()
    query = MetricQuery(start, end, "all", "object_id", tenant, None)
    assert any(c["group"] == content for c in _answer(store, "active_learners", query)["series"])
    store.forget_rows(tenant, str(learner))
    assert refresher.refresh() > 0
    for name in METRICS:
        if sketch_plan(name, query) is None:
            continue
        answer = _answer(store, name, query)
        assert all(c["group"] != content for c in answer["series"]), name
        assert answer["series"] == _answer(store, name, query, raw=True)["series"], name
    assert cells(store, "sessions", query) == cells(store, "sessions", query, raw=True)


def test_an_answer_that_is_not_suppressed_reads_no_learner_sketch_and_gives_the_same_figures(store, monkeypatch):
    """Only suppression reads a cell's learners: without it a distinct metric reads its own sketches only, and a
    summed one no sketch at all, so its sums are exact even where every sketch is registers."""
    monkeypatch.setattr(sketch_table, "EXACT_ROWS", 0)
    RollupRefresher(store).refresh()
    start, end = window()
    dialect = store.capabilities.sql_dialect
    for by in ("none", "object_id"):
        query = MetricQuery(start, end, "week", by, first_tenant(), None)
        for name, exact_without in (("sessions", False), ("time_spent", True), ("content_plays", True)):
            plan = sketch_plan(name, query, learners=False)
            selected = sketch_cells.sketches_sql(plan, query, dialect).sql.split(" FROM ")[0]
            assert "learners" not in selected and ("NULL, NULL" in selected) == plan.summed, selected
            with_learners, exact_with = sketched_cells(store, METRICS[name], query, dialect, BOUNDS,
                                                       time.monotonic() + 60)
            without, exact = sketched_cells(store, METRICS[name], query, dialect, BOUNDS, time.monotonic() + 60,
                                            learners=False)
            assert [(c.bucket, c.group, c.value) for c in without] == \
                [(c.bucket, c.group, c.value) for c in with_learners], (name, by)
            assert (exact, exact_with) == (exact_without, False), (name, by)
            assert _answer(store, name, query)["exact"] is exact_without
