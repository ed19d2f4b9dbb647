"""The configured identifier fields and their compiled walk: it finds exactly what walking each dotted path
on its own finds, in any JSON, and nothing in a setting can become code."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given, settings, strategies as st

from cohort.core.errors import CohortError, ErrorCode
from cohort.core.pseudonymised_fields import (DROP, EACH, FIELD_KINDS, compile_resolving_walk, compile_walk,
                                              identifiers, pseudonymised_fields)
from cohort.core.pseudonyms import DEVICE, KINDS, LEARNER
from cohort.settings import Settings


def reference(event: Any, fields) -> dict[str, list]:
    """Each field walked on its own, the slow obvious way."""
    found: dict[str, list] = {kind: [] for kind in FIELD_KINDS}
    for field in fields:
        level = [event]
        for key in field.keys[:-1]:
            if key == EACH:
                level = [e for v in level if type(v) is list for e in v]
            else:
                level = [v[key] for v in level if type(v) is dict and key in v]
        for container in level:
            if type(container) is not dict or container.get(field.keys[-1]) is None:
                continue
            value = container[field.keys[-1]]
            if field.kind != DROP and not (type(value) is str and value):
                continue
            if field.when is not None and container.get(field.when[0]) != field.when[1]:
                continue
            found[field.kind].append((id(container), field.keys[-1], value))
    return {kind: sorted(places, key=repr) for kind, places in found.items()}


def compiled(event: Any, fields) -> dict[str, list]:
    found = identifiers(event, fields)
    return {kind: sorted(((id(c), k, v) for c, k, v in places), key=repr) for kind, places in found.items()}


names = st.sampled_from(["a", "b", "id", "type", "x"])
json_values = st.recursive(st.none() | st.booleans() | st.integers(-5, 5) | st.sampled_from(["", "s", "User", "t"]),
                           lambda inner: st.lists(inner, max_size=3) | st.dictionaries(names, inner, max_size=4),
                           max_leaves=25)
paths = st.lists(st.tuples(names, st.booleans()), min_size=1, max_size=4).map(
    lambda segments: ".".join(name + ("[]" if each and n < len(segments) - 1 else "")
                              for n, (name, each) in enumerate(segments)))
entries = st.tuples(paths, st.sampled_from(["", ":learner", ":device", ":drop"]),
                    st.sampled_from(["", "?type=User", "?x=s"]))


@settings(max_examples=400, deadline=None)
@given(event=json_values, chosen=st.lists(entries, min_size=1, max_size=6, unique_by=lambda e: (e[0], e[2])))
def test_the_compiled_walk_finds_what_each_path_alone_finds(event, chosen):
    fields = pseudonymised_fields("".join(entry) for entry in chosen)
    assert compiled(event, fields) == reference(event, fields)
    found = {kind: [] for kind in FIELD_KINDS}
    assert compile_walk(fields)(event, found) == sum(len(places) for places in found.values())


def test_the_default_fields_on_a_sunbird_event(interact_event):
    fields = pseudonymised_fields(Settings().pseudonymise_fields)
    found = identifiers(interact_event, fields)
    assert [v for _, _, v in found["learner"]] == [interact_event["actor"]["id"]]
    assert {v for _, _, v in found["device"]} == {interact_event["context"]["did"]}  # devicedata repeats it


@pytest.mark.parametrize("when", ["a'); import os; os._exit(1); ('", 'x" + __import__("os").getcwd() + "', "\\", "é ✓"])
def test_a_setting_is_data_never_code(when):
    fields = pseudonymised_fields([f"o.id?type={when}"])
    event = {"o": {"id": "someone", "type": when}}
    assert [v for _, _, v in identifiers(event, fields)["learner"]] == ["someone"]
    assert identifiers({"o": {"id": "someone", "type": "other"}}, fields)["learner"] == []


@pytest.mark.parametrize("entry", ["", "a..b", "a:robot", "a?x", "a.b[", "a.b[]", ".a", "a b", "a'b", "a:drop?"])
def test_a_malformed_entry_is_a_configuration_error(entry):
    with pytest.raises(CohortError) as refused:
        pseudonymised_fields([entry])
    assert refused.value.code is ErrorCode.CONFIG_INVALID


def _strings_of(value: Any) -> list:
    """Every leaf of a JSON value, in walk order (to compare two walks' effects)."""
    if isinstance(value, dict):
        return [(k, _strings_of(v)) for k, v in value.items()]
    if isinstance(value, list):
        return [_strings_of(v) for v in value]
    return [value]


@settings(max_examples=400, deadline=None)
@given(event=json_values, chosen=st.lists(entries, min_size=1, max_size=6, unique_by=lambda e: (e[0], e[2])),
       known_share=st.sampled_from([0.0, 0.5, 1.0]))
def test_the_resolving_walk_replaces_what_is_known_and_collects_the_rest(event, chosen, known_share):
    """Against the collecting walk on a copy: the values it finds are replaced by their known pseudonym (or
    collected when not known), values to drop become null, and it counts the same."""
    import copy
    fields = pseudonymised_fields("".join(entry) for entry in chosen)
    expected = copy.deepcopy(event)
    collected = {kind: [] for kind in FIELD_KINDS}
    count = compile_walk(fields)(expected, collected)
    values = sorted({v for kind, places in collected.items() if kind != DROP for _, _, v in places})
    known_values = set(values[:int(len(values) * known_share)])
    known = {kind: {v: f"{kind[0]}:{v}" for v in known_values} for kind in KINDS}
    for kind, places in collected.items():  # what the resolving walk should leave: known replaced, drops nulled
        for container, key, value in places:
            if kind == DROP:
                container[key] = None
    for kind, places in collected.items():
        for container, key, value in places:
            if kind != DROP and value in known_values:
                container[key] = known[kind][value]
    found = {kind: [] for kind in FIELD_KINDS}
    refused: list[str] = []
    assert compile_resolving_walk(fields, 1024)(event, known, found, refused) == count
    assert refused == [] and found[DROP] == []
    assert {(k, v) for kind, places in found.items() for _, k, v in places} <= \
        {(k, v) for kind, places in collected.items() if kind != DROP for _, k, v in places if v not in known_values}
    if not _overlapping(collected):
        assert _strings_of(event) == _strings_of(expected)


def _overlapping(collected) -> bool:
    """Two fields of different kinds naming one place: which one wins differs; not this test's question."""
    places = [(id(c), k) for kind, found in collected.items() for c, k, _ in found]
    return len(places) != len(set(places))


def test_the_resolving_walk_refuses_an_id_longer_than_the_bound_and_replaces_the_rest():
    fields = pseudonymised_fields(["actor.id", "context.did", "edata.filters.createdBy:drop"])
    event = {"actor": {"id": "x" * 11}, "context": {"did": "dev"}, "edata": {"filters": {"createdBy": "Asha"}}}
    found = {kind: [] for kind in FIELD_KINDS}
    refused: list[str] = []
    known = {LEARNER: {}, DEVICE: {"dev": "d:1"}}
    assert compile_resolving_walk(fields, 10)(event, known, found, refused) == 3
    assert refused == ["x" * 11] and found[LEARNER] == []
    assert event["context"]["did"] == "d:1" and event["edata"]["filters"]["createdBy"] is None
