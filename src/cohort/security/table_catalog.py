"""What users can query: the exposed tables, their columns, and the column that says whose a row is.

One declaration serves three readers: the SQL guard (which tables a statement may name), tenant
scoping (which column restricts a table to one tenant: a table without one is the operator's, read
by admins only), and schema discovery (`GET /v1/tables`: without it a user cannot find out what to
query). The stores create the tables (store/duckdb_store.py, store/clickhouse_store.py); a test
holds this catalog to the columns they actually have, in both dialects.
"""

from __future__ import annotations

from dataclasses import dataclass

from cohort.security.identity import Identity


@dataclass(frozen=True, slots=True)
class CatalogColumn:
    name: str
    duckdb_type: str  # as DESCRIBE names it in the embedded store; "" when only the other store has it
    clickhouse_type: str  # as DESCRIBE names it in the scale-out store; "" when only the other store has it
    description: str

    def type_in(self, dialect: str) -> str:
        return self.clickhouse_type if dialect == "clickhouse" else self.duckdb_type


@dataclass(frozen=True, slots=True)
class CatalogTable:
    name: str
    description: str
    columns: tuple[CatalogColumn, ...]
    tenant_column: str | None  # None: the table holds no tenant's rows in a column, so admins alone read it
    # the JSON column holding the parsed event, over which a scope's condition is written (scope_filter);
    # None: the table's rows cannot be narrowed to a scope, so scoped identities do not read it
    scope_column: str | None = None

    def columns_in(self, dialect: str) -> tuple[CatalogColumn, ...]:
        """The columns the table has in `dialect`'s store."""
        return tuple(column for column in self.columns if column.type_in(dialect))

    def readable_by(self, identity: Identity) -> bool:
        """Admins read every table; a tenant identity only tables it can be restricted to its tenant in, and a
        scoped one only tables it can also be restricted to its scope in."""
        if identity.tenant is None:
            return True
        return self.tenant_column is not None and (identity.scope is None or self.scope_column is not None)


def _col(name: str, duckdb_type: str, clickhouse_type: str, description: str) -> CatalogColumn:
    return CatalogColumn(name, duckdb_type, clickhouse_type, description)


_NULLABLE_TEXT = ("VARCHAR", "Nullable(String)")
_LOW_TEXT = ("VARCHAR", "LowCardinality(Nullable(String))")
_TIME = ("TIMESTAMP", "DateTime64(3, 'UTC')")
_JSON = ("JSON", "String")  # ClickHouse keeps the JSON text as received: read it with JSONExtract*

TELEMETRY = CatalogTable(
    "telemetry",
    "One row per stored telemetry event (Sunbird telemetry v3), its common fields pulled out into columns.",
    (
        _col("eid", "VARCHAR", "LowCardinality(String)", "event type: START, END, IMPRESSION, INTERACT, ASSESS, …"),
        _col("ets", *_TIME, "when the event happened, by the device's clock (UTC)"),
        _col("mid", "VARCHAR", "String", "the event's unique message id"),
        _col("actor_id", *_NULLABLE_TEXT, "who acted: a pseudonym of the learner or user (u:…), never a clear id"),
        _col("actor_type", *_LOW_TEXT, "kind of actor: User, System, …"),
        _col("channel", "VARCHAR", "LowCardinality(String)", "the tenant (state or board) the event belongs to; "
             "you only ever see your own"),
        _col("pdata_id", *_LOW_TEXT, "producer: the app or portal that sent the event"),
        _col("pdata_pid", *_LOW_TEXT, "producer component within the app"),
        _col("pdata_ver", *_LOW_TEXT, "version of the producing app"),
        _col("env", *_LOW_TEXT, "the app area the event came from (home, library, course, …)"),
        _col("sid", *_NULLABLE_TEXT, "the app session the event belongs to"),
        _col("did", *_NULLABLE_TEXT, "device id: a pseudonym (d:…), never a clear id"),
        _col("object_id", *_NULLABLE_TEXT, "the content, course or other object acted on"),
        _col("object_type", *_LOW_TEXT, "kind of object: Content, Course, Question, …"),
        _col("object_ver", *_NULLABLE_TEXT, "version of the object"),
        _col("rollup", "JSON", "Nullable(String)", "the object's hierarchy (l1 = course or textbook, l2…l4 = "
             "units within it), as JSON"),
        _col("edata", *_JSON, "the event-type-specific data, as JSON"),
        _col("event", *_JSON, "the whole event as stored, as JSON"),
        _col("trace", *_JSON, "how Cohort processed the event: source, times, stages, as JSON"),
        _col("ingested_at", *_TIME, "when Cohort acknowledged the request that carried the event (UTC)"),
        _col("log_offset", "BIGINT", "Int64", "position of that request in the ingest log"),
    ),
    tenant_column="channel",
    scope_column="event",
)

