"""The `workflow_summaries` table: the workflow summaries of the stored events, one row per summary, kept per
(tenant, UTC day) slice beside the rollups and recomputed with them.

Slice rule (why a summary is in exactly one slice): a summary belongs to the slice of its tenant and of the UTC
day of its `start_time`. The summaries of slice (T, D) are computed from T's stored events of a window around D,
[D - CONTEXT_BEFORE, D + 1 day + READ_AFTER): the hours before midnight tell whether the first events of D
continue a session begun the day before (then that summary starts on D - 1 and is D - 1's, not D's), the hours
after midnight finish the sessions that began on D and run past it. Only the summaries starting on D are kept. So
a slice's rows are a function of the events in its window alone: recomputing it any number of times gives the
same rows, and a summary still open at the window's end is closed there (a session lasting more than
READ_AFTER past midnight is cut).

Which slices to recompute: an event of day E lies in the windows of days E - 1, E and E + 1 only, so the slices
marked dirty by the store's writes (rollup_dirty: tenant, day of ets) are recomputed with the day before and
after each (`around`). A late event thus re-opens the summary it belongs to even when that summary started the
day before, and a summary that closed (END, or 30 min idle: the session break) is replaced by its closed version
the next time its slice is recomputed.

DuckDB recomputes per device where it can: each batch also writes, in its own transaction, one device mark per
(tenant, day of ets, device) it touched (summary_devices), and a refresh recomputes only those devices'
summaries of that day and the days around it, since a device's summaries depend on its own events alone. So
keeping a live day current costs what arrived since the last refresh, not the day's size (a day of 1.7 M
events re-summarised every few seconds would not keep up). Marks that are no batch's (a forget, a recompute, a
store opened from before device marks) still recompute their slices whole. ClickHouse recomputes whole slices.

Store rules: DuckDB computes the summaries outside the store's write lock and deletes and inserts a slice's
rows in one transaction under it, unless something newer came meanwhile (`refresh_marked_duckdb`). ClickHouse
keeps a ReplacingMergeTree(version, is_deleted) keyed by (tenant, day, mid, did, sid): a recompute inserts its
rows under a newer version together with a tombstone (is_deleted = 1) for every row of the slice it no longer
produces (a late event moves a summary's end, hence its mid), in one insert; read it with FINAL.

The events are read per device and app in time order and summarised by the same state machine as file mode
(`summarise_events`); the rows of all recomputed slices are inserted at once.
"""

from __future__ import annotations

import logging
import time
import uuid
from bisect import bisect_left
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future
from datetime import UTC, date, datetime, timedelta
from typing import Any

import numpy as np
import orjson
import pyarrow as pa
import pyarrow.compute as pc

from cohort.analytics.rollup_tables import ROLLUP_TABLES, WHOLE_MARK_PREFIXES, slice_literal
from cohort.analytics.summary_columns import COLUMNS, TABLE
from cohort.analytics.summary_record import record_bytes
from cohort.analytics.workflow_events import SERVER_EIDS
from cohort.analytics.workflow_sessions import summarise_events
from cohort.core.completed_future import completed_future

log = logging.getLogger("cohort.summaries")

# every derived table that holds one learner's rows, with the column naming them (their pseudonym): what a forget
# deletes, and what the ClickHouse refresh sweeps of learners forgotten beside it (rollup_refresh.sweep_forgotten)
LEARNER_ROWS: tuple[tuple[str, str], ...] = (*((table, "actor_id") for table in ROLLUP_TABLES), (TABLE, "uid"))
CONTEXT_BEFORE = timedelta(hours=6)  # events read before a slice's midnight: what its first events continue
READ_AFTER = timedelta(hours=6)  # events read after the slice's day: the sessions that run past midnight
_FETCH_ROWS = 10_000
MAX_RUN_DAYS = 3  # consecutive days recomputed from one read (a device's events of them are held at once)
MAX_DEVICE_EVENTS = 50_000  # events of one device and app in a run's windows beyond which it is not summarised

NAMES = tuple(name for name, _, _ in COLUMNS)
KEY = ("tenant", "day", "mid", "did", "sid")

