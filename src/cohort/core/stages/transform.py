"""Transform: learner and device identifiers are replaced by pseudonyms before anything is stored.

Why here, after validate and before route: route writes the columns (`actor_id`, `did`) and the stored
full event from the same event dict, so replacing each value in that dict once covers both; validation
has already vouched for the events' shapes. The request's `X-Device-Id` header (kept in
`ingest_batches.headers`, nowhere else) is pseudonymised with the events' device ids.

Why one resolver call per (tenant, kind) and batch: the vault behind the resolver is a database (SQLite
or Redis); a batch holds thousands of events but a few hundred distinct ids, so each id is asked for
once. The tenant is the event's `context.channel`, so one tenant's pseudonyms never join another's.
Why a cache (`Pseudonymiser.cache`, core/pseudonym_cache.py): most of those ids were in the last batches
too; the walk replaces a remembered one where it finds it, and only the others go to the resolver.

Quarantined events too (`protect_quarantined`): the failed-events table is in the analytical store, so
a quarantined payload that parses has its fields pseudonymised the same way, under the event's tenant
(its channel, else the tenant of the key that sent it), and is kept as compact JSON; one that does not
parse, or whose ids cannot be given pseudonyms (no tenant, an id too long), is sealed whole (encrypted,
`Pseudonymiser.sealer`: security/sealed_payload.py), so it can still be replayed and no clear id is kept.

A resolver that fails is an infrastructure fault (`PseudonymsUnavailable`, retried with the batch):
nothing is stored rather than a clear id. Pure: the resolver and the sealer are injected.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from operator import itemgetter
from typing import Any, Protocol

from cohort.core.errors import CohortError, ErrorCode, TerminalFault, TransientFault
from cohort.core.log_record import LogRecord
from cohort.core.pseudonym_cache import Known, PseudonymCache
from cohort.core.pseudonymised_fields import (DROP, FIELD_KINDS, Found, PseudonymisedField, ResolvingWalk, Walk,
                                              compile_resolving_walk, compile_walk, pseudonymised_fields)
from cohort.core.pseudonyms import DEVICE, KINDS, PseudonymResolver
from cohort.core.original_payload import events_in, original_event_text
from cohort.core.stages.tenant import TENANT_HEADER
from cohort.core.work_item import FailedEvent, WorkItem, describe_failure, failed_from_item
from cohort.security.identity import check_tenant_id

STAGE = "transform"
DEVICE_HEADER = "x-device-id"  # log record headers are kept lower-case (api/telemetry.py KEPT_HEADERS)
CHANNEL_HEADER = "x-channel-id"
_VALUE = itemgetter(2)  # of a (container, key, value) found
SEALED_PREFIX = "cohort-sealed:"  # a sealed payload's text starts so (security/sealed_payload.py)
WITHHELD_PREFIX = "cohort-withheld:v1:"  # without a sealer (tests, tools): the payload's length alone is kept
_PSEUDONYM = re.compile(r"^[ud]:[0-9a-f]{32}\Z")  # the vault's pseudonyms (state/vault_entry.py)
__all__ = ["IdentifierRefused", "PayloadSealer", "Pseudonymiser", "PseudonymsUnavailable", "STAGE", "Transformed",
           "protect_quarantined", "pseudonymise", "pseudonymise_headers", "pseudonymised_fields"]


class PayloadSealer(Protocol):
    def seal(self, tenant: str | None, data: bytes) -> str:
        """`data` encrypted under the tenant's quarantine key (the platform's for None), as one text."""
        ...


class PseudonymsUnavailable(TransientFault):
    """The resolver could not give every pseudonym of a batch: the batch waits and is retried, because
    storing it with clear identifiers is never an option."""


class IdentifierRefused(Exception):
    """The resolver refused an identifier of the batch as input (ERR_VAULT_INPUT), which the stage's own
    checks should have caught: not a fault, so the pipeline isolates the event that causes it."""


@dataclass(frozen=True, slots=True)
class Pseudonymiser:
    """What the stage needs: where the pseudonyms come from, and which fields to replace."""

    resolver: PseudonymResolver
    fields: tuple[PseudonymisedField, ...]
    max_id_chars: int | None = None  # the longest id the resolver takes; an event with a longer one is quarantined
    cache: PseudonymCache | None = None  # the pseudonyms this process was given lately (the vault's own)
    sealer: PayloadSealer | None = None  # seals quarantined payloads that cannot be pseudonymised field by field
    walk: Walk = field(init=False, repr=False, compare=False)
    resolving_walk: ResolvingWalk = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "walk", compile_walk(self.fields))
        object.__setattr__(self, "resolving_walk", compile_resolving_walk(self.fields, _bound(self.max_id_chars)))

    def known(self, tenant: str) -> Known:
        """The pseudonyms of the tenant's ids remembered (nothing without a cache): read, never written."""
        return self.cache.known(tenant) if self.cache is not None else _NOTHING_KNOWN


