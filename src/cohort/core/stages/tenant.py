"""Tenant: an ingestor writes its own tenant's events only.

The API records the tenant of the identity that sent a request (`TENANT_HEADER` in the log record's
headers; absent when an admin sent it, or authentication is off). An event whose `context.channel`
is another tenant's is quarantined with its own code rather than stored where that tenant's users
would read it: one state's key must not be able to write into another state's figures.
"""

from __future__ import annotations

from cohort.core.errors import ErrorCode
from cohort.core.work_item import FailedEvent, WorkItem, failed_from_item

STAGE = "tenant"
TENANT_HEADER = "cohort-tenant"  # a log record header the API sets; never one a client can send


def check_tenant(items: list[WorkItem]) -> tuple[list[WorkItem], list[FailedEvent]]:
    kept: list[WorkItem] = []
    failed: list[FailedEvent] = []
    for item in items:
        tenant = item.record.headers.get(TENANT_HEADER)
        context = item.event.get("context")
        channel = context.get("channel") if isinstance(context, dict) else None
        if tenant is None or channel == tenant:
            kept.append(item)
        else:
            failed.append(failed_from_item(item, ErrorCode.TENANT_MISMATCH, STAGE,
                                           f"event of channel {str(channel)[:80]!r} sent with a key of tenant "
                                           f"{tenant!r}: a key writes its own tenant's events only"))
    return kept, failed
