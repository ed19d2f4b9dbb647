"""Keeping the rollups current: recompute the (tenant, day) slices written since their last refresh.

Which slices: the store writes a mark (tenant, day of ets, first/last acknowledgement) into `rollup_dirty`
with every batch, in the batch's own write (DuckDB: the same transaction; ClickHouse: an insert after the
batch's telemetry and before its progress row, under the batch's token). So a mark is visible only once
its rows are, whatever the number of writers and however their commits interleave, and no offset or
clock has to be compared: there is no watermark that could step over a row committed late. A refresh
reads the marks, recomputes their slices from `telemetry` (one INSERT … SELECT per rollup table), records
each slice in `rollup_state`, and deletes the marks it read (only those: marks written meanwhile stay).

Guarantees:
- DuckDB: all of it is one transaction under the store's write lock (a batch commits before or after,
  never inside); a crash anywhere rolls it back and the marks are still there.
- ClickHouse: rows are inserted under a newer `version` (ReplacingMergeTree, read FINAL), and the marks
  are deleted last: a crash before that leaves the marks, and the next run recomputes the same slices
  under a newer version; two refreshers at once both compute complete slices from telemetry read after
  their marks, so whichever version wins is complete. Versions are microseconds of the refresher's clock:
  refreshers on several machines need clocks within the refresh interval of each other.
- Readers (rollup_metric) read a marked slice from `telemetry` and the others from the rollups, so an
  answer is exact whether or not the refresher has caught up. On DuckDB a slice records the log offset its
  refresh covered (`rollup_state.covered_offset`): a slice marked by batches only is then read as its rollups
  plus the events past that offset, so a live day costs what arrived since its refresh, not the whole day.

The workflow summaries (`workflow_summaries`, analytics/summary_table.py) are recomputed by the same refresh for
each marked slice and the day before and after it (an event may continue or open a session of the neighbouring
day's slice): on ClickHouse before the marks go; on DuckDB the transaction keeps the slices as summary marks,
and the summaries are computed after it, outside the write lock, and written under it (summary_table).
"""

from __future__ import annotations

import logging
import threading
import time
import uuid
from datetime import date, timedelta
from typing import Any, Callable

from cohort.analytics import sketch_table, summary_table
from cohort.analytics.rollup_tables import (ROLLUP_TABLES, SWEPT_HOURS, TIME_COLUMN, insert_statements, slice_literal,
                                           text_literal)

log = logging.getLogger("cohort.rollups")

REFRESH_INTERVAL_S = 5.0  # defaults of the settings rollup_refresh_seconds and rollup_max_busy_share
MAX_BUSY_SHARE = 0.25
# What a DuckDB refresh covers: the store's last log offset, read in the refresh's transaction under the write lock
# (so every event at or below it is in the slices it computes, none above it is: batches commit in offset order)
COVERED_OFFSET = "SELECT value FROM pipeline_state WHERE name = 'last_offset'"


