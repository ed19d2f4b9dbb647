"""Transform: learner and device identifiers are replaced by pseudonyms before anything is stored.

Why here, after validate and before route: route writes the columns (`actor_id`, `did`) and the stored
full event from the same event dict, so replacing each value in that dict once covers both; validation
has already vouched for the events' shapes. The request's `X-Device-Id` header (kept in
`ingest_batches.headers`, nowhere else) is pseudonymised with the events' device ids.

Why one resolver call per (tenant, kind) and batch: the vault behind the resolver is a database (SQLite
or Redis); a batch holds thousands of events but a few hundred distinct ids, so each id is asked for
once. The tenant is the event's `context.channel`, so one tenant's pseudonyms never join another's.

A resolver that fails is an infrastructure fault (`PseudonymsUnavailable`, retried with the batch):
nothing is stored rather than a clear id. Pure: the resolver is injected (core/pseudonyms.py).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, replace
from typing import Any

from cohort.core.errors import CohortError, ErrorCode, TerminalFault, TransientFault
from cohort.core.log_record import LogRecord
from cohort.core.pseudonyms import DEVICE, KINDS, LEARNER, PseudonymResolver
from cohort.core.work_item import FailedEvent, WorkItem, describe_failure, failed_from_item
from cohort.security.identity import check_tenant_id

STAGE = "transform"
DEVICE_HEADER = "x-device-id"  # log record headers are kept lower-case (api/telemetry.py KEPT_HEADERS)
CHANNEL_HEADER = "x-channel-id"
DEVICE_FIELDS = frozenset({"context.did", "edata.dspec.id"})  # fields of kind device unless said otherwise
EACH = "[]"  # a path segment `name[]`: every element of the list `name`
DROP = "drop"  # a field kind whose value is removed (set to null) rather than pseudonymised: free-form PII
FIELD_KINDS = (*KINDS, DROP)
_FIELD = re.compile(r"^(?P<path>[A-Za-z0-9_$@-]+(?:\[\])*(?:\.[A-Za-z0-9_$@-]+(?:\[\])*)*)"
                    r"(?::(?P<kind>[a-z]+))?(?:\?(?P<when_key>[A-Za-z0-9_$@-]+)=(?P<when_value>.+))?$")


class PseudonymsUnavailable(TransientFault):
    """The resolver could not give every pseudonym of a batch: the batch waits and is retried, because
    storing it with clear identifiers is never an option."""


class IdentifierRefused(Exception):
    """The resolver refused an identifier of the batch as input (ERR_VAULT_INPUT), which the stage's own
    checks should have caught: not a fault, so the pipeline isolates the event that causes it."""


@dataclass(frozen=True, slots=True)
class PseudonymisedField:
    """One configured field: the keys it walks (`EACH` steps into every element of a list), the kind of
    identifier it holds, and optionally a sibling key and value it applies to (`object.id` of a User)."""

    path: str
    keys: tuple[str, ...]
    kind: str
    when: tuple[str, str] | None = None


def pseudonymised_fields(entries: Iterable[str]) -> tuple[PseudonymisedField, ...]:
    """Parse `settings.pseudonymise_fields`, each `path[:kind][?key=value]`: a dotted path whose segments
    may end in `[]` (every element of a list), the kind (device for context.did and edata.dspec.id,
    learner otherwise; `drop` removes the value, for free-form text that holds identifiers), and a
    sibling key the value must have for the field to apply. A malformed entry is a configuration error,
    found at start."""
    fields = []
    for entry in entries:
        match = _FIELD.match(str(entry).strip())
        path = match["path"] if match else ""
        kind = (match["kind"] if match else None) or (DEVICE if path in DEVICE_FIELDS else LEARNER)
        if match is None or kind not in FIELD_KINDS or path.endswith(EACH):
            raise CohortError(ErrorCode.CONFIG_INVALID, f"pseudonymise field {str(entry)[:80]!r} is not "
                              f"path[:{'|'.join(FIELD_KINDS)}][?key=value] (path: dotted names, each but the last may end in [])")
        keys = tuple(key for segment in path.split(".") for key in _keys_of(segment))
        when = (match["when_key"], match["when_value"]) if match["when_key"] else None
        fields.append(PseudonymisedField(path, keys, kind, when))
    if len({(f.path, f.when) for f in fields}) != len(fields):
        raise CohortError(ErrorCode.CONFIG_INVALID, "a pseudonymise field is listed twice")
    return tuple(fields)


def _keys_of(segment: str) -> list[str]:
    name = segment.rstrip("[]")
    return [name] + [EACH] * ((len(segment) - len(name)) // 2)


@dataclass(frozen=True, slots=True)
class Pseudonymiser:
    """What the stage needs: where the pseudonyms come from, and which fields to replace."""

    resolver: PseudonymResolver
    fields: tuple[PseudonymisedField, ...]
    max_id_chars: int | None = None  # the longest id the resolver takes; an event with a longer one is quarantined


@dataclass(slots=True)
class Transformed:
    items: list[WorkItem]  # the events to route, pseudonymised in place
    records: list[LogRecord]  # the batch's records, their device header pseudonymised (or dropped)
    failed: list[FailedEvent]  # events that name no tenant, so cannot be pseudonymised
    pseudonymised: dict[int, int]  # values replaced or dropped, per log offset (events and header)


# (container, key, clear id): one place a pseudonym goes
_Place = tuple[dict[str, Any], str, str]


def pseudonymise(items: list[WorkItem], records: list[LogRecord], pseudonymiser: Pseudonymiser) -> Transformed:
    """Replace every configured identifier of these valid events, and each record's device header, by its
    pseudonym under the event's (record's) tenant. Raises `PseudonymsUnavailable` when the resolver fails."""
    places: dict[tuple[str, str], list[_Place]] = {}
    counts: dict[int, int] = {}
    tenant_of_record: dict[int, str] = {}
    of_tenants, failed = _events_of_tenants(items)
    kept: list[WorkItem] = []
    fields, max_chars = pseudonymiser.fields, pseudonymiser.max_id_chars
    for item in of_tenants:
        tenant = item.event["context"]["channel"]
        found = _collect(item.event, fields)
        if max_chars is not None and any(len(value) > max_chars for kind, _, _, value in found if kind != DROP):
            failed.append(failed_from_item(item, ErrorCode.VAULT_INPUT, STAGE, f"an identifier of this event is "
                                           f"longer than the {max_chars} characters the identity vault takes"))
            continue
        kept.append(item)
        offset = item.record.offset
        tenant_of_record.setdefault(offset, tenant)
        if found:
            counts[offset] = counts.get(offset, 0) + len(found)
            for kind, container, key, value in found:
                if kind == DROP:
                    container[key] = None
                    continue
                group = places.get((tenant, kind))
                if group is None:
                    group = places[(tenant, kind)] = []
                group.append((container, key, value))
    records = [_device_header_places(r, tenant_of_record.get(r.offset), places, counts, max_chars) for r in records]
    _resolve(pseudonymiser.resolver, places)
    return Transformed(kept, records, failed, counts)


def pseudonymise_headers(records: list[LogRecord], pseudonymiser: Pseudonymiser,
                         events_tenants: Mapping[int, str] | None = None) -> list[LogRecord]:
    """The records with their device header pseudonymised alone: for a record whose events are not
    transformed with it (quarantined whole, or prepared one by one). `events_tenants`: a tenant per
    log offset for records without a usable X-Channel-Id header."""
    places: dict[tuple[str, str], list[_Place]] = {}
    tenants = events_tenants or {}
    records = [_device_header_places(r, tenants.get(r.offset), places, {}, pseudonymiser.max_id_chars)
               for r in records]
    _resolve(pseudonymiser.resolver, places)
    return records


def _events_of_tenants(items: list[WorkItem]) -> tuple[list[WorkItem], list[FailedEvent]]:
    """Events whose channel is a tenant id; the others are quarantined, since no tenant's key applies."""
    verdicts: dict[str, str | None] = {}  # channel → None when it is a tenant id, else why not
    kept: list[WorkItem] = []
    failed: list[FailedEvent] = []
    for item in items:
        context = item.event.get("context")
        channel = context.get("channel") if isinstance(context, dict) else None
        if not isinstance(channel, str):
            why = _why_not_a_tenant(channel)
        elif channel in verdicts:
            why = verdicts[channel]
        else:
            why = verdicts[channel] = _why_not_a_tenant(channel)
        if why is None:
            kept.append(item)
        else:
            failed.append(failed_from_item(item, ErrorCode.AUTH_INVALID_TENANT, STAGE, why))
    return kept, failed


