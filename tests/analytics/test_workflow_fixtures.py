"""The summariser over Sunbird's own summariser test data (raw, partly malformed telemetry), whose expected
summary counts come with the data."""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any

import orjson
import pytest

from cohort.analytics.workflow_events import unwrap
from cohort.analytics.workflow_sessions import WorkflowSummariser, summarise_events

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "sunbird" / "workflow-summary"


def raw_events(name: str) -> list[object]:
    events: list[object] = []
    for line in (FIXTURES / name).read_bytes().splitlines():
        events.extend(unwrap(orjson.loads(line)))
    return events


def by_type(records: list[dict[str, Any]]) -> dict[str, list[dict[str, Any]]]:
    out: dict[str, list[dict[str, Any]]] = {}
    for record in records:
        out.setdefault(record["dimensions"]["type"], []).append(record)
    return out


def test_test_data1_gives_nine_summaries():
    records = summarise_events(raw_events("test-data1.log"))
    assert len(records) == 9
    assert Counter(r["dimensions"]["type"] for r in records) == {
        "app": 3, "textbookunit": 2, "resource": 2, "content": 1, "qr": 1}
    assert len({r["mid"] for r in records}) == 9


def test_test_data2_gives_eight_summaries_of_the_expected_types():
    records = summarise_events(raw_events("test-data2.log"))
    assert len(records) == 8
    assert Counter(r["dimensions"]["type"] for r in records) == {"app": 3, "session": 1, "player": 1, "editor": 3}
    [player] = by_type(records)["player"]
    assert player["object"]["id"] == "do_1122852550749306881159"
    assert player["object"]["ver"] == "1.0"
    assert player["object"]["type"] == "Content"
    assert player["object"]["rollup"]["l1"] == "do_3124020553502310402803"
    assert player["dimensions"]["mode"] == "preview"
    eks = player["edata"]["eks"]
    # START .350595 → ERROR .350842 (0.247 → 0.25) → INTERRUPT .360223 (9.381 → 9.38) → END .360224 (0.00)
    assert (eks["start_time"], eks["end_time"], eks["time_spent"]) == (1515493350595, 1515493360224, 9.63)
    assert eks["interact_events_count"] == 0
    assert {e["id"]: e["count"] for e in eks["events_summary"]} == {"START": 1, "ERROR": 1, "INTERRUPT": 1,
                                                                   "END": 1}
    [session] = by_type(records)["session"]
    s_eks = session["edata"]["eks"]
    # START .318247, IMPRESSIONs at .322000 and .328000, INTERACT click .328769, IMPRESSION .341000
    assert (s_eks["time_spent"], s_eks["interact_events_count"]) == (22.75, 1)
    assert s_eks["interact_events_per_min"] == 1.0
    editors = sorted(by_type(records)["editor"], key=lambda r: r["edata"]["eks"]["start_time"])
    assert [e["object"]["id"] for e in editors] == ["do_112272655695388672138", "do_112399313109598208196",
                                                    "do_112399313109598208196"]
    # a second START of the editor ends the first; LOG events are not summarised
    assert [e["edata"]["eks"]["time_spent"] for e in editors] == [0.59, 0.34, 18.72]


@pytest.mark.parametrize("name", ["test-data1.log", "test-data2.log"])
def test_the_incremental_summariser_gives_the_same_summaries_when_fed_in_time_order(name):
    events = raw_events(name)
    ordered = sorted(events, key=lambda e: int(e.get("ets") or 0) if isinstance(e, dict) else 0)
    summariser = WorkflowSummariser()
    records = []
    for start in range(0, len(ordered), 7):
        records.extend(summariser.extend(ordered[start:start + 7]))
    records.extend(summariser.flush())
    assert summariser.stats.late_events == 0
    assert sorted(records, key=lambda r: r["mid"]) == sorted(summarise_events(events), key=lambda r: r["mid"])
