"""The function allowlist: what analytical queries need passes and runs; builders of huge values do not."""

from __future__ import annotations

import pytest
from sqlglot import exp

from cohort.core.errors import CohortError, ErrorCode
from cohort.security.sql_functions import ALLOWED_EXPRESSIONS
from cohort.security.sql_guard import SqlGuard
from cohort.store.duckdb_store import DuckDbStore
from cohort.security.identity import DEVELOPMENT_IDENTITY as ADMIN

guard = SqlGuard()


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    store = DuckDbStore(tmp_path_factory.mktemp("functions") / "store.duckdb")
    yield store
    store.close()


def test_every_listed_expression_class_exists_in_sqlglot():
    assert sorted(n for n in ALLOWED_EXPRESSIONS if not isinstance(getattr(exp, n, None), type)) == []


ANALYTICS = [
    # aggregates
    "SELECT count(*), count(DISTINCT actor_id), sum(log_offset), avg(log_offset), min(ets), max(ets), "
    "median(log_offset), quantile_cont(log_offset, 0.9), approx_count_distinct(did), stddev(log_offset), "
    "mode(eid), arg_max(eid, ets), any_value(env), bool_or(eid = 'START'), count_if(eid = 'END'), "
    "string_agg(DISTINCT eid, ','), list(DISTINCT channel), histogram(eid), first(mid), last(mid) FROM telemetry",
    "SELECT eid, sum(log_offset) FILTER (WHERE env = 'app') FROM telemetry GROUP BY ALL HAVING count(*) > 1",
    # strings and regular expressions
    "SELECT lower(eid), upper(env), length(mid), substr(mid, 1, 8), left(did, 4), right(did, 4), trim(sid), "
    "replace(channel, '-', ''), split_part(pdata_id, '.', 1), string_split(pdata_id, '.'), concat(eid, ':', mid), "
    "concat_ws('/', channel, env), eid || '-' || env, contains(mid, 'x'), starts_with(pdata_id, 'prod'), "
    "ends_with(pdata_pid, 'app'), strpos(mid, ':'), md5(did), sha256(did), hash(did), lpad(eid, 12, '.'), "
    "regexp_matches(mid, '^[A-Z]+:'), regexp_extract(mid, '^([A-Z]+):', 1), regexp_replace(did, '[0-9]', '#', 'g'), "
    "eid LIKE 'IMP%', eid ILIKE 'imp%', mid ~ '^L' FROM telemetry",
    # dates and times
    "SELECT date_trunc('day', ets), date_part('hour', ets), extract(year FROM ets), datediff('day', ets, now()), "
    "strftime(ets, '%Y-%m'), epoch_ms(ets), epoch_ms(1566242911079), time_bucket(INTERVAL 15 MINUTE, ets), "
    "dayname(ets), year(ets), week(ets), ets + INTERVAL 1 DAY, current_date, current_timestamp, current_time, "
    "make_date(2024, 1, 1), strptime('2024-01-01', '%Y-%m-%d'), age(ets) FROM telemetry",
    # math, casts and conditionals
    "SELECT abs(log_offset), round(log_offset / 3, 2), floor(1.5), ceil(1.5), sqrt(4), power(2, 10), ln(2), "
    "log10(100), greatest(1, 2), least(1, 2), log_offset % 7, CAST(log_offset AS VARCHAR), TRY_CAST(eid AS INT), "
    "log_offset::DOUBLE, typeof(eid), coalesce(sid, 'none'), nullif(env, ''), if(eid = 'START', 1, 0), "
    "CASE WHEN eid = 'END' THEN 'done' ELSE 'open' END, isnan(0.0) FROM telemetry",
    # JSON
    "SELECT edata->>'$.type', edata->'$.id', event->>'$.context.channel', json_extract(event, '$.actor'), "
    "json_extract_string(event, '$.eid'), json_keys(edata), json_array_length(event, '$.context.cdata'), "
    "json_type(edata), json_valid(event), to_json(eid), json_object('e', eid), json_group_array(eid) "
    "FROM telemetry GROUP BY ALL",
    # window functions
    "SELECT row_number() OVER (PARTITION BY sid ORDER BY ets), rank() OVER w, dense_rank() OVER w, "
    "lag(eid) OVER w, lead(eid, 1, 'none') OVER w, first_value(eid) OVER w, ntile(4) OVER w, "
    "sum(log_offset) OVER (ORDER BY ets ROWS BETWEEN 2 PRECEDING AND CURRENT ROW) FROM telemetry WINDOW w AS "
    "(PARTITION BY sid ORDER BY ets) QUALIFY row_number() OVER (PARTITION BY sid ORDER BY ets) = 1",
    # lists and structs
    "SELECT len(string_split(mid, ':')), list_contains(['a', 'b'], eid), list_distinct(['a', 'a']), "
    "list_sort([3, 1]), [1, 2][1], {'e': eid}.e, list_transform([1, 2], x -> x * 2), "
    "list_filter(['a', 'b'], x -> x = eid), unnest(['x', 'y']) FROM telemetry",
    "SELECT tag FROM telemetry, unnest(string_split(mid, ':')) AS t(tag)",
    "SELECT * FROM failed_events WHERE error_code IN (SELECT error_code FROM failed_events WHERE stage = 'validate')",
    "SELECT b.msgid, count(*) FROM telemetry t JOIN ingest_batches b USING (log_offset) GROUP BY 1",
]


