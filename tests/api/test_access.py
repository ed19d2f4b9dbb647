"""Every endpoint declares what it needs: 401 without valid credentials, 403 for the wrong role, coded bodies;
an ingestor writes only its own tenant's events."""

from __future__ import annotations

import pytest
from starlette.routing import Route

from cohort.api.access import PUBLIC
from cohort.core.errors import ErrorCode
from cohort.security.identity import ROLE_PERMISSIONS, Permission, Role, Scope
from support import envelope, query, wait_for

TENANT = "505c7c48ac6dc1edc9b08f21db5a571d"  # a channel of the real sample
OTHER = "other-state"
AUTHENTICATED = "any authenticated role"  # what /v1/whoami needs: a valid key, whatever its role

ENDPOINTS = {  # (method, path) → the permission it needs
    ("POST", "/v1/telemetry"): Permission.INGEST,
    ("POST", "/v1/query"): Permission.QUERY_SQL,
    ("GET", "/v1/tables"): Permission.READ_TABLES,
    ("GET", "/v1/metrics/active_learners"): Permission.READ_METRICS,
    ("POST", "/v1/learners/reidentify"): Permission.READ_LEARNERS,
    ("POST", "/v1/forget"): Permission.FORGET,
    ("GET", "/v1/audit"): Permission.READ_AUDIT,
    ("GET", "/v1/lineage/event/x"): Permission.READ_METRICS,
    ("GET", "/v1/lineage/metric/active_learners"): Permission.READ_METRICS,
    ("GET", "/v1/whoami"): AUTHENTICATED,
    ("GET", "/v1/metrics"): Permission.READ_METRICS,
    ("GET", "/v1/keys"): Permission.MANAGE_KEYS,
    ("GET", "/v1/ledger"): Permission.READ_AUDIT,
}
EVERYONE = {("GET", "/v1/whoami")}
# What each role may call, written out as the access-control issue states it (not derived from the code's
# table, which the test holds to it)
ALLOWED = {
    "admin": set(ENDPOINTS),
    "tenant_admin": set(ENDPOINTS),
    "ingestor": {("POST", "/v1/telemetry"), *EVERYONE},
    "analyst": {("POST", "/v1/query"), ("GET", "/v1/tables"), ("GET", "/v1/metrics/active_learners"),
                ("GET", "/v1/lineage/event/x"), ("GET", "/v1/lineage/metric/active_learners"),
                ("GET", "/v1/metrics"), *EVERYONE},
    "educator": {("GET", "/v1/metrics/active_learners"), ("POST", "/v1/learners/reidentify"),
                 ("GET", "/v1/lineage/event/x"), ("GET", "/v1/lineage/metric/active_learners"),
                 ("GET", "/v1/metrics"), *EVERYONE},
    "viewer": {("GET", "/v1/metrics/active_learners"), ("GET", "/v1/lineage/event/x"),
               ("GET", "/v1/lineage/metric/active_learners"), ("GET", "/v1/metrics"), *EVERYONE},
}


def keys_of(client) -> dict[str, str]:
    store = client.app.state.authenticator.key_store
    for tenant in (TENANT, OTHER):
        if not store.tenant_exists(tenant):
            store.create_tenant(tenant)
    made = {role.value: store.create_key(None if role is Role.ADMIN else TENANT, role)[1] for role in Role}
    made["educator"] = store.create_key(TENANT, Role.EDUCATOR, Scope.parse("batch:b1"))[1]
    return made


def call(client, method: str, path: str, key: str | None, **kwargs):
    headers = {"Authorization": f"Bearer {key}"} if key is not None else {"Authorization": ""}
    if path == "/v1/query":
        kwargs.setdefault("json", {"sql": "SELECT count(*) AS n FROM telemetry"})
    if path == "/v1/learners/reidentify":
        kwargs.setdefault("json", {"pseudonyms": ["u:" + "0" * 32], "tenant": TENANT})
    if path == "/v1/forget":
        kwargs.setdefault("json", {"tenant": TENANT, "learner": "no-such-learner"})
    if path == "/v1/telemetry":  # an event of the keys' tenant (the role decides, not the content)
        kwargs.setdefault("content", envelope([{"eid": "LOG", "mid": "access-probe", "context": {"channel": TENANT}}]))
    return client.request(method, path, headers=headers, **kwargs)


