"""The contract between the pipeline's transform stage and the identity vault that gives pseudonyms.

A learner's or device's identifier never reaches the store: the transform stage asks the vault for
the pseudonym of each clear identifier of a batch, per tenant and kind, and writes the pseudonym in
its place (columns and stored event alike). The vault gives each new identifier a random pseudonym and
keeps the clear identifier only encrypted, under the tenant's key; deleting the vault entry (the right
to be forgotten) leaves every stored or exported pseudonym linked to nobody. The core stays pure: it
sees only this protocol.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping
from typing import Protocol

LEARNER = "learner"  # actor.id (and other configured learner fields)
DEVICE = "device"  # context.did, edata.dspec.id, the X-Device-Id header
KINDS = (LEARNER, DEVICE)


class PseudonymResolver(Protocol):
    def pseudonyms(self, tenant: str, kind: str, clear_ids: Collection[str]) -> Mapping[str, str]:
        """The pseudonym of every clear id (created, with its encrypted vault entry, when new); the same
        pseudonym for the same (tenant, kind, id) until that id is forgotten. Raises on an infrastructure
        fault (the batch is retried), never returns a partial mapping."""
        ...
