"""Two tenants' rows in a real store, and the query API over it as each kind of caller.

Tenant A (`tenant-a`) and tenant B (`tenant-b`) post telemetry into the same store, in the same requests
(so their rows share parts, row groups and granules: an engine cannot skip B's rows by position alone),
each with a quarantined event of its own. Every value of B's rows that a query could carry out — mids,
actor ids, device ids, the event JSON, quarantined payloads — holds `B_SECRET`, so a test can tell B's
data in any answer or error message; counts differ per tenant (A_EVENTS, B_EVENTS) so an aggregate
over B's rows shows too.

`tenant_api` serves POST /v1/query and GET /v1/tables as the lead's access layer hands them an identity
(`request.state.identity`), picked per request by the `X-Test-Caller` header among IDENTITIES.
"""

from __future__ import annotations

import time
from types import SimpleNamespace

import orjson
from starlette.applications import Starlette
from starlette.routing import Route
from starlette.testclient import TestClient

from cohort.api.query import QueryService, run_query
from cohort.api.tables import list_tables
from cohort.core.log_record import LogRecord
from cohort.core.process_batch import process_batch
from cohort.security.identity import Identity, Role
from cohort.settings import Settings
from cohort.state.mid_window import MidWindow
from support import SAMPLE_FILE

TENANT_A, TENANT_B = "tenant-a", "tenant-b"
B_SECRET = "bsecret"
A_EVENTS, B_EVENTS = 12, 17
IDENTITIES = {
    "analyst-a": Identity("key-analyst-a", Role.ANALYST, TENANT_A),
    "tenant-admin-a": Identity("key-tadmin-a", Role.TENANT_ADMIN, TENANT_A),
    "admin": Identity("key-admin", Role.ADMIN, None),
    "ingestor-a": Identity("key-ingestor-a", Role.INGESTOR, TENANT_A),
    "educator-a": Identity("key-educator-a", Role.EDUCATOR, TENANT_A),
}


def tenant_events(tenant: str, count: int) -> list[dict]:
    """`count` sample events moved to `tenant`, every identifying value marked with the tenant's prefix; A's
    mids end in a number (`a-mid-7`), B's do not parse as one (`bsecret-mid-7`)."""
    prefix = "a" if tenant == TENANT_A else B_SECRET
    lines = SAMPLE_FILE.read_text().splitlines()[:count]
    events = []
    for i, line in enumerate(lines):
        event = orjson.loads(line)
        event["context"]["channel"] = tenant
        event["context"]["did"] = f"{prefix}-device-{i}"
        event["actor"]["id"] = f"{prefix}-actor-{i}"
        event["mid"] = f"{prefix}-mid-{i}"
        events.append(event)
    return events


def bad_event(tenant: str) -> dict:
    prefix = "a" if tenant == TENANT_A else B_SECRET
    return {"eid": "NOT_AN_EVENT", "mid": f"{prefix}-bad-1", "context": {"channel": tenant}, "note": f"{prefix}-payload"}


def two_tenant_outcome():
    """One pipeline batch holding both tenants' events, interleaved, and a quarantined event of each."""
    a, b = tenant_events(TENANT_A, A_EVENTS), tenant_events(TENANT_B, B_EVENTS)
    mixed = [e for pair in zip(b, a) for e in pair] + b[len(a):] + [bad_event(TENANT_A), bad_event(TENANT_B)]
    now_ms = int(time.time() * 1000)
    record = LogRecord(payload=orjson.dumps({"id": "api.sunbird.telemetry", "events": mixed}),
                       event_count=len(mixed), offset=1, received_at_ms=now_ms,
                       headers={"x-channel-id": TENANT_B, "msgid": f"{B_SECRET}-msgid"})
    return process_batch([record], MidWindow(3600), now_ms=now_ms, config_version="test"), now_ms


def tenant_api(store, dialect: str, tmp_path, **settings) -> TestClient:
    """The query and tables endpoints over `store`, each request made as IDENTITIES[X-Test-Caller]."""
    service = QueryService(Settings(data_dir=tmp_path / "unused", **settings), dialect=dialect)

    def as_caller(handler):
        async def endpoint(request):
            caller = request.headers.get("x-test-caller")
            if caller in IDENTITIES:  # what cohort.api.access does for an authenticated request
                request.state.identity = IDENTITIES[caller]
            return await handler(request)
        return endpoint

    app = Starlette(routes=[Route("/v1/query", as_caller(run_query), methods=["POST"]),
                            Route("/v1/tables", as_caller(list_tables), methods=["GET"])])
    app.state.queries = service
    app.state.node = SimpleNamespace(store=store)
    return TestClient(app, raise_server_exceptions=False)