class RollupRefresher:
    """Refreshes the rollups of one store (DuckDbStore or ClickHouseStore). `after_delete`: a test's hook,
    called between removing a slice's rows and inserting them again. `submit`: where the DuckDB store's workflow
    summaries are computed (summary_table.refresh_marked_duckdb; the server: its pipeline workers)."""

    def __init__(self, store: Any, *, after_delete: Callable[[], None] | None = None,
                 submit: summary_table.Submit | None = None):
        self.store = store
        self._submit = submit
        self.dialect = store.capabilities.sql_dialect
        self._after_delete = after_delete
        self.last_refresh: float | None = None
        self.last_slices = 0
        self.last_summaries = 0  # summaries written by the last refresh that recomputed any

    def refresh(self) -> int:
        """Recompute every marked slice; the number of slices recomputed."""
        if self.dialect == "duckdb":
            done = self._refresh_duckdb()
            self.last_summaries = summary_table.refresh_marked_duckdb(self.store, self._submit)
        else:
            done = self._refresh_clickhouse()
        self.last_refresh, self.last_slices = time.time(), done
        return done

    def recompute(self, tenant: str | None, from_day: date, to_day: date) -> int:
        """Recompute the slices of days from_day..to_day (inclusive) of `tenant` (None: every tenant): mark those
        telemetry or the rollups hold, then refresh."""
        start, end = from_day.isoformat(), (to_day + timedelta(days=1)).isoformat()
        mark = f"recompute:{uuid.uuid4().hex}"
        if self.dialect == "duckdb":
            tenant_t = "" if tenant is None else "AND channel = $tenant"
            tenant_s = "" if tenant is None else "AND tenant = $tenant"
            sql = (f"INSERT INTO rollup_dirty SELECT tenant, day, now()::TIMESTAMP, now()::TIMESTAMP, '{mark}' FROM ("
                   f"SELECT DISTINCT channel AS tenant, CAST(ets AS DATE) AS day FROM telemetry WHERE "
                   f"ets >= TIMESTAMP '{start}' AND ets < TIMESTAMP '{end}' {tenant_t} UNION "
                   f"SELECT tenant, day FROM rollup_state WHERE day >= DATE '{start}' AND day < DATE '{end}' "
                   f"{tenant_s})")
            with self.store.rollup_transaction() as con:
                con.execute(sql, {} if tenant is None else {"tenant": tenant})
        else:
            tenant_t = "" if tenant is None else "AND channel = {tenant:String}"
            tenant_s = "" if tenant is None else "AND tenant = {tenant:String}"
            sql = (f"INSERT INTO rollup_dirty SELECT tenant, day, now64(3, 'UTC'), now64(3, 'UTC'), '{mark}' FROM ("
                   f"SELECT DISTINCT toString(channel) AS tenant, toDate(ets, 'UTC') AS day FROM telemetry WHERE "
                   f"ets >= toDateTime64('{start}', 3, 'UTC') AND ets < toDateTime64('{end}', 3, 'UTC') {tenant_t} "
                   f"UNION DISTINCT SELECT tenant, day FROM rollup_state WHERE day >= toDate('{start}') AND "
                   f"day < toDate('{end}') {tenant_s})")
            self.store.rollup_client().command(sql, parameters={} if tenant is None else {"tenant": tenant},
                                               settings={"insert_deduplicate": 0})
        return self.refresh()

    # -- DuckDB: one transaction per day under the write lock ----------------------------------------------

    def _refresh_duckdb(self) -> int:
        """The marked days one at a time, each in a transaction of its own: what one transaction computes is a
        day's events, not all the marked days' (a recompute of a month of 2 M events ran out of the store's 512 MB
        in one transaction, and its marks stayed, so every later refresh failed the same way), and batches are
        written between two days."""
        with self.store.rollup_transaction() as con:
            days = [day for (day,) in con.execute("SELECT DISTINCT day FROM rollup_dirty ORDER BY day").fetchall()]
        return sum(self._refresh_day_duckdb(day) for day in days)

    def _refresh_day_duckdb(self, day: date) -> int:
        marked = f"day = DATE '{day.isoformat()}'"
        with self.store.rollup_transaction() as con:
            con.execute(f"CREATE OR REPLACE TEMP TABLE rollup_marks_read AS SELECT * FROM rollup_dirty "
                        f"WHERE {marked}")
            slices = con.execute("SELECT tenant, day FROM rollup_marks_read GROUP BY tenant, day").fetchall()
            if not slices:  # another refresh took them meanwhile
                con.execute("DROP TABLE rollup_marks_read")
                return 0
            con.execute("CREATE OR REPLACE TEMP TABLE rollup_slices AS SELECT DISTINCT tenant, day "
                        "FROM rollup_marks_read")
            for table in (*ROLLUP_TABLES, *sketch_table.TABLES):
                row_day = f"CAST(r.{TIME_COLUMN.get(table, 'day')} AS DATE)"
                con.execute(f"DELETE FROM {table} AS r WHERE EXISTS (SELECT 1 FROM rollup_slices s "
                            f"WHERE s.tenant = r.tenant AND s.day = {row_day})")
            if self._after_delete is not None:
                self._after_delete()
            first, last = day, day + timedelta(days=1)
            picked = (f"ets >= TIMESTAMP '{first.isoformat()}' AND ets < TIMESTAMP '{last.isoformat()}' AND EXISTS "
                      "(SELECT 1 FROM rollup_slices s WHERE s.tenant = telemetry.channel)")
            for statement in insert_statements(picked, "duckdb"):
                con.execute(statement)
            sliced = "EXISTS (SELECT 1 FROM rollup_slices s WHERE s.tenant = r.tenant AND s.day = {day})"
            sketch_table.write_duckdb(con, sliced)  # from the rows just computed
            # the summaries follow, outside the lock (summary_table)
            summary_table.copy_marks_duckdb(con, source="rollup_marks_read")
            con.execute(
                "INSERT INTO rollup_state SELECT tenant, day, now()::TIMESTAMP, max(last_ingested), "
                "CASE WHEN max(CAST(last_ingested AS DATE) > day) THEN now()::TIMESTAMP END, "
                f"({COVERED_OFFSET}) FROM rollup_marks_read "
                "GROUP BY tenant, day ON CONFLICT (tenant, day) DO UPDATE SET refreshed_at = excluded.refreshed_at, "
                "newest_ingested = greatest(rollup_state.newest_ingested, excluded.newest_ingested), "
                "reopened_at = COALESCE(excluded.reopened_at, rollup_state.reopened_at), "
                "covered_offset = excluded.covered_offset")
            con.execute(f"DELETE FROM rollup_dirty WHERE {marked}")  # under the lock: exactly the marks read
            con.execute("DROP TABLE rollup_slices")
            con.execute("DROP TABLE rollup_marks_read")
        return len(slices)

    # -- ClickHouse: versioned inserts, marks deleted last ----------------------------------------------

    def _refresh_clickhouse(self) -> int:
        client = self.store.rollup_client()
        marks = client.query("SELECT DISTINCT mark FROM rollup_dirty").result_rows
        if not marks:
            return 0
        ids = [str(m) for (m,) in marks]
        params = {"marks": ids}
        slices = [(str(t), d) for t, d in client.query(
            "SELECT DISTINCT tenant, day FROM rollup_dirty WHERE mark IN {marks:Array(String)}",
            parameters=params).result_rows]
        version = time.time_ns() // 1000
        first, last = min(d for _, d in slices), max(d for _, d in slices) + timedelta(days=1)
        picked = (f"ets >= toDateTime64('{first.isoformat()}', 3, 'UTC') AND ets < toDateTime64('{last.isoformat()}', 3, "
                  f"'UTC') AND (toString(channel), toDate(ets, 'UTC')) IN {slice_literal(slices)}")
        no_dedup = {"insert_deduplicate": 0}
        for statement in insert_statements(picked, "clickhouse", version):
            client.command(statement, settings=no_dedup)
        sliced = f"(toString(r.tenant), {{day}}) IN {slice_literal(slices)}"
        sketch_table.write_clickhouse(client, sliced, version)  # from the rows just computed
        self.last_summaries = summary_table.refresh_clickhouse(client, summary_table.around(slices), version)
        if self._after_delete is not None:  # ClickHouse has nothing to delete: a crash here is the same point
            self._after_delete()
        sweep_forgotten(client)
        client.command(
            "INSERT INTO rollup_state SELECT tenant, day, now64(3, 'UTC'), max(last_ingested), "
            "if(max(toDate(last_ingested, 'UTC') > day), now64(3, 'UTC'), toDateTime64(0, 3, 'UTC')) "
            "FROM rollup_dirty WHERE mark IN {marks:Array(String)} GROUP BY tenant, day",
            parameters=params, settings=no_dedup)
        client.command("ALTER TABLE rollup_dirty DELETE WHERE mark IN {marks:Array(String)}", parameters=params,
                       settings={"mutations_sync": 2})
        return len(slices)


