"""top_content and item_stats on the learning world (synthetic_cohorts) in a real DuckDB file and ClickHouse
(chdb): the world's ground truth, whether its slices are refreshed into the rollups or still marked; scoped;
late data right before and after a refresh; suppression and the row limit of answer_report."""

from __future__ import annotations

import uuid
from collections import Counter, defaultdict
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta

import pytest

from analytics.rollup_world import window, world_and_truth, write
from cohort.analytics.content_reports import ItemStats, TopContent, reads_rollups
from cohort.analytics.metric_answer import QueryBounds
from cohort.analytics.report_answer import answer_report
from cohort.analytics.report_query import ReportColumn, ReportQuery
from cohort.analytics.rollup_refresh import RollupRefresher
from cohort.core.errors import CohortError, ErrorCode
from cohort.security.identity import Scope
from cohort.store.clickhouse_store import ClickHouseStore
from cohort.store.duckdb_store import DuckDbStore

BOUNDS = QueryBounds(row_limit=10_000, timeout_s=60.0, max_result_bytes=16 * 1024 * 1024,
                     max_memory_bytes=512 * 1024 * 1024)
TOP, ITEMS = TopContent(), ItemStats()


def _open(kind: str, path, request, database: str):
    if kind == "duckdb":
        return DuckDbStore(path / "store.duckdb")
    return ClickHouseStore(request.getfixturevalue("clickhouse_dsn"), database=database)


def _uploads():
    return world_and_truth()[2]


@pytest.fixture(scope="module", params=["duckdb", "clickhouse"])
def store(request, tmp_path_factory):
    """The world half written and refreshed, then the rest written: some slices in the rollups, the days the
    second half's late uploads re-opened marked again, and the newest days marked only."""
    store = _open(request.param, tmp_path_factory.mktemp("reports"), request, f"reports_{uuid.uuid4().hex[:12]}")
    uploads = _uploads()
    half = len(uploads) // 2
    write(store, [e for upload in uploads[:half] for e in upload], 1)
    RollupRefresher(store).refresh()
    write(store, [e for upload in uploads[half:] for e in upload], 2)
    yield store
    store.close()


def answer(store, report, query: ReportQuery, suppressed: bool = False, k: int = 10, bounds=BOUNDS) -> dict:
    return answer_report(store, report, query, suppressed=suppressed, k=k, bounds=bounds, now=datetime.now(UTC))


def _dirty(store) -> int:
    count = "count()" if store.capabilities.sql_dialect == "clickhouse" else "count(*)"
    return store.query(f"SELECT {count} FROM rollup_dirty", None, 1, 10.0).rows[0][0]


def scopes(tenant: str) -> list[Scope | None]:
    world, _, _ = world_and_truth()
    batch = min(b.id for b in world.batches.values() if b.tenant == tenant)
    course = min(c.id for c in world.courses.values() if c.tenant == tenant)
    school = min(c.rollup["l3"] for c in world.classes.values() if c.rollup["l1"] == tenant)
    return [None, Scope.parse(f"batch:{batch}"), Scope.parse(f"course:{course}"), Scope.parse(f"rollup.l3:{school}")]


def content_facts(tenant: str | None) -> dict[str, tuple[int, float, int, int]]:
    """Per content, from the world's events (not the code under test): plays, time spent, completions, learners."""
    plays: Counter[str] = Counter()
    seconds: defaultdict[str, float] = defaultdict(float)
    done: Counter[str] = Counter()
    who: defaultdict[str, set[str]] = defaultdict(set)
    for upload in _uploads():
        for e in upload:
            if (tenant is not None and e["context"]["channel"] != tenant) or e["context"]["env"] != "contentplayer":
                continue
            content = e["object"]["id"]
            if e["eid"] == "START":
                plays[content] += 1
                who[content].add(e["actor"]["id"])
            elif e["eid"] == "END":
                seconds[content] += e["edata"]["duration"]
                done[content] += {"progress": 100} in e["edata"]["summary"]
    return {c: (plays[c], round(seconds[c], 3), done[c], len(who[c])) for c in plays}


def top_rows(store, query: ReportQuery) -> list[list]:
    """The answer's rows (the tenant's marked days read first), checked against the statement that finds the
    marked slices itself (what lineage shows)."""
    rows = answer(store, TOP, query)["rows"]
    assert general_rows(store, TOP, query) == rows
    return rows


