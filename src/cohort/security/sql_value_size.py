"""How much bigger than its inputs a query's values can grow: bounded before the query runs.

DuckDB's memory limit does not cover the strings and lists that expressions build, and it
evaluates an expression for a whole vector of rows (2,048) before it checks for an interrupt,
so one expression can take gigabytes before any watchdog can stop it: a `replace` whose
replacement is long multiplies its input (measured: 23 GB from 500 events with two nested
ones), a chain of `||` keeps every intermediate value (quadratic), a lambda that copies a
column into every list element multiplies by the list's length, and a list-building
aggregate (`string_agg`, `list`, …) combined back into every row, or computed over a
growing window, multiplies by the number of rows.

So each expression gets a *weight*: an upper bound of its value's size in multiples of the
largest value a column holds (a telemetry event, ≈ 2 KB; literals and parameters weigh their
own size in that unit), and each scope a *cost*: the sum of the weights of the values it
computes, about what one vector of rows holds. Weights flow from CTEs and subqueries to
the columns that read them. A value as big as a whole table (a list-building aggregate)
may be returned or measured, not combined with anything else per row.

The functions sqlglot does not type are known by their names, which differ between dialects
(`_NAMES`): DuckDB's `string_agg` and ClickHouse's `groupArray` both build a list of every row,
`replace` and `replaceAll` both multiply their input. ClickHouse tracks the memory of each query
(max_memory_usage) where DuckDB does not, but the same bounds keep a query cheap to refuse early.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import NoReturn

from sqlglot import exp
from sqlglot.optimizer.scope import Scope

from cohort.core.errors import CohortError, ErrorCode
from cohort.security.sql_functions import aggregate_base, function_name

MAX_WEIGHT = 32  # no value bigger than 32 times the largest input value
MAX_COST = 64  # nor more than 64 such values computed in one scope
WHOLE_TABLE = math.inf  # a list-building aggregate's value: as big as all the rows it read
UNIT_BYTES = 2048  # what a weight of 1 stands for when a literal or a parameter is weighed by its size

# Values of a fixed, small size whatever their input (booleans, numbers, dates, digests).
_SMALL_OUTPUT = (exp.Predicate, exp.Connector, exp.Not, exp.Count, exp.Sum, exp.Avg, exp.Length, exp.ArraySize,
                 exp.StrPosition, exp.Contains, exp.StartsWith, exp.EndsWith, exp.RegexpLike, exp.RegexpILike,
                 exp.RegexpFullMatch, exp.Levenshtein, exp.JarowinklerSimilarity, exp.IsNan, exp.IsInf, exp.MD5,
                 exp.SHA, exp.SHA2, exp.Extract, exp.Year, exp.Month, exp.Day, exp.Hour, exp.Minute, exp.Second,
                 exp.Week, exp.WeekOfYear, exp.DayOfWeek, exp.DayOfWeekIso, exp.DayOfYear, exp.DayOfMonth,
                 exp.Quarter, exp.DateDiff, exp.TimeToUnix, exp.Ascii, exp.Unicode, exp.RowNumber, exp.Rank,
                 exp.DenseRank, exp.PercentRank, exp.CumeDist, exp.Ntile, exp.ApproxDistinct, exp.CountIf,
                 exp.Stddev, exp.StddevPop, exp.StddevSamp, exp.Variance, exp.VariancePop, exp.Corr,
                 exp.CovarPop, exp.CovarSamp, exp.ArrayContains, exp.ArrayContainsAll, exp.ArrayContainedBy,
                 exp.ArrayOverlaps, exp.ArrayPosition, exp.BitLength, exp.Typeof, exp.Uuid, exp.CurrentDate,
                 exp.CurrentTimestamp, exp.CurrentTime, exp.TimestampTrunc, exp.DateTrunc, exp.UnixToTime,
                 exp.StrToTime, exp.DateFromParts, exp.TimeFromParts, exp.DateBin, exp.LastDay, exp.Dayname,
                 exp.Monthname, exp.Round, exp.Floor, exp.Ceil, exp.Abs, exp.Sqrt, exp.Ln, exp.Log, exp.Exp,
                 exp.Pow, exp.Sign, exp.Trunc, exp.Rand, exp.Pi, exp.Add, exp.Sub, exp.Mul, exp.Div, exp.Mod,
                 exp.IntDiv, exp.Neg, exp.BitwiseAnd, exp.BitwiseOr, exp.BitwiseXor, exp.BitwiseNot,
                 exp.BitwiseLeftShift, exp.BitwiseRightShift, exp.DataType)
# Nodes that only wrap or arrange values: they compute nothing new.
_STRUCTURAL = (exp.Column, exp.Literal, exp.Star, exp.Identifier, exp.Placeholder, exp.Parameter, exp.Alias,
               exp.Ordered, exp.Order, exp.Group, exp.Where, exp.Having, exp.Qualify, exp.Paren, exp.WindowSpec,
               exp.Distinct, exp.DataType, exp.Query, exp.Subquery, exp.Lambda, exp.Join)
_SMALL_OUTPUT_NAMES = frozenset({
    "strlen", "octet_length", "len", "array_length", "hash", "md5_number", "json_array_length", "json_valid",
    "json_exists", "json_contains", "json_type", "list_count", "list_sum", "list_avg", "cardinality", "list_has",
    "list_has_all", "array_has", "list_contains", "list_position", "list_indexof", "array_position", "epoch_ms",
    "epoch_us", "epoch_ns", "epoch_s", "date_part", "datepart", "date_diff", "date_sub", "datesub", "age", "now",
    "today", "isfinite", "gcd", "lcm", "even", "bit_count", "millisecond", "microsecond", "isoyear", "yearweek",
    "era", "century", "decade", "millennium", "weekday", "histogram_count", "entropy", "product", "fsum", "favg",
    "kahan_sum", "sumkahan", "geomean", "geometric_mean", "regr_intercept", "regr_r2", "regr_count", "mad",
})
# Parents whose identifiers are names, not values.
_NAMING = (exp.Alias, exp.Column, exp.Lambda, exp.PropertyEQ, exp.Table, exp.TableAlias, exp.Window, exp.Dot)
# Aggregates whose value holds every row they read.
_LIST_BUILDING = (exp.GroupConcat, exp.ArrayAgg)
_LIST_BUILDING_NAMES = frozenset({"string_agg", "listagg", "list", "array_agg", "histogram", "json_group_array",
                                  "json_group_object", "json_group_structure"})
# Output size at most this many times the input's (escaping, pieces of a split as separate strings, …).
_FACTOR: dict[type[exp.Expr], int] = {exp.Hex: 2, exp.ToBase64: 2, exp.Split: 9, exp.RegexpExtractAll: 9,
                                      exp.JSONObject: 6, exp.JSONArray: 6, exp.JSONFormat: 6}
_FACTOR_NAMES = {"to_json": 6, "json_quote": 6, "array_to_json": 6, "row_to_json": 6, "url_encode": 3,
                 "regexp_split_to_array": 9, "string_to_array": 9, "string_split_regex": 9, "str_split_regex": 9}
_LAMBDA_MAPS = (exp.Transform,)
_LAMBDA_MAP_NAMES = frozenset({"list_transform", "list_apply", "array_apply", "array_transform", "apply"})
_LAMBDA_FOLD_NAMES = frozenset({"list_reduce", "array_reduce", "reduce"})
_BACKREFERENCE = re.compile(r"\\[0-9]")


@dataclass(frozen=True, slots=True)
class _Names:
    """One dialect's names of the functions sqlglot leaves untyped, by how their output grows."""

    small_output: frozenset[str]
    list_building: frozenset[str]
    factor: dict[str, int]
    lambda_maps: frozenset[str] = frozenset()
    lambda_folds: frozenset[str] = frozenset()
    replace_all: frozenset[str] = frozenset()  # (text, needle, replacement), every needle replaced
    regexp_replace_all: frozenset[str] = frozenset()  # (text, pattern, replacement), every match replaced
    regexp_replace_one: frozenset[str] = frozenset()  # (text, pattern, replacement), the first match
    join_list: frozenset[str] = frozenset()  # (list, separator): the separator between every two elements
    aggregates: bool = False  # names may carry ClickHouse aggregate combinators (sumIf, groupArrayIf, …)

    def base(self, name: str) -> str:
        return (aggregate_base(name) or name) if self.aggregates and name else name


