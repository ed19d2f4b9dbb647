"""workflow_summaries on both stores: the refresher gives the summaries file mode gives for the same events, late
events re-open the slice a summary belongs to (also across midnight), a range recomputed again gives the same
rows, a summary is in one slice only, and a forgotten learner's summaries go."""

from __future__ import annotations

from collections import Counter
from datetime import UTC, date, datetime, timedelta

import orjson
import pyarrow as pa
import pytest

from analytics.summary_world import fixture_events, store_events
from cohort.analytics import summary_table
from cohort.analytics.rollup_refresh import RollupRefresher
from cohort.analytics.workflow_sessions import summarise_events
from cohort.store.clickhouse_store import ClickHouseStore
from cohort.store.duckdb_store import DuckDbStore

TENANT = "state-a"
FIXTURE_DAYS = (date(2018, 1, 1), date(2018, 12, 31))


@pytest.fixture(params=["duckdb", "clickhouse"])
def store(request, tmp_path):
    if request.param == "duckdb":
        opened = DuckDbStore(tmp_path / "store.duckdb")
    else:
        opened = ClickHouseStore(request.getfixturevalue("clickhouse_dsn"),
                                 database=request.getfixturevalue("clickhouse_database"))
    yield opened
    opened.close()


def _final(store) -> str:
    return " FINAL" if store.capabilities.sql_dialect == "clickhouse" else ""


def rows(store, where: str = "TRUE") -> list[dict]:
    """The table's live rows (ClickHouse: the newest version, tombstones left out), by key."""
    names = [n for n in summary_table.NAMES if n not in ("computed_at", "version")]
    sql = f"SELECT {', '.join(names)} FROM workflow_summaries{_final(store)} WHERE {where}"
    out = [dict(zip(names, row)) for row in store.query(sql, None, 100_000, 60.0).rows]
    for row in out:
        summary = row["summary"]
        row["summary"] = orjson.loads(summary if isinstance(summary, (str, bytes)) else orjson.dumps(summary))
        row["day"] = str(row["day"])
    return sorted(out, key=lambda r: (r["tenant"], r["day"], r["mid"], r["did"], r["sid"]))


def physical_count(store) -> int:
    count = "count()" if store.capabilities.sql_dialect == "clickhouse" else "count(*)"
    return int(store.query(f"SELECT {count} FROM workflow_summaries", None, 1, 30.0).rows[0][0])


def by_mid(records: list[dict]) -> list[dict]:
    return sorted(records, key=lambda r: (r["mid"], r["dimensions"]["did"]))


@pytest.mark.parametrize(("name", "expected"), [
    ("test-data1.log", {"app": 3, "textbookunit": 2, "resource": 2, "content": 1, "qr": 1}),
    ("test-data2.log", {"app": 3, "session": 1, "player": 1, "editor": 3}),
])
def test_the_refresh_stores_the_summaries_file_mode_gives(store, name, expected):
    events = fixture_events(name)
    assert store_events(store, events, offset=1) == len(events)
    refresher = RollupRefresher(store)
    assert refresher.refresh() > 0
    stored = rows(store)
    assert len(stored) == sum(expected.values()) == refresher.last_summaries
    assert Counter(r["type"] for r in stored) == expected
    assert by_mid([r["summary"] for r in stored]) == by_mid(summarise_events(events))
    for row in stored:  # the columns are the record's, and each row is in the slice of its start's UTC day
        eks = row["summary"]["edata"]["eks"]
        assert row["mid"] == row["summary"]["mid"] and row["uid"] == row["summary"]["uid"]
        assert row["tenant"] == row["summary"]["dimensions"]["channel"]
        assert row["day"] == datetime.fromtimestamp(eks["start_time"] / 1000, UTC).date().isoformat()
        assert (row["time_spent"], row["interact_events_count"]) == (eks["time_spent"], eks["interact_events_count"])
        assert row["event_count"] == sum(e["count"] for e in eks["events_summary"]) > 0
    if name == "test-data2.log":
        [player] = [r for r in stored if r["type"] == "player"]
        assert (player["object_id"], player["time_spent"]) == ("do_1122852550749306881159", 9.63)


def test_recomputing_a_range_again_gives_the_same_rows(store):
    store_events(store, fixture_events("test-data1.log"), offset=1)
    refresher = RollupRefresher(store)
    refresher.refresh()
    first = rows(store)
    assert refresher.recompute(None, *FIXTURE_DAYS) > 0
    assert rows(store) == first
    if store.capabilities.sql_dialect == "duckdb":
        assert physical_count(store) == len(first) == 9  # deleted and inserted, never doubled


