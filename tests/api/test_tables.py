"""GET /v1/tables: what the caller may query, in the store's dialect, limited as its rows are."""

from __future__ import annotations

import pytest

from cohort.security.table_catalog import CATALOG
from tenant_stores import TENANT_A, tenant_api


@pytest.fixture(scope="module", params=["duckdb", "clickhouse"])
def client(request, tmp_path_factory):
    with tenant_api(None, request.param, tmp_path_factory.mktemp("tables")) as client:
        yield request.param, client


def tables(client, caller: str):
    return client.get("/v1/tables", headers={"X-Test-Caller": caller})


def test_an_analyst_sees_its_tables_columns_types_and_how_rows_are_limited(client):
    dialect, client = client
    response = tables(client, "analyst-a")
    assert response.status_code == 200
    body = response.json()
    assert body["id"] == "api.tables" and body["params"]["status"] == "successful" and body["responseCode"] == "SUCCESS"
    result = body["result"]
    assert result["dialect"] == dialect and result["tenant"] == TENANT_A
    assert [t["name"] for t in result["tables"]] == ["telemetry", "failed_events", "learner_hours", "device_hours",
                                                    "content_days", "item_days", "learner_days", "workflow_summaries", "rollup_dirty"]
    telemetry = result["tables"][0]
    assert TENANT_A in telemetry["rows"] and "channel" in telemetry["rows"]
    columns = {c["name"]: c for c in telemetry["columns"]}
    assert list(columns) == [c.name for c in CATALOG["telemetry"].columns]
    assert columns["actor_id"]["type"] == ("Nullable(String)" if dialect == "clickhouse" else "VARCHAR")
    assert "pseudonym" in columns["actor_id"]["description"]


def test_an_admin_sees_every_table(client):
    _, client = client
    body = tables(client, "admin").json()
    assert [t["name"] for t in body["result"]["tables"]] == ["telemetry", "failed_events", "ingest_batches",
                                                             "learner_hours", "device_hours", "content_days", "item_days", "learner_days", "workflow_summaries", "rollup_dirty"]
    assert body["result"]["tenant"] is None and body["result"]["tables"][0]["rows"] == "all tenants' rows"


@pytest.mark.parametrize("caller", ["ingestor-a", "educator-a"])
def test_roles_that_cannot_query_cannot_list(client, caller):
    _, client = client
    response = tables(client, caller)
    assert response.status_code == 403
    assert response.json()["params"]["err"] == "ERR_AUTH_FORBIDDEN" and response.json()["responseCode"] == "CLIENT_ERROR"


def test_without_an_identity_the_answer_is_a_coded_refusal(client):
    _, client = client
    response = client.get("/v1/tables")
    assert response.status_code == 401 and response.json()["params"]["err"] == "ERR_AUTH_REQUIRED"


def test_a_scoped_analyst_is_told_its_rows_are_its_scopes_and_not_shown_the_quarantine(client, monkeypatch):
    from cohort.security.identity import Identity, Role, Scope
    from tenant_stores import IDENTITIES

    monkeypatch.setitem(IDENTITIES, "analyst-a-batch", Identity("key-scoped", Role.ANALYST, TENANT_A,
                                                                 scope=Scope.parse("batch:b-7,b-8")))
    _, client = client
    response = tables(client, "analyst-a-batch")
    assert response.status_code == 200
    result = response.json()["result"]
    assert result["tenant"] == TENANT_A and [t["name"] for t in result["tables"]] == ["telemetry"]
    note = result["tables"][0]["rows"]
    assert TENANT_A in note and "batch:b-7,b-8" in note and "course batch b-7 or b-8" in note
