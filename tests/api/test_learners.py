"""POST /v1/learners/reidentify: an educator turns its own learners' pseudonyms back into ids, audited first.

Over the embedded app with telemetry ingested through the API (so actor ids are the vault's pseudonyms):
tenant A has learners in batch-1 and batch-2 (one in both), tenant B a learner in a batch also named batch-1.
One test runs the scale-out footprint (ClickHouse store, Redis vault and audit log).
"""

from __future__ import annotations

import orjson
import pytest

from cohort.core.errors import ErrorCode
from cohort.security.audit_log import AuditLogUnavailable
from cohort.security.identity import Role, Scope
from cohort.settings import Settings
from cohort.state.vault_entry import VaultUnavailable
from scaleout_deployment import scaleout_client, scaleout_settings  # noqa: F401 (fixtures)
from support import SAMPLE_FILE, app_client, envelope, query, wait_for

TENANT_A, TENANT_B = "tenant-a", "tenant-b"
URL = "/v1/learners/reidentify"
# clear learner id -> (tenant, batches it has events in)
LEARNERS = {"learner-a1": (TENANT_A, ["batch-1"]), "learner-a2": (TENANT_A, ["batch-2"]),
            "learner-a3": (TENANT_A, ["batch-1", "batch-2"]), "learner-b1": (TENANT_B, ["batch-1"]),
            "learner-a9": (TENANT_A, [])}
EVENTS_EACH = 2


def learner_events() -> list[dict]:
    lines = SAMPLE_FILE.read_text().splitlines()
    events = []
    for learner, (tenant, batches) in LEARNERS.items():
        for batch in batches or [None]:
            for i in range(EVENTS_EACH):
                event = orjson.loads(lines[len(events)])
                event["mid"] = f"{learner}-{batch}-{i}"
                event["actor"] = {"id": learner, "type": "User"}
                event["context"]["channel"] = tenant
                event["context"]["cdata"] = [{"type": "Batch", "id": batch}] if batch else []
                events.append(event)
    return events


def ingest_and_map(client) -> dict[str, str]:
    """Post every learner's events through the API; {clear id: its pseudonym in the store}."""
    events = learner_events()
    response = client.post("/v1/telemetry", content=envelope(events))
    assert response.status_code == 200, response.text
    assert wait_for(lambda: query(client, "SELECT count(*) AS n FROM telemetry")[0]["n"] == len(events), timeout=60)
    pseudonyms = {}
    for learner in LEARNERS:
        rows = query(client, "SELECT DISTINCT actor_id FROM telemetry WHERE mid LIKE $m" if "duckdb" ==
                     client.app.state.queries.dialect else
                     "SELECT DISTINCT actor_id FROM telemetry WHERE mid LIKE {m:String}", {"m": f"{learner}-%"})
        assert len(rows) == 1 and rows[0]["actor_id"].startswith("u:"), rows
        pseudonyms[learner] = rows[0]["actor_id"]
    return pseudonyms


def key_for(client, tenant: str, role: Role, scope: str | None = None) -> dict[str, str]:
    store = client.app.state.authenticator.key_store
    if not store.tenant_exists(tenant):
        store.create_tenant(tenant)
    _, key = store.create_key(tenant, role, Scope.parse(scope) if scope else None)
    return {"Authorization": f"Bearer {key}"}


@pytest.fixture(scope="module")
def loaded(tmp_path_factory):
    settings = Settings(data_dir=tmp_path_factory.mktemp("learners") / "data", pipeline_idle_wait_seconds=0.005)
    with app_client(settings, raise_server_exceptions=False) as client:
        yield client, ingest_and_map(client)


def ask(client, headers: dict | None, pseudonyms: list, **extra):
    response = client.post(URL, json={"pseudonyms": pseudonyms, **extra}, headers=headers or {})
    assert response.status_code < 500 or response.json()["params"]["err"] in (
        ErrorCode.AUDIT_UNAVAILABLE, ErrorCode.VAULT_UNAVAILABLE), response.text
    return response


def revealed(response) -> dict[str, str]:
    assert response.status_code == 200, response.text
    return {item["pseudonym"]: item["id"] for item in response.json()["result"]["learners"]}


def withheld(response) -> dict[str, str]:
    return {item["pseudonym"]: item["reason"] for item in response.json()["result"]["withheld"]}


def test_an_educator_re_identifies_the_learners_of_its_batch_and_no_other(loaded):
    client, p = loaded
    batch_1 = key_for(client, TENANT_A, Role.EDUCATOR, "batch:batch-1")
    everyone = [p[learner] for learner in LEARNERS]
    response = ask(client, batch_1, everyone)
    assert revealed(response) == {p["learner-a1"]: "learner-a1", p["learner-a3"]: "learner-a3"}
    # another batch's learner, another tenant's learner in a batch of the same name, a learner of no batch and an
    # unknown pseudonym are all withheld alike
    unknown = "u:" + "0" * 32
    response = ask(client, batch_1, [p["learner-a2"], p["learner-b1"], p["learner-a9"], unknown])
    assert revealed(response) == {}
    assert withheld(response) == {p["learner-a2"]: "not_in_scope", p["learner-b1"]: "not_in_scope",
                                  p["learner-a9"]: "not_in_scope", unknown: "not_in_scope"}
    body = response.json()
    assert body["id"] == "api.learners.reidentify" and body["params"]["status"] == "successful"
    assert "learner-" not in response.text  # no clear id of any withheld learner anywhere in the answer

    batch_2 = key_for(client, TENANT_A, Role.EDUCATOR, "batch:batch-2")
    assert revealed(ask(client, batch_2, everyone)) == {p["learner-a2"]: "learner-a2", p["learner-a3"]: "learner-a3"}