ARROW_SCHEMA = pa.schema([
    (name, pa.date32() if duck == "DATE" else pa.timestamp("ms") if duck == "TIMESTAMP"
     else pa.int64() if duck == "BIGINT" else pa.uint64() if duck == "UBIGINT"
     else pa.float64() if duck == "DOUBLE" else pa.string())
    for name, duck, _ in COLUMNS
])
_CLICKHOUSE_SCHEMA = ARROW_SCHEMA.append(pa.field("is_deleted", pa.uint8()))

Slice = tuple[str, date]


def ddl(dialect: str, db: str = "") -> list[str]:
    """CREATE statement of the table (`db`: ClickHouse's database)."""
    if dialect == "clickhouse":
        cols = ", ".join(f"{name} {ch}" for name, _, ch in COLUMNS)
        return [f"CREATE TABLE IF NOT EXISTS {db}.{TABLE} ({cols}, is_deleted UInt8) "
                f"ENGINE = ReplacingMergeTree(version, is_deleted) PARTITION BY toYYYYMM(day) "
                f"ORDER BY ({', '.join(KEY)})"]
    cols = ", ".join(f"{name} {duck}" for name, duck, _ in COLUMNS)
    return [f"CREATE TABLE IF NOT EXISTS {TABLE} ({cols})",
            f"CREATE TABLE IF NOT EXISTS {DUCKDB_MARKS} (tenant VARCHAR, day DATE, mark VARCHAR)",
            f"CREATE TABLE IF NOT EXISTS {DEVICE_MARKS} (tenant VARCHAR, day DATE, did VARCHAR, last_offset BIGINT, "
            "mark VARCHAR)"]


def around(slices: Iterable[Slice]) -> list[Slice]:
    """The slices whose windows hold an event of the given slices' days: each with the day before and after."""
    out = {(tenant, day + timedelta(days=shift)) for tenant, day in slices for shift in (-1, 0, 1)}
    return sorted(out)


def window(day: date) -> tuple[datetime, datetime]:
    """The event times [start, end) a slice's summaries are computed from (naive UTC, as the stores compare)."""
    midnight = datetime(day.year, day.month, day.day)
    return midnight - CONTEXT_BEFORE, midnight + timedelta(days=1) + READ_AFTER


def events_sql(dialect: str, devices: bool = False) -> str:
    """The stored events of one tenant between two times, per device and app in time order (server events left
    out), as (did, app, ets in epoch ms, event JSON). Parameters: tenant, start, end. `devices` (DuckDB): only
    the devices of the registered table summary_devices_wanted (did)."""
    server = ", ".join(f"'{eid}'" for eid in sorted(SERVER_EIDS))
    if dialect == "clickhouse":
        return ("SELECT ifNull(did, ''), ifNull(pdata_id, ''), toUnixTimestamp64Milli(ets), event FROM telemetry "
                "WHERE channel = {tenant:String} AND ets >= {start:DateTime64(3, 'UTC')} "
                f"AND ets < {{end:DateTime64(3, 'UTC')}} AND eid NOT IN ({server}) "
                "ORDER BY did, pdata_id, ets, log_offset, mid")
    return ("SELECT COALESCE(did, ''), COALESCE(pdata_id, ''), epoch_ms(ets), CAST(event AS VARCHAR) FROM telemetry "
            f"WHERE channel = $tenant AND ets >= $start AND ets < $end AND eid NOT IN ({server}) "
            + ("AND COALESCE(did, '') IN (SELECT did FROM summary_devices_wanted) " if devices else "")
            + "ORDER BY did NULLS FIRST, pdata_id NULLS FIRST, ets, log_offset, mid")


def runs(slices: Iterable[Slice]) -> list[tuple[str, list[date], datetime, datetime]]:
    """The slices as runs of consecutive days of one tenant (at most MAX_RUN_DAYS each), each with the time range
    its windows cover: what one read of the events serves. Bounded because a device's events of a whole run are
    held at once: a recompute of months (an upgrade, `cohort summarise --from --to`) holds a few days' at a time."""
    by_tenant: dict[str, list[date]] = {}
    for tenant, day in sorted(set(slices)):
        by_tenant.setdefault(tenant, []).append(day)
    out = []
    for tenant, days in by_tenant.items():
        run = [days[0]]
        for day in days[1:]:
            if day - run[-1] > timedelta(days=1) or len(run) >= MAX_RUN_DAYS:
                out.append((tenant, run, window(run[0])[0], window(run[-1])[1]))
                run = []
            run.append(day)
        out.append((tenant, run, window(run[0])[0], window(run[-1])[1]))
    return out


