"""GET /health: is the node able to accept and process events right now?"""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import Response

from cohort import __version__
from cohort.api.responses import json_response


async def health(request: Request) -> Response:
    node = request.app.state.node
    runner = node.runner
    pipeline_ok = runner.running and runner.last_error is None
    body = {
        "status": "ok" if pipeline_ok else "degraded",
        "version": __version__,
        "footprint": "embedded",
        "pipeline": {
            "running": runner.running,
            "offset": runner.offset,
            "backlog_events": node.backlog_events,
            "last_error": runner.last_error,
        },
    }
    return json_response(body, status=200 if runner.running else 503)


async def index(request: Request) -> Response:
    """What a person opening the server's URL in a browser sees: where to go next."""
    base = str(request.base_url).rstrip("/")
    return json_response({
        "name": "cohort",
        "version": __version__,
        "endpoints": {
            "ingest": f"POST {base}/v1/telemetry",
            "query": f"POST {base}/v1/query",
            "health": f"GET {base}/health",
            "metrics": f"GET {base}/metrics",
        },
        "docs": "docs/API.md in the Cohort repository",
    })
