"""The `cohort` command line: generate is deterministic and valid; commands are wired."""

from __future__ import annotations

import orjson
from typer.testing import CliRunner

from cohort.cli import app
from cohort.core.telemetry_schema import validator_for

runner = CliRunner()


def test_generate_writes_valid_deterministic_events(tmp_path):
    first, second, other = tmp_path / "a.jsonl", tmp_path / "b.jsonl", tmp_path / "c.jsonl"
    for path, seed in ((first, 7), (second, 7), (other, 8)):
        result = runner.invoke(app, ["generate", "-n", "2000", "--seed", str(seed), "-o", str(path)])
        assert result.exit_code == 0, result.output
    assert first.read_bytes() == second.read_bytes()
    assert first.read_bytes() != other.read_bytes()
    events = [orjson.loads(line) for line in first.read_bytes().splitlines()]
    assert len(events) == 2000
    for event in events:
        validator_for(event["eid"])(event)
    eids = {e["eid"] for e in events}
    assert {"START", "IMPRESSION", "INTERACT", "ASSESS", "END", "SEARCH"} <= eids


def test_generate_batches_are_sunbird_envelopes(tmp_path):
    path = tmp_path / "batches.jsonl"
    result = runner.invoke(app, ["generate", "-n", "1000", "--batch-size", "300", "-o", str(path)])
    assert result.exit_code == 0, result.output
    batches = [orjson.loads(line) for line in path.read_bytes().splitlines()]
    assert [len(b["events"]) for b in batches] == [300, 300, 300, 100]
    assert all(b["id"] == "api.sunbird.telemetry" and b["params"]["msgid"] for b in batches)


def test_help_lists_the_commands():
    result = runner.invoke(app, ["--help"])
    assert result.exit_code == 0
    for command in ("serve", "generate", "demo", "bench", "crash-test"):
        assert command in result.output


def test_demo_refuses_a_directory_with_files_cohort_did_not_write_even_with_reset(tmp_path):
    (tmp_path / "thesis.tex").write_text("years of work")
    for flags in ([], ["--reset"]):
        result = runner.invoke(app, ["demo", "--data-dir", str(tmp_path), *flags])
        assert result.exit_code == 2, result.output
        assert "thesis.tex" in result.output and "did not write" in result.output
    assert (tmp_path / "thesis.tex").read_text() == "years of work"


def test_demo_refuses_other_cohort_data_unless_reset_and_says_how(tmp_path):
    from cohort.ingest.sqlite_log import SqliteLog

    SqliteLog(tmp_path / "ingest-log.sqlite").close()  # a `cohort serve` data dir
    result = runner.invoke(app, ["demo", "--data-dir", str(tmp_path)])
    assert result.exit_code == 2, result.output
    assert "not a demo's" in result.output and "--reset" in result.output and "cohort serve" in result.output
    assert (tmp_path / "ingest-log.sqlite").exists()


def test_demo_help_offers_reset_and_does_not_promise_a_wipe():
    result = runner.invoke(app, ["demo", "--help"])
    assert result.exit_code == 0
    assert "--reset" in result.output and "wiped first" not in result.output


def test_no_command_writes_its_output_into_a_cohort_data_directory(tmp_path):
    from cohort.pipeline.data_dir_lock import DataDirLock

    lock = DataDirLock(tmp_path)
    lock.acquire()  # a live server's directory
    store = tmp_path / "store.duckdb"
    store.write_bytes(b"the store")
    try:
        for command in (["generate", "-n", "10", "-o", str(store)], ["bench", "--output", str(store)],
                        ["crash-test", "--output", str(store)]):
            result = runner.invoke(app, command, env={"COLUMNS": "400"})
            assert result.exit_code == 2, (command, result.output)
            assert "is a Cohort data directory" in result.output
        assert store.read_bytes() == b"the store"
    finally:
        lock.release()
