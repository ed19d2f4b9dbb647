"""GET /v1/ledger: received = stored + quarantined + duplicates + in flight, exactly, in one snapshot that
agrees with /metrics; admins and tenant admins read it, other roles are refused, parameters are refused."""

from __future__ import annotations

from cohort.core.errors import ErrorCode
from cohort.security.identity import Role, Scope
from support import envelope, metric_values, wait_for

TENANT = "505c7c48ac6dc1edc9b08f21db5a571d"  # a channel of the real sample


def keys(client) -> dict[str, str]:
    store = client.app.state.authenticator.key_store
    if not store.tenant_exists(TENANT):
        store.create_tenant(TENANT)
    return {"tenant_admin": store.create_key(TENANT, Role.TENANT_ADMIN)[1],
            "educator": store.create_key(TENANT, Role.EDUCATOR, Scope.parse("batch:b1"))[1],
            "analyst": store.create_key(TENANT, Role.ANALYST)[1]}


def ledger(client, key: str | None = None, **params):
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    return client.get("/v1/ledger", params=params, headers=headers)


def test_the_ledger_reconciles_what_was_sent(client, sample_events):
    events = [e for e in sample_events if e["context"]["channel"] == TENANT][:40]
    bad = [{"eid": "START", "mid": f"ledger-bad-{i}", "ets": "not a time", "context": {"channel": TENANT}}
           for i in range(3)]
    assert client.post("/v1/telemetry", content=envelope(events + bad)).status_code == 200
    assert client.post("/v1/telemetry", content=envelope(events[:5])).status_code == 200  # 5 duplicate mids
    sent = len(events) + len(bad) + 5

    def settled():  # the store's counters and the runner's lag are read one after the other: both must settle
        body = ledger(client).json()["result"]
        done = body["received"] == sent and body["in_flight"] == 0 and body["pipeline"]["lag_seconds"] == 0
        return body if done else None

    body = wait_for(settled, timeout=60)
    assert body, ledger(client).text
    assert body["stored"] == len(events) and body["quarantined"] == len(bad) and body["duplicates"] == 5
    assert body["received"] == body["stored"] + body["quarantined"] + body["duplicates"] + body["in_flight"]
    assert body["unaccounted"] == 0 and body["holds"] is True and body["scope"] == "node"
    assert sum(body["quarantined_by_stage"].values()) == len(bad)
    assert body["received_requests"] == 2 and body["pipeline"]["lag_seconds"] == 0
    assert body["pipeline"]["running"] and not body["pipeline"]["stalled"] and body["at_ms"] > 0
    prometheus = metric_values(client)  # the same counters /metrics publishes
    assert prometheus["cohort_events_received_total"] == body["received"]
    assert prometheus["cohort_events_stored_total"] == body["stored"]
    assert prometheus["cohort_events_duplicate_total"] == body["duplicates"]


def test_who_may_read_the_ledger(client):
    made = keys(client)
    assert ledger(client, made["tenant_admin"]).status_code == 200
    for role in ("educator", "analyst"):
        response = ledger(client, made[role])
        assert response.status_code == 403 and response.json()["params"]["err"] == ErrorCode.AUTH_FORBIDDEN
    response = client.get("/v1/ledger", headers={"Authorization": ""})
    assert response.status_code == 401 and response.json()["params"]["err"] == ErrorCode.AUTH_REQUIRED
    body = ledger(client, made["tenant_admin"]).json()["result"]
    assert set(body) >= {"received", "stored", "quarantined", "duplicates", "in_flight", "unaccounted"}
    assert TENANT not in ledger(client, made["tenant_admin"]).text  # counts only: no tenant, no identifier


def test_parameters_are_refused_with_a_code(client):
    for params in ({"tenant": TENANT}, {"x": "1"}, {"since": "0"}):
        response = ledger(client, **params)
        assert response.status_code == 400 and response.json()["params"]["err"] == ErrorCode.LEDGER_PARAM
    assert client.post("/v1/ledger").status_code == 405