# -- late data and the slice boundary: a device's made-up session around midnight -----------------------------

MIDNIGHT = datetime(2024, 3, 10, tzinfo=UTC)


def event(eid: str, at: datetime, n: int, etype: str = "app", did: str = "dev-1", uid: str = "u:learner-1",
          **edata) -> dict:
    return {"eid": eid, "ets": int(at.timestamp() * 1000), "ver": "3.0", "mid": f"{did}-{eid}-{n}",
            "actor": {"id": uid, "type": "User"},
            "context": {"channel": TENANT, "did": did, "sid": f"sid-{did}", "env": "home",
                        "pdata": {"id": "app.x", "ver": "1"}},
            "edata": {"type": etype, **edata}}


def session(start: datetime, minutes: list[int], did: str = "dev-1", uid: str = "u:learner-1",
            end: bool = True) -> list[dict]:
    """START app, an IMPRESSION at each of `minutes` after `start`, END app a minute after the last."""
    out = [event("START", start, 0, did=did, uid=uid)]
    out += [event("IMPRESSION", start + timedelta(minutes=m), i + 1, etype="view", did=did, uid=uid, pageid=f"p{i}")
            for i, m in enumerate(minutes)]
    if end:
        out.append(event("END", start + timedelta(minutes=minutes[-1] + 1), 99, did=did, uid=uid))
    return out


def days_of(store) -> Counter:
    return Counter(r["day"] for r in rows(store))


def test_a_session_across_midnight_is_its_start_days_and_a_late_event_after_midnight_reopens_it(store):
    refresher = RollupRefresher(store)
    # 23:50 → 00:05 of the next day (no END), then a second session after an hour's silence (the next day's)
    early = session(MIDNIGHT - timedelta(minutes=10), [5, 10, 15], end=False)
    store_events(store, early, offset=1)
    later = session(MIDNIGHT + timedelta(hours=1, minutes=30), [5, 10], did="dev-1")
    store_events(store, [{**e, "mid": "b-" + e["mid"]} for e in later], offset=2)
    refresher.refresh()
    assert days_of(store) == {"2024-03-09": 1, "2024-03-10": 1}
    [crossing] = rows(store, "day = '2024-03-09'" if store.capabilities.sql_dialect == "duckdb"
                      else "day = toDate('2024-03-09')")
    assert crossing["summary"]["edata"]["eks"]["end_time"] == early[-1]["ets"]

    # a late event of 00:20, synced two days later, continues the first session: it marks 03-10 only, and the
    # summary of 03-09 is recomputed with it (one summary, its end moved; no stale copy, no second slice)
    late = event("IMPRESSION", MIDNIGHT + timedelta(minutes=20), 50, etype="view", pageid="late")
    store_events(store, [late], offset=3, received_ms=int((MIDNIGHT + timedelta(days=2)).timestamp() * 1000))
    assert refresher.refresh() == 1
    assert days_of(store) == {"2024-03-09": 1, "2024-03-10": 1}
    after = rows(store)
    [reopened] = [r for r in after if r["day"] == "2024-03-09"]
    assert reopened["mid"] != crossing["mid"]  # its end moved, so its id did (ClickHouse: the old one tombstoned)
    assert reopened["summary"]["edata"]["eks"]["end_time"] == late["ets"]
    assert reopened["event_count"] == crossing["event_count"] + 1
    everything = early + [{**e, "mid": "b-" + e["mid"]} for e in later] + [late]
    assert by_mid([r["summary"] for r in after]) == by_mid(summarise_events(everything))


def test_a_session_left_open_closes_at_the_session_break_and_a_late_end_gives_the_closed_version(store):
    refresher = RollupRefresher(store)
    opened = session(MIDNIGHT + timedelta(hours=8), [2, 4], end=False)
    store_events(store, opened, offset=1)
    refresher.refresh()
    [open_one] = rows(store)
    assert open_one["summary"]["edata"]["eks"]["end_time"] == opened[-1]["ets"]
    # the END arrives late (offline device): the slice is recomputed and the summary ends at the END
    end = event("END", MIDNIGHT + timedelta(hours=8, minutes=6), 99)
    store_events(store, [end], offset=2)
    refresher.refresh()
    [closed] = rows(store)
    assert closed["summary"]["edata"]["eks"]["end_time"] == end["ets"]
    assert closed["mid"] != open_one["mid"] and closed["event_count"] == open_one["event_count"] + 1