FAILED_EVENTS = CatalogTable(
    "failed_events",
    "Quarantine: one row per event (or unreadable request) that was not stored, with the reason.",
    (
        _col("failed_at", *_TIME, "when it was quarantined (UTC)"),
        _col("error_code", "VARCHAR", "LowCardinality(String)", "why, as a stable code (ERR_…)"),
        _col("stage", "VARCHAR", "LowCardinality(String)", "the pipeline stage that refused it"),
        _col("message", "VARCHAR", "String", "why, for a person"),
        _col("mid", *_NULLABLE_TEXT, "the event's message id, when it had one"),
        _col("eid", *_NULLABLE_TEXT, "the event's type, when it had one"),
        _col("channel", *_NULLABLE_TEXT, "the tenant the event named; rows without one are visible to admins only"),
        _col("source", "VARCHAR", "LowCardinality(String)", "the endpoint it arrived on"),
        _col("log_offset", "BIGINT", "Int64", "position of its request in the ingest log"),
        _col("event_count", "INTEGER", "Int32", "events the row stands for (a whole unreadable request: all of them)"),
        _col("payload", "VARCHAR", "String", "the event as received with its learner and device ids replaced by "
             "their pseudonyms; sealed (cohort-sealed:v1:…) when it could not be read as an event"),
    ),
    tenant_column="channel",  # no scope_column: `payload` is the text as received, possibly no event at all
)

INGEST_BATCHES = CatalogTable(
    "ingest_batches",
    "One row per acknowledged request: its msgid and kept headers (operators only: a request's headers "
    "are whatever its sender wrote, so they cannot tell whose it is).",
    (
        _col("log_offset", "BIGINT", "Int64", "position of the request in the ingest log (telemetry.log_offset)"),
        _col("received_at", *_TIME, "when it was acknowledged (UTC)"),
        _col("source", "VARCHAR", "LowCardinality(String)", "the endpoint it arrived on"),
        _col("msgid", *_NULLABLE_TEXT, "the request's params.msgid"),
        _col("headers", *_JSON, "the request headers Cohort keeps, as JSON"),
        _col("event_count", "INTEGER", "Int32", "events the request carried"),
    ),
    tenant_column=None,
)

_ROLLUP_COLUMN_TEXT = {
    "tenant": "the tenant (telemetry.channel); you only ever see your own",
    "hour": "the hour of the events (UTC, ets truncated to the hour)",
    "day": "the day of the events (UTC day of ets)",
    "actor_id": "the learner (or other actor) pseudonym; '' when the events named none",
    "actor_type": "kind of actor: User is a learner; '' when none",
    "did": "device id (pseudonym); '' when none", "sid": "the app session; '' when none",
    "pdata_id": "producer: the app or portal that sent the events", "object_id": "the content or object acted on",
    "rollup_l1": "context.rollup.l1 of the events (e.g. state); '' when none",
    "rollup_l2": "context.rollup.l2 of the events (e.g. district); '' when none",
    "rollup_l3": "context.rollup.l3 of the events (e.g. school); '' when none",
    "rollup_l4": "context.rollup.l4 of the events (e.g. class); '' when none",
    "batch_ids": "course batch ids of the events' context.cdata (Batch, CourseBatch)",
    "course_ids": "course ids: object.rollup.l1 and context.cdata Course entries",
    "events": "events in the row", "content_plays": "content plays: START events of the content player",
    "time_spent": "seconds of content play: edata.duration of player ENDs (0..86400 s each)",
    "timed_ends": "player ENDs whose duration counted in time_spent",
    "qr_scans": "QR (DIAL code) scans: SEARCH events with edata.filters.dialcodes",
    "assess_attempts": "ASSESS events", "assess_score": "sum of the ASSESS events' edata.score",
    "assess_max": "sum of the ASSESS events' edata.item.maxscore",
    "sessions": "distinct sessions of the device in the row", "plays": "content plays (player STARTs)",
    "completed": "player ENDs whose edata.summary holds progress 100",
    "item_id": "the question (edata.item.id)", "content_id": "the content the question is in",
    "attempts": "attempts at the item that day", "first_ets": "when the first attempt of the day happened",
    "first_score": "score of the day's first attempt", "first_max": "maximum score of the day's first attempt",
    "score_sum": "sum of scores of the day's attempts", "max_sum": "sum of maximum scores of the day's attempts",
    "duration_sum": "seconds spent on the day's attempts",
    "version": "which recomputation wrote the row (ClickHouse keeps the newest per row: read with FINAL)",
}
_ROLLUP_TEXT = {
    "learner_hours": "Hourly rollup of telemetry, one row per learner, device, session, app, content, hierarchy "
                     "and batch/course combination: what the learning metrics are served from.",
    "device_hours": "Hourly rollup per device, learner, app and hierarchy: events and distinct sessions.",
    "content_days": "Daily rollup of content-player events per content and learner: plays, time, completions.",
    "item_days": "Daily rollup of ASSESS events per learner and question: attempts, first attempt, scores.",
    "learner_days": "Daily rollup of telemetry per learner, device, session, app and hierarchy: what whole-day "
                    "metric windows without a content, batch or course cut are served from.",
}