def test_another_tenants_educator_sees_nothing_of_tenant_a(loaded):
    client, p = loaded
    b_educator = key_for(client, TENANT_B, Role.EDUCATOR, "batch:batch-1")
    response = ask(client, b_educator, [p[learner] for learner in LEARNERS])
    assert revealed(response) == {p["learner-b1"]: "learner-b1"}
    assert "learner-a" not in response.text
    response = ask(client, b_educator, [p["learner-a1"]], tenant=TENANT_A)
    assert response.status_code == 403 and response.json()["params"]["err"] == ErrorCode.AUTH_FORBIDDEN


def test_a_tenant_admin_re_identifies_any_learner_of_its_tenant_only(loaded):
    client, p = loaded
    admin_a = key_for(client, TENANT_A, Role.TENANT_ADMIN)
    response = ask(client, admin_a, [p[learner] for learner in LEARNERS])
    assert revealed(response) == {p[name]: name for name, (tenant, _) in LEARNERS.items() if tenant == TENANT_A}
    assert withheld(response) == {p["learner-b1"]: "not_held"}  # not a pseudonym of tenant A's
    # the operator's admin names the tenant, and gets that tenant's only
    response = ask(client, None, [p["learner-b1"], p["learner-a1"]], tenant=TENANT_B)
    assert revealed(response) == {p["learner-b1"]: "learner-b1"}
    response = ask(client, None, [p["learner-b1"]])
    assert response.status_code == 400 and response.json()["params"]["err"] == ErrorCode.AUTH_INVALID_TENANT


@pytest.mark.parametrize("role, scope", [(Role.ANALYST, None), (Role.ANALYST, "batch:batch-1"), (Role.INGESTOR, None),
                                         (Role.EDUCATOR, None)])
def test_roles_that_may_not_re_identify_are_refused(loaded, role, scope):
    client, p = loaded
    response = ask(client, key_for(client, TENANT_A, role, scope), [p["learner-a1"]])
    assert response.status_code == 403 and response.json()["params"]["err"] == ErrorCode.AUTH_FORBIDDEN
    assert "learner-a1" not in response.text


def test_without_a_key_401(loaded):
    client, p = loaded
    response = client.post(URL, json={"pseudonyms": [p["learner-a1"]]}, headers={"Authorization": ""})
    assert response.status_code == 401 and response.json()["params"]["err"] == ErrorCode.AUTH_REQUIRED
    response = client.post(URL, json={"pseudonyms": [p["learner-a1"]]}, headers={"Authorization": "Bearer ck_nope"})
    assert response.status_code == 401 and "learner-a1" not in response.text


def test_every_call_is_audited_with_the_pseudonyms_and_never_an_id(loaded):
    client, p = loaded
    educator = key_for(client, TENANT_A, Role.EDUCATOR, "batch:batch-1")
    before = client.app.state.audit.entries(tenant=TENANT_A, limit=10_000)
    asked = [p["learner-a1"], p["learner-a2"]]
    assert revealed(ask(client, educator, asked)) == {p["learner-a1"]: "learner-a1"}
    after = client.app.state.audit.entries(tenant=TENANT_A, since_seq=before[-1].seq if before else 0)
    entries = [e for e in after if e.action == "reidentify"]
    assert len(entries) == 1
    entry = entries[0]
    assert entry.outcome == "ok" and entry.actor_role == "educator" and entry.tenant == TENANT_A
    assert entry.detail["pseudonyms"] == [asked] and entry.detail["asked"] == 2 and entry.detail["revealed"] == 1
    assert entry.detail["scope"] == "batch:batch-1"
    assert "learner-" not in orjson.dumps(entry.as_dict()).decode()
    assert client.app.state.audit.verify().ok


def test_a_full_call_keeps_all_its_pseudonyms_in_the_audit_entry(loaded):
    client, p = loaded
    admin_a = key_for(client, TENANT_A, Role.TENANT_ADMIN)
    asked = [p["learner-a1"]] + [f"u:{n:032x}" for n in range(99)]
    response = ask(client, admin_a, asked)
    assert revealed(response) == {p["learner-a1"]: "learner-a1"} and len(withheld(response)) == 99
    entry = [e for e in client.app.state.audit.entries(tenant=TENANT_A, limit=10_000) if e.action == "reidentify"][-1]
    assert [x for chunk in entry.detail["pseudonyms"] for x in chunk] == asked and entry.detail["revealed"] == 1


