"""Compiled validators for the official Sunbird telemetry v3 schemas.

The schemas ship inside the package (copied verbatim from Sunbird) and reference each other as
``resource:/schemas/telemetry/3.0/<name>.json``; those references are answered from the package's
own files and nothing else is ever fetched, so compiling needs no network and no working directory.
Each event type is compiled once, on first use, by jsonschema-rs (Rust) as draft 7, the draft these
schemas have always been read as here: it decides valid events several times faster than the
fastjsonschema code it replaced (`python -m cohort.benchmark.validators`, figures in PERFORMANCE.md),
and validation was the core's largest cost.
"""

from __future__ import annotations

import hashlib
from functools import cache
from importlib import resources
from itertools import islice
from typing import Any

import jsonschema_rs
import orjson

SCHEMA_PACKAGE = "cohort.core.schemas"
SCHEMA_DIR = ("telemetry", "3.0")
RESOURCE_PREFIX = "resource:/schemas/telemetry/3.0/"  # how the shipped schemas name each other
# Files that are building blocks, not event types.
_NON_EVENT = {
    "actor", "cdata", "common", "context", "dspec", "envelope", "event", "inlineobject",
    "items", "object", "parent", "pdata", "plugin", "question", "rollup", "target", "uaspec",
}
_MAX_ERRORS_READ = 64  # errors read to explain one event: enough to list every missing field of an object
_MAX_NAMES = 5  # unexpected property names quoted in a message (clients choose them: bounded)
_MAX_NAME_CHARS = 60


class SchemaViolation(ValueError):
    """An event that does not match its type's schema; the message names the field the way a
    telemetry author reads it (``edata must contain ['type'] properties``)."""

    def __init__(self, message: str):
        super().__init__(message)
        self.message = message


class EventSchema:
    """One event type's compiled schema.

    `is_valid` is the hot path (a bool: no error objects are built for the many valid events);
    `explain` says in words why an event it refused does not match.
    """

    __slots__ = ("eid", "is_valid", "_validator")

    def __init__(self, eid: str, validator: jsonschema_rs.Validator):
        self.eid = eid
        self._validator = validator
        self.is_valid = validator.is_valid

    def explain(self, event: Any) -> str:
        """The first violation in `event`, as a telemetry author reads it; for an object missing
        required fields, all of those it misses there."""
        try:
            errors = list(islice(self._validator.iter_errors(event), _MAX_ERRORS_READ))
            if not errors:
                return "event matches its schema"
            return _message(errors[0], errors)
        except Exception:  # describing failed (an instance too deep to render, say): the verdict stands
            return f"event does not match the telemetry v3 schema of {self.eid}"

    def __call__(self, event: Any) -> None:
        """Raise `SchemaViolation` when `event` does not match."""
        if not self.is_valid(event):
            raise SchemaViolation(self.explain(event))


def _schema_root():
    root = resources.files(SCHEMA_PACKAGE)
    for part in SCHEMA_DIR:
        root = root / part
    return root


@cache
def load_schema(name: str) -> dict:
    return orjson.loads((_schema_root() / f"{name}.json").read_bytes())


@cache
def _schema_names() -> frozenset[str]:
    return frozenset(p.name.removesuffix(".json") for p in _schema_root().iterdir() if p.name.endswith(".json"))


def _resolve_resource(uri: str) -> dict:
    """Answer a $ref from the shipped files only: any other reference is a fault of the schemas."""
    name = uri.removeprefix(RESOURCE_PREFIX).removesuffix(".json")
    if not uri.startswith(RESOURCE_PREFIX) or name not in _schema_names():
        raise ValueError(f"telemetry schemas refer to {uri!r}, which is not shipped with Cohort")
    return load_schema(name)


@cache
def event_types() -> frozenset[str]:
    """Event ids (upper case, e.g. ``INTERACT``) that have a schema."""
    return frozenset(n.upper() for n in _schema_names() if n not in _NON_EVENT)


def validator_for(eid: str) -> EventSchema | None:
    """The compiled schema for an event id, or None when no schema exists for it.

    Unknown ids are answered without touching the cache: eids come from clients, and
    caching each new one would let anyone grow the server's memory.
    """
    if eid not in event_types():
        return None
    return _compiled(eid)


@cache
def _compiled(eid: str) -> EventSchema:
    return EventSchema(eid, jsonschema_rs.Draft7Validator(load_schema(eid.lower()), retriever=_resolve_resource))


@cache
def schema_version() -> str:
    """A short digest of all shipped schema files: recorded in each event's trace."""
    digest = hashlib.sha256()
    for path in sorted(_schema_root().iterdir(), key=lambda p: p.name):
        if path.name.endswith(".json"):
            digest.update(path.name.encode())
            digest.update(path.read_bytes())
    return "telemetry-3.0:" + digest.hexdigest()[:12]


def compile_all() -> None:
    """Compile every event validator now, so the first batch does not pay for it."""
    for eid in event_types():
        validator_for(eid)


# Messages: the wording Cohort has always used (fastjsonschema's), built from the error's kind and
# location rather than from the library's text, which quotes the offending value (a client's value,
# of any size).

def _message(first: jsonschema_rs.ValidationError, errors: list[jsonschema_rs.ValidationError]) -> str:
    where = _path(first.instance_path)
    kind = first.kind
    if isinstance(kind, jsonschema_rs.ValidationErrorKind.Required):
        missing = [e.kind.property for e in errors if isinstance(e.kind, jsonschema_rs.ValidationErrorKind.Required)
                   and e.instance_path == first.instance_path]
        return f"{where} must contain {missing!r} properties"
    if isinstance(kind, jsonschema_rs.ValidationErrorKind.Type):
        return f"{where} must be {' or '.join(kind.types)}"
    if isinstance(kind, jsonschema_rs.ValidationErrorKind.Enum):
        return f"{where} must be one of {kind.options!r}"
    if isinstance(kind, jsonschema_rs.ValidationErrorKind.AdditionalProperties):
        names = [repr(str(name)[:_MAX_NAME_CHARS]) for name in kind.unexpected[:_MAX_NAMES]]
        more = ", …" if len(kind.unexpected) > _MAX_NAMES else ""
        return f"{where} must not contain {{{', '.join(names)}{more}}} properties"
    if isinstance(kind, jsonschema_rs.ValidationErrorKind.MinLength):
        return f"{where} must be longer than or equal to {kind.limit} characters"
    if isinstance(kind, jsonschema_rs.ValidationErrorKind.Minimum):
        return f"{where} must be bigger than or equal to {kind.limit}"
    return f"{where} does not satisfy the schema's {kind.name!r} rule"


def _path(instance_path: list[str | int]) -> str:
    """'edata.type', 'tags[0]'; the event itself is 'event'."""
    text = ""
    for step in instance_path:
        text += f"[{step}]" if isinstance(step, int) else f".{step}"
    return text.removeprefix(".") or "event"
