"""GET /v1/audit: admins read the whole log, tenant admins their tenant's entries only, others nothing; every
read is itself recorded; bad parameters get coded 400s."""

from __future__ import annotations

import pytest

from cohort.core.errors import ErrorCode
from cohort.security.audit_log import AuditLogUnavailable
from cohort.security.identity import Role

TENANT_A = "tenant-a"
TENANT_B = "tenant-b"


def key_for(client, tenant: str, role: Role) -> dict[str, str]:
    store = client.app.state.authenticator.key_store
    if not store.tenant_exists(tenant):
        store.create_tenant(tenant)
    _, key = store.create_key(tenant, role)
    return {"Authorization": f"Bearer {key}"}


def test_each_tenant_admin_reads_its_own_tenant_only_and_admin_reads_all(client):
    a_admin, b_admin = key_for(client, TENANT_A, Role.TENANT_ADMIN), key_for(client, TENANT_B, Role.TENANT_ADMIN)
    assert client.post("/v1/query", json={"sql": "SELECT 1 AS one"}, headers=a_admin).status_code == 200
    assert client.post("/v1/query", json={"sql": "SELECT 2 AS two"}, headers=b_admin).status_code == 200

    mine = client.get("/v1/audit", headers=a_admin)
    assert mine.status_code == 200
    entries = mine.json()["result"]["entries"]
    assert entries and {e["tenant"] for e in entries} == {TENANT_A}
    assert [e["action"] for e in entries if e["action"] == "query"] == ["query"]

    everyone = client.get("/v1/audit").json()["result"]["entries"]  # the client's own key is an admin's
    assert {TENANT_A, TENANT_B} <= {e["tenant"] for e in everyone}
    only_b = client.get("/v1/audit", params={"tenant": TENANT_B}).json()["result"]["entries"]
    assert only_b and {e["tenant"] for e in only_b} == {TENANT_B}


def test_reading_is_recorded_and_pages_follow_on(client):
    headers = key_for(client, TENANT_A, Role.TENANT_ADMIN)
    for n in range(3):
        client.post("/v1/query", json={"sql": f"SELECT {n} AS n"}, headers=headers)
    first = client.get("/v1/audit", params={"limit": 2}, headers=headers).json()
    assert len(first["result"]["entries"]) == 2 and first["meta"]["more"] is True
    rest = client.get("/v1/audit", params={"since": first["meta"]["next_since"]}, headers=headers).json()
    seqs = [e["seq"] for e in first["result"]["entries"] + rest["result"]["entries"]]
    assert seqs == sorted(set(seqs))  # no entry twice, oldest first
    actions = [e["action"] for e in rest["result"]["entries"]]
    assert "audit.read" in actions  # the first page's read is itself in the log
    assert client.app.state.audit.verify().ok


@pytest.mark.parametrize("role", [Role.ANALYST, Role.EDUCATOR, Role.INGESTOR])
def test_roles_without_audit_access_are_refused(client, role):
    response = client.get("/v1/audit", headers=key_for(client, TENANT_A, role))
    assert response.status_code == 403 and response.json()["params"]["err"] == ErrorCode.AUTH_FORBIDDEN


def test_without_credentials_401(client):
    response = client.get("/v1/audit", headers={"Authorization": ""})
    assert response.status_code == 401


def test_a_tenant_admin_cannot_name_another_tenant(client):
    response = client.get("/v1/audit", params={"tenant": TENANT_B}, headers=key_for(client, TENANT_A, Role.TENANT_ADMIN))
    assert response.status_code == 403 and response.json()["params"]["err"] == ErrorCode.AUTH_FORBIDDEN


@pytest.mark.parametrize("params", [{"since": "-1"}, {"since": "x"}, {"limit": "0"}, {"limit": "10001"},
                                    {"limit": "1e3"}, {"since": "9" * 40}, {"tenant": "bad tenant!"},
                                    {"tenant": "x" * 500}, {"bogus": "1"}, {"since": "１２"}])
def test_bad_parameters_get_coded_400s(client, params):
    response = client.get("/v1/audit", params=params)
    assert response.status_code == 400, response.text
    assert response.json()["params"]["err"] in (ErrorCode.AUDIT_INPUT, ErrorCode.AUTH_INVALID_TENANT)


def test_audit_log_away_is_503(client, monkeypatch):
    def away(*args, **kwargs):
        raise AuditLogUnavailable("injected: disk away")

    monkeypatch.setattr(client.app.state.audit, "entries", away)
    response = client.get("/v1/audit")
    assert response.status_code == 503 and response.json()["params"]["err"] == ErrorCode.AUDIT_UNAVAILABLE
