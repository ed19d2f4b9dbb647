"""Which event fields hold identifiers (`settings.pseudonymise_fields`), and one walk that finds them all.

Why compiled into one walk: the transform stage visits every event of every batch, so eleven dotted
paths walked one by one cost as much as validating the event (measured: +30 µs/event on 36). The paths
are merged into a tree of their shared prefixes (`actor`, `context`, `edata`, …) and compiled once, at
start, into one straight-line Python function (nested closures walking the same tree cost 2-3 times as
much), so each event is walked once and each prefix looked up once.

Why a second, resolving walk: the stage's walk replaces an id it finds in the process's memory of pseudonyms
(core/pseudonym_cache.py) on the spot, and drops free-form values on the spot, so only the ids not seen
lately are collected for the vault; collecting every id of every event, then replacing each in a second
pass, cost twice the walk itself (profiled with py-spy on `cohort serve` under `cohort bench`).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

from cohort.core.errors import CohortError, ErrorCode
from cohort.core.pseudonyms import DEVICE, KINDS, LEARNER

DEVICE_FIELDS = frozenset({"context.did", "edata.dspec.id"})  # fields of kind device unless said otherwise
EACH = "[]"  # a path segment `name[]`: every element of the list `name`
DROP = "drop"  # a field kind whose value is removed (set to null) rather than pseudonymised: free-form PII
FIELD_KINDS = (*KINDS, DROP)
_FIELD = re.compile(r"^(?P<path>[A-Za-z0-9_$@-]+(?:\[\])*(?:\.[A-Za-z0-9_$@-]+(?:\[\])*)*)"
                    r"(?::(?P<kind>[a-z]+))?(?:\?(?P<when_key>[A-Za-z0-9_$@-]+)=(?P<when_value>.+))?$")

# What a walk finds, per kind: (container, key, value), the container being the dict that holds the value.
Found = dict[str, list[tuple[Any, str, Any]]]
Walk = Callable[[Any, Found], int]
# resolving_walk(event, known, found, refused): known[kind] maps clear ids to pseudonyms; refused gets ids too long
ResolvingWalk = Callable[[Any, Mapping[str, Mapping[str, str]], Found, list[str]], int]


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
    but the last may end in `[]` (every element of a list), the kind (device for context.did and
    edata.dspec.id, learner otherwise; `drop` removes the value, for free-form text that holds
    identifiers), and a sibling key and value the field applies to. A malformed entry is a configuration
    error, found at start."""
    fields = []
    for entry in entries:
        match = _FIELD.match(str(entry).strip())
        path = match["path"] if match else ""
        kind = (match["kind"] if match else None) or (DEVICE if path in DEVICE_FIELDS else LEARNER)
        if match is None or kind not in FIELD_KINDS or path.endswith(EACH):
            raise CohortError(ErrorCode.CONFIG_INVALID, f"pseudonymise field {str(entry)[:80]!r} is not "
                              f"path[:{'|'.join(FIELD_KINDS)}][?key=value] (path: dotted names, each but the "
                              "last may end in [])")
        keys = tuple(key for segment in path.split(".") for key in _keys_of(segment))
        when = (match["when_key"], match["when_value"]) if match["when_key"] else None
        fields.append(PseudonymisedField(path, keys, kind, when))
    if len({(f.path, f.when) for f in fields}) != len(fields):
        raise CohortError(ErrorCode.CONFIG_INVALID, "a pseudonymise field is listed twice")
    return tuple(fields)


def compile_walk(fields: Iterable[PseudonymisedField]) -> Walk:
    """`walk(event, found)`: appends to `found[kind]` every (container, key, value) where a field holds a
    non-empty string (any value but null for a field to drop), and says how many. Missing parts and other
    shapes are skipped."""
    namespace: dict[str, Any] = {}
    exec(compile(_source([(f.keys, f) for f in fields]), "<pseudonymised fields>", "exec"),  # noqa: S102
         {"__builtins__": {}, "dict": dict, "list": list, "str": str}, namespace)
    return namespace["walk"]


def compile_resolving_walk(fields: Iterable[PseudonymisedField], max_chars: int) -> ResolvingWalk:
    """`walk(event, known, found, refused)`: where a field holds a non-empty string, replaces it by
    `known[kind][value]` when there is one, else appends the value to `refused` when it is longer than
    `max_chars`, else appends (container, key, value) to `found[kind]` (for the vault); sets a field to drop
    to null (when not null already). Says how many values it met, replaced or not."""
    namespace: dict[str, Any] = {}
    source = _source([(f.keys, f) for f in fields], resolving=True, max_chars=int(max_chars))
    exec(compile(source, "<pseudonymised fields, resolving>", "exec"),  # noqa: S102
         {"__builtins__": {}, "dict": dict, "list": list, "str": str, "len": len}, namespace)
    return namespace["walk"]


