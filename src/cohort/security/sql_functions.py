"""The functions a query may call: an allowlist, because a denylist always misses one.

DuckDB builds some values outside its memory limit (lists and strings made by a function,
such as `range(100000000)` or `repeat('x', 1e9)`), so a function that makes a value whose
size is given by a number cannot be offered to users. What is listed is what analytical
queries over telemetry need: aggregates, string, date/time, math, JSON extraction, regexp,
casts, conditionals, window functions and list helpers whose output is bounded by their
input. Anything else is refused with a message naming it.

sqlglot parses most functions into typed expressions (its class names are listed) and the
rest as `Anonymous` (DuckDB's own names are listed).
"""

from __future__ import annotations

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

MAX_PAD_WIDTH = 1024


def check_function(node: exp.Func) -> None:
    """Raise ERR_QUERY_FORBIDDEN unless the function is allowed (with arguments that bound its output)."""
    if isinstance(node, exp.Anonymous):
        name = node.name.lower()
        allowed = name in ALLOWED_NAMES
    else:
        name = _display_name(node)
        allowed = type(node).__name__ in ALLOWED_EXPRESSIONS
    if not allowed:
        if name in GENERATORS:
            raise CohortError(ErrorCode.QUERY_FORBIDDEN,
                              f"function {name} is not allowed: it builds values whose size is set by a number, "
                              "which could exhaust the server's memory")
        raise CohortError(ErrorCode.QUERY_FORBIDDEN,
                          f"function {name} is not allowed in queries (see the list of allowed functions in the "
                          "API documentation)")
    if isinstance(node, exp.Pad):
        width = node.args.get("expression")
        if not (isinstance(width, exp.Literal) and width.is_int and int(width.this) <= MAX_PAD_WIDTH):
            side = "lpad" if node.args.get("is_left") else "rpad"
            raise CohortError(ErrorCode.QUERY_FORBIDDEN,
                              f"{side} width must be a whole number up to {MAX_PAD_WIDTH}")


def _display_name(node: exp.Func) -> str:
    """The name DuckDB would run (what the user most likely wrote), e.g. RANGE for sqlglot's GenerateSeries."""
    try:
        head = node.sql(dialect="duckdb").split("(", 1)[0].strip()
    except Exception:  # a node sqlglot cannot render alone
        head = ""
    return (head if head.replace("_", "").isalnum() else node.sql_name()).lower()
