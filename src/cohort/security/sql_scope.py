"""Tenant scoping of checked SQL: every table a statement reads becomes its caller's rows of that table.

SqlGuard has already made sure the statement is one read-only SELECT over the exposed tables. Here,
for a tenant identity, each reference to an exposed table — in FROM, a JOIN, a subquery, a CTE body,
a UNION branch, an IN or EXISTS subquery, wherever it stands — is replaced in the AST by
`(SELECT * FROM <table> WHERE <tenant column> = '<tenant>') AS <the reference's alias or name>` (PREWHERE
in ClickHouse, see `_replace_with_tenant_rows`), so the
rest of the statement reads the same names and columns and cannot see another tenant's rows, whatever
it adds (OR 1=1, UNIONs, self-joins). The engine then runs the SQL regenerated from the rewritten tree.

A name is left alone only when it refers to a CTE of the statement, and then only when sqlglot's scope
resolution and the engine's own naming rules (DuckDB: case-insensitive; ClickHouse: exact) both say so:
a CTE's body is itself rewritten, so what reads it reads the tenant's rows; any doubt rewrites the
reference, which can only narrow what it reads. Tables without a tenant column are refused to tenant
identities; admins (tenant None) read everything unchanged.

A scoped identity (an analyst key limited to some batches, say) reads through
`(SELECT * FROM telemetry WHERE channel = '<tenant>' AND (<scope condition>))`, the condition being
scope_filter's over the stored event (ClickHouse: both in the PREWHERE, so no expression of the query
meets a row outside the scope); tables whose rows cannot be narrowed to a scope (the quarantine holds
payload text, not parsed events) are refused to it.
"""

from __future__ import annotations

from sqlglot import exp
from sqlglot.optimizer.scope import Scope

from cohort.core.errors import CohortError, ErrorCode
from cohort.security.identity import Identity, Permission
from cohort.security.scope_filter import scope_condition
from cohort.security.table_catalog import CATALOG, CatalogTable


def check_may_query(identity: Identity) -> None:
    """ERR_AUTH_FORBIDDEN unless `identity` may run SQL over whole tenants (the endpoint checks the role
    first; this holds wherever SQL is checked)."""
    if not identity.can(Permission.QUERY_SQL):
        raise CohortError(ErrorCode.AUTH_FORBIDDEN, f"role {identity.role} may not run SQL queries")
    if identity.scope is not None and identity.tenant is None:  # a scope narrows a tenant: none to narrow here
        raise CohortError(ErrorCode.AUTH_FORBIDDEN, f"a scope ({identity.scope}) needs a tenant to narrow")


def scope_to_tenant(tree: exp.Query, identity: Identity, dialect: str, scopes: list[Scope]) -> exp.Query:
    """Rewrite `tree` (checked by SqlGuard; `scopes`: its traverse_scope) in place so that it reads only the
    rows of `identity`'s tenant (and scope), and return it. Admins: unchanged."""
    check_may_query(identity)
    if identity.tenant is None:
        return tree
    cte_references = _cte_references(scopes, dialect)
    tables = [table for table in tree.find_all(exp.Table) if id(table) not in cte_references]
    for table in tables:  # collected first: the tables the rewrite adds are already the tenant's
        _replace_with_tenant_rows(table, identity, dialect)
    return tree


def rows_condition(entry: CatalogTable, identity: Identity, dialect: str) -> exp.Expr:
    """The condition that keeps, of table `entry`, exactly the rows `identity` (a tenant's) may read:
    `<tenant column> = '<tenant>'`, and for a scoped identity `AND (<scope condition>)`. CohortError
    ERR_QUERY_FORBIDDEN when the table cannot be narrowed so."""
    if identity.tenant is None:
        raise ValueError("an admin's reads are not narrowed")
    if entry.tenant_column is None:
        raise CohortError(ErrorCode.QUERY_FORBIDDEN, f"table {entry.name} holds no tenant column, so only admins "
                          f"may read it; query {_readable(identity)}")
    tenant_only = exp.EQ(this=exp.column(entry.tenant_column), expression=exp.Literal.string(identity.tenant))
    if identity.scope is None:
        return tenant_only
    if entry.scope_column is None:
        raise CohortError(ErrorCode.QUERY_FORBIDDEN, f"table {entry.name} cannot be narrowed to your scope "
                          f"({identity.scope}): its rows are not parsed events, so only unscoped tenant roles read "
                          f"it; query {_readable(identity)}")
    in_scope = exp.Paren(this=scope_condition(identity.scope, dialect, entry.scope_column))
    return exp.And(this=tenant_only, expression=in_scope)


def _readable(identity: Identity) -> str:
    return ", ".join(name for name, entry in CATALOG.items() if entry.readable_by(identity))


def check_tenant_reads(tree: exp.Query, identity: Identity, dialect: str, scopes: list[Scope]) -> None:
    """Verify, independently of the rewrite, that every table `tree` reads (other than its CTEs) is read only
    through a `(SELECT * FROM <table> WHERE <tenant column> = '<tenant>')` of `identity`'s tenant — for a
    scoped identity `WHERE <tenant column> = '<tenant>' AND (<its scope's condition>)`, exactly. The guard
    runs this on the SQL it hands the engine, parsed again: sqlglot writes a few trees back as SQL that means
    something else (a WITH inside a UNION is dropped, so names that were CTEs become tables)."""
    if identity.tenant is None:
        return
    cte_references = _cte_references(scopes, dialect)
    for table in tree.find_all(exp.Table):
        if id(table) not in cte_references and not _is_tenant_read(table, identity, dialect):
            raise CohortError(ErrorCode.QUERY_INVALID, "this statement cannot be checked as written (is a WITH "
                              "inside a UNION? put every WITH at the start of its query)")