def _rollup_table(name: str) -> CatalogTable:
    from cohort.analytics.rollup_tables import COLUMNS  # the rollups' one declaration

    grain, measures = COLUMNS[name]
    columns = [CatalogColumn(col, duck, ch, _ROLLUP_COLUMN_TEXT[col]) for col, duck, ch in (*grain, *measures)]
    columns.append(CatalogColumn("version", "UBIGINT", "UInt64", _ROLLUP_COLUMN_TEXT["version"]))
    return CatalogTable(name, _ROLLUP_TEXT[name] + " In the scale-out store read it with FINAL (newest rows only).",
                        tuple(columns), tenant_column="tenant")  # no scope_column: scoped roles use the metrics


def _rollup_names() -> tuple[str, ...]:
    from cohort.analytics.rollup_tables import ROLLUP_TABLES  # every rollup the stores hold is listed

    return ROLLUP_TABLES


ROLLUPS = tuple(_rollup_table(name) for name in _rollup_names())

_SUMMARY_COLUMN_TEXT = {
    "tenant": "the tenant (the events' channel); you only ever see your own",
    "day": "the UTC day the summary started: its slice, recomputed when that day's (or a neighbour's) events arrive",
    "mid": "the summary id (deterministic: the same events give the same id)",
    "type": "app, session, player or editor (dimensions.type)", "mode": "edata.mode of its START; '' when none",
    "did": "device id (pseudonym)", "uid": "the learner's pseudonym; '' when the events named none",
    "sid": "the app session; '' when none", "pdata_id": "the app or portal that sent the events",
    "object_id": "the content of a player or editor summary; '' when none",
    "object_type": "the content's type; '' when none",
    "rollup_l1": "context.rollup.l1 (e.g. state); '' when none", "rollup_l2": "context.rollup.l2 (e.g. district)",
    "rollup_l3": "context.rollup.l3 (e.g. school)", "rollup_l4": "context.rollup.l4 (e.g. class)",
    "start_time": "the summary's first event (ets, UTC)", "end_time": "the summary's last event (ets, UTC)",
    "time_spent": "seconds between its events, gaps over 600 s (idle) counting 0",
    "time_diff": "seconds from its first to its last event", "interact_events_count": "INTERACT events in it",
    "interact_events_per_min": "interactions per minute of time spent", "event_count": "events in it",
    "item_responses": "ASSESS item responses in it",
    "summary": "the whole ME_WORKFLOW_SUMMARY-shaped summary (JSON)",
    "computed_at": "when the slice was last recomputed",
    "version": "which recomputation wrote the row (ClickHouse keeps the newest per row: read with FINAL)",
}


def _summary_table() -> CatalogTable:
    from cohort.analytics.summary_columns import COLUMNS, TABLE  # the summaries' one declaration

    columns = tuple(CatalogColumn(name, duck, ch, _SUMMARY_COLUMN_TEXT[name]) for name, duck, ch in COLUMNS) + (
        CatalogColumn("is_deleted", "", "UInt8", "1 on a row a recomputation replaced (FINAL leaves those out)"),)
    return CatalogTable(TABLE, "Workflow summaries (ME_WORKFLOW_SUMMARY rules) per device, channel and app, in the "
                        "(tenant, UTC day) slice of their start; kept current by the rollup refresher. In the "
                        "scale-out store read it with FINAL (newest rows only, replaced ones dropped).",
                        columns, tenant_column="tenant")  # no scope_column: scoped roles are refused it


WORKFLOW_SUMMARIES = _summary_table()

# The rollups' bookkeeping, readable because the statements lineage shows for a metric read it (the slices
# not refreshed yet are read from telemetry): a user can run what lineage shows.
ROLLUP_DIRTY = CatalogTable(
    "rollup_dirty", "The (tenant, UTC day) slices written since their last rollup refresh: one mark per stored "
    "batch and slice, deleted by the refresh that recomputes them. A metric reads these days from telemetry.",
    (CatalogColumn("tenant", "VARCHAR", "String", "the tenant whose rows the batch wrote"),
     CatalogColumn("day", "DATE", "Date", "the UTC day of the rows' ets"),
     CatalogColumn("first_ingested", "TIMESTAMP", "DateTime64(3, 'UTC')", "the earliest acknowledgement of them"),
     CatalogColumn("last_ingested", "TIMESTAMP", "DateTime64(3, 'UTC')", "the newest acknowledgement of them"),
     CatalogColumn("mark", "VARCHAR", "String", "the batch's token (which write left the mark)")),
    tenant_column="tenant")

CATALOG: dict[str, CatalogTable] = {table.name: table for table in (TELEMETRY, FAILED_EVENTS, INGEST_BATCHES,
                                                                    *ROLLUPS, WORKFLOW_SUMMARIES, ROLLUP_DIRTY)}
EXPOSED_TABLES = frozenset(CATALOG)


def tables_for(identity: Identity) -> list[CatalogTable]:
    """The tables `identity` may query, in catalog order."""
    return [table for table in CATALOG.values() if table.readable_by(identity)]
