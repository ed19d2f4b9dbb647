"""GET /v1/tables: what the caller may query — tables, columns, their types in the store's dialect, and
what each means — so that a user can write a query without reading Cohort's source. Only the tables the
caller's identity can read are listed (cohort.security.table_catalog), with how its rows are limited.
"""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import Response

from cohort.api.access import caller_identity
from cohort.api.responses import failure, status_for, success
from cohort.core.errors import CohortError, ErrorCode
from cohort.security.identity import Identity, Permission
from cohort.security.scope_filter import describe_scope
from cohort.security.table_catalog import CatalogTable, tables_for

API_ID = "api.tables"


async def list_tables(request: Request) -> Response:
    try:
        identity = caller_identity(request)
        if not identity.can(Permission.READ_TABLES):
            raise CohortError(ErrorCode.AUTH_FORBIDDEN, f"role {identity.role} may not list the tables")
    except CohortError as exc:
        return failure(API_ID, exc.code, exc.message, status_for(exc.code), ver="1.0")
    dialect = request.app.state.queries.dialect
    tables = [_describe(table, identity, dialect) for table in tables_for(identity)]
    return success(API_ID, result={"dialect": dialect, "tenant": identity.tenant, "tables": tables}, ver="1.0")


def _describe(table: CatalogTable, identity: Identity, dialect: str) -> dict:
    return {
        "name": table.name,
        "description": table.description,
        "rows": _rows_note(table, identity),
        "columns": [{"name": c.name, "type": c.type_in(dialect), "description": c.description} for c in table.columns_in(dialect)],
    }


def _rows_note(table: CatalogTable, identity: Identity) -> str:
    if identity.tenant is None:
        return "all tenants' rows"
    if identity.scope is not None:
        return (f"only rows of your tenant ({table.tenant_column} = '{identity.tenant}') within your scope "
                f"{identity.scope}: {describe_scope(identity.scope)}; every query is limited to them")
    return f"only rows of your tenant ({table.tenant_column} = '{identity.tenant}'); every query is limited to them"
