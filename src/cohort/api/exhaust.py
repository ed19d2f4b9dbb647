"""GET /v1/exhaust/{dataset}?from=&to=&format=parquet|csv[&tenant=]: a dataset's rows over any range, streamed.

The request is checked on the event loop (cheap: cohort.analytics.exports), takes an export slot (at most
MAX_EXPORTS at once, one per caller: 429 + Retry-After beyond; slots of their own, so exports never take
the query executor's threads or slots), and is recorded in the audit log (action `export`, outcome
`started`) before anything is read: a request that cannot be audited gets 503 and no rows. The rows are
then produced on an export thread — the store's `stream_rows` → the format writer → chunks of about
1 MiB — and handed to the response through a bounded channel (EXPORT_QUEUE_CHUNKS chunks): a slow client
slows the producer, it never makes the server buffer. When the client goes away the response's generator
is closed, the producer stops at its next chunk and closes the store's stream (which ends the query),
and the slot is given back. A client that reads nothing for EXPORT_IDLE_S, or an export running past
EXPORT_TIMEOUT_S, is cut off the same way. The outcome (rows, bytes, ok/aborted/error) is audited last.

HTTP/1.1 has no trailer a browser or pandas reads, so completeness is in the file itself: a Parquet
export cut short has no footer (it does not open); a CSV export's last line is `# end rows=N`.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections import Counter
from collections.abc import AsyncIterator, Callable
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from typing import Any

from starlette.requests import Request
from starlette.responses import Response, StreamingResponse

from cohort.analytics.exports import (ChunkSink, ExportRequest, ExportWriter, arrow_schema, export_sql, find_dataset,
                                      parse_export_request)
from cohort.api.access import caller_identity
from cohort.api.query import QueryService, admission_key
from cohort.api.responses import failure, status_for
from cohort.core.errors import CohortError, ErrorCode, first_line
from cohort.security.audit_log import AuditLog, AuditLogUnavailable
from cohort.security.identity import Identity
from cohort.store.base import QueryTimeout, Store
from cohort.store.thread_priority import lower_current_thread

API_ID = "api.exhaust"
log = logging.getLogger("cohort.api.exhaust")

# Candidates for settings (COHORT_EXPORT_*): module constants until settings.py takes them.
MAX_EXPORTS = 4  # exports running at once, overall (defaults; the settings export_* set them)
MAX_EXPORTS_PER_CALLER = 1
EXPORT_TIMEOUT_S = 3600.0  # one export's whole run
EXPORT_IDLE_S = 300.0  # a client that reads nothing for this long is cut off (its slot is given back)
EXPORT_BATCH_ROWS = 16_384  # rows per store batch = per Parquet row group (a telemetry row is ~2 KB: ~40 MB a batch)
EXPORT_QUEUE_CHUNKS = 4  # chunks (~1 MiB each) waiting for the client at most
EXPORT_MAX_MEMORY_BYTES = 1024 * 1024 * 1024  # the process's growth while an export runs
_STATUS = {ErrorCode.EXPORT_UNKNOWN: 404, ErrorCode.TOO_MANY_EXPORTS: 429, ErrorCode.EXPORT_FAILED: 500,
           ErrorCode.QUERY_TIMEOUT: 504, ErrorCode.QUERY_MEMORY: 503, ErrorCode.QUERY_FAILED: 500}
_MEDIA_TYPES = {"parquet": "application/vnd.apache.parquet", "csv": "text/csv; charset=utf-8"}


class ExportAdmission:
    """Export slots: at most `max_total` at once and `max_per_caller` per caller; beyond, ERR_TOO_MANY_EXPORTS."""

    def __init__(self, max_total: int, max_per_caller: int):
        self.max_total = max_total
        self.max_per_caller = max_per_caller
        self._running: Counter[str] = Counter()
        self._lock = threading.Lock()

    @property
    def in_flight(self) -> int:
        with self._lock:
            return sum(self._running.values())

    def admit(self, caller: str) -> Callable[[], None]:
        with self._lock:
            if self._running[caller] >= self.max_per_caller:
                raise CohortError(ErrorCode.TOO_MANY_EXPORTS, f"{self._running[caller]} of your exports are running "
                                  f"(at most {self.max_per_caller} at a time); retry when it has finished")
            if sum(self._running.values()) >= self.max_total:
                raise CohortError(ErrorCode.TOO_MANY_EXPORTS, f"the server is running its maximum of "
                                  f"{self.max_total} exports; retry shortly")
            self._running[caller] += 1
        released = False

        def release() -> None:
            nonlocal released
            with self._lock:
                if not released:
                    released = True
                    self._running[caller] -= 1
                    if not self._running[caller]:
                        del self._running[caller]

        return release


class ExportService:
    """One per app: the export slots and the threads exports are produced on."""

    def __init__(self, max_total: int = MAX_EXPORTS, max_per_caller: int = MAX_EXPORTS_PER_CALLER,
                 niceness: int = 0, timeout_s: float = EXPORT_TIMEOUT_S, idle_s: float = EXPORT_IDLE_S):
        self.admission = ExportAdmission(max_total, max_per_caller)
        self.executor = ThreadPoolExecutor(max_workers=max_total, thread_name_prefix="cohort-export",
                                           initializer=lower_current_thread, initargs=(niceness,))
        self.timeout_s = timeout_s
        self.idle_s = idle_s
        self.batch_rows = EXPORT_BATCH_ROWS


_SERVICE_LOCK = threading.Lock()


def export_service_of(app: Any) -> ExportService:
    """The app's export service (made on first use; an app may set `state.exports` itself)."""
    state = app.state
    with _SERVICE_LOCK:
        service = getattr(state, "exports", None)
        if service is None:
            settings = state.queries.settings
            service = state.exports = ExportService(settings.export_max_concurrent, settings.export_max_per_caller,
                                                    niceness=settings.query_niceness,
                                                    timeout_s=settings.export_timeout_seconds,
                                                    idle_s=settings.export_idle_seconds)
        return service


