"""SqlGuard: let users run analytical SELECTs, and nothing else.

The SQL is parsed with sqlglot in the store's dialect (`StoreCapabilities.sql_dialect`:
"duckdb" for the embedded store, "clickhouse" for the scale-out one; users write SQL in
that dialect) and must be one read-only query over the exposed tables: no DDL/DML, no
table functions, no file or catalog access, no recursion, no SETTINGS, FORMAT or WITH
FILL clause, only functions from the dialect's allowlist (sql_functions), and no
expression that could grow values without bound (sql_value_size). What runs is the SQL
regenerated from the checked tree in the same dialect, so the engine never sees text
the guard did not understand. The statement's size and shape are bounded before
the parse (sql_limits), so checking costs little whatever arrives; the check
still runs off the event loop (see cohort.api.query). Every check is made for an
identity: once the statement passed, every table reference it makes is resolved in
its own scope (`_check_sources`) and, for a tenant identity, swapped for that
tenant's rows of the table (sql_scope; for a scoped identity, the rows within its scope), before the
SQL is regenerated. The function allowlist judges what the user wrote: the functions that rewrite adds
(the scope's JSON condition) are Cohort's own and are not held to it; the re-parsed SQL is then held to
the exact form of the rewrite (`check_tenant_reads`).
"""

from __future__ import annotations

from typing import Any

import orjson
from sqlglot import exp
from sqlglot.dialects.dialect import Dialect
from sqlglot.errors import ParseError, TokenError
from sqlglot.optimizer.scope import Scope, traverse_scope

from cohort.core.errors import CohortError, ErrorCode, first_line
from cohort.security.identity import Identity
from cohort.security.sql_functions import check_function
from cohort.security.sql_limits import SqlLimits, check_size, check_tokens, check_tree
from cohort.security.sql_scope import check_may_query, check_tenant_reads, scope_to_tenant, visible_ctes
from cohort.security.sql_value_size import check_value_sizes
from cohort.security.table_catalog import EXPOSED_TABLES

SUPPORTED_DIALECTS = ("duckdb", "clickhouse")
_WRITES = (exp.Insert, exp.Update, exp.Delete, exp.Create, exp.Drop, exp.Alter, exp.Command, exp.Merge,
           exp.Pragma, exp.Set, exp.Copy, exp.TruncateTable, exp.Into, exp.Use, exp.Transaction, exp.Commit)


# Clauses of a query that change how the engine runs it rather than what it reads: a SETTINGS clause can
# set limits (ClickHouse accepts one in a subquery even in read-only mode), FORMAT and INTO OUTFILE write
# elsewhere, WITH FILL (and its INTERPOLATE) makes rows out of a numeric range.
_ENGINE_CLAUSES = ("settings", "format", "into", "interpolate")


