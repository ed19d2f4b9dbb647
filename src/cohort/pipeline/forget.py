"""Forgetting a learner (the right to be forgotten): their rows leave the store, their events' mids the
dedup state, and their entry the identity vault, on either footprint.

The order is what makes it safe to retry after any failure:
1. wait until the pipeline has processed every event acknowledged before the request, so events of the
   learner still in flight are stored (under the pseudonym) and deleted with the rest, not stored after;
2. look the pseudonym up without creating one (not held: nothing to delete, the answer says so);
3. delete the mids of the learner's rows from the dedup state, so the same event sent again is stored
   again (first: a forget that stops after deleting the rows could no longer find their mids);
4. delete the store's rows (telemetry, and quarantined events whose payload holds the pseudonym);
5. forget the vault entry, last: until then a retry still finds the pseudonym, and with it the rows.
Once the entry is gone the pseudonym is linked to nobody (pseudonyms are random), wherever a copy of it
survives: an export, a backup, the ingest log until its retention ends. Only the learner is forgotten,
never a device: devices are shared.

Counters are not touched (see store.base.ForgetCounts): what was deleted is the report's, recorded in the
audit log by the caller.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any, Callable, Protocol

from cohort.core.errors import CohortError, ErrorCode, first_line
from cohort.core.pseudonyms import LEARNER
from cohort.state.dedup_state import DedupState
from cohort.state.identity_vault import IdentityVault
from cohort.store.base import Store

DEFAULT_WAIT_S = 30.0  # how long a forget waits for the pipeline to catch up with the request
_POLL_S = 0.05


class ForgetTarget(Protocol):
    """What a node gives a forget: its store, its event-mid dedup state, and a way to wait for its pipeline."""

    @property
    def store(self) -> Store: ...

    @property
    def mid_dedup(self) -> DedupState: ...

    def acked_mark(self) -> int:
        """A mark of everything acknowledged so far (a log offset, or a time)."""
        ...

    def processed_through(self, mark: int) -> bool:
        """Whether every event acknowledged at `mark` is processed: stored, quarantined or counted, and its
        mid told to the dedup state."""
        ...


@dataclass(frozen=True, slots=True)
class ForgetReport:
    tenant: str
    held: bool  # the vault held the learner (False: nothing of them was stored, or they were forgotten)
    pseudonym: str | None
    telemetry_rows: int = 0
    failed_rows: int = 0
    dedup_keys: int = 0
    vault_entry: bool = False  # the vault entry was deleted by this call

    def detail(self) -> dict[str, Any]:
        """For the audit log and the API's answer: counts and the pseudonym, never the clear id."""
        return {"held": self.held, "pseudonym": self.pseudonym, "telemetry_rows": self.telemetry_rows,
                "failed_rows": self.failed_rows, "dedup_keys": self.dedup_keys, "vault_entry": self.vault_entry}

    def summary(self) -> str:
        if not self.held:
            return f"learner not held in tenant {self.tenant}: nothing to forget"
        return (f"forgot learner {self.pseudonym} of tenant {self.tenant}: {self.telemetry_rows} telemetry rows, "
                f"{self.failed_rows} quarantined rows, {self.dedup_keys} dedup keys, vault entry "
                f"{'deleted' if self.vault_entry else 'already gone'}")


def forget_learner(target: ForgetTarget, vault: IdentityVault, tenant: str, clear_id: str, *,
                   wait_s: float = DEFAULT_WAIT_S, clock: Callable[[], float] = time.monotonic,
                   sleep: Callable[[float], None] = time.sleep) -> ForgetReport:
    """Forget one learner of `tenant` (see the module docstring for the order). Raises CohortError:
    ERR_VAULT_INPUT for ids the vault refuses, ERR_FORGET_TIMEOUT when the pipeline does not catch up
    within `wait_s`, ERR_FORGET_UNAVAILABLE when a step fails (the steps before it stand; retry)."""
    vault.pseudonym_of(tenant, LEARNER, clear_id)  # refuses bad input (ERR_VAULT_INPUT) before any wait
    _wait_for_pipeline(target, wait_s, clock, sleep)
    pseudonym = _step("looking the learner up in the identity vault",
                      lambda: vault.pseudonym_of(tenant, LEARNER, clear_id))
    if pseudonym is None:
        return ForgetReport(tenant=tenant, held=False, pseudonym=None)
    mids = _step("reading the learner's mids", lambda: target.store.learner_mids(tenant, pseudonym))
    keys = _step("deleting the learner's events from the dedup state", lambda: target.mid_dedup.forget(mids))
    rows = _step("deleting the learner's rows from the store", lambda: target.store.forget_rows(tenant, pseudonym))
    known = set(mids)
    late = [mid for mid in rows.mids if mid not in known]  # stored meanwhile (acknowledged after the request)
    if late:
        keys += _step("deleting the learner's events from the dedup state", lambda: target.mid_dedup.forget(late))
    entry = _step("deleting the learner's identity vault entry", lambda: vault.forget(tenant, LEARNER, clear_id))
    return ForgetReport(tenant=tenant, held=True, pseudonym=pseudonym, telemetry_rows=rows.telemetry,
                        failed_rows=rows.failed, dedup_keys=keys, vault_entry=entry)


def _wait_for_pipeline(target: ForgetTarget, wait_s: float, clock: Callable[[], float],
                       sleep: Callable[[float], None]) -> None:
    mark = _step("reading what was acknowledged", target.acked_mark)
    deadline = clock() + wait_s
    while not _step("reading the pipeline's progress", lambda: target.processed_through(mark)):
        if clock() >= deadline:
            raise CohortError(ErrorCode.FORGET_TIMEOUT, f"events acknowledged before this request are not all "
                              f"processed after {wait_s:g} s (is the pipeline stalled? see /health); nothing was "
                              "deleted: retry once it has caught up")
        sleep(_POLL_S)


def _step(doing: str, work: Callable[[], Any]) -> Any:
    try:
        return work()
    except CohortError as exc:
        if exc.code in (ErrorCode.VAULT_INPUT, ErrorCode.FORGET_TIMEOUT):
            raise
        raise CohortError(ErrorCode.FORGET_UNAVAILABLE, f"{doing} failed ({exc.code}: {exc.message}); the steps "
                          "before it stand, retry the forget") from exc
    except Exception as exc:
        raise CohortError(ErrorCode.FORGET_UNAVAILABLE, f"{doing} failed ({type(exc).__name__}: "
                          f"{first_line(exc)}); the steps before it stand, retry the forget") from exc
