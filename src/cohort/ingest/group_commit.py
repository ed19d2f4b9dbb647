"""Group commit: many concurrent requests share one durable append (one fsync).

Requests queue their record and wait; a single writer thread takes everything
queued, appends it in one transaction and wakes each request with its offset or
with the failure. While one fsync runs the next group forms, so the group size
follows the load by itself.
"""

from __future__ import annotations

import asyncio
import threading
from collections import deque

from cohort.core.log_record import LogRecord
from cohort.ingest.log import LogUnavailable, LogWriter


class GroupCommitter:
    def __init__(self, log: LogWriter, max_records: int = 1000):
        self._log = log
        self._max_records = max_records
        self._pending: deque[tuple[LogRecord, asyncio.Future, asyncio.AbstractEventLoop]] = deque()
        self._wakeup = threading.Condition()
        self._stopping = False
        self.pending_events = 0  # queued but not yet durable (counted for backpressure)
        self._thread = threading.Thread(target=self._run, name="cohort-group-commit", daemon=True)
        self._thread.start()

    async def append(self, record: LogRecord) -> int:
        """Return the record's offset once it is durable; raise LogUnavailable otherwise."""
        loop = asyncio.get_running_loop()
        future = loop.create_future()
        with self._wakeup:
            if self._stopping:
                raise LogUnavailable("ingest log is shutting down")
            self._pending.append((record, future, loop))
            self.pending_events += record.event_count
            self._wakeup.notify()
        return await future

    def _run(self) -> None:
        while True:
            with self._wakeup:
                while not self._pending and not self._stopping:
                    self._wakeup.wait()
                if not self._pending:
                    return
                group = [self._pending.popleft() for _ in range(min(self._max_records, len(self._pending)))]
            records = [record for record, _, _ in group]
            outcome: list[tuple[asyncio.Future, asyncio.AbstractEventLoop, int | None, Exception | None]]
            try:
                offsets = self._log.append_many(records)
                outcome = [(future, loop, offset, None) for (_, future, loop), offset in zip(group, offsets)]
            except Exception as exc:  # every waiter must hear about the failure
                failure = exc if isinstance(exc, LogUnavailable) else LogUnavailable(str(exc))
                outcome = [(future, loop, None, failure) for _, future, loop in group]
            with self._wakeup:
                self.pending_events -= sum(r.event_count for r in records)
            for future, loop, offset, error in outcome:
                try:
                    loop.call_soon_threadsafe(_settle, future, offset, error)
                except RuntimeError:  # the server's loop is gone: nobody is waiting for an ack
                    pass

    def close(self) -> None:
        """Finish what is queued, then stop."""
        with self._wakeup:
            self._stopping = True
            self._wakeup.notify()
        self._thread.join()


def _settle(future: asyncio.Future, offset: int | None, error: Exception | None) -> None:
    if future.done():  # the client went away; the record is durable (or not) all the same
        return
    if error is not None:
        future.set_exception(error)
    else:
        future.set_result(offset)
