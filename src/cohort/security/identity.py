"""Who is asking: an identity (from an API key or a verified JWT) with its tenant, role and scope.

In DIKSHA each state or board is a tenant, named by its Sunbird `channel`. A role says what an identity
may do (`ROLE_PERMISSIONS`), its tenant and scope say over which rows. Every endpoint declares the
permission it needs; nothing else in the platform decides access.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from enum import StrEnum

from cohort.core.errors import CohortError, ErrorCode


class Role(StrEnum):
    ADMIN = "admin"  # every tenant, every action
    TENANT_ADMIN = "tenant_admin"  # its tenant: keys, SQL, metrics, learners, audit, forget
    INGESTOR = "ingestor"  # writes its tenant's telemetry, reads nothing
    ANALYST = "analyst"  # SQL and metrics over its tenant, pseudonymous; no clear learner ids
    EDUCATOR = "educator"  # metrics, learner lists, dashboard and exports within its scope only
    VIEWER = "viewer"  # published figures only: metrics over its tenant (or scope), small cells suppressed


class Permission(StrEnum):
    INGEST = "ingest"  # POST telemetry
    QUERY_SQL = "query_sql"  # POST /v1/query (tenant-scoped SQL)
    READ_TABLES = "read_tables"  # GET /v1/tables (what the caller may query)
    READ_METRICS = "read_metrics"  # learning metrics (scoped)
    READ_LEARNERS = "read_learners"  # learner lists and re-identification of learners in scope (audited)
    EXPORT = "export"  # exports of data in scope
    MANAGE_KEYS = "manage_keys"  # create/list/revoke keys (own tenant unless admin)
    MANAGE_TENANTS = "manage_tenants"  # create/list tenants (admin only)
    READ_AUDIT = "read_audit"  # read the audit log (own tenant unless admin)
    FORGET = "forget"  # right to be forgotten
    OPERATE = "operate"  # /metrics and operator views across tenants


ROLE_PERMISSIONS: dict[Role, frozenset[Permission]] = {
    Role.ADMIN: frozenset(Permission),
    Role.TENANT_ADMIN: frozenset({Permission.INGEST, Permission.QUERY_SQL, Permission.READ_TABLES,
                                  Permission.READ_METRICS, Permission.READ_LEARNERS, Permission.EXPORT,
                                  Permission.MANAGE_KEYS, Permission.READ_AUDIT, Permission.FORGET}),
    Role.INGESTOR: frozenset({Permission.INGEST}),
    Role.ANALYST: frozenset({Permission.QUERY_SQL, Permission.READ_TABLES, Permission.READ_METRICS,
                             Permission.EXPORT}),
    Role.EDUCATOR: frozenset({Permission.READ_METRICS, Permission.READ_LEARNERS, Permission.EXPORT}),
    # a state's published reports, a district officer's view: aggregates with no way to reach row-level data
    Role.VIEWER: frozenset({Permission.READ_METRICS}),
}

# A scope narrows an educator (or any tenant role) to part of its tenant: the course batches it teaches
# (Sunbird `context.cdata` entries of type Batch/CourseBatch), courses (`object.rollup.l1` or a
# `context.cdata` Course entry), or a level of `context.rollup` (l1..l4: e.g. district, school).
SCOPE_KINDS = ("batch", "course", "rollup.l1", "rollup.l2", "rollup.l3", "rollup.l4")
_TENANT = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.:-]{0,127}$")
_SCOPE_VALUE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.:-]{0,127}$")


@dataclass(frozen=True)
class Scope:
    """`kind:value[,value…]`, e.g. `batch:0130b9f1,0130b9f2` or `rollup.l3:school-0042`."""

    kind: str
    values: tuple[str, ...]

    @classmethod
    def parse(cls, text: str) -> Scope:
        kind, sep, rest = text.partition(":")
        values = tuple(v.strip() for v in rest.split(",") if v.strip())
        if not sep or kind not in SCOPE_KINDS or not values or not all(_SCOPE_VALUE.match(v) for v in values):
            raise CohortError(ErrorCode.AUTH_INVALID_SCOPE,
                              f"scope {text[:80]!r} is not kind:value[,value…] with kind one of {', '.join(SCOPE_KINDS)}")
        return cls(kind, values)

    def __str__(self) -> str:
        return f"{self.kind}:{','.join(self.values)}"


def check_tenant_id(tenant: str) -> str:
    """A tenant id is a Sunbird channel: letters, digits and `_.:-`, at most 128 characters."""
    if not isinstance(tenant, str) or not _TENANT.match(tenant):
        raise CohortError(ErrorCode.AUTH_INVALID_TENANT,
                          f"tenant {str(tenant)[:80]!r} is not a channel id (letters, digits, _.:-; ≤ 128)")
    return tenant


@dataclass(frozen=True)
class Identity:
    """An authenticated caller. `tenant` is None only for `admin` (all tenants)."""

    subject: str  # key id or JWT `sub`: what the audit log records, never the secret
    role: Role
    tenant: str | None
    scope: Scope | None = None
    via: str = "api_key"  # api_key | jwt | development (authentication switched off)

    def __post_init__(self) -> None:
        if self.tenant is None and self.role is not Role.ADMIN:
            raise CohortError(ErrorCode.AUTH_INVALID_TENANT, f"role {self.role} needs a tenant")
        if self.tenant is not None:
            check_tenant_id(self.tenant)

    def can(self, permission: Permission) -> bool:
        return permission in ROLE_PERMISSIONS[self.role]

    def reads_tenant(self, tenant: str) -> bool:
        """Whether rows of `tenant` are visible to this identity at all (its scope may narrow further)."""
        return self.tenant is None or self.tenant == tenant


DEVELOPMENT_IDENTITY = Identity(subject="development", role=Role.ADMIN, tenant=None, via="development")
