"""POST /v1/forget on the scale-out footprint (Kafka, Redis, ClickHouse, a worker beside the API): the same core
promises as on the embedded one — the learner's rows, dedup keys and vault entry go, the rest stays, the ledger
reconciles, the audit log has it without the clear id, the same event sent again is stored again under a new
pseudonym."""

from __future__ import annotations

import time

from cohort.core.errors import ErrorCode
from cohort.core.pseudonyms import LEARNER
from cohort.security.identity import Role
from scaleout_deployment import scaleout_client, scaleout_settings  # noqa: F401 (fixtures)
from support import envelope, metric_values, query, wait_for

TENANT = "505c7c48ac6dc1edc9b08f21db5a571d"
OTHER = "other-state"
A, B = "scaleout-learner-A", "scaleout-learner-B"


def learner_events(sample_events: list[dict], learner: str, tag: str, n: int = 5) -> list[dict]:
    users = [e for e in sample_events if e.get("actor", {}).get("type") == "User"
             and e.get("context", {}).get("channel") == TENANT]
    return [dict(e, mid=f"{tag}-{i}", actor={**e["actor"], "id": learner}) for i, e in enumerate(users[:n])]


def count(client, where: str, **params) -> int:
    return int(query(client, f"SELECT count() AS n FROM {where}", params or None)[0]["n"])


def test_forget_on_the_scaleout_footprint(scaleout_client, scaleout_settings, sample_events):
    client = scaleout_client
    store = client.app.state.authenticator.key_store
    for tenant in (TENANT, OTHER):
        if not store.tenant_exists(tenant):
            store.create_tenant(tenant)
    own_admin = store.create_key(TENANT, Role.TENANT_ADMIN)[1]
    other_admin = store.create_key(OTHER, Role.TENANT_ADMIN)[1]
    a, b = learner_events(sample_events, A, "so-a"), learner_events(sample_events, B, "so-b")
    a_bad = {k: v for k, v in dict(a[0], mid="so-a-bad").items() if k != "ets"}  # quarantined
    assert client.post("/v1/telemetry", content=envelope(a + b + [a_bad])).status_code == 200
    assert wait_for(lambda: count(client, "telemetry") == 10 and count(client, "failed_events") == 1, timeout=60)
    vault, node = client.app.state.vault, client.app.state.node
    pa, pb = vault.pseudonym_of(TENANT, LEARNER, A), vault.pseudonym_of(TENANT, LEARNER, B)
    assert pa and pb
    assert count(client, "failed_events WHERE position(payload, {p:String}) > 0", p=pa) == 1

    refused = client.post("/v1/forget", json={"tenant": TENANT, "learner": A},
                          headers={"Authorization": f"Bearer {other_admin}"})
    assert refused.status_code == 403 and refused.json()["params"]["err"] == ErrorCode.AUTH_FORBIDDEN
    # events of A acknowledged right before the request, still in flight: forgotten too
    late = learner_events(sample_events, A, "so-a-late", 2)
    assert client.post("/v1/telemetry", content=envelope(late)).status_code == 200
    response = client.post("/v1/forget", json={"learner": A}, headers={"Authorization": f"Bearer {own_admin}"})
    forgotten_at = time.monotonic()

    assert response.status_code == 200, response.text
    result = response.json()["result"]
    assert result["held"] and result["pseudonym"] == pa and result["vault_entry"]
    assert (result["telemetry_rows"], result["failed_rows"], result["dedup_keys"]) == (7, 1, 7)
    assert count(client, "telemetry WHERE actor_id = {p:String}", p=pa) == 0
    assert count(client, "telemetry WHERE position(event, {p:String}) > 0", p=pa) == 0
    assert count(client, "failed_events WHERE position(payload, {p:String}) > 0", p=pa) == 0
    assert count(client, "telemetry WHERE actor_id = {p:String}", p=pb) == 5
    assert vault.reidentify(TENANT, [pa, pb]) == {pb: B}
    assert node.mid_dedup.seen([e["mid"] for e in a + late + b]) == {e["mid"] for e in b}
    entries = [e for e in client.app.state.audit.entries(tenant=TENANT) if e.action == "forget"]
    assert [e.outcome for e in entries] == ["requested", "ok"] and entries[1].detail["pseudonym"] == pa
    assert all(A not in repr(e.as_dict()) for e in client.app.state.audit.entries(limit=10_000))
    metrics = metric_values(client)
    assert metrics["cohort_events_unaccounted"] == 0 and metrics["cohort_events_stored_total"] == 12

    # one of A's old events sent again is stored again (its dedup key is gone), once the pipeline's memory
    # of pseudonyms has expired under a new pseudonym
    time.sleep(max(0.0, scaleout_settings.pseudonym_cache_seconds + 1 -
                   (time.monotonic() - forgotten_at)))
    assert client.post("/v1/telemetry", content=envelope([a[0]])).status_code == 200
    assert wait_for(lambda: count(client, "telemetry WHERE mid = {m:String}", m=a[0]["mid"]) == 1, timeout=60)
    new = query(client, "SELECT actor_id FROM telemetry WHERE mid = {m:String}", {"m": a[0]["mid"]})[0]["actor_id"]
    assert new != pa and vault.reidentify(TENANT, [new]) == {new: A}
    assert wait_for(lambda: metric_values(client)["cohort_events_in_flight"] == 0, timeout=30)
    metrics = metric_values(client)
    assert metrics["cohort_events_unaccounted"] == 0 and metrics["cohort_events_stored_total"] == 13
