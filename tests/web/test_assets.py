"""The dashboard's page and assets are served by the app itself, locked down by a content-security-policy;
/v1/whoami and /v1/metrics answer what the page needs, and refuse what they must."""

from __future__ import annotations

import pytest

from cohort.analytics.metrics import METRICS
from cohort.security.identity import Role, Scope

TENANT = "state-a"


@pytest.fixture
def client(shared_client):
    """One app for the module: these tests only read, or are refused (each app of its own costs seconds)."""
    return shared_client


def key(client, role: Role, tenant: str | None = TENANT, scope: Scope | None = None) -> str:
    store = client.app.state.authenticator.key_store
    if tenant is not None and not store.tenant_exists(tenant):
        store.create_tenant(tenant)
    return store.create_key(tenant, role, scope)[1]


def bearer(value: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {value}"}


def test_the_page_is_public_holds_no_data_and_forbids_inline_and_remote_scripts(client):
    page = client.get("/", headers={"Authorization": ""})
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    csp = page.headers["content-security-policy"]
    assert "script-src 'self'" in csp and "default-src 'none'" in csp and "unsafe-inline" not in csp
    assert "http" not in csp  # no remote origin
    assert "<script>" not in page.text and "{{asset:" not in page.text  # every script is a file; names resolved
    assert "/static/app.js?v=" in page.text and "/static/vendor/uPlot.iife.min.js?v=" in page.text


def test_assets_carry_long_cache_headers_and_their_digest(client):
    page = client.get("/").text
    src = page.split('src="/static/app.js?v=')[1].split('"')[0]
    asset = client.get(f"/static/app.js?v={src}")
    assert asset.status_code == 200 and asset.headers["content-type"].startswith("text/javascript")
    assert "max-age=31536000" in asset.headers["cache-control"] and asset.headers["etag"] == f'"{src}"'
    assert asset.headers["content-security-policy"] and asset.headers["x-content-type-options"] == "nosniff"
    vendor = client.get("/static/vendor/uPlot.LICENSE")
    assert vendor.status_code == 200 and "MIT" in vendor.text


def test_nothing_outside_the_static_directory_is_served(client):
    for path in ("/static/../assets.py", "/static/..%2Fassets.py", "/static/%2e%2e/%2e%2e/settings.py",
                 "/static/vendor/../../assets.py", "/static/.hidden", "/static/", "/static/nope.js",
                 "/static/" + "a/" * 150 + "x.js", "/static/index.html"):
        response = client.get(path)
        assert response.status_code == 404, path
        assert response.json()["params"]["err"] == "ERR_NOT_FOUND"


def test_whoami_says_tenant_role_and_scope_of_the_callers_own_key(client):
    educator = key(client, Role.EDUCATOR, scope=Scope.parse("batch:b1,b2"))
    body = client.get("/v1/whoami", headers=bearer(educator)).json()["result"]
    assert body["role"] == "educator" and body["tenant"] == TENANT
    assert body["scope"] == {"kind": "batch", "values": ["b1", "b2"], "text": "batch:b1,b2"}
    assert "read_metrics" in body["permissions"] and "query_sql" not in body["permissions"]
    assert educator not in client.get("/v1/whoami", headers=bearer(educator)).text  # never the secret
    ingestor = client.get("/v1/whoami", headers=bearer(key(client, Role.INGESTOR))).json()["result"]
    assert ingestor["role"] == "ingestor" and ingestor["permissions"] == ["ingest"]
    admin = client.get("/v1/whoami", headers=bearer(key(client, Role.ADMIN, tenant=None))).json()["result"]
    assert admin["tenant"] is None and admin["scope"] is None


def test_whoami_without_a_valid_key_is_401_with_a_code(client):
    for header, code in (("", "ERR_AUTH_REQUIRED"), ("Bearer ck_nosuchkey123_" + "x" * 43, "ERR_AUTH_INVALID"),
                         ("Bearer Basic dXNlcjpwYXNz", "ERR_AUTH_INVALID"), ("Basic dXNlcjpwYXNz", None),
                         ("Bearer " + "x" * 5000, None)):
        response = client.get("/v1/whoami", headers={"Authorization": header})
        assert response.status_code == 401, (header[:20], response.text)
        # the same answer as the access layer gives any guarded endpoint
        code = code or client.get("/v1/tables", headers={"Authorization": header}).json()["params"]["err"]
        assert response.json()["params"]["err"] == code and code.startswith("ERR_AUTH_")
        assert response.headers["www-authenticate"].startswith("Bearer")


def test_the_metric_catalog_is_the_registry(client):
    viewer = key(client, Role.VIEWER)
    response = client.get("/v1/metrics", headers=bearer(viewer))
    assert response.status_code == 200, response.text
    listed = response.json()["result"]["metrics"]
    assert [m["name"] for m in listed] == list(METRICS)
    for entry in listed:
        metric = METRICS[entry["name"]]
        assert entry["granularities"] == list(metric.granularities) and entry["unit"] == metric.unit
        assert entry["group_bys"] == list(metric.group_bys) and entry["description"] == metric.description
    refused = client.get("/v1/metrics", headers=bearer(key(client, Role.INGESTOR)))
    assert refused.status_code == 403 and refused.json()["params"]["err"] == "ERR_AUTH_FORBIDDEN"
    assert client.post("/v1/metrics", headers=bearer(viewer)).status_code == 405
