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
