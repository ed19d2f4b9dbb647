"""Lineage: where a figure and an event come from, as the data the lineage API answers with.

Pure (no I/O): the API runs the statements built here on the query executor and hands the rows back.

- A metric's lineage is what its figures are made of: the tables it reads (each with its dataset
  version), the pipeline stages every stored row went through, the rollups it reads (none yet), the exact
  statement the metric endpoint would run for the same parameters, caller and store, and the suppression
  rule of the caller's role. The statement comes from the metric itself (`Metric.cell_sql`), never from a
  copy kept here, so lineage cannot drift from what the figures are computed by. A report's lineage is the
  same, with the statement of its rows (`Report.rows_sql`) and the rules of its report module.
- An event's lineage is where each copy of a mid ended: stored (`telemetry`, with its processing trace),
  quarantined (`failed_events`), or dropped as a duplicate (counted only: duplicates leave no row), and
  the request that carried each copy (`ingest_batches`, by log offset).
"""

from __future__ import annotations

import re
import sys
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

import orjson

from cohort.analytics import metrics as metric_registry
from cohort.analytics.metric_query import MetricQuery, iso
from cohort.analytics.metric_sql import BoundSql, freshness_sql
from cohort.analytics.metrics import Metric
from cohort.analytics.report_query import Report, ReportQuery
from cohort.analytics.rollup_metric import RollupMetric
from cohort.analytics.sketch_cells import sketch_plan, sketches_sql
from cohort.core.errors import CohortError, ErrorCode
from cohort.core.stages import STAGES
from cohort.security.identity import Scope
from cohort.security.scope_filter import describe_scope, scope_condition_sql
from cohort.security.table_catalog import CATALOG

# The version of each dataset (table) the stores hold: bump a table's number in the same change that alters
# what its rows mean to a reader (a column added, removed, renamed or retyped in store/duckdb_store.py and
# store/clickhouse_store.py, or a change of what a column holds: how pseudonyms are made, which events route
# there), so a figure computed before and after can be told apart. Processing-rule changes that do not alter
# the table (a schema file of an event type) show in each row's trace as `config_version` instead.
DATASET_VERSIONS: dict[str, int] = {"telemetry": 1, "failed_events": 1, "ingest_batches": 1, "learner_hours": 1,
                                    "learner_days": 1, "device_hours": 1, "content_days": 1, "item_days": 1,
                                    "workflow_summaries": 1, "rollup_dirty": 1, "learner_sketches": 1,
                                    "content_sketches": 1}

# What each stage of the pipeline does to an event, for a reader of the lineage. A stage added to the core's
# list (cohort.core.stages.STAGES) shows without one until it is described here.
STAGE_ROLES: dict[str, str] = {
    "extract": "the request's events taken out of its envelope; unreadable ones quarantined",
    "validate": "each event checked against the Sunbird telemetry v3 schema of its eid, and its channel against "
                "the sender's tenant",
    "batch_dedup": "a request resent with a msgid already committed dropped whole (its events: duplicates)",
    "dedup": "an event whose mid is already stored dropped (counted as a duplicate, never stored)",
    "denorm": "master data (device, content, user, location) joined in, when a dataset configures it",
    "transform": "learner and device identifiers replaced by keyed pseudonyms",
    "route": "the event shaped into the row of its table (telemetry), a time outside 2000..2100 quarantined",
}

# The tables the pipeline writes event by event; any other table a metric reads (its `sources`) is a rollup,
# and is listed under `rollups` as well as `datasets` (none yet: every metric reads `telemetry`).
EVENT_TABLES = frozenset({"telemetry", "failed_events", "ingest_batches"})

MID_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.:-]{0,127}$")  # what an event's mid may be looked up by
MAX_COPIES = 20  # stored or quarantined copies of one mid reported (each list), beyond which `truncated`
MAX_REQUEST_ROWS = 200  # ingest_batches rows read for one lineage (a log offset is unique per partition)

