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

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Protocol

from cohort.analytics.metric_sql import BoundSql
from cohort.security.identity import Scope

OptionValue = int | float | str


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
        small-cell suppression. Otherwise rows are aggregates whose last column is `learners` (distinct
        learners behind the row), which suppression hides below k."""
        ...

    def rows_sql(self, query: ReportQuery, dialect: str) -> BoundSql:
        """SQL returning the report's rows, ordered as the report ranks them."""
        ...

    def freshness_sql(self, query: ReportQuery, dialect: str) -> BoundSql:
        """SQL returning (newest_ms, n): the newest acknowledgement the rows can include, and whether any."""
        ...