def test_other_tenants_and_devices_are_separate_slices_and_summaries(store):
    refresher = RollupRefresher(store)
    mine = session(MIDNIGHT + timedelta(hours=9), [1, 2])
    other = [{**e, "mid": "o-" + e["mid"], "context": {**e["context"], "channel": "state-b"}} for e in mine]
    second = session(MIDNIGHT + timedelta(hours=9), [1, 2], did="dev-2", uid="u:learner-2")
    store_events(store, mine + other + second, offset=1)
    refresher.refresh()
    stored = rows(store)
    assert Counter((r["tenant"], r["did"]) for r in stored) == {(TENANT, "dev-1"): 1, ("state-b", "dev-1"): 1,
                                                                (TENANT, "dev-2"): 1}
    assert refresher.recompute("state-b", date(2024, 3, 10), date(2024, 3, 10)) == 1
    assert rows(store) == stored


def test_forget_removes_the_learners_summaries_and_the_refresh_does_not_bring_them_back(store):
    refresher = RollupRefresher(store)
    a = session(MIDNIGHT + timedelta(hours=9), [1, 2], did="dev-1", uid="u:aaaa")
    b = session(MIDNIGHT + timedelta(hours=9), [1, 2, 3], did="dev-2", uid="u:bbbb")
    store_events(store, a + b, offset=1)
    refresher.refresh()
    assert Counter(r["uid"] for r in rows(store)) == {"u:aaaa": 1, "u:bbbb": 1}
    forgotten = store.forget_rows(TENANT, "u:aaaa")
    assert forgotten.telemetry == len(a)
    assert [r["uid"] for r in rows(store)] == ["u:bbbb"]
    assert refresher.refresh() >= 1  # the forget marked the learner's slices: recomputed without their events
    assert [r["uid"] for r in rows(store)] == ["u:bbbb"]
    text = orjson.dumps(rows(store)).decode()
    assert "u:aaaa" not in text


def test_around_and_window_state_the_boundary_rule():
    assert summary_table.around([("t", date(2024, 3, 10))]) == [("t", date(2024, 3, 9)), ("t", date(2024, 3, 10)),
                                                                ("t", date(2024, 3, 11))]
    start, end = summary_table.window(date(2024, 3, 10))
    assert start == datetime(2024, 3, 10) - summary_table.CONTEXT_BEFORE
    assert end == datetime(2024, 3, 11) + summary_table.READ_AFTER
    # an event of any time of a day lies only in the windows of that day and its neighbours
    assert summary_table.CONTEXT_BEFORE < timedelta(days=1) and summary_table.READ_AFTER < timedelta(days=1)


def test_the_table_has_the_declared_columns_and_types(store):
    dialect = store.capabilities.sql_dialect
    described = store.query("SELECT name, type FROM system.columns WHERE database = currentDatabase() AND "
                            "table = 'workflow_summaries'" if dialect == "clickhouse" else
                            "SELECT column_name, data_type FROM information_schema.columns "
                            "WHERE table_name = 'workflow_summaries'", None, 100, 30.0)
    found = {str(row[0]): str(row[1]) for row in described.rows}
    declared = {name: (ch if dialect == "clickhouse" else duck) for name, duck, ch in summary_table.COLUMNS}
    if dialect == "clickhouse":
        declared["is_deleted"] = "UInt8"
    assert found == declared


# -- DuckDB: computed outside the write lock, written only when nothing newer came meanwhile ------------------

class _MidwayStore:
    """The store, with `action` run between the summaries' read (outside the lock) and their write."""

    def __init__(self, store, action):
        self._store, self._action = store, action

    def __getattr__(self, name):
        return getattr(self._store, name)

    def read_cursor(self):
        import contextlib

        @contextlib.contextmanager
        def cursor():
            with self._store.read_cursor() as inner:
                yield inner
            self._action()

        return cursor()


@pytest.fixture
def duck(tmp_path):
    opened = DuckDbStore(tmp_path / "store.duckdb")
    yield opened
    opened.close()


