"""Bounds on a statement's size and shape, checked before and after the parse.

Parsing is the expensive part of the check (a 256 KB statement of 8,000 chained CTEs took
seconds and gigabytes), so the text is bounded first by bytes, then, from one pass of the
tokenizer, by tokens, bracket nesting, SELECTs and CTEs; only then is it parsed. After the
parse the tree is bounded again by exact counts. The tokens are handed to the parser, so
the text is tokenized once.
"""

from __future__ import annotations

from dataclasses import dataclass

from sqlglot import exp
from sqlglot.tokens import Token, TokenType

from cohort.core.errors import CohortError, ErrorCode

_OPEN = frozenset({TokenType.L_PAREN, TokenType.L_BRACKET, TokenType.L_BRACE})
_CLOSE = frozenset({TokenType.R_PAREN, TokenType.R_BRACKET, TokenType.R_BRACE})


@dataclass(frozen=True, slots=True)
class SqlLimits:
    max_bytes: int = 16 * 1024
    max_tokens: int = 4096
    # sqlglot parses brackets recursively; about 45 levels reach Python's recursion limit.
    max_nesting: int = 32
    max_selects: int = 64  # SELECTs: the query, its subqueries and CTE bodies
    max_ctes: int = 32
    max_nodes: int = 20_000


def check_size(sql: str, limits: SqlLimits) -> None:
    """ERR_QUERY_TOO_LARGE beyond `max_bytes` of UTF-8: cheap enough to run on the event loop."""
    size = len(sql.encode("utf-8", "surrogatepass"))
    if size > limits.max_bytes:
        raise CohortError(ErrorCode.QUERY_TOO_LARGE,
                          f"SQL statement of {size} bytes is over the {limits.max_bytes}-byte limit")


def check_tokens(tokens: list[Token], limits: SqlLimits) -> None:
    """ERR_QUERY_TOO_COMPLEX when the token stream is too long, too deeply nested, or holds too many
    SELECTs or CTEs (`name AS (`) to be worth parsing."""
    if len(tokens) > limits.max_tokens:
        _too_complex(f"{len(tokens)} tokens (at most {limits.max_tokens})")
    depth = deepest = selects = ctes = 0
    previous = None
    for token in tokens:
        kind = token.token_type
        if kind in _OPEN:
            depth += 1
            deepest = max(deepest, depth)
            if kind is TokenType.L_PAREN and previous is TokenType.ALIAS:
                ctes += 1
        elif kind in _CLOSE:
            depth -= 1
        elif kind is TokenType.SELECT:
            selects += 1
        previous = kind
    if deepest > limits.max_nesting:
        _too_complex(f"brackets nested {deepest} deep (at most {limits.max_nesting})")
    _check_counts(selects, ctes, limits)


def check_tree(tree: exp.Expr, limits: SqlLimits) -> None:
    """The same bounds, counted exactly on the parsed tree (FROM-first queries have no SELECT token)."""
    nodes = selects = ctes = 0
    for node in tree.walk():
        nodes += 1
        if isinstance(node, exp.Select):
            selects += 1
        elif isinstance(node, exp.CTE):
            ctes += 1
        if nodes > limits.max_nodes:
            _too_complex(f"more than {limits.max_nodes} syntax nodes")
    _check_counts(selects, ctes, limits)


def _check_counts(selects: int, ctes: int, limits: SqlLimits) -> None:
    if selects > limits.max_selects:
        _too_complex(f"{selects} SELECTs (at most {limits.max_selects})")
    if ctes > limits.max_ctes:
        _too_complex(f"{ctes} common table expressions (at most {limits.max_ctes})")


def _too_complex(what: str) -> None:
    raise CohortError(ErrorCode.QUERY_TOO_COMPLEX, f"query is too complex: {what}; split it into simpler queries")