def general_rows(store, report, query: ReportQuery) -> list[list]:
    statement = report.rows_sql(replace(query, marked=None), store.capabilities.sql_dialect)
    return [[round(v, 3) if isinstance(v, float) else v for v in row]
            for row in store.query(statement.sql, statement.params, 10_000, 60.0).rows]


def test_top_content_is_the_worlds_most_played_with_its_time_completions_and_learners(store):
    _, truth, _ = world_and_truth()
    start, end = window()
    assert _dirty(store) > 0  # a mixed state: refreshed slices and marked ones
    for refreshed in (False, True):
        if refreshed:
            RollupRefresher(store).refresh()
            assert _dirty(store) == 0
        for tenant in truth.tenants:
            query = ReportQuery(start, end, tenant, None, {"limit": 100})
            assert reads_rollups(query)
            rows = top_rows(store, query)
            expected = truth.top_content(tenant, truth.start, until=truth.end, n=100)
            assert [(row[0], row[1]) for row in rows] == expected and len(expected) > 10
            facts = content_facts(tenant)
            for content_id, plays, seconds, completions, learners in rows:
                assert (plays, completions, learners) == (facts[content_id][0], facts[content_id][2],
                                                          facts[content_id][3])
                assert seconds == pytest.approx(facts[content_id][1], abs=1e-3)
            if not refreshed:
                assert top_rows(store, replace(query, options={"limit": 3})) == rows[:3]


def test_top_content_in_a_scope_is_the_scopes_and_the_same_from_telemetry_alone(store):
    _, truth, _ = world_and_truth()
    start, end = window()
    tenant = truth.tenants[0]
    for scope in scopes(tenant)[1:]:
        query = ReportQuery(start, end, tenant, scope, {"limit": 100})
        rows = top_rows(store, query)
        expected = truth.top_content(tenant, truth.start, scope, until=truth.end, n=100)
        assert [(row[0], row[1]) for row in rows] == expected and expected, scope
        # a window one millisecond wider is not whole days: read from telemetry only, the same rows
        raw = replace(query, start=start - timedelta(milliseconds=1))
        assert not reads_rollups(raw)
        assert top_rows(store, raw) == rows
        assert set(row[0] for row in rows) < set(content_facts(tenant))


def test_an_admin_without_a_tenant_gets_every_tenants_content(store):
    start, end = window()
    rows = top_rows(store, ReportQuery(start, end, None, None, {"limit": 100}))
    facts = content_facts(None)
    assert sorted((row[0], row[1]) for row in rows) == sorted((c, f[0]) for c, f in facts.items())
    assert [row[1] for row in rows] == sorted((row[1] for row in rows), reverse=True)


def expected_items(tenant: str, scope) -> dict[tuple, tuple]:
    _, truth, _ = world_and_truth()
    world = truth.world
    out = {}
    for item, stats in truth.item_stats(tenant, scope).items():
        content = next(c.id for c in world.courses.values() for c in c.contents if any(i.id == item for i in c.items))
        out[(item, content)] = (stats.attempts, stats.learners, round(stats.first_attempt_correct_pct, 3),
                                round(100 * stats.avg_score / stats.maxscore, 3), round(stats.avg_seconds, 3))
    return out


def item_rows(store, query: ReportQuery) -> dict[tuple, tuple]:
    rows = answer(store, ITEMS, query)["rows"]
    assert general_rows(store, ITEMS, query) == rows
    pct = [row[4] for row in rows]
    assert pct == sorted(pct)  # hardest first
    return {(row[0], row[1]): tuple(row[2:]) for row in rows}


@pytest.mark.parametrize("scoped", [False, True])
def test_item_statistics_are_the_worlds(store, scoped):
    _, truth, _ = world_and_truth()
    start, end = window()
    for tenant in truth.tenants:
        for scope in scopes(tenant)[1:] if scoped else [None]:
            got = item_rows(store, ReportQuery(start, end, tenant, scope, {"limit": 500, "content": None}))
            expected = expected_items(tenant, scope)
            assert expected, (tenant, scope)
            assert set(got) == set(expected)
            for key, (attempts, learners, first_pct, score_pct, seconds) in expected.items():
                assert got[key][:2] == (attempts, learners), key
                assert got[key][2:] == pytest.approx((first_pct, score_pct, seconds), abs=2e-3), key


