"""The functions a query may call: an allowlist, because a denylist always misses one.

DuckDB builds some values outside its memory limit (lists and strings made by a function,
such as `range(100000000)` or `repeat('x', 1e9)`), so a function that makes a value whose
size is given by a number cannot be offered to users. What is listed is what analytical
queries over telemetry need: aggregates, string, date/time, math, JSON extraction, regexp,
casts, conditionals, window functions and list helpers whose output is bounded by their
input. Anything else is refused with a message naming it.

sqlglot parses most functions into typed expressions (its class names are listed) and the
rest as `Anonymous` (the engine's own names are listed). Each dialect has its allowlist: users
write SQL in their store's dialect (`StoreCapabilities.sql_dialect`), and a name that is harmless
in one engine may not be in the other. ClickHouse tracks the memory of every allocation of a query
(max_memory_usage), but the same spirit holds there: no table functions (file, url, s3, remote,
numbers, …, refused by the guard as table sources), no dictionaries, settings or server
introspection, and no function whose output size is set by a number (range, arrayWithConstant,
repeat, randomString, toFixedString, …). ClickHouse aggregates take combinators (`sumIf`,
`uniqArray`, `avgOrNull`): those that only filter or reshape their input are allowed; -State,
-Merge and -Resample (aggregate states, or one result per step of a numeric range) are not.
"""

from __future__ import annotations

from dataclasses import dataclass

from sqlglot import exp

from cohort.core.errors import CohortError, ErrorCode

# sqlglot expression classes (names, so a sqlglot upgrade that renames one fails a test, not a query).
ALLOWED_EXPRESSIONS = frozenset({
    # operators sqlglot models as functions
    "And", "Or", "Xor", "Exists",
    # aggregates
    "Count", "Sum", "Avg", "Min", "Max", "Median", "PercentileCont", "PercentileDisc", "ApproxDistinct",
    "ApproxQuantile", "Stddev", "StddevPop", "StddevSamp", "Variance", "VariancePop", "Mode", "ArgMax", "ArgMin",
    "First", "Last", "AnyValue", "LogicalAnd", "LogicalOr", "GroupConcat", "ArrayAgg", "CountIf", "Corr",
    "CovarPop", "CovarSamp", "RegrSlope", "Kurtosis", "Skewness", "BitwiseAndAgg", "BitwiseOrAgg",
    "BitwiseXorAgg", "Quantile",
    # strings and regular expressions
    "Lower", "Upper", "Length", "Substring", "Left", "Right", "Trim", "Replace", "SplitPart", "Split", "Concat",
    "ConcatWs", "Contains", "StartsWith", "EndsWith", "StrPosition", "Reverse", "MD5", "SHA", "SHA2", "Pad",
    "RegexpLike", "RegexpILike", "RegexpExtract", "RegexpExtractAll", "RegexpReplace", "RegexpFullMatch", "Ascii",
    "Chr", "Initcap", "Translate", "Levenshtein", "JarowinklerSimilarity", "Unicode", "ToBase64", "FromBase64",
    "Hex", "Unhex", "Encode", "Decode", "ArrayToString", "BitLength", "Collate",
    # date and time
    "CurrentDate", "CurrentTimestamp", "CurrentTime", "TimestampTrunc", "DateTrunc", "Extract", "DateDiff",
    "DateAdd", "DateSub", "TimeToStr", "StrToTime", "TimeToUnix", "UnixToTime", "DateFromParts", "TimeFromParts",
    "DateBin", "Dayname", "Monthname", "Year", "Month", "Day", "Hour", "Minute", "Second", "Week", "WeekOfYear",
    "DayOfWeek", "DayOfWeekIso", "DayOfYear", "DayOfMonth", "Quarter", "LastDay", "ToDays", "Date",
    "TsOrDsToDate",
    # math
    "Abs", "Round", "Floor", "Ceil", "Sqrt", "Cbrt", "Pow", "Ln", "Log", "Exp", "Sign", "Greatest", "Least",
    "Trunc", "Rand", "Pi", "IsNan", "IsInf", "Degrees", "Radians", "Sin", "Cos", "Tan", "Atan2",
    # JSON
    "JSONExtract", "JSONExtractScalar", "JSONBExtract", "JSONKeys", "JSONType", "JSONObject", "JSONArray",
    "ParseJSON", "JSONFormat", "FromJson",
    # casts and conditionals
    "Cast", "TryCast", "Typeof", "Coalesce", "Nullif", "If", "Case",
    # window functions
    "RowNumber", "Rank", "DenseRank", "PercentRank", "CumeDist", "Ntile", "Lag", "Lead", "FirstValue",
    "LastValue", "NthValue",
    # lists, structs and maps whose size follows their input
    "ArraySize", "ArrayContains", "ArrayContainsAll", "ArrayContainedBy", "ArrayPosition", "ArrayOverlaps", "ArrayDistinct", "ArraySort", "Explode", "Unnest", "Flatten",
    "Array", "Transform", "ArrayFilter", "ArrayConcat", "ArrayMin", "ArrayMax", "ArraySlice", "Struct",
    "StructExtract", "Map", "ToMap", "VarMap", "MapKeys", "Columns",
    # harmless
    "Uuid",
})