_NOTHING_KNOWN: Known = {kind: {} for kind in KINDS}  # never written: `remember` writes the cache's own dicts


def _bound(max_chars: int | None) -> int:
    return max_chars if max_chars is not None else 1 << 62


@dataclass(slots=True)
class Transformed:
    items: list[WorkItem]  # the events to route, pseudonymised in place
    records: list[LogRecord]  # the batch's records, their device header pseudonymised (or dropped)
    failed: list[FailedEvent]  # events that name no tenant (or an id the resolver cannot take): quarantined
    pseudonymised: dict[int, int]  # values replaced or dropped, per log offset (events and header)


def pseudonymise(items: list[WorkItem], records: list[LogRecord], pseudonymiser: Pseudonymiser) -> Transformed:
    """Replace every configured identifier of these valid events, and each record's device header, by its
    pseudonym under the event's (record's) tenant. Raises `PseudonymsUnavailable` when the resolver fails."""
    kept, failed, missing_by_tenant, counts, tenant_of_record = _collect(items, pseudonymiser)
    max_chars = pseudonymiser.max_id_chars
    records = [_device_header(r, tenant_of_record.get(r.offset), missing_by_tenant, counts, max_chars, pseudonymiser)
               for r in records]
    _resolve(pseudonymiser, missing_by_tenant)
    return Transformed(kept, records, failed, counts)


def _collect(items: list[WorkItem], pseudonymiser: Pseudonymiser) \
        -> tuple[list[WorkItem], list[FailedEvent], dict[str, Found], dict[int, int], dict[int, str]]:
    """The events of tenants (the others quarantined: no tenant's key applies; so are events holding an id
    longer than the resolver takes), what the fields find in them per tenant that is not known yet (known
    ids are replaced on the way), how many per log offset, and the tenant of each record's first event."""
    walk = pseudonymiser.resolving_walk
    kept: list[WorkItem] = []
    failed: list[FailedEvent] = []
    missing_by_tenant: dict[str, Found] = {}
    counts: dict[int, int] = {}
    tenant_of_record: dict[int, str] = {}
    refused: list[str] = []
    last_channel: object = None  # the events of a request are nearly always of one channel: skip the lookup
    found: Found | None = None
    known: Known = _NOTHING_KNOWN
    last_record: LogRecord | None = None
    offset = 0
    for item in items:
        context = item.event.get("context")
        channel = context.get("channel") if context.__class__ is dict else None
        if channel != last_channel or found is None:
            found = missing_by_tenant.get(channel) if channel.__class__ is str else None
            if found is None:
                why = _why_not_a_tenant(channel)
                if why is not None:
                    failed.append(failed_from_item(item, ErrorCode.AUTH_INVALID_TENANT, STAGE, why))
                    continue
                found = missing_by_tenant[channel] = {kind: [] for kind in FIELD_KINDS}  # type: ignore[index]
            known = pseudonymiser.known(channel)  # type: ignore[arg-type]
            last_channel = channel
        added = walk(item.event, known, found, refused)
        if refused:  # rare: what else it holds may be resolved all the same, harmlessly
            refused.clear()
            quarantined = failed_from_item(item, ErrorCode.VAULT_INPUT, STAGE, f"an identifier of this event is "
                                           f"longer than the {pseudonymiser.max_id_chars} characters the identity "
                                           "vault takes")
            # the text as sent (the walk replaced some of its ids already): it is sealed, to be replayed
            failed.append(replace(quarantined, payload=original_event_text(item.record, item.index)))
            continue
        kept.append(item)
        if item.record is not last_record:  # a record's events come one after another
            last_record = item.record
            offset = last_record.offset
            if offset not in tenant_of_record:
                tenant_of_record[offset] = channel  # type: ignore[assignment]
                counts[offset] = 0
        counts[offset] += added
    return kept, failed, missing_by_tenant, {offset: n for offset, n in counts.items() if n}, tenant_of_record