class SqlGuard:
    def __init__(self, tables: frozenset[str] = EXPOSED_TABLES, limits: SqlLimits | None = None,
                 dialect: str = "duckdb"):
        if dialect not in SUPPORTED_DIALECTS:
            raise ValueError(f"SQL dialect {dialect!r} is not one the guard checks: {', '.join(SUPPORTED_DIALECTS)}")
        self.tables = tables
        self.limits = limits or SqlLimits()
        self.dialect = dialect
        self._dialect = Dialect.get_or_raise(dialect)

    def check(self, sql: str, params: dict[str, Any] | None = None, *, identity: Identity) -> str:
        """Return the SQL to execute for `identity` (a tenant's reads only its tenant's rows), or raise
        CohortError (ERR_AUTH_FORBIDDEN, ERR_QUERY_INVALID / _FORBIDDEN / _TOO_LARGE / _TOO_COMPLEX).
        `params`, the values the query will run with, are weighed with it."""
        if not isinstance(identity, Identity):  # never a default: whose rows a query reads is always said
            raise TypeError("SqlGuard.check needs the caller's Identity")
        check_may_query(identity)
        if not isinstance(sql, str) or not sql.strip():
            raise CohortError(ErrorCode.QUERY_INVALID, "'sql' must be a non-empty string")
        check_size(sql, self.limits)
        param_bytes = {str(name): len(orjson.dumps(value, default=str)) for name, value in (params or {}).items()}
        try:
            return self._check(sql, param_bytes, identity)
        except RecursionError:  # nesting the token bounds did not see (e.g. NOT NOT NOT …)
            raise CohortError(ErrorCode.QUERY_TOO_COMPLEX, "query is too complex: nested too deeply") from None
        except MemoryError:  # only where the check runs with a memory bound (cohort.api.query_checker)
            raise CohortError(ErrorCode.QUERY_TOO_COMPLEX, "query is too complex: checking it needs too much "
                              "memory") from None

    def _check(self, sql: str, param_bytes: dict[str, int], identity: Identity) -> str:
        try:
            tokens = self._dialect.tokenize(sql)
        except TokenError as exc:
            raise CohortError(ErrorCode.QUERY_INVALID, f"SQL does not parse: {first_line(exc, 200)}") from None
        check_tokens(tokens, self.limits)
        try:
            statements = [s for s in self._dialect.parser().parse(tokens, sql) if s is not None]
        except ParseError as exc:
            raise CohortError(ErrorCode.QUERY_INVALID, f"SQL does not parse: {first_line(exc, 200)}") from None
        except (RecursionError, MemoryError):
            raise
        except Exception as exc:  # sqlglot raises a few other types on odd input
            raise CohortError(ErrorCode.QUERY_INVALID, f"SQL does not parse: {type(exc).__name__}") from None
        if not statements:
            raise CohortError(ErrorCode.QUERY_INVALID, "no SQL statement found")
        if len(statements) != 1:
            raise CohortError(ErrorCode.QUERY_FORBIDDEN, "send exactly one SELECT statement")
        tree = statements[0]
        if not isinstance(tree, exp.Query):
            raise CohortError(ErrorCode.QUERY_FORBIDDEN, "only SELECT queries are allowed")
        check_tree(tree, self.limits)
        scopes = self._check_tree(tree, param_bytes, identity)
        text = scope_to_tenant(tree, identity, self.dialect, scopes).sql(dialect=self.dialect)
        self._check_regenerated(text, identity, ctes=sum(1 for _ in tree.find_all(exp.CTE)))
        return text

    def _check_regenerated(self, text: str, identity: Identity, ctes: int) -> None:
        """What runs is parsed again and must read only what the checked tree read: sqlglot writes a few trees
        back as SQL that means something else (a WITH inside a UNION is dropped: its CTE names would then name
        tables), so every table is resolved again and, for a tenant, must be read through its tenant's filter."""
        try:
            statements = [s for s in self._dialect.parse(text) if s is not None]
        except (RecursionError, MemoryError):
            raise
        except Exception:  # noqa: BLE001 - sqlglot could not read back what it wrote
            statements = []
        if len(statements) != 1 or not isinstance(statements[0], exp.Query) \
                or sum(1 for _ in statements[0].find_all(exp.CTE)) != ctes:
            raise CohortError(ErrorCode.QUERY_INVALID, "this statement cannot be checked as written (is a WITH "
                              "inside a UNION? put every WITH at the start of its query)")
        regenerated = statements[0]
        check_tenant_reads(regenerated, identity, self.dialect, self._check_sources(regenerated))

    def _check_tree(self, tree: exp.Expr, param_bytes: dict[str, int], identity: Identity) -> list[Scope]:
        for node in tree.walk():
            if isinstance(node, _WRITES):
                raise CohortError(ErrorCode.QUERY_FORBIDDEN, f"{node.key.upper()} is not allowed: queries are read-only")
            if isinstance(node, exp.With) and node.args.get("recursive"):
                raise CohortError(ErrorCode.QUERY_FORBIDDEN,
                                  "WITH RECURSIVE is not allowed: a recursive query can grow without bound")
            if isinstance(node, exp.Select) and not node.expressions:  # e.g. `SELECT LATERAL x`, which
                # sqlglot writes back as text that is no query
                raise CohortError(ErrorCode.QUERY_INVALID, "a SELECT needs at least one column to select")
            if isinstance(node, exp.WithFill):
                raise CohortError(ErrorCode.QUERY_FORBIDDEN,
                                  "WITH FILL is not allowed: it makes a row for every step of a range")
            for clause in _ENGINE_CLAUSES:
                if node.args.get(clause) and isinstance(node, exp.Query):
                    raise CohortError(ErrorCode.QUERY_FORBIDDEN, f"{clause.upper()} clauses are not allowed: queries "
                                      "run with the server's own settings and answer as JSON")
            if isinstance(node, exp.Table):
                self._check_table_shape(node)
            elif isinstance(node, exp.In) and self.dialect == "clickhouse":
                self._check_in_source(node, identity)
            elif isinstance(node, exp.ReadCSV):
                raise CohortError(ErrorCode.QUERY_FORBIDDEN, "function read_csv is not allowed")
            elif isinstance(node, exp.Func):
                check_function(node, self.dialect)
        scopes = self._check_sources(tree)
        check_value_sizes(scopes, param_bytes, self.dialect)
        return scopes

    def _check_table_shape(self, table: exp.Table) -> None:
        if not isinstance(table.this, exp.Identifier):
            raise CohortError(ErrorCode.QUERY_FORBIDDEN, "table functions are not allowed; query "
                              + ", ".join(sorted(self.tables)))
        if table.args.get("db") or table.args.get("catalog"):
            raise CohortError(ErrorCode.QUERY_FORBIDDEN, f"schema-qualified table {table.sql()} is not allowed")

    def _check_in_source(self, node: exp.In, identity: Identity) -> None:
        """ClickHouse reads the table a name stands for alone on the right of IN (`x IN system.one`,
        `x IN (pipeline_progress)`, `x IN {t:Identifier}`), where the table checks never see a table: such a
        name must be a CTE visible there or, for an admin, an exposed table (a tenant's would read every
        tenant's rows of it)."""
        items = node.expressions
        source = node.args.get("field") or (items[0] if len(items) == 1 else None)
        while isinstance(source, exp.Paren):
            source = source.this
        if isinstance(source, exp.Placeholder) and str(source.args.get("kind") or "").lower() == "identifier":
            raise CohortError(ErrorCode.QUERY_FORBIDDEN, "an Identifier parameter cannot follow IN: it would name a "
                              "table the query may not read; write x IN (SELECT …) or pass a list")
        if not isinstance(source, (exp.Column, exp.Dot)):
            return  # a list, a tuple, a subquery, an expression
        if isinstance(source, exp.Column) and not source.args.get("table"):
            name = source.name
            if name in visible_ctes(node):
                return
            if name.lower() in self.tables:
                if identity.tenant is not None:
                    raise CohortError(ErrorCode.QUERY_FORBIDDEN, f"IN {name} would read all of table {name.lower()}; "
                                      f"write x IN (SELECT … FROM {name.lower()}), which reads your tenant's rows")
                source.set("this", exp.to_identifier(name.lower()))
                return
        raise CohortError(ErrorCode.QUERY_FORBIDDEN,
                          f"IN {source.sql(dialect=self.dialect)}: a name alone after IN names a table, and only "
                          f"{', '.join(sorted(self.tables))} or a CTE may be read; write x IN (SELECT …) or x IN "
                          "(a list), or use = to compare with a column")

    def _check_sources(self, tree: exp.Expr) -> list[Scope]:
        """Resolve every table reference in its own scope: a name counts as a CTE only where that CTE
        is visible (a CTE's own body, for instance, does not see it), otherwise it must be exposed."""
        try:
            scopes = traverse_scope(tree)
        except (RecursionError, MemoryError):
            raise
        except Exception as exc:  # sqlglot could not resolve the scopes: refuse rather than guess
            raise CohortError(ErrorCode.QUERY_INVALID,
                              f"cannot resolve the query's tables: {first_line(exc, 200)}") from None
        seen: set[int] = set()
        for scope in scopes:
            for table in scope.tables:
                seen.add(id(table))
                source = scope.sources.get(table.alias_or_name)
                if isinstance(source, Scope) and source.expression is not None and table is not source.expression:
                    continue  # a CTE (or derived table) visible here
                self._check_exposed(table)
        for table in tree.find_all(exp.Table):  # anything the scopes did not cover is checked strictly
            if id(table) not in seen:
                self._check_exposed(table)
        return scopes

    def _check_exposed(self, table: exp.Table) -> None:
        name = table.name.lower()
        if name not in self.tables:
            raise CohortError(ErrorCode.QUERY_FORBIDDEN,
                              f"unknown table {table.name!r}; available: {', '.join(sorted(self.tables))}")
        if self.dialect == "clickhouse" and table.name != name:  # ClickHouse's names are case-sensitive
            table.set("this", exp.to_identifier(name))