# DuckDB names of the functions sqlglot does not type (it parses them as `Anonymous`).
ALLOWED_NAMES = frozenset({
    # aggregates
    "histogram", "entropy", "product", "fsum", "favg", "kahan_sum", "sumkahan", "geomean", "geometric_mean",
    "arbitrary", "approx_top_k", "string_agg", "listagg", "list", "json_group_array", "json_group_object",
    "regr_intercept", "regr_r2", "regr_count", "mad", "bool_and", "bool_or",
    # strings
    "strlen", "prefix", "suffix", "hash", "regexp_split_to_array", "string_to_array", "nfc_normalize",
    "strip_accents", "url_encode", "url_decode", "octet_length", "format_bytes", "md5_number", "sha512",
    "string_split_regex", "str_split_regex", "array_to_string", "like_escape", "ilike_escape",
    # date and time
    "now", "date_part", "datepart", "date_sub", "datesub", "date_diff", "datetrunc", "epoch_us", "epoch_ns",
    "epoch_s", "epoch_ms", "to_hours", "to_minutes", "to_seconds", "to_milliseconds", "to_microseconds",
    "to_weeks", "to_months", "to_years", "to_days", "timezone", "try_strptime", "isoyear", "yearweek", "era",
    "century", "decade", "millennium", "millisecond", "microsecond", "weekday", "get_current_timestamp",
    "transaction_timestamp", "current_localtimestamp", "current_localtime", "age", "make_timestamptz",
    "make_timestamp", "make_date", "make_time", "time_bucket", "julian", "today",
    # math
    "isfinite", "gcd", "lcm", "even", "bit_count", "round_even", "roundbankers", "gamma", "lgamma", "nextafter",
    "log1p", "asin", "acos", "atan", "cot",
    # JSON
    "json_value", "json_array_length", "json_valid", "json_exists", "json_contains", "json_structure", "to_json",
    "json_merge_patch", "json_quote", "json_transform", "json_transform_strict", "json_pretty", "array_to_json",
    "row_to_json", "json_extract_path", "json_extract_path_text", "json_keys", "json_type",
    # conditionals and types
    "iff", "ifnull", "nvl", "pg_typeof",
    # lists, structs, maps, unions
    "list_has_all", "list_has", "array_has", "list_extract", "array_extract", "list_element", "list_slice",
    "list_position", "list_indexof", "array_position", "list_unique", "array_unique", "list_sum", "list_count",
    "list_avg", "list_min", "list_max", "list_median", "list_mode", "list_first", "list_last", "list_any_value",
    "list_zip", "list_select", "list_where", "list_grade_up", "list_reduce", "list_apply", "array_apply",
    "array_transform", "list_sort", "list_reverse_sort", "list_distinct", "list_filter", "list_contains",
    "list_concat", "len", "array_length", "map_values", "map_extract", "map_entries", "map_keys", "element_at",
    "cardinality", "struct_pack", "struct_extract", "row", "union_tag", "union_extract",
    # harmless
    "gen_random_uuid", "uuid",
})