_COMMON_RULES = (
    "the window is [from, to) on the event's own time (ets, the device's clock, UTC)",
    "only the tenant's events (telemetry.channel), narrowed to the caller's scope when it has one",
    "a cell is one (bucket, group); its learners are the distinct actors of type User among its events",
)


def check_mid(text: str) -> str:
    """A mid as it may be looked up: 1..128 letters, digits and `_.:-` (ERR_LINEAGE_MID otherwise)."""
    if not MID_PATTERN.match(text):
        raise CohortError(ErrorCode.LINEAGE_MID, f"mid {text[:80]!r} is not 1..128 letters, digits and _.:-")
    return text


def dataset(table: str, dialect: str, config_version: str | None = None) -> dict[str, Any]:
    """A table a figure reads, with the version of its shape and the store it lives in."""
    entry: dict[str, Any] = {"table": table, "version": DATASET_VERSIONS.get(table), "store": dialect,
                             "description": CATALOG[table].description if table in CATALOG else None}
    if config_version is not None:
        entry["config_version"] = config_version
    return entry


def pipeline_stages() -> list[dict[str, Any]]:
    """The pipeline's stages in the order a batch goes through them."""
    return [{"name": name, "order": order, "role": STAGE_ROLES.get(name)} for order, name in enumerate(STAGES, 1)]


def metric_rules() -> list[str]:
    """The rules every metric's figures follow: the shared ones, then the registry's rules for events."""
    doc = metric_registry.__doc__ or ""
    _, found, rules_text = doc.partition("Rules for events")
    event_rules = [" ".join(item.split()).rstrip(";") for item in rules_text.split("\n- ")[1:]] if found else []
    return [*_COMMON_RULES, *event_rules]


def metric_lineage(metric: Metric, query: MetricQuery, dialect: str, *, config_version: str, role: str,
                   suppressed: bool, k: int) -> dict[str, Any]:
    """What the metric's figures for `query` are made of, and the statements that compute them in `dialect`."""
    cells = metric.cell_sql(query, dialect)
    newest = freshness_sql(query, dialect)
    sources = tuple(getattr(metric, "sources", ("telemetry",)))
    return {
        "metric": metric.name, "description": metric.description, "unit": metric.unit,
        "granularities": list(metric.granularities), "group_bys": list(metric.group_bys),
        "rules": metric_rules(),
        "params": query.as_params(),
        "scope": None if query.scope is None else {"scope": str(query.scope), "covers": describe_scope(query.scope)},
        "datasets": [dataset(table, dialect, config_version if table == "telemetry" else None) for table in sources],
        "pipeline": pipeline_stages(),
        "rollups": [dataset(table, dialect) for table in sources if table not in EVENT_TABLES],
        "query": {"dialect": dialect, "sql": cells.sql, "params": cells.params or {},
                  "columns": ["bucket", "grp", "value", "learners"]},
        "freshness_query": {"dialect": dialect, "sql": newest.sql, "params": newest.params or {},
                            "columns": ["newest_ms", "n"]},
        "sketch_query": _sketch_query(metric, query, dialect, suppressed),
        "suppression": suppression_rule(role, suppressed, k),
    }


def _sketch_query(metric: Metric, query: MetricQuery, dialect: str, suppressed: bool) -> dict[str, Any] | None:
    """The statement that reads the request's stored per-day sketches, when they answer it (days marked since
    their refresh are sketched from telemetry by the refresh's SQL and merged); None when they cannot. Learner
    sketches are read only for a suppressed answer, as the metric's own read does."""
    plan = sketch_plan(metric.name, query, suppressed) if isinstance(metric, RollupMetric) else None
    if plan is None:
        return None
    sketches = sketches_sql(plan, query, dialect)
    return {"dialect": dialect, "sql": sketches.sql, "params": sketches.params or {},
            "columns": ["day", "grp", "value_sketch", "learners_sketch", "total"],
            "merge": "per bucket and group: the union of the days' sketches (exact hash sets while every one is "
                     "exact, else HyperLogLog registers, register-wise max); the answer's `exact` says which",
            "marked_days": "sketched from telemetry when read, by the refresh's statement, and merged"}


