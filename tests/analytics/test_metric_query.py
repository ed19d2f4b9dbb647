"""Metric parameters: defaults, ISO times in UTC, bounds, and every bad value a coded refusal."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cohort.analytics.metric_query import iso, parse_metric_query
from cohort.core.errors import CohortError, ErrorCode
from cohort.security.identity import Identity, Role, Scope

NOW = datetime(2026, 3, 10, 15, 30, tzinfo=UTC)
ANALYST = Identity("k1", Role.ANALYST, "tenant-a")
ADMIN = Identity("k0", Role.ADMIN, None)
EDUCATOR = Identity("k2", Role.EDUCATOR, "tenant-a", Scope.parse("rollup.l3:school-1"))


def parse(identity=ANALYST, **params):
    return parse_metric_query(list(params.items()), identity, NOW)


def test_defaults_are_the_last_30_days_today_included_by_day():
    query = parse()
    assert (iso(query.start), iso(query.end)) == ("2026-02-09T00:00:00Z", "2026-03-11T00:00:00Z")
    assert (query.granularity, query.by, query.tenant, query.scope) == ("day", "none", "tenant-a", None)


def test_times_are_iso_dates_or_datetimes_in_utc():
    query = parse(**{"from": "2026-03-01", "to": "2026-03-02T05:30:00+05:30"})
    assert query.start == datetime(2026, 3, 1, tzinfo=UTC) and query.end == datetime(2026, 3, 2, tzinfo=UTC)
    query = parse(**{"from": "2026-03-01T10:00:00.250Z", "to": "2026-03-01T11:00:00"})
    assert iso(query.start) == "2026-03-01T10:00:00.250Z" and iso(query.end) == "2026-03-01T11:00:00Z"


def test_a_scope_comes_from_the_identity_never_from_the_request():
    query = parse(EDUCATOR, by="rollup.l3")
    assert query.scope == Scope.parse("rollup.l3:school-1") and query.tenant == "tenant-a"
    assert query.as_params()["scope"] == "rollup.l3:school-1"


def test_a_request_may_narrow_the_scope_never_widen_it():
    assert parse(ANALYST, scope="rollup.l3:school-9").scope == Scope.parse("rollup.l3:school-9")
    assert parse(ADMIN, scope="batch:b1,b2").scope == Scope.parse("batch:b1,b2")
    wide = Identity("k3", Role.EDUCATOR, "tenant-a", Scope.parse("batch:b1,b2"))
    assert parse(wide, scope="batch:b2").scope == Scope.parse("batch:b2")
    assert parse(wide).scope == wide.scope
    for other in ("batch:b3", "batch:b1,b3", "rollup.l3:school-1", "course:b1"):
        with pytest.raises(CohortError) as refused:
            parse(wide, scope=other)
        assert refused.value.code == ErrorCode.AUTH_FORBIDDEN, other
    for bad in ("school-1", "rollup.l9:x", "batch:", "batch:a'b", "batch:" + "x" * 70):
        with pytest.raises(CohortError) as refused:
            parse(ADMIN, scope=bad)
        assert refused.value.code == ErrorCode.METRIC_PARAM, bad


def test_tenants():
    assert parse(ADMIN).tenant is None  # every tenant
    assert parse(ADMIN, tenant="tenant-b").tenant == "tenant-b"
    assert parse(ANALYST, tenant="tenant-a").tenant == "tenant-a"
    with pytest.raises(CohortError) as refused:
        parse(ANALYST, tenant="tenant-b")
    assert refused.value.code == ErrorCode.AUTH_FORBIDDEN


@pytest.mark.parametrize("params", [
    {"from": "yesterday"}, {"from": "2026-02-30"}, {"to": "2026-13-01"}, {"from": "2026-03-01T25:00"},
    {"from": "2026-03-05", "to": "2026-03-05"}, {"from": "2026-03-06", "to": "2026-03-05"},
    {"from": "2024-01-01", "to": "2026-01-01"}, {"from": "1999-12-31", "to": "2000-01-02"},
    {"from": "2099-12-31", "to": "2100-01-02"}, {"from": "2026-03-01T00:00:00.0001Z", "to": "2026-03-02"},
    {"from": "0001-01-01T00:00:00+01:00"}, {"to": "9999-12-31T23:59:59-05:00"},
    {"granularity": "minute"}, {"granularity": "DAY"}, {"granularity": ""},
    {"by": "rollup.l5"}, {"by": "actor_id"}, {"by": "event"}, {"by": "rollup.l3; DROP TABLE telemetry"},
    {"from": "2026-01-01", "to": "2026-03-01", "granularity": "hour"},
    {"tenant": "a'b"}, {"tenant": ""}, {"tenant": "x" * 200},
    {"limit": "10"}, {"sql": "SELECT 1"}, {"from": "2" * 100},
])
def test_bad_parameters_are_coded(params):
    with pytest.raises(CohortError) as refused:
        parse(ADMIN, **params)
    assert refused.value.code == ErrorCode.METRIC_PARAM


def test_a_repeated_parameter_is_refused():
    with pytest.raises(CohortError) as refused:
        parse_metric_query([("by", "none"), ("by", "rollup.l3")], ANALYST, NOW)
    assert refused.value.code == ErrorCode.METRIC_PARAM


def test_the_widest_windows_allowed():
    assert parse(**{"from": "2025-02-04", "to": "2026-03-11"}).granularity == "day"  # 400 days
    assert parse(**{"from": "2026-02-01", "to": "2026-03-04", "granularity": "hour"}).granularity == "hour"


@settings(max_examples=300, deadline=None)
@given(st.dictionaries(st.sampled_from(["from", "to", "granularity", "by", "tenant", "scope", "x"]),
                       st.text(max_size=40), max_size=5))
def test_any_input_is_a_query_or_a_coded_refusal(params):
    try:
        query = parse_metric_query(list(params.items()), ANALYST, NOW)
    except CohortError as exc:
        assert exc.code in (ErrorCode.METRIC_PARAM, ErrorCode.AUTH_FORBIDDEN)
    else:
        assert query.start < query.end and query.tenant == "tenant-a"
        assert query.start.tzinfo is UTC and query.start.microsecond % 1000 == 0