def test_item_statistics_of_one_content_and_the_limit(store):
    _, truth, _ = world_and_truth()
    start, end = window()
    tenant = truth.tenants[0]
    everything = answer(store, ITEMS, ReportQuery(start, end, tenant, None, {"limit": 500, "content": None}))["rows"]
    content = Counter(row[1] for row in everything).most_common(1)[0][0]
    one = answer(store, ITEMS, ReportQuery(start, end, tenant, None, {"limit": 500, "content": content}))["rows"]
    assert one == [row for row in everything if row[1] == content] and len(one) >= 3
    two = answer(store, ITEMS, ReportQuery(start, end, tenant, None, {"limit": 2, "content": None}))["rows"]
    assert two == everything[:2]
    nothing = answer(store, ITEMS, ReportQuery(start, end, tenant, None, {"limit": 5, "content": "do_absent"}))
    assert nothing["rows"] == []
    other = answer(store, TOP, ReportQuery(start, end, "no-such-tenant", None, {"limit": 5}))
    assert other["rows"] == [] and other["freshness"]["as_of"] is None


def test_the_answer_says_what_it_is_how_fresh_and_how_complete(store):
    start, end = window()
    tenant = world_and_truth()[1].tenants[0]
    body = answer(store, TOP, ReportQuery(start, end, tenant, None, {"limit": 5}))
    assert (body["metric"], body["kind"], body["tenant"], body["scope"]) == ("top_content", "report", tenant, None)
    assert [c["name"] for c in body["columns"]] == ["content_id", "plays", "time_spent", "completions", "learners"]
    assert body["params"] == {"from": "2026-06-22T00:00:00Z", "to": "2026-07-01T00:00:00Z", "tenant": tenant,
                              "scope": None, "limit": 5}
    assert body["freshness"]["as_of"].endswith("Z") and body["completeness"]["window_closed"] is True
    assert isinstance(body["completeness"]["late_slices"], list)
    assert body["suppression"] == {"applied": False, "k": 10, "suppressed_rows": 0}


def test_rows_from_fewer_than_k_learners_are_withheld_from_suppressed_roles(store):
    start, end = window()
    tenant = world_and_truth()[1].tenants[0]
    query = ReportQuery(start, end, tenant, None, {"limit": 100})
    exact = answer(store, TOP, query)["rows"]
    for k in (1, 4, 10):
        body = answer(store, TOP, query, suppressed=True, k=k)
        assert body["rows"] == [row for row in exact if row[4] >= k]
        assert body["suppression"] == {"applied": True, "k": k, "suppressed_rows": len(exact) - len(body["rows"])}
    assert 0 < len(answer(store, TOP, query, suppressed=True, k=10)["rows"]) < len(exact)
    items = answer(store, ITEMS, ReportQuery(start, end, tenant, None, {"limit": 500, "content": None}),
                   suppressed=True, k=3)
    assert all(row[3] >= 3 for row in items["rows"]) and items["suppression"]["suppressed_rows"] > 0


@dataclass(frozen=True)
class OneLearnerReport:
    """A report of individual learners (as learner_reports' are): refused whole to suppressed roles."""

    name: str = "one_learner"
    description: str = "a learner's record"
    columns: tuple[ReportColumn, ...] = (ReportColumn("learner", "id", "a pseudonym"),)
    options: tuple = ()
    sources: tuple[str, ...] = ("telemetry",)
    individual: bool = True

    def rows_sql(self, query, dialect):
        return TOP.rows_sql(ReportQuery(query.start, query.end, query.tenant, query.scope, {"limit": 1}), dialect)

    def freshness_sql(self, query, dialect):
        return TOP.freshness_sql(query, dialect)


def test_an_individual_report_is_refused_to_suppressed_roles_and_a_large_one_to_all(store):
    start, end = window()
    query = ReportQuery(start, end, None, None, {"limit": 100})
    with pytest.raises(CohortError) as refused:
        answer(store, OneLearnerReport(), query, suppressed=True)
    assert refused.value.code == ErrorCode.AUTH_FORBIDDEN
    assert len(answer(store, OneLearnerReport(), query)["rows"]) == 1
    with pytest.raises(CohortError) as large:
        answer(store, TOP, query, bounds=replace(BOUNDS, row_limit=5))
    assert large.value.code == ErrorCode.METRIC_TOO_LARGE