@pytest.mark.parametrize("sql", ANALYTICS)
def test_analytical_functions_pass_the_guard_and_run(sql, store):
    checked = guard.check(sql, identity=ADMIN)
    store.query(checked, None, 10, 10.0)  # DuckDB knows every function the guard lets through


@pytest.mark.parametrize("sql, named", [
    ("SELECT len(range(100000000))", "range"),
    ("SELECT * FROM telemetry WHERE length(generate_series(1, 10)::VARCHAR) > 0", "generate_series"),
    ("SELECT repeat('x', 100000) FROM telemetry", "repeat"),
    ("SELECT list_resize([1], 1000000000)", "list_resize"),
    ("SELECT array_fill(1, 1000000000)", "array_fill"),
    ("SELECT printf('%999999999d', 1)", "printf"),
    ("SELECT format('{:>999999999}', 1)", "format"),
    ("SELECT bar(1, 0, 10, 1000000000)", "bar"),
    ("SELECT getenv('HOME')", "getenv"),
    ("SELECT current_setting('threads')", "current_setting"),
    ("SELECT list_transform([1], x -> repeat('x', 1000000))", "repeat"),
])
def test_builders_of_huge_values_and_unknown_functions_are_refused_by_name(sql, named):
    with pytest.raises(CohortError) as info:
        guard.check(sql, identity=ADMIN)
    assert info.value.code == ErrorCode.QUERY_FORBIDDEN
    assert f"function {named} " in info.value.message


@pytest.mark.parametrize("width, allowed", [("12", True), ("1024", True), ("1025", False), ("1000000000", False),
                                             ("length(mid)", False)])
def test_padding_width_is_bounded(width, allowed):
    sql = f"SELECT lpad(mid, {width}, '0'), rpad(mid, 4, ' ') FROM telemetry"
    if allowed:
        guard.check(sql, identity=ADMIN)
    else:
        with pytest.raises(CohortError) as info:
            guard.check(sql, identity=ADMIN)
        assert info.value.code == ErrorCode.QUERY_FORBIDDEN and "1024" in info.value.message


def test_recursive_queries_are_refused():
    with pytest.raises(CohortError) as info:
        guard.check("WITH RECURSIVE r(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM r) SELECT count(*) FROM r", identity=ADMIN)
    assert info.value.code == ErrorCode.QUERY_FORBIDDEN and "RECURSIVE" in info.value.message
