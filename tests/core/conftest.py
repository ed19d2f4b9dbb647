"""Fixtures for the pure core: log records built the way the ingest API builds them.

The 500 real DIKSHA events come from the root conftest (`sample_lines`, `sample_events`).
"""

from __future__ import annotations

import orjson
import pytest

from cohort.core.log_record import LogRecord


def batch_record(events: list, offset: int = 1, *, received_at_ms: int = 1_700_000_000_000,
                 source: str = "/v1/telemetry") -> LogRecord:
    """A log record holding one Sunbird batch envelope, counted as the API counts it."""
    body = orjson.dumps({"id": "api.sunbird.telemetry", "ver": "3.0", "params": {"msgid": f"m-{offset}"},
                         "events": events})
    return LogRecord(payload=body, event_count=len(events), source=source, received_at_ms=received_at_ms,
                     headers={"x-channel-id": "test"}, offset=offset)


@pytest.fixture
def make_record():
    return batch_record


@pytest.fixture
def interact_event(sample_events) -> dict:
    """A real INTERACT event with an object and a rollup, so every column has a value."""
    return next(e for e in sample_events
                if e["eid"] == "INTERACT" and e.get("object", {}).get("rollup") and e["context"].get("sid"))


class SamplePool:
    """The sample events for property tests: a short repr (hypothesis prints its arguments) and fresh
    copies on demand, so examples may mutate what they get."""

    def __init__(self, lines: list[bytes]):
        self._lines = lines

    def fresh(self) -> list[dict]:
        return [orjson.loads(line) for line in self._lines]

    def __repr__(self) -> str:
        return f"SamplePool({len(self._lines)} events)"


@pytest.fixture(scope="session")
def sample_pool(sample_lines) -> SamplePool:
    return SamplePool(sample_lines)