class _Aborted(Exception):
    """The client went away or stopped reading: the producer stops."""


class _End:
    """The last item of a channel: the file is complete."""


class _Channel:
    """Chunks from the producer thread to the response on the event loop: at most `capacity` waiting."""

    def __init__(self, loop: asyncio.AbstractEventLoop, capacity: int, idle_s: float):
        self._loop = loop
        self._queue: asyncio.Queue[Any] = asyncio.Queue()
        self._space = threading.Semaphore(capacity)
        self._idle_s = idle_s
        self.cancelled = threading.Event()
        self.delivered = threading.Event()  # the consumer took the end: every byte went to the client

    def put(self, item: Any) -> None:
        """On the producer: wait for room (the client reading), or raise _Aborted."""
        waited_since = time.monotonic()
        while not self._space.acquire(timeout=0.2):
            if self.cancelled.is_set() or time.monotonic() - waited_since > self._idle_s:
                raise _Aborted()
        if self.cancelled.is_set():
            raise _Aborted()
        try:
            self._loop.call_soon_threadsafe(self._queue.put_nowait, item)
        except RuntimeError:  # the loop is closed: nobody reads any more
            raise _Aborted() from None

    def put_last(self, item: Any) -> None:
        """On the producer: an error for the consumer, without waiting for room."""
        try:
            self._loop.call_soon_threadsafe(self._queue.put_nowait, item)
        except RuntimeError:
            pass

    async def get(self) -> Any:
        item = await self._queue.get()
        self._space.release()
        return item


async def export_dataset(request: Request) -> Response:
    service: QueryService = request.app.state.queries
    settings = service.settings
    try:
        identity = caller_identity(request)
    except CohortError as exc:
        return _failure(exc.code, exc.message, settings.retry_after_seconds)
    name = request.path_params.get("dataset", "")
    sent = list(request.query_params.multi_items())[:8]
    detail: dict[str, Any] = {"dataset": name[:64], "params": {k[:32]: v[:80] for k, v in sent}}
    exports = export_service_of(request.app)
    try:
        dataset = find_dataset(name)
        export = parse_export_request(dataset, request.query_params.multi_items(), identity, datetime.now(UTC))
        detail = export.as_params()  # its scope: the caller's, or the part of it `scope=` named
        sql = export_sql(export, identity, request.app.state.node.store.capabilities.sql_dialect)
        release = exports.admission.admit(admission_key(request, identity))
    except CohortError as exc:
        refused = _failure(exc.code, exc.message, settings.retry_after_seconds)
        if exc.code == ErrorCode.TOO_MANY_EXPORTS:  # not started, so nothing read: not audited
            return refused
        tenant = identity.tenant or detail.get("tenant")
        return await asyncio.to_thread(_audit_refusal, service.audit, identity, refused, detail, tenant)
    try:
        await asyncio.to_thread(_audit, service.audit, identity, "started", detail, export.tenant)
    except AuditLogUnavailable as exc:
        release()
        return _failure(ErrorCode.AUDIT_UNAVAILABLE, f"the export could not be audited, so it was not started: {exc}",
                        settings.retry_after_seconds)
    except BaseException:
        release()
        raise
    channel = _Channel(asyncio.get_running_loop(), EXPORT_QUEUE_CHUNKS, exports.idle_s)
    store: Store = request.app.state.node.store
    try:
        exports.executor.submit(_produce, exports, store, sql, export, identity, service.audit, channel, release,
                                detail)
    except BaseException:
        release()
        raise
    try:
        first = await channel.get()  # the first chunk, the end, or an error before any byte was sent
    except BaseException:  # the request was cancelled (the client left) before the first chunk
        channel.cancelled.set()
        raise
    if isinstance(first, CohortError):
        channel.delivered.set()
        return _failure(first.code, first.message, settings.retry_after_seconds)
    headers = {"Content-Disposition": f'attachment; filename="{export.filename()}"',
               "Cache-Control": "no-store", "X-Content-Type-Options": "nosniff",
               "X-Cohort-Export": f"dataset={dataset.name}; from={detail['from']}; to={detail['to']}; "
                                  f"tenant={export.tenant or 'all'}; complete-if="
                                  + ("parquet-footer" if export.format == "parquet" else "csv-end-line")}
    return StreamingResponse(_chunks(channel, first), media_type=_MEDIA_TYPES[export.format], headers=headers)


