"""Values that could grow without bound inside one expression are refused before the query runs."""

from __future__ import annotations

import pytest

from cohort.core.errors import CohortError, ErrorCode
from cohort.security.sql_guard import SqlGuard
from cohort.security.identity import DEVELOPMENT_IDENTITY as ADMIN

guard = SqlGuard()
LONG = "x" * 200


@pytest.mark.parametrize("sql", [
    # the replacement multiplies the input (two nested ones took a server to 23 GB)
    f"SELECT replace(event, '\"', '{LONG}') FROM telemetry",
    f"SELECT replace(replace(event, '\"', '{LONG[:20]}'), 'x', '{LONG[:20]}') FROM telemetry",
    "SELECT replace(event, '\"', event) FROM telemetry",
    f"SELECT regexp_replace(event, '', '{LONG[:40]}', 'g') FROM telemetry",
    "SELECT regexp_replace(event, '(.)', '\\1\\1\\1\\1\\1\\1\\1\\1\\1\\1\\1\\1\\1\\1\\1\\1', 'g') FROM telemetry",
    f"SELECT array_to_string(string_split(event, ''), '{LONG}') FROM telemetry",
    "SELECT array_to_string(string_split(event, ''), event) FROM telemetry",
    # every intermediate of a long || chain is kept
    "SELECT " + " || ".join(["event"] * 40) + " FROM telemetry",
    # growth that compounds through CTEs
    "WITH a AS (SELECT event || event AS e FROM telemetry), b AS (SELECT e || e AS e FROM a), "
    "c AS (SELECT e || e AS e FROM b), d AS (SELECT e || e AS e FROM c), f AS (SELECT e || e AS e FROM d), "
    "g AS (SELECT e || e AS e FROM f) SELECT e FROM g",
    "SELECT hex(hex(hex(hex(hex(hex(event)))))) FROM telemetry",
    # a lambda that copies a column into every element of a list, or folds a list into a growing value
    "SELECT list_transform(string_split(event, ''), c -> event) FROM telemetry",
    "SELECT list_reduce(string_split(event, ''), (a, b) -> a || a) FROM telemetry",
    # a list-building aggregate (as big as the rows it read) combined back into every row, or over a window
    "SELECT t.event || s.a FROM telemetry t, (SELECT string_agg(event, ',') AS a FROM telemetry) s",
    "SELECT event || (SELECT string_agg(event, ',') FROM telemetry) FROM telemetry",
    "SELECT string_agg(event, ',') OVER (ORDER BY ets) FROM telemetry",
    "SELECT list(event) OVER (PARTITION BY sid) FROM telemetry",
])
def test_unbounded_growth_is_refused(sql):
    with pytest.raises(CohortError) as info:
        guard.check(sql, identity=ADMIN)
    assert info.value.code == ErrorCode.QUERY_TOO_COMPLEX
    assert info.value.message.startswith("query could use unbounded memory")


@pytest.mark.parametrize("sql", [
    "SELECT replace(mid, ':', '-'), replace(event, '\"', '''') FROM telemetry",
    "SELECT regexp_replace(event, '\\s+', ' ', 'g'), regexp_replace(mid, '^(\\w+):', '\\1 ') FROM telemetry",
    "SELECT eid || ',' || mid || ',' || channel || ',' || actor_id || ',' || did || ',' || env FROM telemetry",
    "SELECT concat_ws(',', eid, mid, channel, actor_id, did, sid, env, pdata_id, pdata_pid, pdata_ver, object_id) "
    "FROM telemetry",
    "SELECT string_agg(mid, ',') AS mids, list(eid), length(string_agg(event, '')) FROM telemetry GROUP BY sid",
    "SELECT s.a FROM (SELECT string_agg(event, ',') AS a FROM telemetry) s",
    "SELECT list_transform(string_split(mid, ':'), p -> upper(p)) FROM telemetry",
    "SELECT x FROM telemetry, unnest(string_split(event, ',')) AS u(x)",
    "SELECT a + b + c + d + e + f + g + h + i + j + k + l + m + n + o + p FROM telemetry",
    "SELECT to_json(t) FROM telemetry AS t",
])
def test_ordinary_queries_pass(sql):
    guard.check(sql, identity=ADMIN)


def test_parameters_and_literals_weigh_their_size():
    big = {"p": "x" * 40_000}  # ≈ 20 events' worth
    guard.check("SELECT $p AS v", big, identity=ADMIN)
    with pytest.raises(CohortError) as info:
        guard.check("SELECT event || $p || $p AS v FROM telemetry", big, identity=ADMIN)
    assert info.value.code == ErrorCode.QUERY_TOO_COMPLEX
    guard.check("SELECT event || $p || $p AS v FROM telemetry", {"p": "small"}, identity=ADMIN)
    guard.check("SELECT mid FROM telemetry WHERE mid IN (SELECT unnest($ids))", {"ids": [f"m{i}" for i in range(500)]}, identity=ADMIN)
