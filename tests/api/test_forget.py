"""POST /v1/forget on the embedded footprint: a learner's rows, dedup keys and vault entry go; the rest stays;
the ledger still reconciles; the audit log has it without the clear id; roles and tenants hold; bad input is a
coded 4xx."""

from __future__ import annotations

import time

import pytest

from cohort.core.errors import ErrorCode
from cohort.core.pseudonyms import LEARNER
from cohort.security.audit_log import AuditLogUnavailable
from cohort.security.identity import Role, Scope
from support import app_settings, envelope, metric_values, query, wait_for

TENANT = "505c7c48ac6dc1edc9b08f21db5a571d"  # the real sample's channel
OTHER = "other-state"
A, B = "learner-A-clear-id", "learner-B-clear-id"


CACHE_S = 1.0  # how long the pipeline remembers a pseudonym (pseudonym_cache_seconds): short, so the test waits little


@pytest.fixture
def settings(tmp_path):
    return app_settings(tmp_path / "data", pseudonym_cache_seconds=CACHE_S)


def learner_events(sample_events: list[dict], learner: str, tag: str, n: int = 5) -> list[dict]:
    users = [e for e in sample_events if e.get("actor", {}).get("type") == "User"
             and e.get("context", {}).get("channel") == TENANT]
    return [dict(e, mid=f"{tag}-{i}", actor={**e["actor"], "id": learner}) for i, e in enumerate(users[:n])]


def role_keys(client) -> dict[str, str]:
    store = client.app.state.authenticator.key_store
    for tenant in (TENANT, OTHER):
        if not store.tenant_exists(tenant):
            store.create_tenant(tenant)
    return {"tenant_admin": store.create_key(TENANT, Role.TENANT_ADMIN)[1],
            "other_admin": store.create_key(OTHER, Role.TENANT_ADMIN)[1],
            "analyst": store.create_key(TENANT, Role.ANALYST)[1],
            "ingestor": store.create_key(TENANT, Role.INGESTOR)[1],
            "educator": store.create_key(TENANT, Role.EDUCATOR, Scope.parse("batch:b1"))[1]}


def forget(client, body, key: str | None = None, **kwargs):
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    if isinstance(body, (bytes, str)):
        return client.post("/v1/forget", content=body, headers=headers, **kwargs)
    return client.post("/v1/forget", json=body, headers=headers, **kwargs)


def ingest_a_and_b(client, sample_events):
    a, b = learner_events(sample_events, A, "a"), learner_events(sample_events, B, "b")
    a_bad = {k: v for k, v in dict(a[0], mid="a-bad").items() if k != "ets"}  # quarantined (no ets)
    response = client.post("/v1/telemetry", content=envelope(a + b + [a_bad]))
    assert response.status_code == 200, response.text
    assert wait_for(lambda: query(client, "SELECT count(*) AS n FROM telemetry")[0]["n"] == 10
                    and query(client, "SELECT count(*) AS n FROM failed_events")[0]["n"] == 1, timeout=30)
    return a, b


def count_of(client, pseudonym: str) -> int:
    return query(client, "SELECT count(*) AS n FROM telemetry WHERE actor_id = $p", {"p": pseudonym})[0]["n"]