_CLICKHOUSE_SMALL_OUTPUT = frozenset({
    "lengthutf8", "empty", "notempty", "positioncaseinsensitive", "positionutf8", "positioncaseinsensitiveutf8",
    "countsubstrings", "countmatches", "hastoken", "match", "like", "notlike", "ilike", "notilike",
    "multisearchany", "multisearchfirstindex", "multimatchany", "startswithutf8", "endswithutf8", "siphash64",
    "xxhash64", "xxhash32", "murmurhash3_64", "murmurhash3_32", "farmhash64", "isipv4string", "isipv6string",
    "toipv4", "toipv6", "todate", "todate32", "todatetime", "todatetime64", "tostartofweek", "tostartofinterval",
    "tostartoffiveminutes", "tostartoftenminutes", "tostartoffifteenminutes", "tostartofsecond", "toyear",
    "toquarter", "tomonth", "todayofmonth", "todayofyear", "tohour", "tominute", "tosecond", "toweek",
    "toyearweek", "toisoyear", "toyyyymm", "toyyyymmdd", "toyyyymmddhhmmss", "age", "adddays", "addhours",
    "addminutes", "addseconds", "addweeks", "addmonths", "addyears", "subtractdays", "subtracthours",
    "subtractminutes", "subtractseconds", "subtractweeks", "subtractmonths", "subtractyears", "now", "now64",
    "today", "yesterday", "tounixtimestamp", "tounixtimestamp64milli", "tounixtimestamp64micro",
    "fromunixtimestamp", "fromunixtimestamp64milli", "fromunixtimestamp64micro", "parsedatetimebesteffort",
    "parsedatetimebesteffortornull", "parsedatetimebesteffortorzero", "parsedatetime64besteffort",
    "parsedatetime64besteffortornull", "totimezone", "tointervalsecond", "tointervalminute", "tointervalhour",
    "tointervalday", "tointervalweek", "tointervalmonth", "tointervalquarter", "tointervalyear", "timeslot",
    "tolastdayofmonth", "makedate", "makedatetime", "makedatetime64", "torelativedaynum", "torelativehournum",
    "torelativeweeknum", "torelativemonthnum", "roundbankers", "intdiv", "intdivorzero", "modulo",
    "moduloorzero", "positivemodulo", "plus", "minus", "multiply", "divide", "negate", "e", "isfinite", "gcd",
    "lcm", "log1p", "asin", "acos", "atan", "exp2", "exp10", "rand64", "bitand", "bitor", "bitxor", "bitnot",
    "bittest", "bitcount", "equals", "notequals", "less", "greater", "lessorequals", "greaterorequals",
    "jsonextractint", "jsonextractuint", "jsonextractfloat", "jsonextractbool", "jsonhas", "jsonlength",
    "jsontype", "json_exists", "isvalidjson", "simplejsonextractint", "simplejsonextractuint",
    "simplejsonextractfloat", "simplejsonextractbool", "simplejsonhas", "visitparamextractint",
    "visitparamextractfloat", "visitparamextractbool", "visitparamhas", "jsonarraylength", "toint8", "toint16",
    "toint32", "toint64", "toint128", "touint8", "touint16", "touint32", "touint64", "tofloat32", "tofloat64",
    "toint32ornull", "toint64ornull", "toint64orzero", "toint32orzero", "touint64ornull", "tofloat64ornull",
    "tofloat64orzero", "todecimal32", "todecimal64", "todecimal128", "todecimal64ornull", "todateornull",
    "todatetimeornull", "todatetime64ornull", "touuid", "touuidornull", "tobool", "isnull", "isnotnull",
    "hasall", "hasany", "hassubstr", "indexof", "arrayexists", "arrayall", "arraycount", "arrayavg",
    "arrayfirstindex", "arraylastindex", "arrayproduct", "mapcontains", "generateuuidv4", "generateuuidv7",
    # aggregates whose value is a number whatever they read (combinators reduce to these: sumIf → sum)
    "count", "sum", "avg", "uniq", "uniqexact", "uniqcombined", "uniqcombined64", "uniqhll12", "uniqtheta",
    "stddevpop", "stddevsamp", "varpop", "varsamp", "covarpop", "covarsamp", "corr", "skewpop", "skewsamp",
    "kurtpop", "kurtsamp", "entropy", "avgweighted", "sumwithoverflow", "sumkahan", "deltasum", "rankcorr",
    "countequal", "windowfunnel", "sequencecount", "sequencematch", "count_distinct",
})
_NAMES = {
    "duckdb": _Names(small_output=_SMALL_OUTPUT_NAMES, list_building=_LIST_BUILDING_NAMES, factor=_FACTOR_NAMES,
                     lambda_maps=_LAMBDA_MAP_NAMES, lambda_folds=_LAMBDA_FOLD_NAMES),
    "clickhouse": _Names(
        small_output=_CLICKHOUSE_SMALL_OUTPUT,
        list_building=frozenset({"grouparray", "groupuniqarray", "grouparraysample", "grouparraylast",
                                 "grouparraysorted", "grouparraymovingsum", "grouparraymovingavg", "groupconcat",
                                 "summap", "minmap", "maxmap", "topk", "topkweighted", "histogram", "approx_top_k"}),
        factor={"tojsonstring": 6, "base64encode": 2, "encodeurlcomponent": 3, "splitbywhitespace": 9,
                "splitbynonalpha": 9, "extractall": 9, "extractgroups": 9, "tokens": 9},
        lambda_folds=frozenset({"arrayfold", "arrayreduce"}),
        replace_all=frozenset({"replaceall"}),
        regexp_replace_all=frozenset({"replaceregexpall"}),
        regexp_replace_one=frozenset({"replaceregexpone"}),
        join_list=frozenset({"arraystringconcat"}),
        aggregates=True,
    ),
}