# Functions that make big values from a small query: named in the refusal so users see why.
GENERATORS = frozenset({"range", "generate_series", "repeat", "list_resize", "array_resize", "array_fill",
                        "printf", "format", "bar", "unnest_series", "generate_subscripts"})

# ClickHouse: sqlglot's classes for its functions (beyond the DuckDB ones above, which name the same
# bounded operations in either engine).
CLICKHOUSE_EXPRESSIONS = ALLOWED_EXPRESSIONS | frozenset({
    "MD5Digest", "CityHash64", "RegexpSplit", "ParseDatetime", "CastToStrType", "ArraySum", "ArrayReverse",
    "ArrayCompact", "ArrayAll", "ArrayAny", "ArrayFirst", "ArrayLast",
})

# ClickHouse aggregates (base names, lower case): each may carry the combinators below.
CLICKHOUSE_AGGREGATES = frozenset({
    "count", "sum", "avg", "min", "max", "any", "anylast", "anyheavy", "any_value", "first_value", "last_value",
    "argmin", "argmax", "uniq", "uniqexact", "uniqcombined", "uniqcombined64", "uniqhll12", "uniqtheta",
    "median", "medianexact", "quantile", "quantiles", "quantileexact", "quantilesexact", "quantiletdigest",
    "quantilestdigest", "quantiletiming", "quantilestiming", "quantiledeterministic", "quantileexactweighted",
    "quantilebfloat16", "quantileddsketch", "stddevpop", "stddevsamp", "varpop", "varsamp", "covarpop",
    "covarsamp", "corr", "skewpop", "skewsamp", "kurtpop", "kurtsamp", "entropy", "simplelinearregression",
    "avgweighted", "sumwithoverflow", "sumkahan", "deltasum", "rankcorr", "boundingratio", "retention",
    "windowfunnel", "sequencematch", "sequencecount", "histogram", "topk", "topkweighted", "grouparray",
    "groupuniqarray", "grouparraysample", "grouparraylast", "grouparraysorted", "grouparraymovingsum",
    "grouparraymovingavg", "groupconcat", "summap", "minmap", "maxmap", "groupbitand", "groupbitor",
    "groupbitxor", "countequal", "count_distinct", "stddev", "variance", "approx_top_k",
})
SAFE_COMBINATORS = ("if", "array", "map", "ornull", "ordefault", "distinct", "foreach", "argmin", "argmax")
UNSAFE_COMBINATORS = ("state", "merge", "mergestate", "simplestate", "resample")

