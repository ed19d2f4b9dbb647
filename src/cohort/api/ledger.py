"""GET /v1/ledger: the reconciliation ledger of the node — received = stored + quarantined + duplicates +
in flight — with the pipeline's lag, as one JSON answer for the dashboard's administrator view.

Why beside /metrics, which carries the same counters: /metrics is Prometheus text for the operator's
network (a deployment may not expose it to browsers), sums need parsing, and the page would need /health
as well for the lag. This answer is one snapshot (store first, then the log after the store's offset,
cohort.pipeline.node_status), so its figures reconcile within it, and `at_ms` lets a client that reads it
twice compute events per second.

The counters are the node's, over every tenant: counts only, no identifier and no tenant's rows — exactly
what /metrics publishes without a key — so admins and tenant admins (READ_AUDIT: those who answer for the
platform or a tenant) may read them, and reading them is not audited (a view polls it).
"""

from __future__ import annotations

import time

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import Response

from cohort.api.access import caller_identity
from cohort.api.responses import failure, status_for, success
from cohort.core.errors import CohortError, ErrorCode
from cohort.pipeline.node_status import NodeStatus

API_ID = "api.ledger"


async def read_ledger(request: Request) -> Response:
    try:
        caller_identity(request)
        if request.query_params:
            raise CohortError(ErrorCode.LEDGER_PARAM, "GET /v1/ledger takes no parameter")
    except CohortError as exc:
        return failure(API_ID, exc.code, exc.message, status_for(exc.code), ver="1.0")
    status: NodeStatus = await run_in_threadpool(request.app.state.node.status)
    at_ms = int(time.time() * 1000)
    if status.ledger is None:
        return failure(API_ID, ErrorCode.LEDGER_UNAVAILABLE, f"the store's counters cannot be read right now: "
                       f"{status.store_error}", 503, ver="1.0", headers={"Retry-After": "1"})
    ledger = status.ledger
    runner = status.runner
    lagging = runner.oldest_unprocessed_age_s >= request.app.state.degraded_after_s  # as /health
    return success(API_ID, ver="1.0", result={
        "scope": "node",
        "at_ms": at_ms,
        "received": ledger.received,
        "stored": ledger.stored,
        "quarantined": ledger.failed,
        "duplicates": ledger.duplicate,
        "in_flight": ledger.in_flight,
        "unaccounted": ledger.unaccounted,
        "holds": ledger.unaccounted == 0,
        "quarantined_by_stage": dict(sorted(ledger.failed_by_stage.items())),
        "received_requests": ledger.received_requests,
        "duplicate_requests": ledger.duplicate_requests,
        "pipeline": {
            "footprint": status.footprint,
            "running": runner.running,
            "stalled": runner.stalled,
            "lag_seconds": round(runner.oldest_unprocessed_age_s, 3),
            "degraded": runner.last_error is not None or lagging,
            "backlog_events": status.backlog_events,
            "log_offset": status.log_offset,
            "pipeline_offset": status.pipeline_offset,
            "last_error": runner.last_error,
            "stopped_because": runner.terminal_error,
        },
    })