def identifiers(event: Any, fields: Iterable[PseudonymisedField]) -> Found:
    """What the fields find in one event (for tests and tools; the stage compiles its walk once)."""
    found: Found = {kind: [] for kind in FIELD_KINDS}
    compile_walk(fields)(event, found)
    return found


def _keys_of(segment: str) -> list[str]:
    name = segment.rstrip("[]")
    return [name] + [EACH] * ((len(segment) - len(name)) // 2)


def _source(fields: list[tuple[tuple[str, ...], PseudonymisedField]], resolving: bool = False,
            max_chars: int = 0) -> str:
    """The walk as straight-line Python. Every name in it is generated here and every key or value taken
    from the settings is written as a `repr` literal (keys are checked names; `when` values any text; the
    bound an int), so the settings cannot inject code."""
    if resolving:
        lines = ["def walk(v0, known, found, refused):", "    n = 0"]
        lines += [f"    {_KNOWN[kind]} = known[{kind!r}]" for kind in KINDS]
        lines += [f"    {_LIST[kind]} = found[{kind!r}]" for kind in KINDS]
    else:
        lines = ["def walk(v0, found):", "    n = 0"] + [f"    {_LIST[kind]} = found[{kind!r}]" for kind in FIELD_KINDS]
    counter = iter(range(1, 1 << 30))
    _emit_into(lines, "v0", fields, "    ", counter, (resolving, max_chars))
    return "\n".join(lines + ["    return n"]) + "\n"


_LIST = {kind: f"found_{kind}" for kind in FIELD_KINDS}
_KNOWN = {kind: f"known_{kind}" for kind in KINDS}
Mode = tuple[bool, int]  # (resolving, max_chars)


def _emit(lines: list[str], value: str, fields: list[tuple[tuple[str, ...], PseudonymisedField]], indent: str,
          counter: Iterator[int], mode: Mode) -> None:
    """Lines that walk `value` along the remaining keys of `fields`: into a dict's keys, or a list's elements."""
    grouped: dict[str, list[tuple[tuple[str, ...], PseudonymisedField]]] = {}
    each = []
    for rest, field in fields:
        if rest[0] == EACH:
            each.append((rest[1:], field))
        else:
            grouped.setdefault(rest[0], []).append((rest, field))
    if grouped:  # the caller checked `value` is a dict
        for key, group in grouped.items():
            held = f"v{next(counter)}"
            lines.append(f"{indent}{held} = {value}.get({key!r})")
            for rest, field in group:
                if len(rest) > 1:
                    continue
                test = f"{held} is not None" if field.kind == DROP else f"{held}.__class__ is str and {held}"
                if field.when is not None:
                    test += f" and {value}.get({field.when[0]!r}) == {field.when[1]!r}"
                lines += [f"{indent}if {test}:", *_on_found(value, key, held, field.kind, indent + "    ", mode),
                          f"{indent}    n += 1"]
            _emit_into(lines, held, [(rest[1:], field) for rest, field in group if len(rest) > 1], indent, counter,
                       mode)
    if each:  # the caller checked `value` is a list
        element = f"v{next(counter)}"
        lines.append(f"{indent}for {element} in {value}:")
        _emit_into(lines, element, each, indent + "    ", counter, mode)


def _on_found(container: str, key: str, held: str, kind: str, indent: str, mode: Mode) -> list[str]:
    """What a walk does with a value found: collect it; or (resolving) replace it when known, null it when
    to drop, refuse it when too long, else collect it."""
    resolving, max_chars = mode
    if not resolving:
        return [f"{indent}{_LIST[kind]}.append(({container}, {key!r}, {held}))"]
    if kind == DROP:
        return [f"{indent}{container}[{key!r}] = None"]
    return [f"{indent}p = {_KNOWN[kind]}.get({held})",
            f"{indent}if p is not None:",
            f"{indent}    {container}[{key!r}] = p",
            f"{indent}elif len({held}) > {max_chars!r}:",
            f"{indent}    refused.append({held})",
            f"{indent}else:",
            f"{indent}    {_LIST[kind]}.append(({container}, {key!r}, {held}))"]


def _emit_into(lines: list[str], value: str, fields: list[tuple[tuple[str, ...], PseudonymisedField]], indent: str,
               counter: Iterator[int], mode: Mode = (False, 0)) -> None:
    """Lines that walk `value` further when it is a dict (for named keys) or a list (for `[]`)."""
    if any(rest[0] != EACH for rest, _ in fields):
        lines.append(f"{indent}if {value}.__class__ is dict:")
        _emit(lines, value, [(rest, f) for rest, f in fields if rest[0] != EACH], indent + "    ", counter, mode)
    if any(rest[0] == EACH for rest, _ in fields):
        lines.append(f"{indent}if {value}.__class__ is list:")
        _emit(lines, value, [(rest, f) for rest, f in fields if rest[0] == EACH], indent + "    ", counter, mode)