def test_a_refresh_that_read_before_a_forget_writes_nothing_and_the_next_one_leaves_the_learner_out(duck):
    a = session(MIDNIGHT + timedelta(hours=9), [1, 2], did="dev-1", uid="u:aaaa")
    b = [{**e, "mid": "b-" + e["mid"], "actor": {"id": "u:bbbb", "type": "User"}} for e in a]  # same device, times
    store_events(duck, a + b, offset=1)
    midway = RollupRefresher(_MidwayStore(duck, lambda: duck.forget_rows(TENANT, "u:aaaa")))
    midway.refresh()
    assert midway.last_summaries == 0 and rows(duck) == []  # what it read held the learner's events
    refresher = RollupRefresher(duck)
    refresher.refresh()
    assert [r["uid"] for r in rows(duck)] == ["u:bbbb"] and refresher.last_summaries == 1


def test_a_refresh_whose_marks_another_took_meanwhile_writes_nothing(duck):
    store_events(duck, session(MIDNIGHT + timedelta(hours=9), [1, 2]), offset=1)
    late = session(MIDNIGHT + timedelta(hours=9, minutes=3), [1, 2], did="dev-1")

    def another_refresher_with_newer_events():
        store_events(duck, [{**e, "mid": "late-" + e["mid"]} for e in late], offset=2)
        RollupRefresher(duck).refresh()

    slow = RollupRefresher(_MidwayStore(duck, another_refresher_with_newer_events))
    slow.refresh()
    assert slow.last_summaries == 0
    newest = rows(duck)
    assert newest and sum(r["event_count"] for r in newest) == len(late) + 4  # the other's newer computation
    assert RollupRefresher(duck).recompute(None, date(2024, 3, 9), date(2024, 3, 11)) > 0
    assert rows(duck) == newest


def test_a_long_recompute_is_read_a_few_days_at_a_time():
    days = [date(2024, 3, 1) + timedelta(days=n) for n in range(10)]
    runs = summary_table.runs([("t", day) for day in days] + [("u", date(2024, 3, 5))])
    assert [len(run_days) for tenant, run_days, _, _ in runs if tenant == "t"] == [3, 3, 3, 1]
    assert sorted(day for tenant, run_days, _, _ in runs if tenant == "t" for day in run_days) == days
    for _, run_days, start, end in runs:  # each read covers the windows of its days exactly
        assert (start, end) == (summary_table.window(run_days[0])[0], summary_table.window(run_days[-1])[1])


def test_a_device_flooding_a_run_is_left_out_and_the_others_are_summarised(monkeypatch):
    """A device's events of a run are held at once: beyond MAX_DEVICE_EVENTS (not a learner's session) the
    device is skipped, so memory stays bounded whatever one device sends; other devices are not affected."""
    events = [e for e in fixture_events("test-data2.log") if (e.get("context") or {}).get("did")]
    did = events[0]["context"]["did"]
    mine = sorted((e for e in events if e["context"]["did"] == did), key=lambda e: e["ets"])
    day = datetime.fromtimestamp(mine[0]["ets"] / 1000, UTC).date()
    flood = [{**e, "context": {**e["context"], "did": "flood"}, "ets": e["ets"] + n * 1000}
             for n in range(12) for e in mine]

    def rows(device_events):
        return [(e["context"]["did"], "app", int(e["ets"]), orjson.dumps(e).decode()) for e in device_events]

    def summaries(limit):
        monkeypatch.setattr(summary_table, "MAX_DEVICE_EVENTS", limit)
        out = summary_table.run_records(rows(sorted(flood, key=lambda e: e["ets"])) + rows(mine), [day])
        return Counter(record["dimensions"]["did"] for _, record in out)

    both = summaries(10_000)
    assert both[did] > 0 and both["flood"] > 0
    assert summaries(len(mine)) == Counter({did: both[did]})  # 48 events > the limit: the flood left out


# -- summarised in chunks of whole devices (on the server: on its pipeline workers) ------------------------------

EVENT_COLUMNS = pa.schema([("did", pa.string()), ("app", pa.string()), ("ets", pa.int64()), ("event", pa.string())])


def _stream_rows(events: list[dict]) -> list[tuple]:
    """`events_sql` rows of `events`: by device and app, in time order."""
    out = [((e.get("context") or {}).get("did") or "", ((e.get("context") or {}).get("pdata") or {}).get("id") or "",
            int(e["ets"]), orjson.dumps(e).decode()) for e in events]
    return sorted(out, key=lambda r: (r[0], r[1], r[2]))


def _batches(rows_: list[tuple], size: int) -> list[pa.RecordBatch]:
    return [pa.RecordBatch.from_pylist([dict(zip(EVENT_COLUMNS.names, r)) for r in rows_[i:i + size]],
                                       schema=EVENT_COLUMNS) for i in range(0, len(rows_), size)]


