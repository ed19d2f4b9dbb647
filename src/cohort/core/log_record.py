"""What the ingest log holds: one acknowledged request, kept as the raw bytes the client sent."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True, slots=True)
class LogRecord:
    """One durable, acknowledged request.

    The payload stays raw bytes end to end: the API parsed it once to check the
    envelope, the pipeline parses it once more, and nothing re-serialises it between.
    ``event_count`` is what the API counted at ingest, so the pipeline's outcome
    (stored + failed + duplicate) can be reconciled against it.
    """

    payload: bytes
    event_count: int
    source: str = "/v1/telemetry"
    received_at_ms: int = 0
    headers: dict[str, str] = field(default_factory=dict)
    offset: int = -1
    partition: int = 0  # the log partition the record was read from (the embedded log has one)