def test_every_route_declares_what_it_needs(client):
    for route in client.app.routes:
        assert isinstance(route, Route)
        needs = getattr(route.endpoint, "permission", None)
        assert needs == PUBLIC or needs in set(Permission), route.path


@pytest.mark.parametrize("method,path", list(ENDPOINTS))
def test_no_credentials_or_a_bad_key_get_401_with_a_code(client, method, path):
    for key, code in ((None, ErrorCode.AUTH_REQUIRED), ("ck_nosuchkey123_" + "x" * 43, ErrorCode.AUTH_INVALID),
                      ("Basic dXNlcjpwYXNz", ErrorCode.AUTH_INVALID), ("", ErrorCode.AUTH_REQUIRED)):
        response = call(client, method, path, key)
        assert response.status_code == 401, (key, response.text)
        assert response.json()["params"]["err"] == code and response.json()["responseCode"] == "CLIENT_ERROR"
        assert response.headers["www-authenticate"].startswith("Bearer")


def test_public_endpoints_need_no_key(client):
    for path in ("/health", "/metrics", "/v1", "/", "/static/app.js"):
        assert client.get(path, headers={"Authorization": ""}).status_code == 200, path


def test_the_role_table_is_the_one_the_issue_states():
    for role, allowed in ALLOWED.items():
        assert {endpoint for endpoint, needs in ENDPOINTS.items()
                if needs == AUTHENTICATED or needs in ROLE_PERMISSIONS[Role(role)]} == allowed, role


def test_each_role_on_each_endpoint(client):
    keys = keys_of(client)
    for role, key in keys.items():
        for method, path in ENDPOINTS:
            response = call(client, method, path, key)
            if (method, path) in ALLOWED[role]:  # past the access check: answered, or refused for its input
                assert response.status_code not in (401, 403) and response.status_code < 500, \
                    (role, path, response.text)
                if path in ("/v1/query", "/v1/tables", "/v1/telemetry", "/v1/audit", "/v1/whoami", "/v1/metrics",
                            "/v1/keys", "/v1/ledger"):
                    assert response.status_code == 200, (role, path, response.text)
            else:
                assert response.status_code == 403, (role, path, response.text)
                assert response.json()["params"]["err"] == ErrorCode.AUTH_FORBIDDEN


def test_a_revoked_key_is_refused_at_once(client):
    store = client.app.state.authenticator.key_store
    info, key = store.create_key(None, Role.ADMIN)
    assert call(client, "GET", "/v1/tables", key).status_code == 200
    store.revoke(info.key_id)
    response = call(client, "GET", "/v1/tables", key)
    assert response.status_code == 401 and response.json()["params"]["err"] == ErrorCode.AUTH_INVALID


def test_an_ingestor_writes_only_its_own_tenants_events(client, sample_events):
    keys = keys_of(client)
    own = [e for e in sample_events if e["context"]["channel"] == TENANT][:20]
    foreign = [dict(e, mid=f"foreign-{i}", context={**e["context"], "channel": OTHER}) for i, e in enumerate(own[:5])]
    response = call(client, "POST", "/v1/telemetry", keys["ingestor"], content=envelope(own + foreign))
    assert response.status_code == 200, response.text
    assert wait_for(lambda: query(client, "SELECT count(*) AS n FROM failed_events")[0]["n"] == 5, timeout=60)
    assert query(client, "SELECT count(*) AS n FROM telemetry") == [{"n": len(own)}]
    assert query(client, "SELECT DISTINCT error_code FROM failed_events") == [{"error_code": "ERR_TENANT_MISMATCH"}]


def test_an_ingestor_naming_another_tenant_in_its_header_gets_403(client, sample_events):
    keys = keys_of(client)
    response = client.post("/v1/telemetry", content=envelope(sample_events[:3]),
                           headers={"Authorization": f"Bearer {keys['ingestor']}", "X-Channel-Id": OTHER})
    assert response.status_code == 403 and response.json()["params"]["err"] == ErrorCode.AUTH_FORBIDDEN