def test_forget_removes_one_learner_and_keeps_the_rest(client, settings, sample_events):
    keys = role_keys(client)
    a, b = ingest_a_and_b(client, sample_events)
    vault, node, audit = client.app.state.vault, client.app.state.node, client.app.state.audit
    pa, pb = vault.pseudonym_of(TENANT, LEARNER, A), vault.pseudonym_of(TENANT, LEARNER, B)
    assert pa and pb and count_of(client, pa) == 5
    failed_payload = query(client, "SELECT payload FROM failed_events")[0]["payload"]
    wal = settings.store_path.with_name(settings.store_path.name + ".wal")
    assert pa.encode() in wal.read_bytes()  # the inserts are in the WAL before the forget (the scan can find it)

    response = forget(client, {"tenant": TENANT, "learner": A}, keys["tenant_admin"])
    forgotten_at = time.monotonic()

    assert response.status_code == 200, response.text
    result = response.json()["result"]
    assert result["held"] and result["pseudonym"] == pa and result["vault_entry"]
    assert (result["telemetry_rows"], result["dedup_keys"]) == (5, 5)
    assert A not in response.text
    # the store: none of A's rows, B's untouched, nothing of A left in the WAL after the checkpoint
    assert count_of(client, pa) == 0 and count_of(client, pb) == 5
    assert query(client, "SELECT count(*) AS n FROM telemetry WHERE event LIKE $p", {"p": f"%{pa}%"})[0]["n"] == 0
    assert query(client, "SELECT count(*) AS n FROM failed_events WHERE payload LIKE $p",
                 {"p": f"%{pa}%"})[0]["n"] == 0
    assert not wal.exists() or pa.encode() not in wal.read_bytes()
    # the vault: A's pseudonym is linked to nobody, B's still is
    assert vault.reidentify(TENANT, [pa, pb]) == {pb: B} and vault.pseudonym_of(TENANT, LEARNER, A) is None
    # the dedup state: A's mids gone, B's held
    assert node.mid_dedup.seen([e["mid"] for e in a + b]) == {e["mid"] for e in b}
    # the audit log: the request and its outcome, with the pseudonym and counts, never the clear id
    entries = [e for e in audit.entries(tenant=TENANT) if e.action == "forget"]
    assert [e.outcome for e in entries] == ["requested", "ok"]
    assert entries[1].detail["pseudonym"] == pa and entries[1].detail["telemetry_rows"] == 5
    assert all(A not in repr(e.as_dict()) for e in audit.entries(limit=10_000))
    # the ledger still reconciles: counters say what processing did, rows deleted since are the audit's
    metrics = metric_values(client)
    assert metrics["cohort_events_unaccounted"] == 0
    assert metrics["cohort_events_stored_total"] == 10
    # forgetting again: nothing held, still 200
    again = forget(client, {"tenant": TENANT, "learner": A}, keys["tenant_admin"])
    assert again.status_code == 200 and again.json()["result"]["held"] is False

    # one of A's old events sent again (same mid, new request) is stored again: its dedup key is gone. Once
    # the pipeline's memory of pseudonyms has expired (CACHE_S), A gets a new pseudonym
    time.sleep(max(0.0, CACHE_S + 1 - (time.monotonic() - forgotten_at)))
    assert client.post("/v1/telemetry", content=envelope([a[0]])).status_code == 200
    assert wait_for(lambda: query(client, "SELECT count(*) AS n FROM telemetry WHERE mid = $m",
                                  {"m": a[0]["mid"]})[0]["n"] == 1, timeout=20)
    new = query(client, "SELECT actor_id FROM telemetry WHERE mid = $m", {"m": a[0]["mid"]})[0]["actor_id"]
    assert new != pa and vault.reidentify(TENANT, [new]) == {new: A}
    assert wait_for(lambda: metric_values(client)["cohort_events_in_flight"] == 0)
    metrics = metric_values(client)
    assert metrics["cohort_events_unaccounted"] == 0 and metrics["cohort_events_stored_total"] == 11
    if A in failed_payload:  # quarantined payloads still hold clear ids: a forget by pseudonym cannot reach them
        pytest.xfail("quarantined payloads hold clear learner ids (being changed to pseudonyms): not forgettable")
    assert query(client, "SELECT count(*) AS n FROM failed_events")[0]["n"] == 0


def test_roles_and_tenants_that_may_not_forget(client, sample_events):
    keys = role_keys(client)
    a, _ = ingest_a_and_b(client, sample_events)
    body = {"tenant": TENANT, "learner": A}
    for role in ("analyst", "educator", "ingestor"):
        response = forget(client, body, keys[role])
        assert response.status_code == 403 and response.json()["params"]["err"] == ErrorCode.AUTH_FORBIDDEN, role
    response = forget(client, body, keys["other_admin"])  # another tenant's admin naming this tenant
    assert response.status_code == 403 and response.json()["params"]["err"] == ErrorCode.AUTH_FORBIDDEN
    response = forget(client, {"learner": A}, keys["other_admin"])  # its own tenant: A is not held there
    assert response.status_code == 200 and response.json()["result"]["held"] is False
    response = client.post("/v1/forget", json=body, headers={"Authorization": ""})
    assert response.status_code == 401 and response.json()["params"]["err"] == ErrorCode.AUTH_REQUIRED
    pa = client.app.state.vault.pseudonym_of(TENANT, LEARNER, A)
    assert pa is not None and count_of(client, pa) == 5  # none of them deleted anything