def test_audit_log_away_is_503_and_no_id(loaded, monkeypatch):
    client, p = loaded
    educator = key_for(client, TENANT_A, Role.EDUCATOR, "batch:batch-1")

    def away(*args, **kwargs):
        raise AuditLogUnavailable("injected: disk away")

    monkeypatch.setattr(client.app.state.audit, "append", away)
    response = ask(client, educator, [p["learner-a1"], p["learner-a3"]])
    assert response.status_code == 503 and response.json()["params"]["err"] == ErrorCode.AUDIT_UNAVAILABLE
    assert "learner-a" not in response.text and response.json()["result"] == {}


def test_vault_away_is_503_with_a_code_and_no_id(loaded, monkeypatch):
    client, p = loaded
    educator = key_for(client, TENANT_A, Role.EDUCATOR, "batch:batch-1")

    def away(*args, **kwargs):
        raise VaultUnavailable("injected: vault away")

    monkeypatch.setattr(client.app.state.vault, "reidentify", away)
    response = ask(client, educator, [p["learner-a1"]])
    assert response.status_code == 503 and response.json()["params"]["err"] == ErrorCode.VAULT_UNAVAILABLE
    assert "learner-a1" not in response.text
    entry = [e for e in client.app.state.audit.entries(tenant=TENANT_A, limit=10_000) if e.action == "reidentify"][-1]
    assert entry.outcome == "error" and entry.detail["revealed"] == 0


def test_101_pseudonyms_is_a_coded_400(loaded):
    client, _ = loaded
    educator = key_for(client, TENANT_A, Role.EDUCATOR, "batch:batch-1")
    response = ask(client, educator, [f"u:{n:032x}" for n in range(101)])
    assert response.status_code == 400 and response.json()["params"]["err"] == ErrorCode.REIDENTIFY_INPUT
    assert ask(client, educator, [f"u:{n:032x}" for n in range(100)]).status_code == 200


@pytest.mark.parametrize("body", [
    b"", b"not json", b"[]", b"null", b'"u:00000000000000000000000000000000"', b"{}", b'{"pseudonyms": []}',
    b'{"pseudonyms": "u:00000000000000000000000000000000"}', b'{"pseudonyms": [1]}', b'{"pseudonyms": [null]}',
    b'{"pseudonyms": [["u:00000000000000000000000000000000"]]}', b'{"pseudonyms": ["d:00000000000000000000000000000000"]}',
    b'{"pseudonyms": ["u:0000000000000000000000000000000G"]}', b'{"pseudonyms": ["U:00000000000000000000000000000000"]}',
    b'{"pseudonyms": ["u:00000000000000000000000000000000 "]}', b'{"pseudonyms": ["learner-a1"]}',
    b"{\"pseudonyms\": [\"u:' OR 1=1 --\"]}", b'{"pseudonyms": ["u:0"], "extra": 1}',
    b'{"pseudonyms": ["u:00000000000000000000000000000000"], "tenant": 7}',
    b'{"pseudonyms": ["u:00000000000000000000000000000000"], "tenant": "tenant-b"}',
    b'{"pseudonyms": {"a": 1}}', b'{"pseudonyms": [' + b'"x",' * 5000 + b'"x"]}', b'\xff\xfe',
])
def test_garbage_gets_a_coded_4xx_never_a_5xx(loaded, body):
    client, _ = loaded
    educator = key_for(client, TENANT_A, Role.EDUCATOR, "batch:batch-1")
    response = client.post(URL, content=body, headers={**educator, "Content-Type": "application/json"})
    assert 400 <= response.status_code < 500, (body[:80], response.status_code, response.text)
    err = response.json()["params"]["err"]
    assert err.startswith("ERR_") and response.json()["params"]["errmsg"]


def test_a_body_over_the_bound_is_413(loaded):
    client, _ = loaded
    educator = key_for(client, TENANT_A, Role.EDUCATOR, "batch:batch-1")
    response = client.post(URL, content=b'{"pseudonyms": ["' + b"u" * 100_000 + b'"]}', headers=educator)
    assert response.status_code == 413 and response.json()["params"]["err"] == ErrorCode.BODY_TOO_LARGE


def test_on_the_scaleout_footprint_the_educator_gets_its_learner_from_the_redis_vault(scaleout_client):
    client = scaleout_client
    p = ingest_and_map(client)
    educator = key_for(client, TENANT_A, Role.EDUCATOR, "batch:batch-2")
    response = ask(client, educator, [p[learner] for learner in LEARNERS])
    assert revealed(response) == {p["learner-a2"]: "learner-a2", p["learner-a3"]: "learner-a3"}
    assert set(withheld(response).values()) == {"not_in_scope"} and "learner-a1" not in response.text
    entry = [e for e in client.app.state.audit.entries(tenant=TENANT_A, limit=10_000) if e.action == "reidentify"][-1]
    assert entry.detail["revealed"] == 2 and "learner-" not in orjson.dumps(entry.as_dict()).decode()