def report_lineage(report: Report, query: ReportQuery, dialect: str, *, config_version: str, role: str,
                   suppressed: bool, k: int) -> dict[str, Any]:
    """What the report's rows for `query` are made of, and the statements that compute them in `dialect`."""
    rows = report.rows_sql(query, dialect)
    newest = report.freshness_sql(query, dialect)
    return {
        "metric": report.name, "kind": "report", "description": report.description,
        "columns": [{"name": c.name, "unit": c.unit, "description": c.description} for c in report.columns],
        "rules": report_rules(report),
        "params": query.as_params(),
        "scope": None if query.scope is None else {"scope": str(query.scope), "covers": describe_scope(query.scope)},
        "datasets": [dataset(table, dialect, config_version if table == "telemetry" else None)
                     for table in report.sources],
        "pipeline": pipeline_stages(),
        "rollups": [dataset(table, dialect) for table in report.sources if table not in EVENT_TABLES],
        "query": {"dialect": dialect, "sql": rows.sql, "params": rows.params or {},
                  "columns": [column.name for column in report.columns]},
        "freshness_query": {"dialect": dialect, "sql": newest.sql, "params": newest.params or {},
                            "columns": ["newest_ms", "n"]},
        "suppression": report_suppression_rule(report, role, suppressed, k),
    }


def report_rules(report: Report) -> list[str]:
    """The window and tenant rules, the metrics' rules for events, then the report module's own ("Rules")."""
    doc = sys.modules[type(report).__module__].__doc__ or ""
    _, found, rules_text = doc.partition("Rules")
    own = [" ".join(item.split()).rstrip(";.") for item in rules_text.split("\n- ")[1:]] if found else []
    return [*_COMMON_RULES[:2], *metric_rules()[len(_COMMON_RULES):], *own]


def report_suppression_rule(report: Report, role: str, suppressed: bool, k: int) -> dict[str, Any]:
    """The small-cell rule applied to `role`'s rows of `report` (cohort.analytics.report_answer)."""
    if not suppressed:
        return {"role": role, "applies": False, "k": k,
                "rule": f"exact rows: role {role} is entitled to individual learners' records"}
    if report.individual:
        return {"role": role, "applies": True, "k": k,
                "rule": f"refused: the rows are individual learners' records, which role {role} may not read"}
    return {"role": role, "applies": True, "k": k,
            "rule": f"a row from fewer than {k} distinct learners (its learners column) is withheld and counted "
                    f"in suppressed_rows"}


def suppression_rule(role: str, suppressed: bool, k: int) -> dict[str, Any]:
    """The small-cell rule applied to `role`'s figures (cohort.analytics.small_cells)."""
    if not suppressed:
        return {"role": role, "applies": False, "k": k,
                "rule": f"exact figures: role {role} is entitled to individual learners' records"}
    return {"role": role, "applies": True, "k": k,
            "rule": f"a cell from fewer than {k} distinct learners is withheld (value null, suppressed true); where "
                    f"one withheld cell of a bucket could be recovered by subtraction, the next smallest is withheld "
                    f"too; a cell with no learner behind it is not shown"}


def stored_copies_sql(mid: str, tenant: str | None, scope: Scope | None, dialect: str,
                      limit: int = MAX_COPIES) -> BoundSql:
    """The stored rows of `mid` (of `tenant`, within `scope`), oldest first, at most `limit` + 1 (to tell
    whether there were more)."""
    where, params = _mid_and_tenant(mid, tenant, dialect)
    if scope is not None:
        where.append(f"({scope_condition_sql(scope, dialect, 'event')})")
    trace = "trace" if dialect == "clickhouse" else "CAST(trace AS VARCHAR)"
    sql = (f"SELECT channel, eid, {_ms('ets', dialect)} AS ets_ms, {_ms('ingested_at', dialect)} AS ingested_ms, "
           f"log_offset, {trace} AS trace FROM telemetry WHERE {' AND '.join(where)} "
           f"ORDER BY ingested_at, log_offset LIMIT {int(limit) + 1}")
    return BoundSql(sql, params)