async def _chunks(channel: _Channel, first: Any) -> AsyncIterator[bytes]:
    """The response body; closing it (the client went away) stops the producer."""
    item = first
    try:
        while True:
            if isinstance(item, _End):
                channel.delivered.set()
                return
            if isinstance(item, BaseException):  # after bytes went out: cut the connection, the file stays incomplete
                raise item
            yield item
            item = await channel.get()
    finally:
        channel.cancelled.set()


def _produce(exports: ExportService, store: Store, sql: str, export: ExportRequest, identity: Identity,
             audit: AuditLog | None, channel: _Channel, release: Callable[[], None], detail: dict[str, Any]) -> None:
    """On an export thread: the rows, written as the format, into the channel; the slot given back once the store's
    stream is closed (the query has ended) and the file's last bytes are written; then the outcome audited."""
    started = time.monotonic()
    outcome, error = "error", None
    sink = ChunkSink(channel.put)
    writer: ExportWriter | None = None
    try:
        writer = ExportWriter(export.format, arrow_schema(export.dataset), sink)
        batches = store.stream_rows(sql, None, batch_rows=exports.batch_rows, timeout_s=exports.timeout_s,
                                    max_memory_bytes=EXPORT_MAX_MEMORY_BYTES)
        try:
            for batch in batches:
                writer.write(batch)
        finally:
            close = getattr(batches, "close", None)
            if close is not None:
                close()  # ends the store's query now, not when the generator is collected
        writer.finish()  # the last chunks wait in the channel (or are handed on as the client reads)
        release()  # the store's work is over: a caller's next export is admitted as soon as this one's bytes are out
        channel.put(_End())
        deadline = time.monotonic() + exports.idle_s
        while not channel.delivered.is_set() and not channel.cancelled.is_set() and time.monotonic() < deadline:
            channel.delivered.wait(0.2)
        outcome = "ok" if channel.delivered.is_set() else "aborted"
    except _Aborted:
        outcome = "aborted"
    except QueryTimeout as exc:
        error = CohortError(ErrorCode.QUERY_TIMEOUT, str(exc))
    except CohortError as exc:
        error = exc
    except Exception as exc:  # noqa: BLE001 - a fault of ours or the store's: coded, audited, logged
        log.exception("export of %s failed", export.dataset.name)
        error = CohortError(ErrorCode.EXPORT_FAILED, f"the export failed: {first_line(exc)}")
    finally:
        release()
    if error is not None:
        channel.put_last(error)
    result = {**detail, "rows": writer.rows if writer else 0, "bytes": sink.bytes_written,
              "ms": round((time.monotonic() - started) * 1000)}
    if error is not None:
        result["error"] = str(error.code)
    try:
        _audit(audit, identity, outcome, result, export.tenant)
    except AuditLogUnavailable as exc:  # the start was recorded; the outcome is logged instead
        log.error("export outcome not audited (%s): %s", exc, result)


def _audit(audit: AuditLog | None, identity: Identity, outcome: str, detail: dict[str, Any],
           tenant: str | None) -> None:
    if audit is not None:
        audit.append(identity, "export", "/v1/exhaust", outcome, detail, tenant=tenant)


def _audit_refusal(audit: AuditLog | None, identity: Identity, refused: Response, detail: dict[str, Any],
                   tenant: str | None) -> Response:
    try:
        _audit(audit, identity, "refused", {**detail, "status": refused.status_code}, tenant)
    except AuditLogUnavailable:
        pass  # a refusal reads nothing: it goes out whether or not it could be recorded
    return refused


def _failure(code: ErrorCode, message: str, retry_after: int) -> Response:
    headers = {"Retry-After": str(retry_after)} if code in (ErrorCode.TOO_MANY_EXPORTS,
                                                            ErrorCode.AUDIT_UNAVAILABLE) else None
    return failure(API_ID, code, message, _STATUS.get(code) or status_for(code), headers=headers, ver="1.0")
