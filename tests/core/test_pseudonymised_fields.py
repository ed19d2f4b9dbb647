"""The configured identifier fields and their compiled walk: it finds exactly what walking each dotted path
on its own finds, in any JSON, and nothing in a setting can become code."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given, settings, strategies as st

from cohort.core.errors import CohortError, ErrorCode
from cohort.core.pseudonymised_fields import (DROP, EACH, FIELD_KINDS, compile_walk, identifiers,
                                              pseudonymised_fields)
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
