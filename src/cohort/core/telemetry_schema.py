"""Compiled validators for the official Sunbird telemetry v3 schemas.

The schemas ship inside the package (copied verbatim from Sunbird) and reference
each other as ``resource:/schemas/telemetry/3.0/<name>.json``; we resolve that
scheme from the package so compilation needs no network and no working directory.
Each event type is compiled once, on first use, into plain Python by fastjsonschema.
"""

from __future__ import annotations

import hashlib
from functools import cache
from importlib import resources
from typing import Callable

import orjson
import fastjsonschema

SCHEMA_PACKAGE = "cohort.core.schemas"
SCHEMA_DIR = ("telemetry", "3.0")
# Files that are building blocks, not event types.
_NON_EVENT = {
    "actor", "cdata", "common", "context", "dspec", "envelope", "event", "inlineobject",
    "items", "object", "parent", "pdata", "plugin", "question", "rollup", "target", "uaspec",
}


def _schema_root():
    root = resources.files(SCHEMA_PACKAGE)
    for part in SCHEMA_DIR:
        root = root / part
    return root


@cache
def load_schema(name: str) -> dict:
    return orjson.loads((_schema_root() / f"{name}.json").read_bytes())


def _resolve_resource(uri: str) -> dict:
    return load_schema(uri.rsplit("/", 1)[1].removesuffix(".json"))


@cache
def event_types() -> frozenset[str]:
    """Event ids (upper case, e.g. ``INTERACT``) that have a schema."""
    names = (p.name.removesuffix(".json") for p in _schema_root().iterdir() if p.name.endswith(".json"))
    return frozenset(n.upper() for n in names if n not in _NON_EVENT)


def validator_for(eid: str) -> Callable[[dict], object] | None:
    """The compiled validator for an event id, or None when no schema exists for it.

    Unknown ids are answered without touching the cache: eids come from clients, and
    caching each new one would let anyone grow the server's memory.
    """
    if eid not in event_types():
        return None
    return _compiled(eid)


@cache
def _compiled(eid: str) -> Callable[[dict], object]:
    return fastjsonschema.compile(load_schema(eid.lower()), handlers={"resource": _resolve_resource})


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