@pytest.mark.parametrize("body, code, status", [
    (b"{not json", ErrorCode.MALFORMED_JSON, 400),
    (b"[]", ErrorCode.FORGET_INPUT, 400),
    (b'"learner"', ErrorCode.FORGET_INPUT, 400),
    ({"tenant": TENANT}, ErrorCode.FORGET_INPUT, 400),
    ({"tenant": TENANT, "learner": ""}, ErrorCode.FORGET_INPUT, 400),
    ({"tenant": TENANT, "learner": 12}, ErrorCode.FORGET_INPUT, 400),
    ({"tenant": TENANT, "learner": ["a"]}, ErrorCode.FORGET_INPUT, 400),
    ({"tenant": TENANT, "learner": "x" * 1025}, ErrorCode.FORGET_INPUT, 400),
    ({"tenant": TENANT, "learner": "a", "device": "d"}, ErrorCode.FORGET_INPUT, 400),
    ({"learner": "a"}, ErrorCode.FORGET_INPUT, 400),  # an admin must name the tenant
    ({"tenant": 5, "learner": "a"}, ErrorCode.FORGET_INPUT, 400),
    ({"tenant": "no spaces/allowed", "learner": "a"}, ErrorCode.AUTH_INVALID_TENANT, 400),
    ({"tenant": "t" * 129, "learner": "a"}, ErrorCode.AUTH_INVALID_TENANT, 400),
    (b'{"tenant": "t", "learner": "' + b"x" * 5000 + b'"}', ErrorCode.BODY_TOO_LARGE, 413),
])
def test_bad_requests_get_a_coded_4xx(shared_client, body, code, status):
    response = forget(shared_client, body)
    assert response.status_code == status, response.text
    assert response.json()["params"]["err"] == code


def test_a_forget_that_cannot_be_audited_deletes_nothing(client, sample_events, monkeypatch):
    ingest_a_and_b(client, sample_events)

    class Unwritable:
        def append(self, *args, **kwargs):
            raise AuditLogUnavailable("disk full (injected)")

    monkeypatch.setattr(client.app.state, "audit", Unwritable())
    response = forget(client, {"tenant": TENANT, "learner": A})
    assert response.status_code == 503 and response.json()["params"]["err"] == ErrorCode.AUDIT_UNAVAILABLE
    vault = client.app.state.vault
    pa = vault.pseudonym_of(TENANT, LEARNER, A)
    assert pa is not None and count_of(client, pa) == 5 and vault.reidentify(TENANT, [pa]) == {pa: A}


def test_forget_removes_the_learners_workflow_summaries(client, sample_events):
    """A and B sent the same events (same devices and times): each device's summaries open on A's event (its
    mid sorts first). The forget deletes them at once; the refresh then recomputes those days without A's
    events, so the same summaries come back opened by B's events, and none of A's."""
    from cohort.analytics.rollup_refresh import RollupRefresher

    keys = role_keys(client)
    ingest_a_and_b(client, sample_events)
    vault, store = client.app.state.vault, client.app.state.node.store
    pa, pb = vault.pseudonym_of(TENANT, LEARNER, A), vault.pseudonym_of(TENANT, LEARNER, B)

    def summaries() -> dict[str, int]:
        rows = store.query("SELECT uid, count(*) FROM workflow_summaries GROUP BY uid", None, 100, 30.0).rows
        return {str(uid): int(n) for uid, n in rows}

    RollupRefresher(store).refresh()  # the node's thread does it every few seconds: at once here
    before = summaries()
    assert before.get(pa, 0) > 0 and pb not in before
    response = forget(client, {"tenant": TENANT, "learner": A}, keys["tenant_admin"])
    assert response.status_code == 200, response.text
    assert pa not in summaries()
    RollupRefresher(store).refresh()
    after = summaries()
    assert pa not in after and after.get(pb) == before[pa]
