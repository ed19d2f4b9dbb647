"""Lineage's pure parts: the mid check, the dataset versions and stages it reports, a metric's statement being
the metric's own, and an event's copies and requests put together from rows; the event statements run on
both real engines (DuckDB in a file, ClickHouse through chdb) and give the same lineage."""

from __future__ import annotations

import time

import orjson
import pytest

from analytics.metric_events import D1, TENANT_A, TENANT_B, event
from cohort.analytics.lineage import (DATASET_VERSIONS, MAX_COPIES, STAGE_ROLES, check_mid, event_lineage,
                                      metric_lineage, pipeline_stages, quarantined_copies_sql, request_of,
                                      requests_sql, stage_results, stored_copies_sql)
from cohort.analytics.metric_query import MetricQuery
from cohort.analytics.metrics import METRICS
from cohort.core.errors import CohortError, ErrorCode
from cohort.core.log_record import LogRecord
from cohort.core.process_batch import process_batch
from cohort.core.stages import STAGES
from cohort.security.identity import Scope
from cohort.security.table_catalog import CATALOG
from cohort.state.mid_window import MidWindow
from cohort.store.clickhouse_store import ClickHouseStore
from cohort.store.duckdb_store import DuckDbStore
from support import SAMPLE_FILE

QUERY = MetricQuery(D1, D1.replace(day=4), "day", "rollup.l3", TENANT_A, Scope.parse("rollup.l3:school-2"))


def test_every_real_mid_passes_the_check_and_odd_ones_are_coded():
    mids = [orjson.loads(line)["mid"] for line in SAMPLE_FILE.read_bytes().splitlines()]
    assert [check_mid(mid) for mid in mids] == mids
    for bad in ("", " ", "a b", "-a", "x" * 129, "a'b", "a\nb", "ü", "a/b", "a%b"):
        with pytest.raises(CohortError) as caught:
            check_mid(bad)
        assert caught.value.code == ErrorCode.LINEAGE_MID
    assert check_mid("x" * 128) == "x" * 128


def test_every_table_has_a_version_and_every_stage_a_role():
    assert set(CATALOG) <= set(DATASET_VERSIONS) and all(v >= 1 for v in DATASET_VERSIONS.values())
    for metric in METRICS.values():  # a metric reading a new table (a rollup) declares its version here
        assert set(metric.sources) <= set(DATASET_VERSIONS), metric.name
    assert set(STAGE_ROLES) == set(STAGES)
    assert [(s["name"], s["order"]) for s in pipeline_stages()] == [(name, i) for i, name in enumerate(STAGES, 1)]


@pytest.mark.parametrize("dialect", ["duckdb", "clickhouse"])
@pytest.mark.parametrize("name", sorted(METRICS))
def test_a_metrics_lineage_holds_the_metrics_own_statement(name, dialect):
    metric = METRICS[name]
    body = metric_lineage(metric, QUERY, dialect, config_version="telemetry-3.0:abc", role="educator",
                          suppressed=False, k=10)
    own = metric.cell_sql(QUERY, dialect)
    assert (body["query"]["sql"], body["query"]["params"]) == (own.sql, own.params)
    assert "school-2" in body["query"]["sql"] and body["scope"]["scope"] == "rollup.l3:school-2"
    # served from the learner_hours rollup, with not-yet-refreshed slices read from telemetry
    assert sorted(d["table"] for d in body["datasets"]) == sorted(metric.sources)
    assert [r["table"] for r in body["rollups"]] == [t for t in metric.sources if t != "telemetry"]
    assert next(d for d in body["datasets"] if d["table"] == "telemetry")["config_version"] == "telemetry-3.0:abc"
    assert body["suppression"]["applies"] is False and body["rules"]


def test_a_metric_reading_a_rollup_lists_it(monkeypatch):
    from dataclasses import replace

    monkeypatch.setitem(DATASET_VERSIONS, "plays_daily", 2)
    metric = replace(METRICS["content_plays"], sources=("plays_daily",))  # type: ignore[type-var]
    body = metric_lineage(metric, QUERY, "clickhouse", config_version="v", role="admin", suppressed=False, k=10)
    assert [(r["table"], r["version"], r["store"]) for r in body["rollups"]] == [("plays_daily", 2, "clickhouse")]
    assert [d["table"] for d in body["datasets"]] == ["plays_daily"]