def _why_not_a_tenant(channel: object) -> str | None:
    try:
        check_tenant_id(channel)  # type: ignore[arg-type]
    except CohortError as exc:
        return f"context.channel names no tenant, so its identifiers cannot be pseudonymised: {exc.message}"
    return None


def _collect(event: dict[str, Any], fields: tuple[PseudonymisedField, ...]) -> list[tuple[str, dict[str, Any], str, Any]]:
    """(kind, container, key, value) of each configured field of this event that holds a non-empty string
    (any value but null for a field to drop)."""
    found = []
    for field in fields:
        keys = field.keys
        last = keys[-1]
        for container in _containers(event, keys):
            value = container.get(last)
            if not (isinstance(value, str) and value) and (field.kind != DROP or value is None):
                continue
            if field.when is not None and container.get(field.when[0]) != field.when[1]:
                continue
            found.append((field.kind, container, last, value))
    return found


def _containers(event: dict[str, Any], keys: tuple[str, ...]) -> list[dict[str, Any]]:
    """The objects that hold the field's last key: one walk down `keys`, fanning out at each `EACH`."""
    level: list[Any] = [event]
    for key in keys[:-1]:
        if key == EACH:
            level = [element for value in level if isinstance(value, list) for element in value]
        else:
            level = [value[key] for value in level if isinstance(value, dict) and key in value]
        if not level:
            return level
    return [value for value in level if isinstance(value, dict)]


def _device_header_places(record: LogRecord, events_tenant: str | None, places: dict[tuple[str, str], list[_Place]],
                          counts: dict[int, int], max_chars: int | None) -> LogRecord:
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
        places.setdefault((tenant, DEVICE), []).append((headers, DEVICE_HEADER, device))
        counts[record.offset] = counts.get(record.offset, 0) + 1
    return replace(record, headers=headers)


def _resolve(resolver: PseudonymResolver, places: dict[tuple[str, str], list[_Place]]) -> None:
    for (tenant, kind), group in places.items():
        clear_ids = {value for _, _, value in group}
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
        for container, key, value in group:
            container[key] = pseudonyms[value]