def sweep_forgotten(client: Any) -> int:
    """ClickHouse: delete the rollup rows and workflow summaries of learners forgotten within SWEPT_HOURS; the
    number of rows found. Why: a forget and a refresh share no lock (they may run in different processes),
    and rows a refresh computed from events read just before the forget deleted them land after the forget's
    own deletes. The forget writes its tombstone before it deletes, and every refresh sweeps after its
    inserts: whichever way the two interleave, the forget's deletes or the refresh's sweep come last.
    No recent forget: one small read. Otherwise one count per table, and a delete only where rows are left."""
    forgotten = client.query("SELECT DISTINCT tenant, actor_id FROM forgotten_learners WHERE "
                             f"forgotten_at > now64(3, 'UTC') - INTERVAL {SWEPT_HOURS} HOUR").result_rows
    if not forgotten:
        return 0
    pairs = "[" + ", ".join(f"({text_literal(str(t))}, {text_literal(str(a))})" for t, a in forgotten) + "]"
    found = 0
    for table, column in summary_table.LEARNER_ROWS:
        where = f"(toString(tenant), {column}) IN {pairs}"
        rows = int(client.query(f"SELECT count() FROM {table} WHERE {where}").result_rows[0][0])
        if rows:
            client.command(f"ALTER TABLE {table} DELETE WHERE {where}", settings={"mutations_sync": 2})
            log.warning("swept %d rows of %s that a refresh wrote beside a forget", rows, table)
            found += rows
    return found


class RollupRefreshThread:
    """Refreshes on a daemon thread until stopped; a failed refresh is logged and tried again next time (the
    marks stay until a refresh succeeds).

    Paced: after a refresh that took `t` seconds the thread waits max(`interval_s`, t × (1 − share) / share),
    so refreshing takes at most `max_busy_share` of the time, whatever the load. Why: a refresh recomputes
    whole (tenant, day) slices (and their workflow summaries), so under sustained ingest its cost grows with
    the day's events; unpaced, it would hold the embedded store's write lock (and the GIL, for summaries)
    most of the time and the pipeline would fall behind. Metrics stay exact meanwhile (slices not refreshed
    yet are read from telemetry); only their cost grows with the refresh lag."""

    def __init__(self, refresher: RollupRefresher, interval_s: float = REFRESH_INTERVAL_S,
                 max_busy_share: float = MAX_BUSY_SHARE):
        if not 0 < max_busy_share <= 1:
            raise ValueError("max_busy_share must be in (0, 1]")
        self.refresher = refresher
        self.interval_s = interval_s
        self.max_busy_share = max_busy_share
        self.last_wait_s = interval_s
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="rollup-refresh", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def wait_after(self, took_s: float) -> float:
        """The pause after a refresh that took `took_s`: the interval, or longer to keep within the busy share."""
        return max(self.interval_s, took_s * (1 - self.max_busy_share) / self.max_busy_share)

    def _run(self) -> None:
        while not self._stop.wait(self.last_wait_s):
            began = time.monotonic()
            try:
                self.refresher.refresh()
            except Exception as exc:  # noqa: BLE001 - the store may be busy or closing; the marks wait
                log.warning("rollup refresh failed (retried in %.0f s): %s", self.interval_s, exc)
            self.last_wait_s = self.wait_after(time.monotonic() - began)

    def stop(self, timeout_s: float = 30.0) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout_s)