CLICKHOUSE_NAMES = frozenset({
    # strings and text search
    "lowerutf8", "upperutf8", "lengthutf8", "substringutf8", "reverseutf8", "replaceall", "replaceone",
    "replaceregexpall", "replaceregexpone", "splitbywhitespace", "splitbynonalpha", "concatwithseparator",
    "positioncaseinsensitive", "positionutf8", "positioncaseinsensitiveutf8", "extract", "extractall",
    "extractgroups", "multisearchany", "multisearchfirstindex", "multisearchallpositions", "multimatchany",
    "match", "like", "notlike", "ilike", "notilike", "empty", "notempty", "trimboth", "trimleft", "trimright",
    "countsubstrings", "countmatches", "hastoken", "startswithutf8", "endswithutf8", "tokens",
    "siphash64", "xxhash64", "xxhash32", "murmurhash3_64", "murmurhash3_32", "farmhash64", "base64encode",
    "base64decode", "trybase64decode", "tovalidutf8", "normalizeutf8nfc", "leftpadutf8", "rightpadutf8",
    "domain", "domainwithoutwww", "topleveldomain", "protocol", "path", "pathfull", "querystring",
    "extracturlparameter", "extracturlparameters", "cutquerystring", "encodeurlcomponent", "decodeurlcomponent",
    "ipv4numtostring", "ipv6numtostring", "toipv4", "toipv6", "isipv4string", "isipv6string",
    # dates and times
    "todate", "todate32", "todatetime", "todatetime64", "tostartofweek", "tostartofinterval",
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
    "tolastdayofmonth", "makedate", "makedatetime", "makedatetime64", "datename", "torelativedaynum",
    "torelativehournum", "torelativeweeknum", "torelativemonthnum",
    # math and bits
    "roundbankers", "rounddown", "intdiv", "intdivorzero", "modulo", "moduloorzero", "positivemodulo", "plus",
    "minus", "multiply", "divide", "negate", "e", "isfinite", "gcd", "lcm", "log1p", "asin", "acos", "atan",
    "exp2", "exp10", "rand64", "bitand", "bitor", "bitxor", "bitnot", "bittest", "bitcount",
    "equals", "notequals", "less", "greater", "lessorequals", "greaterorequals",
    # JSON (the JSON columns are String holding JSON text)
    "jsonextractint", "jsonextractuint", "jsonextractfloat", "jsonextractbool", "jsonextract", "jsonhas",
    "jsonlength", "jsontype", "jsonextractkeys", "jsonextractarrayraw", "jsonextractkeysandvalues",
    "jsonextractkeysandvaluesraw", "json_value", "json_query", "json_exists", "isvalidjson",
    "simplejsonextractstring", "simplejsonextractint", "simplejsonextractuint", "simplejsonextractfloat",
    "simplejsonextractbool", "simplejsonextractraw", "simplejsonhas", "visitparamextractstring",
    "visitparamextractint", "visitparamextractfloat", "visitparamextractbool", "visitparamextractraw",
    "visitparamhas", "tojsonstring", "jsonarraylength",
    # casts and conditionals
    "tostring", "toint8", "toint16", "toint32", "toint64", "toint128", "touint8", "touint16", "touint32",
    "touint64", "tofloat32", "tofloat64", "toint32ornull", "toint64ornull", "toint64orzero", "toint32orzero",
    "touint64ornull", "tofloat64ornull", "tofloat64orzero", "todecimal32", "todecimal64", "todecimal128",
    "todecimal64ornull", "todateornull", "todatetimeornull", "todatetime64ornull", "touuid", "touuidornull",
    "tobool", "accuratecast", "accuratecastornull", "tonullable", "assumenotnull", "isnull", "isnotnull",
    "multiif", "tolowcardinality",
    # window functions
    "laginframe", "leadinframe",
    # arrays, tuples, maps
    "hasall", "hasany", "hassubstr", "indexof", "arrayexists", "arrayall", "arraycount", "arrayavg",
    "arraysort", "arrayreversesort", "arrayenumerate", "arrayenumerateuniq", "arrayuniq", "arrayfirst",
    "arraylast", "arrayfirstindex", "arraylastindex", "arrayzip", "arrayflatten", "arraycumsum",
    "arrayintersect", "arraypushback", "arraypushfront", "arraypopback", "arraypopfront", "arrayproduct",
    "arrayelement", "arraystringconcat", "arraydifference", "arrayreverse", "arraymin", "arraymax", "arraysum",
    "tupleelement", "untuple", "mapkeys", "mapvalues", "mapcontains", "mapfromarrays", "transform",
    # harmless
    "generateuuidv4", "generateuuidv7", "materialize", "identity", "ignore",
})

# Functions that make big values from a small query: named in the refusal so users see why.
CLICKHOUSE_GENERATORS = frozenset({
    "range", "arraywithconstant", "arrayresize", "repeat", "space", "randomstring", "randomprintableascii",
    "randomfixedstring", "randomstringutf8", "fakedata", "bar", "format", "printf", "tofixedstring", "ngrams",
    "grouparrayinsertat", "arrayreduce", "arrayfold", "formatrow",
})


@dataclass(frozen=True, slots=True)
class FunctionAllowlist:
    expressions: frozenset[str]  # sqlglot expression classes
    names: frozenset[str]  # lower-case names of the functions sqlglot does not type
    generators: frozenset[str]
    aggregates: frozenset[str] = frozenset()  # base names that take combinators (ClickHouse)


