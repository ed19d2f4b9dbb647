"""Report parameters: the window and tenant as the series metrics check them, then the report's own options
(type, bounds, required, choices), every bad value a coded refusal and never anything else."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cohort.analytics.content_reports import ItemStats, TopContent
from cohort.analytics.metric_query import iso
from cohort.analytics.report_query import ReportColumn, ReportOption, ReportQuery, parse_report_query
from cohort.analytics.reports import REPORTS
from cohort.core.errors import CohortError, ErrorCode
from cohort.security.identity import Identity, Role, Scope

NOW = datetime(2026, 3, 10, 15, 30, tzinfo=UTC)
ANALYST = Identity("k1", Role.ANALYST, "tenant-a")
ADMIN = Identity("k0", Role.ADMIN, None)
EDUCATOR = Identity("k2", Role.EDUCATOR, "tenant-a", Scope.parse("rollup.l3:school-1"))


@dataclass(frozen=True)
class Sample:
    """A report declaring one option of each kind (its SQL is never asked for here)."""

    name: str = "sample"
    description: str = "options of every kind"
    columns: tuple[ReportColumn, ...] = (ReportColumn("learners", "learners", "distinct learners"),)
    options: tuple[ReportOption, ...] = (
        ReportOption("days", int, "inactive for this many days", 14, 1, 365),
        ReportOption("below", float, "a score share", 0.5, 0, 1),
        ReportOption("course", str, "a course id", required=True),
        ReportOption("reason", str, "why", "any", choices=("any", "inactive", "low_scores")),
    )
    sources: tuple[str, ...] = ("telemetry",)
    individual: bool = True

    def rows_sql(self, query, dialect):
        raise AssertionError("not asked for")

    def freshness_sql(self, query, dialect):
        raise AssertionError("not asked for")


SAMPLE = Sample()


def parse(report=SAMPLE, identity=ANALYST, pairs=None, **params) -> ReportQuery:
    return parse_report_query(report, pairs if pairs is not None else list(params.items()), identity, NOW)


def refused(report=SAMPLE, identity=ANALYST, pairs=None, code=ErrorCode.METRIC_PARAM, **params) -> str:
    with pytest.raises(CohortError) as caught:
        parse(report, identity, pairs, **params)
    assert caught.value.code == code, caught.value.message
    return caught.value.message


def test_the_registry_holds_the_content_reports():
    assert isinstance(REPORTS["top_content"], TopContent) and isinstance(REPORTS["item_stats"], ItemStats)
    for report in REPORTS.values():
        assert report.name and report.description and report.columns and report.sources
        if not report.individual:
            assert "learners" in [column.name for column in report.columns]


def test_defaults_the_window_and_the_options():
    query = parse(REPORTS["top_content"])
    assert (iso(query.start), iso(query.end)) == ("2026-02-09T00:00:00Z", "2026-03-11T00:00:00Z")  # the last 30 days
    assert (query.tenant, query.scope, dict(query.options)) == ("tenant-a", None, {"limit": 10})
    items = parse(REPORTS["item_stats"], **{"from": "2026-03-01", "to": "2026-03-02T06:00:00+05:30"})
    assert items.start == datetime(2026, 3, 1, tzinfo=UTC) and items.end == datetime(2026, 3, 2, 0, 30, tzinfo=UTC)
    assert dict(items.options) == {"content": None, "limit": 100}
    assert items.as_params() == {"from": "2026-03-01T00:00:00Z", "to": "2026-03-02T00:30:00Z", "tenant": "tenant-a",
                                 "scope": None, "content": None, "limit": 100}


def test_options_are_read_as_their_type():
    query = parse(days="30", below="0.25", course="do_123", reason="inactive")
    assert dict(query.options) == {"days": 30, "below": 0.25, "course": "do_123", "reason": "inactive"}
    assert isinstance(query.options["days"], int) and isinstance(query.options["below"], float)
    assert parse(course="c", below="1").options["below"] == 1.0


def test_the_scope_is_the_identitys_and_the_tenant_rule_is_the_metrics():
    query = parse(REPORTS["top_content"], EDUCATOR)
    assert query.scope == Scope.parse("rollup.l3:school-1") and query.as_params()["scope"] == "rollup.l3:school-1"
    assert parse(REPORTS["top_content"], ADMIN).tenant is None
    assert parse(REPORTS["top_content"], ADMIN, tenant="tenant-b").tenant == "tenant-b"
    refused(REPORTS["top_content"], ANALYST, code=ErrorCode.AUTH_FORBIDDEN, tenant="tenant-b")
    refused(REPORTS["top_content"], EDUCATOR, code=ErrorCode.AUTH_FORBIDDEN, tenant="tenant-b")
    refused(REPORTS["top_content"], ANALYST, tenant="a b")


@pytest.mark.parametrize("params", [
    {"limit": "0"}, {"limit": "101"}, {"limit": "-1"}, {"limit": "ten"}, {"limit": "1.5"}, {"limit": ""},
    {"limit": " 5"}, {"limit": "5\n"}, {"limit": "1_0"}, {"limit": "٣"}, {"limit": "9" * 40}, {"limit": "+5"},
    {"granularity": "day"}, {"by": "rollup.l3"}, {"content": "x"}, {"LIMIT": "5"},
    {"from": "yesterday"}, {"from": "2026-03-05", "to": "2026-03-05"}, {"from": "2024-01-01", "to": "2026-01-01"},
    {"to": "2026-02-30"}, {"from": "2026-03-01T00:00:00.0001Z"},
])
def test_bad_top_content_parameters_are_coded(params):
    refused(REPORTS["top_content"], **params)


@pytest.mark.parametrize("params", [
    {"content": "do_1' OR '1'='1"}, {"content": ""}, {"content": "-x"}, {"content": "a b"}, {"content": "x" * 65},
    {"content": "do_1\n"}, {"content": "dö"}, {"limit": "501"}, {"limit": "0"},
])
def test_bad_item_stats_parameters_are_coded(params):
    refused(REPORTS["item_stats"], **params)


def test_required_choices_and_bounds():
    assert "required" in refused(days="3")
    assert "one of" in refused(course="c", reason="everything")
    assert "at most" in refused(course="c", days="366")
    assert "at least" in refused(course="c", below="-0.5")
    refused(course="c", below="nan")
    refused(course="c", below="inf")
    refused(course="c", below="1e-3")


def test_a_scope_may_be_narrowed_never_widened():
    assert parse(REPORTS["top_content"], ANALYST, scope="rollup.l3:school-2").scope == Scope.parse("rollup.l3:school-2")
    assert parse(REPORTS["top_content"], EDUCATOR, scope="rollup.l3:school-1").scope == EDUCATOR.scope
    refused(REPORTS["top_content"], EDUCATOR, code=ErrorCode.AUTH_FORBIDDEN, scope="rollup.l3:school-2")
    refused(REPORTS["top_content"], EDUCATOR, code=ErrorCode.AUTH_FORBIDDEN, scope="rollup.l2:district-1")
    refused(REPORTS["top_content"], ANALYST, scope="school:1")


def test_unknown_and_repeated_parameters():
    assert "unknown parameter" in refused(REPORTS["top_content"], pairs=[("limits", "5")])
    assert "more than once" in refused(REPORTS["top_content"], pairs=[("limit", "5"), ("limit", "5")])
    assert "more than once" in refused(REPORTS["top_content"], pairs=[("from", "2026-03-01"), ("from", "2026-03-01")])
    assert "longer than" in refused(REPORTS["item_stats"], pairs=[("content", "a" * 65)])


@settings(max_examples=300, deadline=None)
@given(pairs=st.lists(st.tuples(st.sampled_from(["from", "to", "tenant", "scope", "limit", "content", "days",
                                                 "below", "course", "reason", "x"]),
                                st.one_of(st.text(max_size=20), st.integers(-10, 1000).map(str),
                                          st.floats(allow_nan=True).map(str),
                                          st.sampled_from(["2026-03-01", "2026-03-09", "tenant-a", "tenant-b",
                                                           "inactive", "do_1", "rollup.l3:school-1", "batch:b1,b2",
                                                           "rollup.l9:x"]))), max_size=6),
       report=st.sampled_from([SAMPLE, *REPORTS.values()]))
def test_any_parameters_give_a_checked_query_or_a_coded_refusal(pairs, report):
    try:
        query = parse_report_query(report, pairs, ANALYST, NOW)
    except CohortError as exc:
        assert exc.code in (ErrorCode.METRIC_PARAM, ErrorCode.AUTH_FORBIDDEN)
        return
    names = [name for name, _ in pairs]
    assert len(names) == len(set(names))
    assert query.tenant == "tenant-a" and query.start < query.end
    assert query.scope == (Scope.parse(dict(pairs)["scope"]) if "scope" in names else None)
    for option in report.options:
        value = query.options[option.name]
        if value is None:
            assert not option.required and option.default is None
            continue
        assert isinstance(value, option.kind)
        if option.minimum is not None:
            assert option.minimum <= value  # type: ignore[operator]
        if option.maximum is not None:
            assert value <= option.maximum  # type: ignore[operator]
        if option.kind is str and option.name in names:
            assert value == dict(pairs)[option.name]
