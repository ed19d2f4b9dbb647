"""How a pipeline process gets the transform stage's pseudonymiser: the footprint's identity vault,
opened from settings with the deployment's secrets.

Why a source that pickles: embedded worker processes (spawned) open a vault connection of their own
from it; the secrets travel with it, loaded (or made) once by the server before any worker starts, so
workers never race to create them. Why lazily re-opened: a vault that cannot be opened right now (a
disk fault) must fail batches as an infrastructure fault, which the pipeline retries, rather than kill
a worker or send the batch to isolation, where its events would be blamed.
"""

from __future__ import annotations

from dataclasses import dataclass

from cohort.core.errors import TerminalFault
from cohort.core.stages.transform import Pseudonymiser, PseudonymsUnavailable, pseudonymised_fields
from cohort.core.work_item import describe_failure
from cohort.security.sealed_payload import PayloadSealer
from cohort.security.secrets import Secrets
from cohort.settings import Settings
from cohort.state.identity_vault import MAX_ID_CHARS, open_identity_vault


@dataclass(frozen=True)
class PseudonymiserSource:
    """Everything a process needs to open its own pseudonymiser (pickles: settings and secrets)."""

    settings: Settings
    secrets: Secrets

    def open(self) -> Pseudonymiser:
        """Raises CohortError CONFIG_INVALID for fields or a vault that cannot work as configured."""
        fields = pseudonymised_fields(self.settings.pseudonymise_fields)
        vault = open_identity_vault(self.settings, self.secrets)
        # the vault's own cache, so that a forget through this vault drops its entries at once
        return Pseudonymiser(vault, fields, MAX_ID_CHARS, cache=getattr(vault, "cache", None),
                             sealer=PayloadSealer(self.secrets))


class LazyPseudonymiser:
    """A process's pseudonymiser, opened on first need (and again after an open that failed)."""

    def __init__(self, source: PseudonymiserSource):
        self.source = source
        self._opened: Pseudonymiser | None = None

    def open_now(self) -> Pseudonymiser:
        """Open it, raising what the vault raises: at start, so a misconfiguration stops the process."""
        if self._opened is None:
            self._opened = self.source.open()
        return self._opened

    def get(self) -> Pseudonymiser:
        """The pseudonymiser; a failure to open it is a fault the batch waits on (`PseudonymsUnavailable`)."""
        try:
            return self.open_now()
        except (TerminalFault, PseudonymsUnavailable):
            raise
        except Exception as exc:
            raise PseudonymsUnavailable(f"the identity vault cannot be opened: {describe_failure(exc)}") from None

    def close(self) -> None:
        opened, self._opened = self._opened, None
        close = getattr(opened.resolver, "close", None) if opened is not None else None
        if close is not None:
            close()