def _ms(naive_utc: datetime) -> int:
    return int(naive_utc.replace(tzinfo=UTC).timestamp() * 1000)


def _day_of_ms(ms: int) -> date:
    return datetime.fromtimestamp(ms / 1000, UTC).date()


def _text(value: object) -> str:
    return value if isinstance(value, str) else "" if value is None else str(value)


def _mapping(value: object) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def summary_row(record: dict[str, Any], tenant: str, day: date, version: int, computed_ms: int) -> dict[str, Any]:
    """The table's row of one ME_WORKFLOW_SUMMARY record."""
    dims = record.get("dimensions", {})
    eks = record.get("edata", {}).get("eks", {})
    obj = _mapping(record.get("object"))
    rollup = _mapping(record.get("context", {}).get("rollup"))
    pdata = _mapping(dims.get("pdata"))
    return {
        "tenant": tenant, "day": day, "mid": record["mid"], "type": _text(dims.get("type")),
        "mode": _text(dims.get("mode")), "did": _text(dims.get("did")), "uid": _text(record.get("uid")),
        "sid": _text(dims.get("sid")), "pdata_id": _text(pdata.get("id")), "object_id": _text(obj.get("id")),
        "object_type": _text(obj.get("type")),
        **{f"rollup_{level}": _text(rollup.get(level)) for level in ("l1", "l2", "l3", "l4")},
        "start_time": int(eks.get("start_time", 0)), "end_time": int(eks.get("end_time", 0)),
        "time_spent": float(eks.get("time_spent", 0.0)), "time_diff": float(eks.get("time_diff", 0.0)),
        "interact_events_count": int(eks.get("interact_events_count", 0)),
        "interact_events_per_min": float(eks.get("interact_events_per_min", 0.0)),
        "event_count": sum(int(e.get("count", 0)) for e in eks.get("events_summary", [])),
        "item_responses": len(eks.get("item_responses", [])),
        "summary": record_bytes(record).decode("utf-8", "replace"),
        "computed_at": computed_ms, "version": version,
    }


def run_records(rows: Iterable[tuple[Any, Any, Any, Any]], days: list[date]) -> Iterator[tuple[date, dict[str, Any]]]:
    """(day, summary) for each of `days` and each summary starting on that day, from the events of the days'
    windows given as (did, app, ets ms, event JSON) rows grouped by device and app in time order: each device's
    events of one day's window are summarised alone (the summariser keys by device, channel and app too), so a
    day's summaries are the same whichever other days are recomputed with it."""
    bounds = [(day, _ms(window(day)[0]), _ms(window(day)[1])) for day in days]
    group: list[object] = []
    times: list[int] = []
    current: tuple[Any, Any] | None = None
    flooded = False  # the current device sent more than MAX_DEVICE_EVENTS in the run's windows

    def summaries() -> Iterator[tuple[date, dict[str, Any]]]:
        if flooded:
            log.warning("workflow summaries: device %r (app %r) sent more than %d events in %s..%s; not a learner's "
                        "session: its summaries are left out", current[0] if current else None,
                        current[1] if current else None, MAX_DEVICE_EVENTS, days[0], days[-1])
            return
        for day, start_ms, end_ms in bounds:
            low, high = bisect_left(times, start_ms), bisect_left(times, end_ms)
            if low == high:
                continue
            for record in summarise_events(_parsed(group[low:high])):
                start = record.get("edata", {}).get("eks", {}).get("start_time")
                if isinstance(start, int) and _day_of_ms(start) == day:
                    yield day, record

    for did, app, ets_ms, event in rows:
        if (did, app) != current:
            yield from summaries()
            group, times, current, flooded = [], [], (did, app), False
        if flooded or len(group) >= MAX_DEVICE_EVENTS:  # held at once: bounded, whatever one device sends
            group, times, flooded = [], [], True
            continue
        group.append(event)  # held as the stored text (a fraction of a parsed event's size), parsed per window
        times.append(int(ets_ms))
    yield from summaries()