ALLOWLISTS = {
    "duckdb": FunctionAllowlist(ALLOWED_EXPRESSIONS, ALLOWED_NAMES, GENERATORS),
    "clickhouse": FunctionAllowlist(CLICKHOUSE_EXPRESSIONS, CLICKHOUSE_NAMES, CLICKHOUSE_GENERATORS,
                                    CLICKHOUSE_AGGREGATES),
}
# Nodes that carry the function's name as the user wrote it (sqlglot has no class for the function).
NAMED_FUNCTIONS = (exp.Anonymous, exp.AnonymousAggFunc, exp.ParameterizedAgg)
_NAME_WITH_WIDTH = frozenset({"leftpadutf8", "rightpadutf8"})

MAX_PAD_WIDTH = 1024


def function_name(node: exp.Expr) -> str:
    """The lower-case name of a function sqlglot does not type ("" for a typed one)."""
    return node.name.lower() if isinstance(node, NAMED_FUNCTIONS) else ""


def aggregate_base(name: str, aggregates: frozenset[str] = CLICKHOUSE_AGGREGATES) -> str | None:
    """The aggregate a ClickHouse name applies, through its allowed combinators: `uniqExactIf` → `uniqexact`."""
    name = name.lower()
    if name in aggregates:
        return name
    for suffix in SAFE_COMBINATORS:
        if name.endswith(suffix) and len(name) > len(suffix):
            base = aggregate_base(name[:-len(suffix)], aggregates)
            if base is not None:
                return base
    return None


def check_function(node: exp.Func, dialect: str = "duckdb") -> None:
    """Raise ERR_QUERY_FORBIDDEN unless the function is allowed in `dialect` (with arguments that bound its
    output)."""
    allowlist = ALLOWLISTS[dialect]
    if isinstance(node, NAMED_FUNCTIONS):
        name = function_name(node)
        allowed = name in allowlist.names or (bool(allowlist.aggregates) and
                                              aggregate_base(name, allowlist.aggregates) is not None)
    else:
        name = _display_name(node, dialect)
        allowed = type(node).__name__ in allowlist.expressions
    if not allowed:
        if name in allowlist.generators:
            raise CohortError(ErrorCode.QUERY_FORBIDDEN,
                              f"function {name} is not allowed: it builds values whose size is set by a number, "
                              "which could exhaust the server's memory")
        combinator = _unsafe_combinator(name, allowlist)
        if combinator:
            raise CohortError(ErrorCode.QUERY_FORBIDDEN,
                              f"function {name} is not allowed: the -{combinator} combinator builds aggregate "
                              "states or one result per step of a range")
        raise CohortError(ErrorCode.QUERY_FORBIDDEN,
                          f"function {name} is not allowed in queries (see the list of allowed functions in the "
                          "API documentation)")
    if isinstance(node, exp.Pad):
        _check_width(node.args.get("expression"), "lpad" if node.args.get("is_left") else "rpad")
    elif name in _NAME_WITH_WIDTH:
        arguments = node.expressions
        _check_width(arguments[1] if len(arguments) > 1 else None, name)


def _check_width(width: exp.Expr | None, name: str) -> None:
    if not (isinstance(width, exp.Literal) and width.is_int and int(width.this) <= MAX_PAD_WIDTH):
        raise CohortError(ErrorCode.QUERY_FORBIDDEN, f"{name} width must be a whole number up to {MAX_PAD_WIDTH}")


def _unsafe_combinator(name: str, allowlist: FunctionAllowlist) -> str | None:
    if not allowlist.aggregates:
        return None
    for suffix in UNSAFE_COMBINATORS:
        if name.endswith(suffix) and aggregate_base(name[:-len(suffix)], allowlist.aggregates) is not None:
            return suffix.capitalize()
    return None


def _display_name(node: exp.Func, dialect: str = "duckdb") -> str:
    """The name the engine would run (what the user most likely wrote), e.g. RANGE for sqlglot's GenerateSeries."""
    try:
        head = node.sql(dialect=dialect).split("(", 1)[0].strip()
    except Exception:  # a node sqlglot cannot render alone
        head = ""
    return (head if head.replace("_", "").isalnum() else node.sql_name()).lower()