def test_the_suppression_rule_follows_the_role():
    metric = METRICS["sessions"]
    analyst = metric_lineage(metric, QUERY, "duckdb", config_version="v", role="analyst", suppressed=True, k=7)
    assert analyst["suppression"]["applies"] is True and "fewer than 7" in analyst["suppression"]["rule"]


def test_stage_results_follow_the_pipelines_order_and_keep_unknown_stages():
    recorded = {"route": {"ok": True, "table": "telemetry"}, "extract": {"ok": True, "batch_us": 12},
                "enrich": {"ok": True, "batch_us": 3}, "transform": "not an object"}
    results = stage_results(recorded)
    assert [r["name"] for r in results] == [*STAGES, "enrich"]
    named = {r["name"]: r for r in results}
    assert named["extract"] == {"name": "extract", "recorded": True, "ok": True, "batch_us": 12}
    assert named["transform"] == {"name": "transform", "recorded": False}
    assert named["enrich"]["recorded"] is True


def _stored_row(offset: int, received_ms: int, channel: str = TENANT_A) -> tuple:
    trace = {"source": "/v1/telemetry", "ingested_at": received_ms, "processed_at": received_ms + 5,
             "log_offset": offset, "config_version": "v1",
             "stages": {"extract": {"ok": True, "batch_us": 1}, "transform": {"ok": True, "pseudonymised": 3}}}
    return (channel, "START", received_ms - 1000, received_ms, offset, orjson.dumps(trace).decode())


def _request_row(offset: int, received_ms: int, msgid: str) -> tuple:
    return (offset, received_ms, "/v1/telemetry", msgid, '{"x-app-id":"app"}', 2)


def test_a_copys_request_is_its_own_even_when_partitions_share_an_offset():
    stored = [_stored_row(5, 1_000_000)]
    quarantined = [(TENANT_A, "END", "ERR_ROUTE_TIMESTAMP", "route", "ets 5 ...", 2_000_000, 5, "/v1/telemetry", 1)]
    requests = [_request_row(5, 1_000_000, "mine"), _request_row(5, 1_500_000, "other-partition")]
    body = event_lineage("m", TENANT_A, stored, quarantined, requests, with_headers=False)
    assert body is not None and body["status"] == "stored_and_quarantined"
    assert body["stored"][0]["request"]["msgid"] == "mine" and "headers" not in body["stored"][0]["request"]
    assert body["quarantined"][0]["request"] is None  # two requests at offset 5: not guessed
    assert body["stored"][0]["pseudonymised"] == 3 and body["stored"][0]["processed_at"] is not None
    assert "ingested_at_ms" not in body["stored"][0]
    admin = event_lineage("m", None, stored, [], requests[:1], with_headers=True)
    assert admin is not None and admin["stored"][0]["request"]["headers"] == {"x-app-id": "app"}


def test_copies_are_bounded_and_nothing_is_none():
    assert event_lineage("m", TENANT_A, [], [], [], with_headers=False) is None
    many = [_stored_row(i, 1_000_000 + i) for i in range(MAX_COPIES + 1)]
    body = event_lineage("m", TENANT_A, many, [], [], with_headers=False)
    assert body is not None and body["truncated"] is True and len(body["stored"]) == MAX_COPIES
    assert body["duplicates"]["stored_copies"] == MAX_COPIES and "at least" in body["duplicates"]["note"]


def test_a_trace_that_is_not_json_leaves_the_stages_unrecorded():
    row = (TENANT_A, "START", 1, 2, 3, "{not json")
    body = event_lineage("m", TENANT_A, [row], [], [], with_headers=False)
    assert body is not None and all(stage["recorded"] is False for stage in body["stored"][0]["stages"])


def test_requests_sql_takes_integers_only():
    assert requests_sql([], "duckdb") is None
    statement = requests_sql([3, 1, 3], "clickhouse")
    assert statement is not None and "IN (1, 3)" in statement.sql and statement.params is None
    with pytest.raises(ValueError):
        requests_sql(["1) OR (1=1"], "duckdb")  # type: ignore[list-item]