def pseudonymise_headers(records: list[LogRecord], pseudonymiser: Pseudonymiser,
                         events_tenants: Mapping[int, str] | None = None) -> list[LogRecord]:
    """The records with their device header pseudonymised alone: for a record whose events are not
    transformed with it (quarantined whole, or prepared one by one). `events_tenants`: a tenant per
    log offset for records without a usable X-Channel-Id header."""
    missing_by_tenant: dict[str, Found] = {}
    tenants = events_tenants or {}
    records = [_device_header(r, tenants.get(r.offset), missing_by_tenant, {}, pseudonymiser.max_id_chars,
                              pseudonymiser) for r in records]
    _resolve(pseudonymiser, missing_by_tenant)  # the header's length was checked: it resolves
    return records


def _why_not_a_tenant(channel: object) -> str | None:
    try:
        check_tenant_id(channel)  # type: ignore[arg-type]
    except CohortError as exc:
        return f"context.channel names no tenant, so its identifiers cannot be pseudonymised: {exc.message}"
    return None


def _device_header(record: LogRecord, events_tenant: str | None, missing_by_tenant: dict[str, Found],
                   counts: dict[int, int], max_chars: int | None, pseudonymiser: Pseudonymiser) -> LogRecord:
    """The record with a copy of its headers in which the device header will get its pseudonym (under the
    X-Channel-Id header's tenant, else its events'); dropped when no tenant can be named for it (or it is
    longer than the resolver takes: the API bounds it well below)."""
    device = record.headers.get(DEVICE_HEADER)
    if not device:
        return record
    headers = dict(record.headers)
    tenant = next((t for t in (headers.get(CHANNEL_HEADER), events_tenant)
                   if t is not None and _why_not_a_tenant(t) is None), None)
    if tenant is None or not isinstance(device, str) or (max_chars is not None and len(device) > max_chars):
        del headers[DEVICE_HEADER]
    else:
        known = pseudonymiser.known(tenant)[DEVICE].get(device)
        if known is not None:
            headers[DEVICE_HEADER] = known
        else:
            found = missing_by_tenant.setdefault(tenant, {kind: [] for kind in FIELD_KINDS})
            found[DEVICE].append((headers, DEVICE_HEADER, device))
        counts[record.offset] = counts.get(record.offset, 0) + 1
    return replace(record, headers=headers)


def _resolve(pseudonymiser: Pseudonymiser, missing_by_tenant: dict[str, Found]) -> None:
    """Replace (or drop) every value found that was not known: asked of the cache's older entries, then
    of the resolver, once per (tenant, kind); its answers are remembered."""
    cache = pseudonymiser.cache
    for tenant, found in missing_by_tenant.items():
        for container, key, _ in found[DROP]:
            container[key] = None
        for kind in KINDS:
            places = found[kind]
            if not places:
                continue
            clear_ids = set(map(_VALUE, places))
            pseudonyms: dict[str, Any] = {}
            if cache is not None:
                pseudonyms = cache.recall(tenant, kind, clear_ids)
                clear_ids.difference_update(pseudonyms)
            if clear_ids:
                answer = _pseudonyms(pseudonymiser.resolver, tenant, kind, clear_ids)
                if cache is not None:
                    cache.remember(tenant, kind, {clear: answer[clear] for clear in clear_ids})
                pseudonyms.update((clear, answer[clear]) for clear in clear_ids)
            for container, key, value in places:
                container[key] = pseudonyms[value]


def _pseudonyms(resolver: PseudonymResolver, tenant: str, kind: str, clear_ids: set[str]) -> Mapping[str, Any]:
    """The resolver's whole answer, or a fault: a partial mapping is never used."""
    try:
        pseudonyms = resolver.pseudonyms(tenant, kind, clear_ids)
    except TerminalFault:
        raise
    except CohortError as exc:
        if exc.code is ErrorCode.VAULT_INPUT and not isinstance(exc, TransientFault):
            raise IdentifierRefused(f"{kind} ids of tenant {tenant!r}: {exc.message}") from exc
        raise PseudonymsUnavailable(f"no pseudonyms for {len(clear_ids)} {kind} ids of tenant {tenant!r}: "
                                    f"{describe_failure(exc)}") from exc
    except Exception as exc:
        raise PseudonymsUnavailable(f"no pseudonyms for {len(clear_ids)} {kind} ids of tenant {tenant!r}: "
                                    f"{describe_failure(exc)}") from exc
    missing = sum(1 for clear in clear_ids if not isinstance(pseudonyms.get(clear), str))
    if missing:
        raise PseudonymsUnavailable(f"the resolver gave no pseudonym for {missing} of {len(clear_ids)} {kind} "
                                    f"ids of tenant {tenant!r}")
    return pseudonyms


