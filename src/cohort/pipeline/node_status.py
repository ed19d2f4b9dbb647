"""One snapshot of a node for /health and /metrics, so the API reads no node internals.

The ledger is read store first, then the log after the store's offset, so the two agree:
`received = stored + failed + duplicate + in_flight` holds within one snapshot.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from cohort.pipeline.runner import RunnerStatus


@dataclass(frozen=True, slots=True)
class Ledger:
    received: int  # events acknowledged (durable in the ingest log)
    stored: int
    failed: int
    duplicate: int  # events dropped as duplicates (of a stored mid, or in a retried request)
    in_flight: int  # acknowledged, not yet processed
    failed_by_stage: dict[str, int] = field(default_factory=dict)
    duplicate_requests: int = 0  # requests dropped whole as retries of a committed msgid
    received_requests: int = 0

    @property
    def unaccounted(self) -> int:
        """Anything but 0 is a bug: an acknowledged event that is nowhere."""
        return self.received - (self.stored + self.failed + self.duplicate + self.in_flight)


@dataclass(frozen=True, slots=True)
class NodeStatus:
    footprint: str  # "embedded" or "scaleout"
    runner: RunnerStatus
    backlog_events: int  # counted against the backpressure bound
    ledger: Ledger | None  # None when the store cannot be read right now (store_error says why)
    store_error: str | None
    log_offset: int  # last offset appended to the ingest log
    pipeline_offset: int  # last log offset the store committed
    phase_seconds: dict[str, float]
    dedup_reach_s: dict[str, float]  # how far back each dedup state holds keys: {"mid": …, "msgid": …}
