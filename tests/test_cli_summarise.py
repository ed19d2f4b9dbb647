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