def quarantined_copies_sql(mid: str, tenant: str | None, dialect: str, limit: int = MAX_COPIES) -> BoundSql:
    """The quarantined rows of `mid` (of `tenant`), oldest first, at most `limit` + 1."""
    where, params = _mid_and_tenant(mid, tenant, dialect)
    sql = (f"SELECT channel, eid, error_code, stage, message, {_ms('failed_at', dialect)} AS failed_ms, log_offset, "
           f"source, event_count FROM failed_events WHERE {' AND '.join(where)} "
           f"ORDER BY failed_at, log_offset LIMIT {int(limit) + 1}")
    return BoundSql(sql, params)


def requests_sql(offsets: Sequence[int], dialect: str) -> BoundSql | None:
    """The ingest_batches rows at these log offsets (None: no offset to look up). In scale-out an offset is
    per log partition, so an offset may name several requests: `request_of` picks the copy's own."""
    wanted = sorted({int(offset) for offset in offsets})
    if not wanted:
        return None
    headers = "headers" if dialect == "clickhouse" else "CAST(headers AS VARCHAR)"
    sql = (f"SELECT log_offset, {_ms('received_at', dialect)} AS received_ms, source, msgid, {headers} AS headers, "
           f"event_count FROM ingest_batches WHERE log_offset IN ({', '.join(str(o) for o in wanted)}) "
           f"ORDER BY log_offset, received_at LIMIT {MAX_REQUEST_ROWS}")
    return BoundSql(sql, None)


def event_lineage(mid: str, tenant: str | None, stored_rows: list[tuple[Any, ...]],
                  quarantined_rows: list[tuple[Any, ...]], request_rows: list[tuple[Any, ...]], *,
                  with_headers: bool, limit: int = MAX_COPIES) -> dict[str, Any] | None:
    """The lineage of `mid` from the rows the three statements above read (None: no copy the caller may see).
    `with_headers`: the request's headers are shown (raw sender data: for admins only)."""
    truncated = len(stored_rows) > limit or len(quarantined_rows) > limit
    stored = [_stored_copy(row) for row in stored_rows[:limit]]
    quarantined = [_quarantined_copy(row) for row in quarantined_rows[:limit]]
    if not stored and not quarantined:
        return None
    requests = [_request(row) for row in request_rows]
    for copy in stored:
        copy["request"] = request_of(copy, requests, copy["ingested_at_ms"], with_headers)
    for copy in quarantined:
        copy["request"] = request_of(copy, requests, None, with_headers)
    status = "stored_and_quarantined" if stored and quarantined else "stored" if stored else "quarantined"
    return {"mid": mid, "tenant": tenant, "status": status,
            "stored": [_without_ms(copy) for copy in stored], "quarantined": quarantined,
            "duplicates": _duplicates(len(stored), len(quarantined), truncated), "truncated": truncated}


def request_of(copy: dict[str, Any], requests: list[dict[str, Any]], received_ms: int | None,
               with_headers: bool) -> dict[str, Any] | None:
    """The request that carried `copy`: same log offset and endpoint, and (for a stored copy, whose trace
    keeps the time its request was acknowledged) the same time. None when no single request matches."""
    matches = [r for r in requests if r["log_offset"] == copy["log_offset"] and r["source"] == copy["source"]
               and (received_ms is None or r["received_ms"] == received_ms)]
    if len(matches) != 1:
        return None
    found = matches[0]
    request = {"log_offset": found["log_offset"], "received_at": _iso_ms(found["received_ms"]),
               "source": found["source"], "msgid": found["msgid"], "event_count": found["event_count"]}
    if with_headers:
        request["headers"] = found["headers"]
    return request


