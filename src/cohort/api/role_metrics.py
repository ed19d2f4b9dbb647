"""/metrics of a `cohort worker` or `cohort store-writer` process (scale-out): what this process did.

The event ledger (received = stored + failed + duplicate + in flight) is not here: it spans every
process, and `cohort serve`'s /metrics reads it from where it lives (Redis and the store). A role
shows its own work, its errors and whether it still runs, so a stuck or crashed one is seen.
"""

from __future__ import annotations

import threading
from typing import Any

from prometheus_client import CollectorRegistry, start_http_server
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector


class RoleCollector(Collector):
    def __init__(self, role: Any, name: str, alive: Any):
        self._role = role
        self._name = name  # "worker" or "store_writer"
        self._alive = alive  # () -> bool: the role's loop still runs

    def collect(self):
        role, labels = self._role, [self._name]
        running = bool(self._alive())
        yield _gauge("cohort_role_running", "1 while this role's loop runs", labels, 1 if running else 0)
        yield _gauge("cohort_role_healthy", "1 while this role runs without error", labels,
                     1 if running and role.last_error is None else 0)
        yield _gauge("cohort_role_stopped", "1 once this role stopped on a terminal fault (see its log)", labels,
                     1 if role.terminal_error is not None else 0)
        yield _counter("cohort_role_batches", "Batches this process finished", labels, role.batches)
        yield _counter("cohort_role_events", "Events of the batches this process finished", labels,
                       getattr(role, "events", 0))
        if hasattr(role, "isolated_records"):
            yield _counter("cohort_pipeline_isolated_records",
                           "Raw records that failed as part of a batch and were processed in isolation", labels,
                           role.isolated_records)


def _gauge(name: str, doc: str, labels: list[str], value: float) -> GaugeMetricFamily:
    family = GaugeMetricFamily(name, doc, labels=["role"])
    family.add_metric(labels, value)
    return family


def _counter(name: str, doc: str, labels: list[str], value: float) -> CounterMetricFamily:
    family = CounterMetricFamily(name, doc, labels=["role"])
    family.add_metric(labels, value)
    return family


def serve_role_metrics(role: Any, name: str, alive: Any, host: str, port: int) -> tuple[Any, threading.Thread]:
    """Start /metrics for a role on host:port (its own thread); returns the server and thread to stop it."""
    registry = CollectorRegistry()
    registry.register(RoleCollector(role, name, alive))
    return start_http_server(port, addr=host, registry=registry)