def _parsed(texts: list[Any]) -> Iterator[object]:
    for text in texts:
        try:
            yield orjson.loads(text)
        except orjson.JSONDecodeError:
            continue  # the store holds JSON; a value it cannot give back is no event to summarise


def _table(rows: list[dict[str, Any]], schema: pa.Schema) -> pa.Table:
    return pa.Table.from_pylist(rows, schema=schema)


# -- DuckDB: computed outside the write lock, written under it ------------------------------------------------

DUCKDB_MARKS = "summary_dirty"  # slices whose summaries are recomputed whole (a forget's, a recompute's, ...)
DEVICE_MARKS = "summary_devices"  # (tenant, day, device) a batch wrote: that device's summaries around the day
_FORGET = WHOLE_MARK_PREFIXES[0]  # the prefix of the marks a forget writes (store/duckdb_store.py forget_rows)
_WHOLE = WHOLE_MARK_PREFIXES  # rollup marks that are no batch's: every device of the slice


def copy_marks_duckdb(con: Any, source: str = "rollup_dirty") -> None:
    """In the rollup refresh's transaction, before it deletes the rollup marks (those of `source`, a table of
    rollup_dirty's rows): keep the slices of the marks that
    are no batch's (a forget, a recompute, a backfill) as summary marks under an id of this copy's own (a
    forget's keep their prefix), for `refresh_marked_duckdb`. A batch's marks are not copied: the batch wrote
    device marks (summary_devices) in its own transaction, and only those devices' summaries need recomputing."""
    copy = uuid.uuid4().hex
    whole = " OR ".join(f"starts_with(mark, '{prefix}')" for prefix in _WHOLE)
    con.execute(f"INSERT INTO {DUCKDB_MARKS} SELECT DISTINCT tenant, day, CASE WHEN starts_with(mark, '{_FORGET}') "
                f"THEN '{_FORGET}{copy}' ELSE '{copy}' END FROM {source} WHERE {whole}")


def upgrade_marks_duckdb() -> str:
    """Run when a store opens: a store written before device marks existed has batch marks in rollup_dirty that
    no device mark backs; their slices are recomputed whole (a no-op once any device mark exists)."""
    return (f"INSERT INTO {DUCKDB_MARKS} SELECT DISTINCT tenant, day, 'upgrade:{uuid.uuid4().hex}' FROM rollup_dirty "
            f"WHERE NOT EXISTS (SELECT 1 FROM {DEVICE_MARKS})")


