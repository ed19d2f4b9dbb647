"""POST /v1/telemetry: the Sunbird telemetry batch API.

Parse once, check the envelope and the ids kept with it, append the body to the log
as the pipeline will read it, and answer 200 only once the append is durable.
Everything past the envelope is the pipeline's job.
"""

from __future__ import annotations

import time

from starlette.requests import Request
from starlette.responses import Response

from cohort.api.request_body import RefusedByServer, read_body
from cohort.api.responses import failure, status_for, success
from cohort.core.errors import CohortError, ErrorCode
from cohort.core.log_record import LogRecord
from cohort.core.stages.tenant import TENANT_HEADER
from cohort.core.telemetry_batch import parse_telemetry_batch
from cohort.ingest.log import LogUnavailable

API_ID = "api.telemetry"
SOURCE = "/v1/telemetry"
# Headers kept with what the request stores (lower-case, as Starlette gives them; the name as clients write it).
KEPT_HEADERS = {"x-channel-id": "X-Channel-Id", "x-app-id": "X-App-Id", "x-device-id": "X-Device-Id"}


async def ingest_telemetry(request: Request) -> Response:
    node = request.app.state.node
    metrics = request.app.state.metrics
    settings = node.settings
    started = time.perf_counter()
    try:
        headers = kept_headers(request, settings.max_id_header_chars)
        body = await read_body(request, settings.max_body_bytes)
        batch = parse_telemetry_batch(body, settings.max_events_per_batch, max_depth=settings.max_json_depth,
                                      max_msgid_chars=settings.max_msgid_chars)
    except CohortError as exc:
        if not isinstance(exc, RefusedByServer):  # the HTTP server answered and counted that one
            metrics.rejected(exc.code)
        return failure(API_ID, exc.code, exc.message, status_for(exc.code))

    retry = {"Retry-After": str(settings.retry_after_seconds)}
    backlog = node.backlog_events
    if backlog + batch.event_count > settings.max_backlog_events:
        metrics.rejected(ErrorCode.BACKPRESSURE)
        return failure(API_ID, ErrorCode.BACKPRESSURE,
                       f"{backlog} events are waiting to be processed (bound {settings.max_backlog_events}); retry later",
                       503, batch.msgid, headers=retry)

    if batch.msgid:
        headers["msgid"] = batch.msgid
    tenant = request.state.identity.tenant  # None: an admin (or authentication off) may send any channel's
    if tenant is not None:
        channel = headers.get("x-channel-id")
        if channel is not None and channel != tenant:
            metrics.rejected(ErrorCode.AUTH_FORBIDDEN)
            return failure(API_ID, ErrorCode.AUTH_FORBIDDEN, f"X-Channel-Id {channel!r} is not this key's tenant "
                           f"{tenant!r}: a key writes its own tenant's events only", 403, batch.msgid)
        headers[TENANT_HEADER] = tenant  # the pipeline quarantines any event of another channel
    record = LogRecord(payload=batch.payload, event_count=batch.event_count, source=SOURCE,
                       received_at_ms=int(time.time() * 1000), headers=headers)
    try:
        await node.append(record)
    except LogUnavailable as exc:
        metrics.rejected(ErrorCode.LOG_UNAVAILABLE)
        return failure(API_ID, ErrorCode.LOG_UNAVAILABLE,
                       f"events could not be made durable, nothing was accepted: {exc}", 503, batch.msgid, headers=retry)
    metrics.acked(batch.event_count, time.perf_counter() - started)
    return success(API_ID, batch.msgid)


def kept_headers(request: Request, max_chars: int) -> dict[str, str]:
    """The id headers to keep, each within its length bound (they are stored with the events)."""
    kept = {}
    for name, display in KEPT_HEADERS.items():
        value = request.headers.get(name)
        if value is None:
            continue
        if len(value) > max_chars:
            raise CohortError(ErrorCode.FIELD_TOO_LONG, f"{display} header is {len(value)} characters long; "
                                                        f"at most {max_chars} are accepted")
        kept[name] = value
    return kept
