"""The learning world (analytics/rollup_world) stored in a running app through the ingest API, and a key per
role: what the API tests of metrics and reports read through, so learners are the vault's pseudonyms and
every figure has passed the whole pipeline."""

from __future__ import annotations

from analytics.rollup_world import world_and_truth
from cohort.security.identity import Role, Scope
from support import envelope, query, wait_for

WINDOW = {"from": "2026-06-22", "to": "2026-07-01"}  # the world's nine days (rollup_world.WORLD)


def world_events() -> list[dict]:
    return [event for upload in world_and_truth()[2] for event in upload]


def first_school(tenant: str) -> str:
    return min(c.rollup["l3"] for c in world_and_truth()[0].classes.values() if c.tenant == tenant)


def first_batch(tenant: str) -> str:
    return min(b.id for b in world_and_truth()[0].batches.values() if b.tenant == tenant)


def store_world(client):
    """Send the world's events (400 a request), wait until stored, and give `client` keys per role (`keys`,
    `key_ids` by name: tenant admins of both tenants, analyst, viewer, ingestor and educators of a batch
    and a school of tenant A, an educator of a school of tenant B) and the two `tenants`."""
    truth = world_and_truth()[1]
    events = world_events()
    for at in range(0, len(events), 400):
        response = client.post("/v1/telemetry", content=envelope(events[at:at + 400]))
        assert response.status_code == 200, response.text
    assert wait_for(lambda: query(client, "SELECT count(*) AS n FROM telemetry")[0]["n"] == len(events), 120)
    a, b = truth.tenants
    store = client.app.state.authenticator.key_store
    for tenant in (a, b):
        store.create_tenant(tenant)
    keys = {
        "tenant_admin_a": store.create_key(a, Role.TENANT_ADMIN),
        "tenant_admin_b": store.create_key(b, Role.TENANT_ADMIN),
        "analyst_a": store.create_key(a, Role.ANALYST),
        "viewer_a": store.create_key(a, Role.VIEWER),
        "ingestor_a": store.create_key(a, Role.INGESTOR),
        "educator_batch_a": store.create_key(a, Role.EDUCATOR, scope=Scope.parse(f"batch:{first_batch(a)}")),
        "educator_school_a": store.create_key(a, Role.EDUCATOR, scope=Scope.parse(f"rollup.l3:{first_school(a)}")),
        "educator_school_b": store.create_key(b, Role.EDUCATOR, scope=Scope.parse(f"rollup.l3:{first_school(b)}")),
    }
    client.keys = {name: key for name, (_, key) in keys.items()}
    client.key_ids = {name: info.key_id for name, (info, _) in keys.items()}
    client.tenants = (a, b)
    return client


def auth(client, who: str | None) -> dict[str, str]:
    """The Authorization header of `who`'s key (None: none, the development admin when auth is off)."""
    return {} if who is None else {"Authorization": f"Bearer {client.keys[who]}"}