def refresh_marked_duckdb(store: Any, submit: Submit | None = None) -> int:
    """Recompute the summaries the marks call for in a DuckDbStore; the number written. A slice mark (summary_dirty)
    recomputes the slice and its neighbours whole; a device mark (summary_devices) recomputes that device's
    summaries of its day and the neighbours only, so that the cost of keeping today current follows what
    arrived since the last refresh, not the size of the day.

    Why outside the write lock: the summariser is Python, far slower than the rollups' SQL, and the store's
    writer waits for that lock. So the marks and then the events are read on a cursor of their own (each read
    sees every batch committed before it: the events read are at least as new as the marks), the summaries are
    computed, and only the delete and insert run in a transaction under the lock, after checking that nothing
    it would overwrite is newer: the marks read must all still be there (another refresher that took any of
    them wrote a computation at least as new) and no forget may have come since (its learner's events may be
    in what was read). Otherwise nothing is written and the marks stay for the next refresh.

    `submit(fn, *args)` (a Future): where the summarising runs. The server passes its pipeline workers' pool:
    the summariser would otherwise hold the server's interpreter lock for seconds and every acknowledgement
    would wait for it. The events go there as Arrow chunks of whole devices (`device_chunks`) and the rows
    come back as Arrow, so the server process does no per-event Python work. Default: in the calling thread."""
    with store.read_cursor() as cursor:
        marked = cursor.execute(f"SELECT tenant, day, mark FROM {DUCKDB_MARKS}").fetchall()
        device_read = cursor.sql(f"SELECT tenant, day, did, last_offset FROM {DEVICE_MARKS}").to_arrow_table()
        if not marked and not device_read.num_rows:
            return 0
        whole = around((str(t), d) for t, d, _ in marked)
        devices = device_targets(device_read, set(whole))
        version = time.time_ns() // 1000
        computed_ms = int(time.time() * 1000)
        tables: list[pa.Table] = []
        replaced: list[tuple[str, date, str]] = []  # the (tenant, day, device) whose rows the computed ones replace
        for tenant, days, start, end in runs(whole):
            tables.extend(_summarised_run(cursor, submit, tenant, days, start, end, version, computed_ms))
        for tenant, days, start, end in runs(devices):
            wanted = sorted(set().union(*(devices[(tenant, day)] for day in days)))
            replaced.extend((tenant, day, did) for day in days for did in wanted)
            cursor.register("summary_devices_wanted", pa.table({"did": pa.array(wanted, pa.string())}))
            try:
                tables.extend(_summarised_run(cursor, submit, tenant, days, start, end, version, computed_ms,
                                              devices=True))
            finally:
                cursor.unregister("summary_devices_wanted")
    rows = pa.concat_tables(tables) if tables else ARROW_SCHEMA.empty_table()
    marks = sorted({str(m) for _, _, m in marked})
    with store.rollup_transaction() as con:
        con.register("summary_marks_read", pa.table({"mark": pa.array(marks, pa.string())}))
        con.register("summary_devices_read", device_read)
        try:
            [(still,)] = con.execute(f"SELECT count(*) FROM {DUCKDB_MARKS} WHERE mark IN "
                                     "(SELECT mark FROM summary_marks_read)").fetchall()
            [(devices_still,)] = con.execute(
                f"SELECT count(*) FROM {DEVICE_MARKS} d WHERE EXISTS (SELECT 1 FROM summary_devices_read r WHERE "
                "r.tenant = d.tenant AND r.day = d.day AND r.did = d.did AND r.last_offset = d.last_offset)"
            ).fetchall()
            [(forgets,)] = con.execute(
                f"SELECT count(*) FROM (SELECT mark FROM {DUCKDB_MARKS} UNION ALL SELECT mark FROM rollup_dirty) "
                f"WHERE starts_with(mark, '{_FORGET}') AND mark NOT IN (SELECT mark FROM summary_marks_read)"
            ).fetchall()
            if still != len(marked) or devices_still != device_read.num_rows or forgets:
                return 0
            _replace_duckdb(con, whole, replaced, rows)
            con.execute(f"DELETE FROM {DUCKDB_MARKS} WHERE mark IN (SELECT mark FROM summary_marks_read)")
            con.execute(f"DELETE FROM {DEVICE_MARKS} d WHERE EXISTS (SELECT 1 FROM summary_devices_read r WHERE "
                        "r.tenant = d.tenant AND r.day = d.day AND r.did = d.did AND r.last_offset = d.last_offset)")
        finally:
            con.unregister("summary_marks_read")
            con.unregister("summary_devices_read")
    return rows.num_rows


def device_targets(device_marks: pa.Table, whole: set[Slice]) -> dict[Slice, set[str]]:
    """The devices to recompute per slice: each marked device in its day's slice and the two around it (an event
    of day E is in the windows of E - 1, E and E + 1), less the slices recomputed whole anyway."""
    out: dict[Slice, set[str]] = {}
    marks = zip(device_marks.column("tenant").to_pylist(), device_marks.column("day").to_pylist(),
                device_marks.column("did").to_pylist())
    for tenant, day, did in set(marks):
        for target in around([(tenant, day)]):
            if target not in whole:
                out.setdefault(target, set()).add(did)
    return out


def _summarised_run(cursor: Any, submit: Submit | None, tenant: str, days: list[date], start: datetime,
                    end: datetime, version: int, computed_ms: int, devices: bool = False) -> Iterator[pa.Table]:
    reader = cursor.sql(events_sql("duckdb", devices), params={"tenant": tenant, "start": start, "end": end}
                        ).to_arrow_reader(_FETCH_ROWS)
    return summarised(device_chunks(reader), submit or completed_future, tenant, days, version, computed_ms)


# -- summarising in chunks of whole devices, wherever the caller runs them ---------------------------------------

Submit = Callable[..., "Future[pa.Table]"]
CHUNK_EVENTS = 5_000  # events sent to summarise at once (a device's are never split: a chunk may be longer)
CHUNK_TIMEOUT_S = 300.0  # a chunk not summarised by then fails the refresh (the marks stay for the next one)


