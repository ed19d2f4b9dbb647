"""GET /v1/keys: admins list every key, tenant admins their own tenant's only; no secret or hash ever
leaves the server; bad parameters get coded 4xx; every listing is in the audit log."""

from __future__ import annotations

import hashlib

import pytest

from cohort.core.errors import ErrorCode
from cohort.security.identity import Role, Scope

TENANT = "state-a"
OTHER = "state-b"


@pytest.fixture(scope="module")
def world(shared_client):
    """Keys of two tenants (one scoped, one revoked, one expiring) and an admin key; their full texts."""
    store = shared_client.app.state.authenticator.key_store
    for tenant in (TENANT, OTHER):
        if not store.tenant_exists(tenant):
            store.create_tenant(tenant)
    made = {}
    for name, tenant, role, scope in (("admin", None, Role.ADMIN, None), ("ta", TENANT, Role.TENANT_ADMIN, None),
                                      ("edu", TENANT, Role.EDUCATOR, Scope.parse("batch:b1")),
                                      ("ta_other", OTHER, Role.TENANT_ADMIN, None),
                                      ("ingest_other", OTHER, Role.INGESTOR, None),
                                      ("revoked", TENANT, Role.ANALYST, None)):
        info, text = store.create_key(tenant, role, scope, label=f"label {name}")
        made[name] = (info, text)
    store.revoke(made["revoked"][0].key_id)
    return made


def get(client, key: str, **params):
    return client.get("/v1/keys", params=params, headers={"Authorization": f"Bearer {key}"})


def test_an_admin_lists_every_key_with_its_state_and_never_a_secret(shared_client, world):
    response = get(shared_client, world["admin"][1])
    assert response.status_code == 200, response.text
    listed = {k["key_id"]: k for k in response.json()["result"]["keys"]}
    for name, (info, text) in world.items():
        entry = listed[info.key_id]
        assert entry["tenant"] == info.tenant and entry["role"] == str(info.role) and entry["label"] == f"label {name}"
        assert entry["scope"] == (None if info.scope is None else str(info.scope))
        assert entry["state"] == ("revoked" if name == "revoked" else "active")
        assert (entry["revoked_at"] is not None) == (name == "revoked")
        assert text.startswith(f"ck_{info.key_id}_")
        secret = text[len(f"ck_{info.key_id}_"):]  # the secret may hold "_" itself (URL-safe base64)
        for leak in (text, secret, hashlib.sha256(secret.encode()).hexdigest()):
            assert leak not in response.text, name  # no key text, no secret, no digest of it
    assert set(listed[world["edu"][0].key_id]) == {"key_id", "tenant", "role", "scope", "label", "created_at",
                                                   "expires_at", "revoked_at", "state"}
    one = get(shared_client, world["admin"][1], tenant=OTHER).json()["result"]["keys"]
    assert {k["key_id"] for k in one} == {world["ta_other"][0].key_id, world["ingest_other"][0].key_id}


def test_a_tenant_admin_sees_its_tenants_keys_only(shared_client, world):
    response = get(shared_client, world["ta"][1])
    assert response.status_code == 200, response.text
    ids = {k["key_id"] for k in response.json()["result"]["keys"]}
    assert {world[n][0].key_id for n in ("ta", "edu", "revoked")} <= ids
    assert all(k["tenant"] == TENANT for k in response.json()["result"]["keys"])
    for name in ("admin", "ta_other", "ingest_other"):
        assert world[name][0].key_id not in response.text  # not even the id of another tenant's key
    live = get(shared_client, world["ta"][1], revoked="false").json()["result"]["keys"]
    assert world["revoked"][0].key_id not in {k["key_id"] for k in live} and len(live) == len(ids) - 1
    assert get(shared_client, world["ta"][1], tenant=TENANT).status_code == 200
    refused = get(shared_client, world["ta"][1], tenant=OTHER)
    assert refused.status_code == 403 and refused.json()["params"]["err"] == ErrorCode.AUTH_FORBIDDEN
    assert world["ta_other"][0].key_id not in refused.text


def test_roles_without_key_management_are_refused(shared_client, world):
    for name in ("edu", "ingest_other"):
        response = get(shared_client, world[name][1])
        assert response.status_code == 403 and response.json()["params"]["err"] == ErrorCode.AUTH_FORBIDDEN
    response = get(shared_client, world["revoked"][1])
    assert response.status_code == 401 and response.json()["params"]["err"] == ErrorCode.AUTH_INVALID


@pytest.mark.parametrize("params", [{"tenant": "bad tenant!"}, {"tenant": "x" * 300}, {"revoked": "yes"},
                                    {"limit": "5"}, {"tenant": [TENANT, OTHER]}, {"revoked": ""}])
def test_bad_parameters_get_a_coded_400(shared_client, world, params):
    response = get(shared_client, world["admin"][1], **params)
    assert response.status_code == 400, response.text
    assert response.json()["params"]["err"] == ErrorCode.KEYS_PARAM


def test_each_listing_is_in_the_audit_log(shared_client, world):
    get(shared_client, world["ta"][1])
    entries = shared_client.app.state.audit.entries(tenant=TENANT, limit=10_000)
    mine = [e for e in entries if e.action == "keys.list" and e.actor_subject == world["ta"][0].key_id]
    assert mine and mine[-1].outcome == "ok" and mine[-1].target == "/v1/keys"