def _is_tenant_read(table: exp.Table, identity: Identity, dialect: str) -> bool:
    entry = CATALOG.get(table.name)
    reading = table.parent if isinstance(table.parent, exp.Final) else table
    select, from_ = reading.parent.parent if reading.parent else None, reading.parent
    if entry is None or entry.tenant_column is None or not isinstance(from_, exp.From) \
            or not isinstance(select, exp.Select) or not isinstance(select.parent, exp.Subquery):
        return False
    if set(k for k, v in select.args.items() if v) != {"expressions", "from_", "prewhere" if "prewhere" in select.args
                                                            and select.args["prewhere"] else "where"}:
        return False
    if len(select.expressions) != 1 or not isinstance(select.expressions[0], exp.Star):
        return False
    clause = select.args.get("prewhere") or select.args.get("where")
    condition = clause.this if clause is not None else None
    if identity.scope is not None:  # `<tenant> AND (<scope>)`: the scope's part must be its condition, as built
        if entry.scope_column is None or not isinstance(condition, exp.And) \
                or not isinstance(condition.expression, exp.Paren):
            return False
        expected = exp.Paren(this=scope_condition(identity.scope, dialect, entry.scope_column))
        if condition.expression.sql(dialect=dialect) != expected.sql(dialect=dialect):
            return False
        condition = condition.this
    tenant = identity.tenant
    return (isinstance(condition, exp.EQ) and isinstance(condition.this, exp.Column)
            and not condition.this.table and condition.this.name == entry.tenant_column
            and isinstance(condition.expression, exp.Literal) and condition.expression.is_string
            and condition.expression.this == tenant)


def visible_ctes(node: exp.Expr) -> list[str]:
    """The names of the CTEs `node` may refer to, as written: those of every enclosing WITH, and within a
    CTE's own body only the CTEs before it."""
    names: list[str] = []
    child, parent = node, node.parent
    while parent is not None:
        if isinstance(parent, exp.With):  # `child` is one of its CTEs: it sees the ones before it
            for cte in parent.expressions:
                if cte is child:
                    break
                names.append(cte.alias_or_name)
        elif isinstance(parent, exp.Query) and isinstance(parent.args.get("with_"), exp.With) \
                and parent.args["with_"] is not child:
            names.extend(cte.alias_or_name for cte in parent.args["with_"].expressions)
        child, parent = parent, parent.parent
    return names


def same_name(a: str, b: str, dialect: str) -> bool:
    """Whether the engine takes two names for the same: ClickHouse compares them as written, DuckDB ignores case."""
    return a == b if dialect == "clickhouse" else a.casefold() == b.casefold()


def _cte_references(scopes: list[Scope], dialect: str) -> set[int]:
    """Ids of the table nodes that read a CTE, by sqlglot's scopes *and* by the engine's naming rules."""
    references: set[int] = set()
    for scope in scopes:
        for table in scope.tables:
            source = scope.sources.get(table.alias_or_name)
            by_sqlglot = isinstance(source, Scope) and source.expression is not None and table is not source.expression
            if by_sqlglot and not table.args.get("db") and not table.args.get("catalog") \
                    and any(same_name(table.name, cte, dialect) for cte in visible_ctes(table)):
                references.add(id(table))
    return references


def _replace_with_tenant_rows(table: exp.Table, identity: Identity, dialect: str) -> None:
    name = table.name.lower()
    entry = CATALOG.get(name)
    if entry is None:  # SqlGuard lets only exposed tables through; anything else here is a wiring fault
        raise CohortError(ErrorCode.QUERY_FORBIDDEN, f"unknown table {table.name!r}")
    condition = rows_condition(entry, identity, dialect)
    outer = table.parent if isinstance(table.parent, exp.Final) else table  # ClickHouse FINAL wraps the table
    source = exp.Table(this=exp.to_identifier(name))
    for arg in ("sample", "hints", "version", "system_time", "only", "partition"):  # how to read it, kept
        if table.args.get(arg) is not None:
            source.set(arg, table.args[arg])
    reading: exp.Expr = exp.Final(this=source) if outer is not table else source
    rows = exp.Select(expressions=[exp.Star()]).from_(reading, copy=False)
    # ClickHouse moves conditions the query adds outside into the same scan and may evaluate them first: an
    # expression that fails on another tenant's value would quote it in its error. Its PREWHERE filters
    # before anything else is evaluated (and the key index still serves both); DuckDB applies a constant
    # comparison in the scan, before any expression of the query (the attack suite holds both to it).
    rows.set("prewhere" if dialect == "clickhouse" else "where",
             exp.PreWhere(this=condition) if dialect == "clickhouse" else exp.Where(this=condition))
    alias = table.args.get("alias") or exp.TableAlias(this=table.this.copy())
    subquery = exp.Subquery(this=rows, alias=alias)
    for arg in ("pivots", "joins", "laterals"):  # what follows the reference in the FROM clause stays outside
        if table.args.get(arg):
            subquery.set(arg, table.args[arg])
    outer.replace(subquery)
