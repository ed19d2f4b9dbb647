"""The loop a scale-out role (worker, store writer) runs: steps until stopped, backing off after a
failed step and stopping loudly on a terminal fault. One loop, so both roles fail the same way."""

from __future__ import annotations

import logging
import threading
from typing import Protocol

from cohort.core.errors import TerminalFault
from cohort.core.work_item import describe_failure


class Role(Protocol):
    last_error: str | None
    terminal_error: str | None

    def step(self) -> int: ...


def run_role(role: Role, stop: threading.Event, log: logging.Logger, name: str, waiting: str) -> None:
    """Steps until `stop` is set; `waiting` says where unprocessed work waits when the role stops."""
    backoff = 0.05
    while not stop.is_set():
        try:
            role.step()
            role.last_error = None
            backoff = 0.05
        except TerminalFault as exc:
            role.terminal_error = describe_failure(exc)
            log.critical("%s stopped: %s. %s", name, role.terminal_error, waiting, exc_info=True)
            return
        except Exception as exc:
            role.last_error = describe_failure(exc)
            log.error("%s batch failed (%s); retrying in %.2fs", name, role.last_error, backoff)
            stop.wait(backoff)
            backoff = min(backoff * 2, 5.0)