def protect_quarantined(failed: list[FailedEvent], records: Iterable[LogRecord], pseudonymiser: Pseudonymiser, *,
                        transformed: bool = False) -> list[FailedEvent]:
    """The quarantined events with no clear identifier left in their payloads: pseudonymised field by field
    (as compact JSON) when the payload parses and a tenant can be named, else sealed. `records`: those the
    rows came from (a whole request's bytes, its tenant header). `transformed`: the rows' events went
    through `pseudonymise` already (route's failures), so a value that is a pseudonym is left as it is.
    Raises `PseudonymsUnavailable` when the resolver fails: a row is never kept with a clear id instead."""
    if not failed:
        return failed
    by_offset = {record.offset: record for record in records}
    return [_protected(row, by_offset.get(row.log_offset), pseudonymiser, transformed) for row in failed]


def _protected(row: FailedEvent, record: LogRecord | None, pseudonymiser: Pseudonymiser,
               transformed: bool) -> FailedEvent:
    text = row.payload
    if text.startswith((SEALED_PREFIX, WITHHELD_PREFIX)):
        return row
    header_tenant = record.headers.get(TENANT_HEADER) if record is not None else None
    whole = record is not None and row.event_count == record.event_count and \
        text == record.payload.decode("utf-8", "replace")  # the request quarantined whole
    raw = record.payload if whole and record is not None else text.encode("utf-8", "surrogatepass")
    seal_tenant = next((t for t in (row.channel, header_tenant) if _why_not_a_tenant(t) is None), None)
    try:
        if whole:
            raw.decode("utf-8")  # bytes that are not UTF-8 are kept exactly, sealed
        doc = json.loads(text)  # the standard library: integers beyond 64 bits stay exact
    except (ValueError, RecursionError):
        return _sealed(row, seal_tenant, raw, pseudonymiser)
    events = events_in(doc) if whole else [doc] if doc.__class__ is dict else None
    if events is None:
        return _sealed(row, seal_tenant, raw, pseudonymiser)
    missing_by_tenant: dict[str, Found] = {}
    refused: list[str] = []
    for event in events:
        if event.__class__ is not dict:
            continue  # no configured field can be in it
        context = event.get("context")
        channel = context.get("channel") if context.__class__ is dict else None
        tenant = next((t for t in (channel, header_tenant) if _why_not_a_tenant(t) is None), None)
        found: Found = {kind: [] for kind in FIELD_KINDS}
        pseudonymiser.resolving_walk(event, pseudonymiser.known(tenant) if tenant else _NOTHING_KNOWN, found, refused)
        if transformed:
            for kind in KINDS:
                found[kind] = [place for place in found[kind] if not _PSEUDONYM.match(place[2])]
        if refused or (tenant is None and any(found[kind] for kind in KINDS)):
            return _sealed(row, seal_tenant, raw, pseudonymiser)
        if tenant is not None:
            held = missing_by_tenant.setdefault(tenant, {kind: [] for kind in FIELD_KINDS})
            for kind in KINDS:
                held[kind] += found[kind]
    try:
        _resolve(pseudonymiser, missing_by_tenant)
    except IdentifierRefused:
        return _sealed(row, seal_tenant, raw, pseudonymiser)
    try:
        compact = json.dumps(doc, ensure_ascii=False, separators=(",", ":"))
        compact.encode("utf-8")  # a lone surrogate (\ud800) cannot be stored as UTF-8: escaped instead
    except UnicodeEncodeError:
        compact = json.dumps(doc, separators=(",", ":"))
    except (ValueError, TypeError, RecursionError):
        return _sealed(row, seal_tenant, raw, pseudonymiser)
    return replace(row, payload=compact)


def _sealed(row: FailedEvent, tenant: str | None, raw: bytes, pseudonymiser: Pseudonymiser) -> FailedEvent:
    sealer = pseudonymiser.sealer
    payload = sealer.seal(tenant, raw) if sealer is not None else f"{WITHHELD_PREFIX}{len(raw)}"
    return replace(row, payload=payload)