# --- late data, right before and after a refresh ----------------------------------------------------------

LATE_DAYS = 4  # the late-data store holds the first tenant's first days only: the test is about differences


def _late_world() -> list[dict]:
    start, _ = window()
    tenant = world_and_truth()[1].tenants[0]
    until_ms = int((start + timedelta(days=LATE_DAYS)).timestamp() * 1000)
    return [e for upload in _uploads() for e in upload if e["context"]["channel"] == tenant and e["ets"] < until_ms]


@pytest.fixture(params=["duckdb", "clickhouse"])
def fresh_store(request, tmp_path):
    store = _open(request.param, tmp_path, request, f"late_{uuid.uuid4().hex[:12]}")
    write(store, _late_world(), 1)
    RollupRefresher(store).refresh()
    yield store
    store.close()


def _first_wrong_attempt() -> dict:
    """An ASSESS that is a learner's first attempt at its item, and not right."""
    first: dict[tuple[str, str], dict] = {}
    for e in _late_world():
        if e["eid"] == "ASSESS":
            key = (e["actor"]["id"], e["edata"]["item"]["id"])
            if key not in first or e["ets"] < first[key]["ets"]:
                first[key] = e
    return next(e for _, e in sorted(first.items()) if e["edata"]["score"] < e["edata"]["item"]["maxscore"])


def test_late_events_count_at_once_and_stay_counted_after_the_refresh(fresh_store):
    store = fresh_store
    _, truth, _ = world_and_truth()
    start, _ = window()
    end = start + timedelta(days=LATE_DAYS)
    tenant = truth.tenants[0]
    top_query = ReportQuery(start, end, tenant, None, {"limit": 100})
    wrong = _first_wrong_attempt()
    item_key = (wrong["edata"]["item"]["id"], wrong["object"]["id"])
    item_query = ReportQuery(start, end, tenant, None, {"limit": 500, "content": wrong["object"]["id"]})
    before_top = {row[0]: row for row in answer(store, TOP, top_query)["rows"]}
    before_item = {(r[0], r[1]): r for r in answer(store, ITEMS, item_query)["rows"]}[item_key]
    assert _dirty(store) == 0

    # a device syncs a play of days ago and, for the same learner, an earlier right answer to the item
    play = next(e for e in _late_world() if e["eid"] == "START" and e["context"]["env"] == "contentplayer" and
                e["ets"] // 86_400_000 == (start + timedelta(days=2)).timestamp() // 86_400)
    right = {**wrong, "mid": "late-" + wrong["mid"], "ets": wrong["ets"] - 60_000,
             "edata": {**wrong["edata"], "score": wrong["edata"]["item"]["maxscore"], "pass": "Yes"}}
    write(store, [{**play, "mid": "late-" + play["mid"]}, right], offset=100)
    assert _dirty(store) > 0

    refresher = RollupRefresher(store)
    for refreshed in (False, True):
        if refreshed:
            refresher.refresh()
            assert _dirty(store) == 0
        top = answer(store, TOP, top_query)
        rows = {row[0]: row for row in top["rows"]}
        content = play["object"]["id"]
        assert rows[content][1] == before_top[content][1] + 1
        assert {c: r for c, r in rows.items() if c != content} == {c: r for c, r in before_top.items() if c != content}
        assert general_rows(store, TOP, top_query) == top["rows"]
        item_answer = answer(store, ITEMS, item_query)["rows"]
        assert general_rows(store, ITEMS, item_query) == item_answer
        item = {(r[0], r[1]): r for r in item_answer}[item_key]
        attempts, learners = before_item[2], before_item[3]
        assert (item[2], item[3]) == (attempts + 1, learners)
        assert item[4] == pytest.approx(before_item[4] + 100 / learners, abs=2e-3)  # one more right first attempt
        late = top["completeness"]["late_slices"]
        days = {slice_["day"]: slice_["refreshed"] for slice_ in late}
        play_day = datetime.fromtimestamp(play["ets"] / 1000, tz=UTC).date().isoformat()
        assert days.get(play_day) is refreshed, late