def _many_devices() -> list[dict]:
    out = [e for e in fixture_events("test-data2.log")]
    for n in range(12):  # sessions of several devices and two apps, some across midnight
        start = MIDNIGHT + timedelta(hours=-1 if n % 3 == 0 else 8, minutes=7 * n)
        for e in session(start, [1, 2 + n, 40 + n, 75 + n], did=f"dev-{n % 5}", uid=f"u:{n}", end=n % 2 == 0):
            app = "app.y" if n % 4 == 0 else "app.x"
            out.append({**e, "mid": f"{n}-{e['mid']}", "context": {**e["context"], "pdata": {"id": app, "ver": "1"}}})
    return out


def _summaries(tables) -> list[tuple]:
    return sorted((str(r["day"]), r["mid"], r["did"], r["summary"]) for t in tables for r in t.to_pylist())


@pytest.mark.parametrize(("chunk_rows", "batch_rows"), [(1, 1), (7, 3), (25, 10), (10_000, 4)])
def test_chunks_end_where_a_device_ends_and_summarise_as_the_whole_stream(chunk_rows, batch_rows):
    events = _many_devices()
    days = [MIDNIGHT.date() - timedelta(days=1), MIDNIGHT.date(), date(2018, 1, 1)]
    stream = _stream_rows(events)
    whole = summary_table.summarise_chunk(pa.Table.from_batches(_batches(stream, 10_000)), TENANT, days, 1, 2)
    assert whole.num_rows > 15  # enough devices, days and apps that a wrong cut would show

    chunks = list(summary_table.device_chunks(_batches(stream, batch_rows), rows=chunk_rows))
    assert sum(c.num_rows for c in chunks) == len(stream)  # nothing dropped, nothing doubled
    groups = [{(d, a) for d, a in zip(c.column(0).to_pylist(), c.column(1).to_pylist())} for c in chunks]
    assert sum(len(g) for g in groups) == len(set().union(*groups))  # no device and app in two chunks
    assert all(c.num_rows <= max(chunk_rows + batch_rows, 60) for c in chunks)  # bounded (a group is ≤ 60 here)
    parts = [summary_table.summarise_chunk(c, TENANT, days, 1, 2) for c in chunks]
    assert _summaries(parts) == _summaries([whole])


def test_a_flooding_device_is_cut_in_its_chunk_and_the_others_are_summarised(monkeypatch):
    """However many events one device and app sends, a chunk holds at most MAX_DEVICE_EVENTS + 1 of them (so the
    summariser sees the flood and leaves it out) and the rest are dropped: the server never holds them all."""
    ordinary = session(MIDNIGHT + timedelta(hours=9), [1, 2, 3], did="dev-a") + session(
        MIDNIGHT + timedelta(hours=10), [1, 2], did="dev-z")
    flood = [event("INTERACT", MIDNIGHT + timedelta(hours=9, seconds=n), n, etype="touch", did="dev-m")
             for n in range(400)]
    monkeypatch.setattr(summary_table, "MAX_DEVICE_EVENTS", 50)
    stream = _stream_rows(ordinary + flood)
    chunks = list(summary_table.device_chunks(_batches(stream, 16), rows=20))
    held = Counter(d for c in chunks for d in c.column(0).to_pylist())
    assert held["dev-m"] == 51 and held["dev-a"] == 5 and held["dev-z"] == 4
    parts = [summary_table.summarise_chunk(c, TENANT, [MIDNIGHT.date()], 1, 2) for c in chunks]
    dids = Counter(r["did"] for t in parts for r in t.to_pylist())
    assert dids["dev-m"] == 0 and dids["dev-a"] > 0 and dids["dev-z"] > 0


def test_a_refresh_summarising_on_worker_processes_writes_what_an_inline_one_writes(tmp_path):
    from concurrent.futures import ProcessPoolExecutor

    events = _many_devices()
    stores = [DuckDbStore(tmp_path / "inline.duckdb"), DuckDbStore(tmp_path / "pool.duckdb")]
    try:
        for opened in stores:
            store_events(opened, events, offset=1)
        RollupRefresher(stores[0]).refresh()
        with ProcessPoolExecutor(1) as pool:
            pooled = RollupRefresher(stores[1], submit=pool.submit)
            pooled.refresh()
        assert pooled.last_summaries > 15
        assert rows(stores[1]) == rows(stores[0])
    finally:
        for opened in stores:
            opened.close()