def summarised(chunks: Iterable[pa.Table], submit: Submit, tenant: str, days: list[date], version: int,
               computed_ms: int) -> Iterator[pa.Table]:
    """The summary rows of `chunks`, one table each; the next chunk is read while the previous is summarised, and
    at most one is waiting at a time (the pool's other work, the pipeline's batches, is not held up by more)."""
    waiting: Future[pa.Table] | None = None
    for chunk in chunks:
        future = submit(summarise_chunk, chunk, tenant, days, version, computed_ms)
        if waiting is not None:
            yield waiting.result(timeout=CHUNK_TIMEOUT_S)
        waiting = future
    if waiting is not None:
        yield waiting.result(timeout=CHUNK_TIMEOUT_S)


def summarise_chunk(events: pa.Table, tenant: str, days: list[date], version: int, computed_ms: int,
                    pseudonyms: object = None) -> pa.Table:
    """The summary rows (ARROW_SCHEMA) of a chunk of `events_sql` rows holding whole devices. Module-level: it
    runs on a pipeline worker (which passes its `pseudonyms`, not needed here: the events are stored ones)."""
    rows = zip(*(events.column(i).to_pylist() for i in range(4)))
    return _table([summary_row(r, tenant, day, version, computed_ms) for day, r in run_records(rows, days)],
                  ARROW_SCHEMA)


def device_chunks(batches: Iterable[pa.RecordBatch], rows: int = CHUNK_EVENTS) -> Iterator[pa.Table]:
    """`events_sql` rows (sorted by device and app) regrouped into tables of about `rows` rows, each ending where a
    (device, app) ends, so a chunk summarises as it would in the whole stream. A device and app with more than
    MAX_DEVICE_EVENTS rows is passed on cut to MAX_DEVICE_EVENTS + 1 of them (run_records leaves it out, with a
    warning) and its other rows are dropped: what is held at once stays bounded."""
    pending: list[pa.RecordBatch] = []
    held = 0
    flooded: tuple[Any, Any] | None = None
    for batch in batches:
        if flooded is not None and batch.num_rows:
            batch = batch.slice(_start_of_others(batch, flooded))
            if batch.num_rows:
                flooded = None
        if not batch.num_rows:
            continue
        pending.append(batch)
        held += batch.num_rows
        if held < rows:
            continue
        table = pa.Table.from_batches(pending)
        cut = _start_of_last_group(table)
        if cut:
            yield _own(table.slice(0, cut))
        last = table.slice(cut)
        pending, held = last.to_batches(), last.num_rows
        if held > MAX_DEVICE_EVENTS:
            yield _own(last.slice(0, MAX_DEVICE_EVENTS + 1))
            flooded = (last.column(0)[0].as_py(), last.column(1)[0].as_py())
            pending, held = [], 0
    if held:
        yield _own(pa.Table.from_batches(pending))


def _own(table: pa.Table) -> pa.Table:
    """A copy holding only the table's rows: a slice shares its parent's buffers, and pickling it (to send it to
    a worker) would copy all of them (pyarrow 26: a 1,000-row slice of 100,000 rows pickled to 98 MB)."""
    return table.take(np.arange(table.num_rows))


def _same_group(columns: Any, key: tuple[Any, Any]) -> np.ndarray:
    same = pc.and_(pc.equal(columns.column(0), key[0]), pc.equal(columns.column(1), key[1]))
    return np.asarray(same.to_numpy(zero_copy_only=False), dtype=bool)


def _start_of_last_group(table: pa.Table) -> int:
    """The row where the table's last (device, app) begins (rows of one group are adjacent)."""
    last = table.num_rows - 1
    others = np.flatnonzero(~_same_group(table, (table.column(0)[last].as_py(), table.column(1)[last].as_py())))
    return int(others[-1]) + 1 if others.size else 0


def _start_of_others(batch: pa.RecordBatch, key: tuple[Any, Any]) -> int:
    """The first row of `batch` not of the (device, app) `key` (whose rows, if any, come first)."""
    others = np.flatnonzero(~_same_group(batch, key))
    return int(others[0]) if others.size else batch.num_rows


