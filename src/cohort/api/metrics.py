"""GET /metrics: Prometheus text, with the accounting identity as live figures.

Event counts come from durable state (the log's totals, the store's counters),
not from in-process counters, so they survive restarts and reconcile exactly:
received = stored + failed + duplicate + in_flight. `cohort_events_unaccounted`
is that difference and must always be 0.
"""

from __future__ import annotations


from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import Response

from cohort.core.errors import ErrorCode
from cohort.core.stages import FAILURE_STAGES


PIPELINE_STAGES = FAILURE_STAGES


class EventAccounting(Collector):
    def __init__(self, node):
        self._node = node

    def collect(self):
        status = self._node.status()
        ledger = status.ledger
        yield _gauge("cohort_store_readable", "1 when the store's counters could be read for this scrape",
                     0 if ledger is None else 1)
        if ledger is not None:
            yield _counter("cohort_events_received", "Events acknowledged (durable in the ingest log)", ledger.received)
            yield _counter("cohort_events_stored", "Events stored in the analytical store", ledger.stored)
            failed = CounterMetricFamily("cohort_events_failed", "Events quarantined in failed_events", labels=["stage"])
            for stage in PIPELINE_STAGES:
                failed.add_metric([stage], ledger.failed_by_stage.get(stage, 0))
            yield failed
            yield _counter("cohort_events_duplicate",
                           "Events dropped as duplicates (of a stored mid, or in a retried request)", ledger.duplicate)
            yield _counter("cohort_requests_duplicate",
                           "Requests dropped whole as retries of a committed params.msgid", ledger.duplicate_requests)
            yield _gauge("cohort_events_in_flight", "Acknowledged events not yet processed", ledger.in_flight)
            yield _gauge("cohort_events_unaccounted",
                         "received - (stored + failed + duplicate + in_flight); anything but 0 is a bug",
                         ledger.unaccounted)
            yield _counter("cohort_log_records", "Requests appended to the ingest log", ledger.received_requests)
        yield _gauge("cohort_log_offset", "Last offset appended to the ingest log", status.log_offset)
        yield _gauge("cohort_pipeline_offset", "Last log offset committed by the store", status.pipeline_offset)
        yield _gauge("cohort_pipeline_backlog_events", "Events counted against the backpressure bound",
                     status.backlog_events)
        phases = CounterMetricFamily("cohort_pipeline_phase_seconds",
                                     "Seconds the pipeline loop spent in each phase", labels=["phase"])
        for phase, seconds in status.phase_seconds.items():
            phases.add_metric([phase], seconds)
        yield phases
        reach = GaugeMetricFamily("cohort_dedup_reach_seconds",
                                  "How far back a repeated key is certainly caught (at most the dedup period)",
                                  labels=["key"])
        for key, seconds in status.dedup_reach_s.items():
            reach.add_metric([key], seconds)
        yield reach
        runner = status.runner
        yield _gauge("cohort_pipeline_healthy", "1 while the pipeline runs without error",
                     1 if runner.running and runner.last_error is None else 0)
        yield _gauge("cohort_pipeline_stalled",
                     "1 while the pipeline fails, stands still past the stall bound, or stopped",
                     1 if runner.stalled else 0)
        yield _gauge("cohort_pipeline_stopped", "1 once the pipeline stopped on a terminal fault (see /health)",
                     1 if runner.terminal_error is not None else 0)
        yield _gauge("cohort_pipeline_oldest_unprocessed_age_seconds",
                     "Age of the oldest acknowledged record not yet processed (0 when none waits)",
                     runner.oldest_unprocessed_age_s)
        yield _gauge("cohort_pipeline_consecutive_failures", "Batch attempts failed since the last success",
                     runner.consecutive_failures)
        yield _counter("cohort_pipeline_isolated_records",
                       "Log records that failed as a whole and were processed in isolation", runner.isolated_records)


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