def check_value_sizes(scopes: list[Scope], param_bytes: dict[str, int] | None = None, dialect: str = "duckdb") -> None:
    """Raise ERR_QUERY_TOO_COMPLEX when some value could grow past the bounds. `scopes` in
    traverse_scope order (a scope's sources before the scope); `param_bytes`: each named parameter's size."""
    outputs: dict[int, dict[str, float]] = {}
    for scope in scopes:
        outputs[id(scope.expression)] = _ScopeSizes(scope, outputs, param_bytes or {}, dialect).check()


class _ScopeSizes:
    def __init__(self, scope: Scope, outputs: dict[int, dict[str, float]], param_bytes: dict[str, int],
                 dialect: str = "duckdb"):
        self.scope = scope
        self.outputs = outputs
        self.param_bytes = param_bytes
        self.dialect = dialect
        self.names = _NAMES[dialect]
        self.cost = 0.0

    def check(self) -> dict[str, float]:
        """Size every expression of the scope; return the weights of its output columns ("*": the largest)."""
        query = self.scope.expression
        if not isinstance(query, exp.Select):  # a UNION and the like: its branches are scopes of their own
            branches = [self.outputs.get(id(s.expression), {}).get("*", 1.0) for s in self.scope.set_operation_scopes]
            return {"*": max(branches, default=1.0)}
        columns: dict[str, float] = {}
        for key, value in query.args.items():
            if key in ("with_", "from_", "joins", "limit", "offset") or value is None:
                continue
            for part in value if isinstance(value, list) else [value]:
                if not isinstance(part, exp.Expr):
                    continue
                weight = self.weigh(part)
                if key == "expressions":
                    columns[part.alias_or_name] = max(weight, columns.get(part.alias_or_name, 0.0))
        for source in (query.args.get("from_"), *(query.args.get("joins") or [])):  # UNNEST(…), VALUES in FROM
            if source is not None and not isinstance(source.this, (exp.Table, exp.Subquery)):
                self.weigh(source.this)
        for join in query.args.get("joins") or []:
            for condition in (join.args.get("on"), *(join.args.get("using") or [])):
                if isinstance(condition, exp.Expr):
                    self.weigh(condition)
        columns["*"] = max(columns.values(), default=1.0)
        return columns

    def weigh(self, root: exp.Expr) -> float:
        """The weight of `root`, adding the weights of the values it computes to the scope's cost. Iterative
        (children before parents), as chains of operators can be thousands of nodes deep."""
        opaque = (exp.Query, exp.Subquery, exp.DataType)
        order = list(root.bfs(prune=lambda n: n is not root and isinstance(n, opaque)))
        weights: dict[int, float] = {}
        for node in reversed(order):
            children = [weights.get(id(c), 0.0) for c in node.iter_expressions()]
            weight = self._node_weight(node, children)
            weights[id(node)] = weight
            if weight > MAX_WEIGHT and weight is not WHOLE_TABLE:
                _refuse(f"{_describe(node, self.dialect)} can make values {weight:g} times bigger than its input "
                        f"(at most {MAX_WEIGHT})")
            if not isinstance(node, _STRUCTURAL):
                self.cost += min(weight, 1.0) if weight == WHOLE_TABLE else weight
                if self.cost > MAX_COST:
                    _refuse(f"the expressions of one SELECT would hold more than {MAX_COST} times the size of "
                            "its input values per row; compute fewer or smaller values (use concat or concat_ws "
                            "rather than long || chains)")
        return weights[id(root)]

    def _node_weight(self, node: exp.Expr, children: list[float]) -> float:
        names, describe = self.names, self._describe
        if isinstance(node, exp.Literal):
            return len(node.name.encode()) / UNIT_BYTES if node.is_string else 0.0
        if isinstance(node, (exp.Column, exp.Star)):
            return self._column_weight(node)
        if isinstance(node, exp.Identifier):  # a name (0), or a lambda's argument: an element of its list (1)
            return 0.0 if isinstance(node.parent, _NAMING) else 1.0
        if isinstance(node, (exp.Placeholder, exp.Parameter)):  # a query parameter: its size, if known
            return self.param_bytes.get(node.name, UNIT_BYTES) / UNIT_BYTES
        if isinstance(node, exp.Alias):
            return children[0] if children else 0.0
        if isinstance(node, (exp.Query, exp.Subquery)):
            inner = self.outputs.get(id(node)) or self.outputs.get(id(node.this)) or {"*": self._largest()}
            return inner["*"]
        if isinstance(node, exp.Window):
            if _is_list_building(node.this, names):
                _refuse(f"{describe(node.this)} over a window builds, for every row, a value holding the rows "
                        "before it; aggregate with GROUP BY instead")
            return children[0] if children else 0.0
        if _is_list_building(node, names):
            return WHOLE_TABLE
        name = names.base(function_name(node))
        if isinstance(node, _SMALL_OUTPUT) or name in names.small_output:
            return 0.0
        if isinstance(node, exp.Lambda):
            return max(children[:1], default=1.0)
        if isinstance(node, _LAMBDA_MAPS) or name in names.lambda_maps:
            return self._lambda_map_weight(node, children)
        if name in names.lambda_folds:
            _refuse(f"{name} can grow its value at every step; use the aggregates of lists instead")
        if isinstance(node, exp.Replace):
            return self._amplified(node, children, _replace_factor(node.args.get("expression"),
                                                                   node.args.get("replacement")))
        if name in names.replace_all:
            arguments = node.expressions
            return self._amplified(node, children, _replace_factor(_nth(arguments, 1), _nth(arguments, 2)))
        if isinstance(node, exp.RegexpReplace):
            modifiers = node.args.get("modifiers")
            global_ = not isinstance(modifiers, exp.Literal) or "g" in modifiers.name
            return self._amplified(node, children, _regexp_replace_factor(node.args.get("replacement"), global_))
        if name in names.regexp_replace_all or name in names.regexp_replace_one:
            replacement = _nth(node.expressions, 2)
            return self._amplified(node, children,
                                   _regexp_replace_factor(replacement, name in names.regexp_replace_all))
        if isinstance(node, exp.ArrayToString):  # the separator is repeated between every two elements
            separator = _literal_length(node.args.get("expression"), default=None)
            return self._amplified(node, children, None if separator is None else 1 + separator)
        if name in names.join_list:
            separator = _literal_length(_nth(node.expressions, 1), default=None)
            return self._amplified(node, children, None if separator is None else 1 + separator)
        factor = _FACTOR.get(type(node)) or names.factor.get(name)
        if factor:
            return self._amplified(node, children, factor)
        return _combined(node, children, self.dialect)

    def _describe(self, node: exp.Expr) -> str:
        return _describe(node, self.dialect)

    def _amplified(self, node: exp.Expr, children: list[float], factor: float | None) -> float:
        source = children[0] if children else 0.0
        if factor is None:
            _refuse(f"{self._describe(node)} needs a text literal where it could insert a value of any size")
        if source == WHOLE_TABLE and factor > 1:
            _refuse(f"{self._describe(node)} would enlarge a value as big as a table")
        return source * factor + sum(children[1:])

    def _lambda_map_weight(self, node: exp.Expr, children: list[float]) -> float:
        lam = next((a for a in node.iter_expressions() if isinstance(a, exp.Lambda)), None)
        if lam is not None:
            params = {p.name for p in lam.expressions}
            captured = [c.sql() for c in lam.this.find_all(exp.Column) if c.name not in params or c.table]
            if captured:
                _refuse(f"{self._describe(node)}: a lambda that maps a list may use only its own arguments "
                        f"(it uses {captured[0]}), or it copies that value into every element")
        source = children[0] if children else 0.0
        body = children[1] if len(children) > 1 else 1.0
        if source == WHOLE_TABLE and body > 1:
            _refuse(f"{self._describe(node)} would enlarge a value as big as a table")
        return source * max(1.0, body)

    def _column_weight(self, column: exp.Expr) -> float:
        """What a column reference can hold: a table's column weighs 1, a CTE's or subquery's column what its
        expression weighed. A name that cannot be resolved gets the largest weight it could have."""
        sources = self.scope.sources
        table = column.args.get("table") if isinstance(column, exp.Column) else None
        name = column.name if isinstance(column, exp.Column) else "*"
        if table is not None:
            source = sources.get(table.name)
            if source is None:
                return self._largest()
            return self._source_weight(source, name)
        if not sources:
            return 1.0
        return max(self._source_weight(source, name) for source in sources.values())

    def _source_weight(self, source, name: str) -> float:
        if isinstance(source, Scope):
            weights = self.outputs.get(id(source.expression), {"*": 1.0})
            return weights.get(name, weights["*"]) if name != "*" else weights["*"]
        return 1.0

    def _largest(self) -> float:
        return max((w["*"] for w in self.outputs.values()), default=1.0) if self.outputs else 1.0


