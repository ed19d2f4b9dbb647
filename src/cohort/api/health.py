"""GET /health: is the node able to accept and process events right now?"""

from __future__ import annotations

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import Response

from cohort import __version__
from cohort.api.responses import json_response


async def health(request: Request) -> Response:
    """ok (200); degraded (200: failing or behind, for less than the stall bound); stalled (503).

    A stalled pipeline still acknowledges until the backlog bound, so without a non-200 here
    nothing would alert while acknowledged events wait."""
    snapshot = await run_in_threadpool(request.app.state.node.status)
    status = snapshot.runner
    if status.stalled:
        state = "stalled"
    elif status.last_error is not None or status.oldest_unprocessed_age_s >= request.app.state.degraded_after_s:
        state = "degraded"
    else:
        state = "ok"
    body = {
        "status": state,
        "version": __version__,
        "footprint": snapshot.footprint,
        "pipeline": {
            "running": status.running,
            "offset": status.offset,
            "backlog_events": snapshot.backlog_events,
            "oldest_unprocessed_age_seconds": round(status.oldest_unprocessed_age_s, 3),
            "consecutive_failures": status.consecutive_failures,
            "failing_for_seconds": round(status.failing_for_s, 3),
            "isolated_records": status.isolated_records,
            "last_error": status.last_error,
            "stopped_because": status.terminal_error,
        },
    }
    return json_response(body, status=503 if status.stalled else 200)


async def index(request: Request) -> Response:
    """GET /v1: where to go next (the dashboard is at /, this index of endpoints at /v1)."""
    base = str(request.base_url).rstrip("/")
    return json_response({
        "name": "cohort",
        "version": __version__,
        "dashboard": f"{base}/",
        "endpoints": {
            "whoami": f"GET {base}/v1/whoami",
            "metric_catalog": f"GET {base}/v1/metrics",
            "ingest": f"POST {base}/v1/telemetry",
            "query": f"POST {base}/v1/query",
            "tables": f"GET {base}/v1/tables",
            "learning_metrics": f"GET {base}/v1/metrics/{{name}}",
            "event_lineage": f"GET {base}/v1/lineage/event/{{mid}}",
            "metric_lineage": f"GET {base}/v1/lineage/metric/{{name}}",
            "exports": f"GET {base}/v1/exhaust/{{dataset}}",
            "reidentify_learners": f"POST {base}/v1/learners/reidentify",
            "forget_learner": f"POST {base}/v1/forget",
            "audit": f"GET {base}/v1/audit",
            "keys": f"GET {base}/v1/keys",
            "ledger": f"GET {base}/v1/ledger",
            "health": f"GET {base}/health",
            "metrics": f"GET {base}/metrics",
        },
        "docs": "docs/API.md in the Cohort repository",
    })
