"""Every query is in the audit log (who, when, on which tenant, with what outcome, never the SQL text), and a
query that cannot be audited gets no answer."""

from __future__ import annotations

from cohort.core.errors import ErrorCode
from cohort.security.audit_log import AuditLogUnavailable
from cohort.security.identity import Role

TENANT = "505c7c48ac6dc1edc9b08f21db5a571d"


def analyst_key(client) -> tuple[str, str]:
    store = client.app.state.authenticator.key_store
    if not store.tenant_exists(TENANT):
        store.create_tenant(TENANT)
    info, key = store.create_key(TENANT, Role.ANALYST)
    return info.key_id, key


def test_queries_are_audited_with_who_and_outcome_and_the_chain_verifies(client):
    key_id, key = analyst_key(client)
    headers = {"Authorization": f"Bearer {key}"}
    assert client.post("/v1/query", json={"sql": "SELECT count(*) AS n FROM telemetry"},
                       headers=headers).status_code == 200
    refused = client.post("/v1/query", json={"sql": "SELECT * FROM ingest_batches"}, headers=headers)
    assert refused.status_code == 403
    audit = client.app.state.queries.audit
    mine = [e for e in audit.entries(tenant=TENANT) if e.actor_subject == key_id]
    assert [(e.action, e.outcome, e.actor_role, e.tenant) for e in mine] == [
        ("query", "ok", "analyst", TENANT), ("query", "refused", "analyst", TENANT)]
    assert "ingest_batches" not in str([e.as_dict() for e in mine])  # a digest of the SQL, not its text
    assert audit.verify().ok


def test_a_query_that_cannot_be_audited_gets_no_answer(client, monkeypatch):
    def away(*args, **kwargs):
        raise AuditLogUnavailable("injected: the audit log's disk is full")

    monkeypatch.setattr(client.app.state.queries.audit, "append", away)
    response = client.post("/v1/query", json={"sql": "SELECT 'the-answer-7' AS answer"})
    assert response.status_code == 503 and response.json()["params"]["err"] == ErrorCode.AUDIT_UNAVAILABLE
    assert response.json()["result"] == {} and "the-answer-7" not in response.text  # no row, not even in the text
