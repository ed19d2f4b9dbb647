"""Learning reports: metrics whose answer is a list of rows (content, assessment items, learners) rather
than a series of cells over time, served at GET /v1/metrics/{name} beside the series metrics.

Why a second shape: "which content is played most", "which items are hard", "how far is each learner in
the course" and "who is at risk, and why" are rankings and per-learner records. Bucketing them by time
would make them unreadable, and their options (how many rows, which course, the at-risk thresholds) are
theirs alone. What they share with the series metrics: the window (`from`/`to`), the tenant rule and the
caller's scope (cohort.analytics.metric_query), freshness and completeness, suppression and the audit.

This module is the contract between the report definitions (content_reports.py, learner_reports.py),
the registry (reports.py) and the API: a report declares its columns and options; a checked
`ReportQuery` carries the window, tenant, scope and the options' checked values; the report returns the
SQL of its rows.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import date, datetime
from typing import Protocol

from cohort.analytics.metric_query import (MetricQuery, checked_tenant, checked_window,
                                           given_parameters, iso, narrowed_scope, param_error)
from cohort.analytics.metric_sql import BoundSql
from cohort.security.identity import Identity, Scope

OptionValue = int | float | str

# what every report takes, checked as the series metrics check them (scope: narrowing only)
WINDOW_PARAMETERS = ("from", "to", "tenant", "scope")
_INTEGER = re.compile(r"^-?[0-9]{1,18}$")
_NUMBER = re.compile(r"^-?[0-9]{1,18}(\.[0-9]{1,18})?$")
# text options name things (a content, a course): the characters of an id, so nothing else reaches the SQL
# (where they are bound as parameters anyway)
_TEXT = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.:-]{0,127}$")


@dataclass(frozen=True, slots=True)
class ReportOption:
    """One query-string parameter a report takes beyond from/to/tenant: its type and bounds, checked before
    any SQL is written (ERR_METRIC_PARAM otherwise). `default` None with `required` False: absent."""

    name: str
    kind: type  # int, float or str
    description: str
    default: OptionValue | None = None
    minimum: float | None = None
    maximum: float | None = None
    required: bool = False
    choices: tuple[str, ...] = ()  # a text option that is one of these (empty: any id-like text)


@dataclass(frozen=True, slots=True)
class ReportColumn:
    name: str
    unit: str  # "learners", "seconds", "percent", "date", "id", "text", …
    description: str


@dataclass(frozen=True, slots=True)
class ReportQuery:
    """A checked report request: [start, end) in UTC over `tenant` (None: every tenant, for an admin who
    names none) narrowed to `scope`, with each declared option's checked value (or its default)."""

    start: datetime
    end: datetime
    tenant: str | None
    scope: Scope | None
    options: Mapping[str, OptionValue | None] = field(default_factory=dict)
    # the tenant's days of the window marked in rollup_dirty (written since their refresh), read just before the
    # rows (report_answer.marked_days_sql): a report over the rollups then reads telemetry for those days only,
    # or not at all. None: not known, and its statement finds them itself (what lineage shows)
    marked: tuple[date, ...] | None = None

    def as_params(self) -> dict[str, OptionValue | None]:
        """The request as it was understood (the response and the audit log say this)."""
        return {"from": iso(self.start), "to": iso(self.end), "tenant": self.tenant,
                "scope": None if self.scope is None else str(self.scope), **self.options}

    def window(self) -> MetricQuery:
        """The window, tenant and scope as a series metric's query (one bucket, no grouping): what the shared
        pieces of SQL (scope_where, the rollups' freshness and late slices) take."""
        return MetricQuery(self.start, self.end, "all", "none", self.tenant, self.scope)


class Report(Protocol):
    @property
    def name(self) -> str: ...

    @property
    def description(self) -> str: ...

    @property
    def columns(self) -> tuple[ReportColumn, ...]:
        """The row's columns, in the order `rows_sql` returns them."""
        ...

    @property
    def options(self) -> tuple[ReportOption, ...]: ...

    @property
    def sources(self) -> tuple[str, ...]:
        """The tables its SQL reads (what lineage reports as its datasets)."""
        ...

    @property
    def individual(self) -> bool:
        """True when a row is one learner's record (course progress, at-risk): refused to roles under
        small-cell suppression. Otherwise rows are aggregates with a column named `learners` (distinct
        learners behind the row, a whole number), which suppression hides below k."""
        ...

    def rows_sql(self, query: ReportQuery, dialect: str) -> BoundSql:
        """SQL returning the report's rows, ordered as the report ranks them."""
        ...

    def freshness_sql(self, query: ReportQuery, dialect: str) -> BoundSql:
        """SQL returning (newest_ms, n): the newest acknowledgement the rows can include, and whether any."""
        ...


def parse_report_query(report: Report, params: Mapping[str, str] | Sequence[tuple[str, str]], identity: Identity,
                       now: datetime) -> ReportQuery:
    """The checked request of `identity` for `report` from query-string `params` (pairs, so a repeated name is
    caught): from/to/tenant as metric_query checks them, then each option the report declares. Every bad
    parameter is ERR_METRIC_PARAM (400); another tenant is ERR_AUTH_FORBIDDEN (403)."""
    allowed = (*WINDOW_PARAMETERS, *(option.name for option in report.options))
    given = given_parameters(params, allowed, f"{report.name} takes")
    start, end = checked_window(given.get("from"), given.get("to"), now)
    tenant = checked_tenant(given.get("tenant"), identity)
    options = {option.name: _option(option, given.get(option.name)) for option in report.options}
    return ReportQuery(start, end, tenant, narrowed_scope(given.get("scope"), identity), options)


def _option(option: ReportOption, text: str | None) -> OptionValue | None:
    if text is None:
        if option.required:
            raise param_error(f"parameter {option.name!r} is required: {option.description}")
        return option.default
    value: OptionValue
    if option.kind is int:
        if not _INTEGER.fullmatch(text):
            raise param_error(f"{option.name} {text!r} is not a whole number")
        value = int(text)
    elif option.kind is float:
        if not _NUMBER.fullmatch(text):
            raise param_error(f"{option.name} {text!r} is not a decimal number (digits, an optional point)")
        value = float(text)
        if not math.isfinite(value):
            raise param_error(f"{option.name} {text!r} is not a finite number")
    else:
        if option.choices:
            if text not in option.choices:
                raise param_error(f"{option.name} {text!r} is not one of {', '.join(option.choices)}")
        elif not _TEXT.fullmatch(text):
            raise param_error(f"{option.name} {text!r} is not 1..128 letters, digits and _.:- starting with a letter or "
                       f"digit")
        return text
    if option.minimum is not None and value < option.minimum:
        raise param_error(f"{option.name} is at least {option.minimum:g}, not {text}")
    if option.maximum is not None and value > option.maximum:
        raise param_error(f"{option.name} is at most {option.maximum:g}, not {text}")
    return value
