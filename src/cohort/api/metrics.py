"""GET /metrics: Prometheus text, with the accounting identity as live figures.

Event counts come from durable state (the log's totals, the store's counters),
not from in-process counters, so they survive restarts and reconcile exactly:
received = stored + failed + duplicate + in_flight. `cohort_events_unaccounted`
is that difference and must always be 0.
"""

from __future__ import annotations

import logging

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import Response

from cohort.core.errors import ErrorCode

log = logging.getLogger("cohort.metrics")

PIPELINE_STAGES = ("extract", "validate", "dedup", "route", "core", "store")


class EventAccounting(Collector):
    def __init__(self, node):
        self._node = node

    def collect(self):
        node = self._node
        try:
            counts = node.store.counts()  # store snapshot first, then the log after its offset
        except Exception as exc:  # e.g. queries hold all of the engine's memory: say so, never answer 500
            log.warning("metrics: the store's counters cannot be read right now: %s", exc)
            yield _gauge("cohort_store_readable", "1 when the store's counters could be read for this scrape", 0)
            return
        yield _gauge("cohort_store_readable", "1 when the store's counters could be read for this scrape", 1)
        log_stats = node.log.stats(after=counts.last_offset)
        received = log_stats.received_events
        in_flight = log_stats.events_after
        yield _counter("cohort_events_received", "Events acknowledged (durable in the ingest log)", received)
        yield _counter("cohort_events_stored", "Events stored in the analytical store", counts.stored)
        failed = CounterMetricFamily("cohort_events_failed", "Events quarantined in failed_events", labels=["stage"])
        for stage in PIPELINE_STAGES:
            failed.add_metric([stage], counts.failed_by_stage.get(stage, 0))
        yield failed
        yield _counter("cohort_events_duplicate", "Events dropped as duplicates of a stored mid", counts.duplicate)
        yield _gauge("cohort_events_in_flight", "Acknowledged events not yet processed", in_flight)
        yield _gauge("cohort_events_unaccounted",
                     "received - (stored + failed + duplicate + in_flight); anything but 0 is a bug",
                     received - (counts.stored + counts.failed + counts.duplicate + in_flight))
        yield _counter("cohort_log_records", "Requests appended to the ingest log", log_stats.received_records)
        yield _gauge("cohort_log_offset", "Last offset appended to the ingest log", log_stats.last_offset)
        yield _gauge("cohort_pipeline_offset", "Last log offset committed by the store", counts.last_offset)
        yield _gauge("cohort_pipeline_backlog_events", "Events counted against the backpressure bound",
                     node.backlog_events)
        phases = CounterMetricFamily("cohort_pipeline_phase_seconds",
                                     "Seconds the pipeline loop spent in each phase", labels=["phase"])
        for phase, seconds in node.runner.phase_seconds.items():
            phases.add_metric([phase], seconds)
        yield phases
        yield _gauge("cohort_dedup_mids", "Mids held in memory for dedup", len(node.runner.dedup))
        yield _gauge("cohort_dedup_window_seconds", "How far back a repeated mid is certainly caught",
                     node.runner.dedup.window_seconds)
        status = node.runner.status()
        yield _gauge("cohort_pipeline_healthy", "1 while the pipeline runs without error",
                     1 if status.running and status.last_error is None else 0)
        yield _gauge("cohort_pipeline_stalled", "1 while the pipeline fails or stands still past the stall bound",
                     1 if status.stalled else 0)
        yield _gauge("cohort_pipeline_oldest_unprocessed_age_seconds",
                     "Age of the oldest acknowledged record not yet processed (0 when none waits)",
                     status.oldest_unprocessed_age_s)
        yield _gauge("cohort_pipeline_consecutive_failures", "Batch attempts failed since the last success",
                     status.consecutive_failures)
        yield _counter("cohort_pipeline_isolated_records",
                       "Log records that failed as a whole and were processed in isolation", status.isolated_records)


def _counter(name: str, doc: str, value: float) -> CounterMetricFamily:
    return CounterMetricFamily(name, doc, value=value)


def _gauge(name: str, doc: str, value: float) -> GaugeMetricFamily:
    return GaugeMetricFamily(name, doc, value=value)


class ApiMetrics:
    """Per-process request figures (these reset on restart; event counts do not)."""

    def __init__(self, node):
        self.registry = CollectorRegistry()
        self.registry.register(EventAccounting(node))
        self._rejected = Counter("cohort_ingest_rejected", "Ingest requests refused, by error code",
                                 ["code"], registry=self.registry)
        self._batches = Counter("cohort_ingest_batches_acked", "Ingest requests acknowledged", registry=self.registry)
        self._ack_seconds = Histogram(
            "cohort_ingest_ack_seconds", "Time from request start to durable acknowledgement",
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.25, 0.5, 1, 2.5, 5), registry=self.registry)

    def rejected(self, code: ErrorCode) -> None:
        self._rejected.labels(code=str(code)).inc()

    def acked(self, events: int, seconds: float) -> None:
        self._batches.inc()
        self._ack_seconds.observe(seconds)


async def metrics_endpoint(request: Request) -> Response:
    text = await run_in_threadpool(generate_latest, request.app.state.metrics.registry)
    return Response(text, media_type="text/plain; version=0.0.4; charset=utf-8")