def _combined(node: exp.Expr, children: list[float], dialect: str = "duckdb") -> float:
    """A value made of its arguments (the default): at most their sum. A value as big as a table may pass
    through alone, not be combined with others."""
    if WHOLE_TABLE in children:
        if sum(1 for c in children if c > 0) > 1:
            _refuse(f"{_describe(node, dialect)} combines a value as big as a table (a list-building aggregate) "
                    "with other values; return it on its own")
        return WHOLE_TABLE
    return float(sum(children))


def _is_list_building(node: exp.Expr | None, names: _Names) -> bool:
    if isinstance(node, _LIST_BUILDING):
        return True
    return node is not None and names.base(function_name(node)) in names.list_building


def _nth(arguments: list, index: int) -> exp.Expr | None:
    return arguments[index] if len(arguments) > index else None


def _replace_factor(needle_node: exp.Expr | None, replacement_node: exp.Expr | None) -> float | None:
    replacement = _literal_length(replacement_node, default=None)
    if replacement is None:
        return None
    needle = _literal_length(needle_node, default=1) or 1
    return max(1.0, math.ceil(replacement / needle))


def _regexp_replace_factor(target: exp.Expr | None, global_: bool) -> float | None:
    replacement = _literal_length(target, default=None)
    if replacement is None or target is None:
        return None if replacement is None else (replacement + 1 if global_ else 1)
    copies = 1 + len(_BACKREFERENCE.findall(target.name))  # each \1 can copy the whole input again
    return (replacement + 1) * copies if global_ else copies


def _literal_length(node: exp.Expr | None, default: int | None) -> int | None:
    if node is None:
        return 0
    if isinstance(node, exp.Literal) and node.is_string:
        return len(node.name.encode())
    return default


def _describe(node: exp.Expr, dialect: str = "duckdb") -> str:
    if isinstance(node, exp.Anonymous):
        return node.name.lower()
    try:
        head = node.sql(dialect=dialect)
    except Exception:
        head = node.key
    return head if len(head) <= 60 else head[:57] + "..."


def _refuse(why: str) -> NoReturn:
    raise CohortError(ErrorCode.QUERY_TOO_COMPLEX, f"query could use unbounded memory: {why}")
