"""`cohort summarise` as a script runs it: a raw file in, one summary a line out, counts that reconcile."""

from __future__ import annotations

import os
import subprocess
import sys
from collections import Counter
from pathlib import Path

import orjson
import pytest

COHORT = str(Path(sys.executable).parent / "cohort")
FIXTURES = Path(__file__).resolve().parent / "fixtures" / "sunbird" / "workflow-summary"


def cohort(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([COHORT, *args], capture_output=True, text=True, timeout=120,
                          env={**os.environ, "COLUMNS": "200"})


def read_jsonl(path: Path) -> list[dict]:
    return [orjson.loads(line) for line in path.read_bytes().splitlines()]


@pytest.mark.parametrize("presorted", [False, True])
def test_summarise_test_data2(tmp_path, presorted):
    out = tmp_path / "summaries.jsonl"
    result = cohort("summarise", "--input", str(FIXTURES / "test-data2.log"), "--output", str(out),
                    *(["--presorted"] if presorted else []))
    assert result.returncode == 0, result.stderr
    records = read_jsonl(out)
    assert len(records) == 8
    assert Counter(r["dimensions"]["type"] for r in records) == {"app": 3, "session": 1, "player": 1, "editor": 3}
    assert all(r["eid"] == "ME_WORKFLOW_SUMMARY" and r["edata"]["eks"]["time_spent"] > 0 for r in records)
    [player] = [r for r in records if r["dimensions"]["type"] == "player"]
    assert (player["object"]["id"], player["object"]["rollup"]["l1"]) == ("do_1122852550749306881159",
                                                                          "do_3124020553502310402803")
    lines = result.stdout.splitlines()
    # 46 lines: 17 LOG events, 1 line without eid, 28 events summarised
    assert "lines read: 46; events found: 46; events used: 28" in lines
    assert "skipped: 17 (server event (LOG/AUDIT/SEARCH))" in lines
    assert "skipped: 1 (no eid)" in lines
    assert f"summaries written: 8 (app 3, editor 3, player 1, session 1) to {out}" in lines


def test_summarise_sorts_a_file_in_arrival_order(tmp_path):
    out = tmp_path / "s.jsonl"
    result = cohort("summarise", "--input", str(FIXTURES / "test-data1.log"), "--output", str(out))
    assert result.returncode == 0, result.stderr
    assert len(read_jsonl(out)) == 9
    assert "late events" not in result.stdout


def test_envelopes_junk_lines_and_counts(tmp_path):
    def event(eid: str, at: int, etype: str) -> dict:
        return {"eid": eid, "ets": 1_700_000_000_000 + at, "context": {"did": "d", "channel": "c",
                                                                        "pdata": {"id": "a"}},
                "edata": {"type": etype}}

    source = tmp_path / "in.jsonl"
    source.write_bytes(b"\n".join([
        orjson.dumps({"id": "api.sunbird.telemetry", "events": [event("START", 0, "player"),
                                                                event("INTERACT", 2000, "touch")]}),
        b"",
        b"{not json",
        orjson.dumps({"event": event("END", 5000, "player")}),
        orjson.dumps({"context": {"channel": "c"}, "message": "a logstash line"}),
        orjson.dumps(event("LOG", 6000, "api_call")),
    ]) + b"\n")
    out = tmp_path / "out.jsonl"
    result = cohort("summarise", "--input", str(source), "--output", str(out))
    assert result.returncode == 0, result.stderr
    records = read_jsonl(out)
    assert [(r["dimensions"]["type"], r["edata"]["eks"]["time_spent"]) for r in records] == [
        ("player", 5.0), ("app", 5.0)]
    lines = result.stdout.splitlines()
    assert "lines read: 6; events found: 5; events used: 3" in lines
    for skipped in ("skipped: 1 (blank line)", "skipped: 1 (not JSON)", "skipped: 1 (no eid)",
                    "skipped: 1 (server event (LOG/AUDIT/SEARCH))"):
        assert skipped in lines


def test_refuses_to_write_into_a_data_directory_and_needs_an_input(tmp_path):
    (tmp_path / "cohort.lock").write_text("")
    result = cohort("summarise", "--input", str(FIXTURES / "test-data2.log"), "--output",
                    str(tmp_path / "s.jsonl"))
    assert result.returncode == 2
    assert not (tmp_path / "s.jsonl").exists()
    missing = cohort("summarise", "--input", str(tmp_path / "nope.jsonl"), "--output", str(tmp_path / "x"))
    assert missing.returncode == 2


# -- store mode: --from/--to over a stopped embedded data directory (in-process: the same command, no interpreter
# start per call) ------------------------------------------------------------------------------------------------

def run_cli(*args: str):
    from typer.testing import CliRunner

    from cohort.cli import app

    return CliRunner().invoke(app, list(args), env={"COLUMNS": "200"})


def _data_dir_with(tmp_path: Path, *names: str) -> Path:
    """A data directory whose store holds Sunbird's summariser test data (past validation: see summary_world),
    with no summary computed yet."""
    from analytics.summary_world import fixture_events, store_events
    from cohort.store.duckdb_store import DuckDbStore

    data_dir = tmp_path / "data"
    store = DuckDbStore(data_dir / "store.duckdb")
    try:
        for offset, name in enumerate(names, start=1):
            store_events(store, fixture_events(name), offset=offset)
        assert store.query("SELECT count(*) FROM workflow_summaries", None, 1, 10.0).rows[0][0] == 0
    finally:
        store.close()
    return data_dir


def test_range_mode_recomputes_the_stored_summaries_and_writes_them(tmp_path):
    from analytics.summary_world import fixture_events
    from cohort.analytics.workflow_sessions import summarise_events

    data_dir = _data_dir_with(tmp_path, "test-data1.log", "test-data2.log")
    out = tmp_path / "range.jsonl"
    args = ("summarise", "--from", "2018-01-01", "--to", "2019-01-01", "--data-dir", str(data_dir),
            "--output", str(out))
    result = run_cli(*args)
    assert result.exit_code == 0, result.output
    records = read_jsonl(out)
    assert len(records) == 17  # 9 + 8, as file mode gives for each file
    expected = summarise_events(fixture_events("test-data1.log")) + summarise_events(fixture_events("test-data2.log"))
    assert sorted(records, key=lambda r: r["mid"]) == sorted(expected, key=lambda r: r["mid"])
    assert "summaries written: 17" in result.stdout
    assert "(app 6, content 1, editor 3, player 1, qr 1, resource 2, session 1, textbookunit 2)" in result.stdout
    # again: the same rows (recomputed, not doubled); one tenant and days: only theirs
    again = run_cli(*args)
    assert again.exit_code == 0, again.output
    assert read_jsonl(out) == records
    one = tmp_path / "one.jsonl"
    only = run_cli("summarise", "--from", "2018-01-09", "--to", "2018-01-10", "--tenant", "in.sunbird",
                   "--data-dir", str(data_dir), "--output", str(one))
    assert only.exit_code == 0, only.output
    assert len(read_jsonl(one)) == 8 and {r["dimensions"]["channel"] for r in read_jsonl(one)} == {"in.sunbird"}


@pytest.mark.parametrize("args", [
    ("--from", "2018-01-01"),  # --to missing
    ("--from", "2018-01-02", "--to", "2018-01-02"),  # an empty range
    ("--from", "2018-13-01", "--to", "2019-01-01"),
    ("--from", "2018-01-01", "--to", "2019-01-01", "--input", str(FIXTURES / "test-data2.log")),
    (),  # no mode at all
])
def test_range_mode_bad_arguments_exit_2_and_write_nothing(tmp_path, args):
    out = tmp_path / "x.jsonl"
    result = run_cli("summarise", *args, "--data-dir", str(tmp_path / "data"), "--output", str(out))
    assert result.exit_code == 2, result.output
    assert not out.exists()


def test_range_mode_is_refused_while_the_data_directory_is_in_use(tmp_path):
    from cohort.pipeline.data_dir_lock import DataDirLock

    data_dir = _data_dir_with(tmp_path, "test-data2.log")
    lock = DataDirLock(data_dir)
    lock.acquire()
    try:
        result = run_cli("summarise", "--from", "2018-01-01", "--to", "2019-01-01", "--data-dir", str(data_dir))
    finally:
        lock.release()
    assert result.exit_code == 2
    assert "in use" in result.stderr
    no_store = run_cli("summarise", "--from", "2018-01-01", "--to", "2019-01-01", "--data-dir", str(tmp_path / "none"))
    assert no_store.exit_code == 2 and "no store" in no_store.stderr