def test_a_chunk_sent_to_a_worker_carries_its_own_rows_only():
    """A chunk is cut from the reader's batches; pickled as a slice it would carry the whole batches' buffers
    (measured: a worker's memory grew by 100 MB per chunk). Each chunk pickles to about its own size."""
    import pickle

    text = "x" * 1_000
    rows_ = [(f"dev-{n // 10:04d}", "app", n, text) for n in range(10_000)]
    [batch] = _batches(rows_, 10_000)
    chunks = list(summary_table.device_chunks([batch], rows=100))
    assert [c.num_rows for c in chunks] == [9_990, 10]  # the last device's rows wait for the next batch
    for chunk in chunks:
        assert len(pickle.dumps(chunk)) < 2 * chunk.num_rows * len(text) + 50_000


# -- DuckDB: only the devices that sent something are recomputed ------------------------------------------------

def _versions(store) -> dict[str, int]:
    return {did: version for did, version in store.query(
        "SELECT did, max(version) FROM workflow_summaries GROUP BY did", None, 1000, 30.0).rows}


def test_a_new_batch_recomputes_its_devices_only_and_gives_what_a_whole_recompute_gives(duck):
    morning = MIDNIGHT + timedelta(hours=9)
    store_events(duck, session(morning, [1, 2], did="dev-1") + session(morning, [3, 4], did="dev-2", uid="u:b")
                 + session(morning - timedelta(days=1), [5], did="dev-3", uid="u:c"), offset=1)
    refresher = RollupRefresher(duck)
    refresher.refresh()
    before = _versions(duck)
    assert set(before) == {"dev-1", "dev-2", "dev-3"}
    assert RollupRefresher(duck).refresh() == 0 and _versions(duck) == before  # nothing new: nothing recomputed

    later = session(morning + timedelta(minutes=10), [1], did="dev-2", uid="u:b")  # the same session, continued
    store_events(duck, [{**e, "mid": "later-" + e["mid"]} for e in later], offset=2)
    refresher.refresh()
    after = _versions(duck)
    assert after["dev-1"] == before["dev-1"] and after["dev-3"] == before["dev-3"]  # not recomputed
    assert after["dev-2"] > before["dev-2"]
    assert refresher.last_summaries == len(rows(duck, "did = 'dev-2'"))
    incremental = rows(duck)
    assert sum(r["event_count"] for r in incremental if r["did"] == "dev-2" and r["type"] == "app") == 4 + 3
    assert refresher.recompute(None, MIDNIGHT.date() - timedelta(days=2), MIDNIGHT.date() + timedelta(days=1)) > 0
    assert rows(duck) == incremental
    [(left,)] = duck.query("SELECT count(*) FROM summary_devices", None, 1, 30.0).rows
    assert left == 0


def test_a_batch_arriving_while_the_summaries_are_computed_is_summarised_by_the_next_refresh(duck):
    morning = MIDNIGHT + timedelta(hours=9)
    store_events(duck, session(morning, [1, 2], did="dev-1"), offset=1)
    more = session(morning + timedelta(minutes=5), [1], did="dev-1")

    def batch_midway():
        store_events(duck, [{**e, "mid": "more-" + e["mid"]} for e in more], offset=2)

    RollupRefresher(_MidwayStore(duck, batch_midway)).refresh()
    refresher = RollupRefresher(duck)
    refresher.refresh()
    incremental = rows(duck)
    assert sum(r["event_count"] for r in incremental if r["type"] == "app") == 4 + 3  # both sessions' events
    assert refresher.recompute(None, MIDNIGHT.date() - timedelta(days=1), MIDNIGHT.date() + timedelta(days=1)) > 0
    assert rows(duck) == incremental


def test_a_store_written_before_device_marks_recomputes_its_marked_days_whole(tmp_path):
    path = tmp_path / "store.duckdb"
    opened = DuckDbStore(path)
    store_events(opened, session(MIDNIGHT + timedelta(hours=9), [1, 2]), offset=1)
    with opened.rollup_transaction() as con:  # as an older version left it: batch marks, no device marks
        con.execute("DELETE FROM summary_devices")
    opened.close()
    reopened = DuckDbStore(path)
    try:
        RollupRefresher(reopened).refresh()
        assert [r["type"] for r in rows(reopened)] == ["app"]
    finally:
        reopened.close()