def _replace_duckdb(con: Any, slices: list[Slice], devices: list[tuple[str, date, str]], rows: pa.Table) -> None:
    """Delete the rows of `slices` and of the (tenant, day, device) `devices`, insert `rows` (what was computed
    for exactly those)."""
    con.register("summary_slices_in", pa.table({"tenant": pa.array([t for t, _ in slices], pa.string()),
                                                "day": pa.array([d for _, d in slices], pa.date32())}))
    con.register("summary_keys_in", pa.table({"tenant": pa.array([t for t, _, _ in devices], pa.string()),
                                              "day": pa.array([d for _, d, _ in devices], pa.date32()),
                                              "did": pa.array([k for _, _, k in devices], pa.string())}))
    try:
        con.execute(f"DELETE FROM {TABLE} AS w WHERE EXISTS (SELECT 1 FROM summary_slices_in s "
                    "WHERE s.tenant = w.tenant AND s.day = w.day)").fetchall()  # consumed: unregister needs it
        con.execute(f"DELETE FROM {TABLE} AS w WHERE EXISTS (SELECT 1 FROM summary_keys_in k "
                    "WHERE k.tenant = w.tenant AND k.day = w.day AND k.did = w.did)").fetchall()
    finally:
        con.unregister("summary_slices_in")
        con.unregister("summary_keys_in")
    if rows.num_rows:
        con.register("summaries_in", rows)
        try:
            con.execute(f"INSERT INTO {TABLE} SELECT {', '.join(NAMES)} FROM summaries_in").fetchall()
        finally:
            con.unregister("summaries_in")


# -- ClickHouse: one insert of the new rows and the tombstones, under a newer version ---------------------------

def refresh_clickhouse(client: Any, slices: Iterable[Slice], version: int) -> int:
    """Recompute the summaries of `slices` through `client` (its database the store's): the new rows and a
    tombstone for each row of those slices no longer produced, in one insert under `version`. The number of
    summaries written."""
    slices = sorted(set(slices))
    if not slices:
        return 0
    computed_ms = int(time.time() * 1000)
    rows: list[dict[str, Any]] = []
    sql = events_sql("clickhouse")
    for tenant, days, start, end in runs(slices):
        parameters = {"tenant": tenant, "start": start.replace(tzinfo=UTC), "end": end.replace(tzinfo=UTC)}
        with client.query_rows_stream(sql, parameters=parameters) as stream:
            rows.extend(summary_row(r, tenant, day, version, computed_ms)
                        for day, r in run_records(((str(d), str(a), t, e) for d, a, t, e in stream), days))
    wanted = {tuple(row[k] for k in KEY) for row in rows}
    old = client.query(f"SELECT {', '.join(KEY)} FROM {TABLE} FINAL WHERE (tenant, day) IN "
                       f"{slice_literal(slices)} AND is_deleted = 0").result_rows
    # a tombstone needs its key and the version; its other columns are never read (FINAL drops the row)
    blank = {name: 0 if duck in ("BIGINT", "DOUBLE", "TIMESTAMP") else "" for name, duck, _ in COLUMNS}
    tombstones = [{**blank, **dict(zip(KEY, key)), "computed_at": computed_ms, "version": version, "is_deleted": 1}
                  for key in (tuple(values) for values in old) if key not in wanted]
    out = [{**row, "is_deleted": 0} for row in rows] + tombstones
    if out:
        client.insert_arrow(TABLE, _table(out, _CLICKHOUSE_SCHEMA),
                            settings={"insert_deduplicate": 0, "async_insert": 0})
    return len(rows)


# -- reading back ---------------------------------------------------------------------------------------------

def range_sql(dialect: str, tenant: str | None) -> str:
    """The stored summaries of days [start, end) (parameters start, end, and tenant unless None), as JSON text,
    in a stable order."""
    if dialect == "clickhouse":
        who = "" if tenant is None else " AND tenant = {tenant:String}"
        return (f"SELECT summary FROM {TABLE} FINAL WHERE day >= {{start:Date}} AND day < {{end:Date}}{who} "
                "ORDER BY tenant, day, start_time, mid, did, sid")
    who = "" if tenant is None else " AND tenant = $tenant"
    return (f"SELECT CAST(summary AS VARCHAR) FROM {TABLE} WHERE day >= $start AND day < $end{who} "
            "ORDER BY tenant, day, start_time, mid, did, sid")