def _stored_copy(row: tuple[Any, ...]) -> dict[str, Any]:
    channel, eid, ets_ms, ingested_ms, log_offset, trace_text = row
    trace = _trace(trace_text)
    stages_seen = _object(trace.get("stages"))
    transform = _object(stages_seen.get("transform"))
    processed = trace.get("processed_at")
    return {"table": "telemetry", "tenant": channel, "eid": eid, "ets": _iso_ms(ets_ms),
            "ingested_at": _iso_ms(ingested_ms), "ingested_at_ms": int(ingested_ms),
            "processed_at": _iso_ms(processed) if isinstance(processed, int) else None,
            "log_offset": int(log_offset), "source": trace.get("source"),
            "config_version": trace.get("config_version"), "stages": stage_results(stages_seen),
            "pseudonymised": transform.get("pseudonymised")}


def stage_results(recorded: dict[str, Any]) -> list[dict[str, Any]]:
    """Each pipeline stage in order, as the trace recorded it (`recorded: false` when it records nothing of
    that stage: batch dedup leaves no mark on the rows it lets through), then any stage the trace names that
    the pipeline no longer lists."""
    results = []
    for name in (*STAGES, *(name for name in recorded if name not in STAGES)):
        entry = recorded.get(name)
        if not isinstance(entry, dict):
            results.append({"name": name, "recorded": False})
            continue
        result: dict[str, Any] = {"name": name, "recorded": True, "ok": entry.get("ok")}
        for key in ("batch_us", "skipped", "pseudonymised", "table"):
            if key in entry:
                result[key] = entry[key]
        results.append(result)
    return results


def _quarantined_copy(row: tuple[Any, ...]) -> dict[str, Any]:
    channel, eid, code, stage, message, failed_ms, log_offset, source, event_count = row
    return {"table": "failed_events", "tenant": channel, "eid": eid, "error_code": code, "stage": stage,
            "message": message, "failed_at": _iso_ms(failed_ms), "log_offset": int(log_offset), "source": source,
            "event_count": int(event_count)}


def _request(row: tuple[Any, ...]) -> dict[str, Any]:
    log_offset, received_ms, source, msgid, headers, event_count = row
    try:
        parsed = orjson.loads(headers) if headers else {}
    except orjson.JSONDecodeError:
        parsed = {}
    return {"log_offset": int(log_offset), "received_ms": int(received_ms), "source": source, "msgid": msgid,
            "headers": parsed, "event_count": int(event_count)}


def _duplicates(stored: int, quarantined: int, truncated: bool) -> dict[str, Any]:
    more = " (at least: the lists are cut short)" if truncated else ""
    if stored == 1:
        note = ("stored once; a later copy of this mid within the dedup period was counted as a duplicate and "
                "dropped at dedup (duplicates are counted, never stored, so they leave no row to show here)")
    elif stored > 1:
        note = (f"stored {stored} times{more}: these copies arrived further apart than the dedup period (or "
                f"were written before dedup state held the first), so each was stored")
    else:
        note = "never stored: every copy seen was quarantined"
    if stored and quarantined:
        note += "; other copies failed a stage before dedup and were quarantined"
    return {"stored_copies": stored, "quarantined_copies": quarantined, "note": note}


def _mid_and_tenant(mid: str, tenant: str | None, dialect: str) -> tuple[list[str], dict[str, Any]]:
    clickhouse = dialect == "clickhouse"
    where = ["mid = {mid:String}" if clickhouse else "mid = $mid"]
    params: dict[str, Any] = {"mid": mid}
    if tenant is not None:
        where.append("channel = {tenant:String}" if clickhouse else "channel = $tenant")
        params["tenant"] = tenant
    return where, params


def _ms(column: str, dialect: str) -> str:
    return f"toUnixTimestamp64Milli({column})" if dialect == "clickhouse" else f"epoch_ms({column})"


def _trace(text: Any) -> dict[str, Any]:
    if isinstance(text, dict):
        return text
    try:
        parsed = orjson.loads(text) if text else {}
    except orjson.JSONDecodeError:
        return {}
    return parsed if isinstance(parsed, dict) else {}


def _object(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def _iso_ms(ms: Any) -> str | None:
    if ms is None:
        return None
    return iso(datetime.fromtimestamp(int(ms) / 1000, tz=UTC))


def _without_ms(copy: dict[str, Any]) -> dict[str, Any]:
    return {key: value for key, value in copy.items() if key != "ingested_at_ms"}