def _batch(store, events: list[dict], offset: int, partition_received_ms: int) -> None:
    body = orjson.dumps({"id": "api.sunbird.telemetry", "params": {"msgid": f"msg-{offset}"}, "events": events})
    record = LogRecord(payload=body, event_count=len(events), offset=offset, received_at_ms=partition_received_ms,
                       headers={"msgid": f"msg-{offset}"})
    outcome = process_batch([record], MidWindow(3600), now_ms=partition_received_ms, config_version="test")
    store.write_batch(outcome, failed_at_ms=partition_received_ms, token=f"t-{offset}")


def _lineage_from(store, mid: str, tenant: str | None, scope: Scope | None) -> dict | None:
    dialect = store.capabilities.sql_dialect
    stored_sql = stored_copies_sql(mid, tenant, scope, dialect)
    stored = store.query(stored_sql.sql, stored_sql.params, 100, 30.0).rows
    failed = []
    if scope is None:
        failed_sql = quarantined_copies_sql(mid, tenant, dialect)
        failed = store.query(failed_sql.sql, failed_sql.params, 100, 30.0).rows
    lookup = requests_sql([r[4] for r in stored] + [r[6] for r in failed], dialect)
    requests = store.query(lookup.sql, lookup.params, 100, 30.0).rows if lookup else []
    return event_lineage(mid, tenant, stored, failed, requests, with_headers=True)


@pytest.fixture(params=["duckdb", "clickhouse"])
def store(request, tmp_path):
    if request.param == "duckdb":
        opened = DuckDbStore(tmp_path / "store.duckdb")
    else:
        opened = ClickHouseStore(request.getfixturevalue("clickhouse_dsn"),
                                 database=request.getfixturevalue("clickhouse_database"))
    yield opened
    opened.close()


def test_the_event_statements_on_each_engine(store):
    """One mid stored in tenant A (school-2) and quarantined in tenant B; another tenant's view, the scope
    and the admin's all-tenant view, the same on both engines."""
    now = int(time.time() * 1000)
    mine = event("START", TENANT_A, D1, 10, "a1", "d1", "s1", "school-2", {"type": "content", "mode": "play"})
    mine["mid"] = "shared:mid-1"
    theirs = {**event("START", TENANT_B, D1, 10, "b1", "d2", "s2", "school-2", {"type": "content"}),
              "mid": "shared:mid-1", "ets": 3}
    _batch(store, [mine], 1, now)
    _batch(store, [theirs], 2, now + 10)
    a = _lineage_from(store, "shared:mid-1", TENANT_A, None)
    assert a is not None and a["status"] == "stored" and a["quarantined"] == []
    assert a["stored"][0]["request"]["msgid"] == "msg-1" and a["stored"][0]["log_offset"] == 1
    assert a["stored"][0]["request"]["headers"] == {}  # the msgid is kept apart from the headers
    b = _lineage_from(store, "shared:mid-1", TENANT_B, None)
    assert b is not None and b["status"] == "quarantined"
    assert (b["quarantined"][0]["error_code"], b["quarantined"][0]["stage"]) == ("ERR_ROUTE_TIMESTAMP", "route")
    assert b["quarantined"][0]["request"]["msgid"] == "msg-2"
    everyone = _lineage_from(store, "shared:mid-1", None, None)
    assert everyone is not None and everyone["status"] == "stored_and_quarantined"
    assert _lineage_from(store, "shared:mid-1", TENANT_A, Scope.parse("rollup.l3:school-2")) is not None
    assert _lineage_from(store, "shared:mid-1", TENANT_A, Scope.parse("rollup.l3:school-1")) is None
    assert _lineage_from(store, "shared:mid-2", TENANT_A, None) is None
    assert _lineage_from(store, "shared:mid-1'--", TENANT_A, None) is None  # bound, never spliced


def test_request_of_needs_one_match():
    copy = {"log_offset": 1, "source": "/v1/telemetry"}
    assert request_of(copy, [], None, False) is None
