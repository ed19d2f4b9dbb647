"""The learning metrics the API serves, by name: what each means, how it may be cut, and how it is computed.

A metric is looked up in `METRICS` and asked for the SQL of its cells for a checked request and a dialect
(`cell_sql`); where the figures come from is the metric's own business. Every metric is defined
over the raw `telemetry` table (`TelemetryMetric`: a condition on events and an aggregate over them) and
served from the hourly rollups (`RollupMetric`, rollup_metric.py), which return the same cell columns
(bucket, grp, value, learners) with the same figures; nothing in the API changes.

Rules for events (Sunbird telemetry v3, as the sample in tests/fixtures/sunbird shows it):
- a learner is an actor of type `User` (System and Consumer actors are apps and services);
- a content play is a START event of the content player: `context.env = 'contentplayer'` or
  `edata.type = 'content'` (any case). START events of the app, a session, a textbook page or the QR
  scanner (`edata.type` app, session, TextBook, qr) are not plays;
- time spent is the `edata.duration` (seconds) of the END events of content plays (same rule, END), so
  it is the time spent playing content; app and session ENDs are left out because they would count the
  same minutes again (a play lies within a session). A duration that is not a JSON number, is negative or
  longer than a day is a clock fault of the device (the sample holds one of -1.5e12) and is not counted;
- a QR scan is a SEARCH event whose `edata.filters.dialcodes` is a non-empty string or list: what the
  apps send when a scanned (or typed) DIAL code is resolved to content. The app's own scanner INTERACT
  events (`qr-code-scan-success`) are followed by that SEARCH, so counting both would count a scan twice,
  and the portal resolves DIAL codes by the same SEARCH without any scanner event.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

from cohort.analytics.metric_query import GRANULARITIES, GROUP_BYS, MetricQuery
from cohort.analytics.metric_sql import (BoundSql, cells_sql, content_player, distinct, duration, freshness_sql,
                                         learners, qr_scan, timed_play_end)



class Metric(Protocol):
    @property
    def name(self) -> str: ...

    @property
    def description(self) -> str: ...

    @property
    def unit(self) -> str: ...

    @property
    def granularities(self) -> tuple[str, ...]:
        """The granularities it comes by (a rollup may have days and months only)."""
        ...

    @property
    def group_bys(self) -> tuple[str, ...]: ...

    @property
    def sources(self) -> tuple[str, ...]:
        """The tables its SQL reads (what lineage reports as its datasets)."""
        ...

    def cell_sql(self, query: MetricQuery, dialect: str) -> BoundSql:
        """SQL returning one row per non-empty cell: bucket (epoch seconds), grp, value, learners."""
        ...

    def freshness_sql(self, query: MetricQuery, dialect: str) -> BoundSql:
        """SQL returning (newest_ms, n): the newest acknowledgement the figures can include, and whether any."""
        ...


@dataclass(frozen=True, slots=True)
class TelemetryMetric:
    """A metric over the events of `telemetry`: `condition` picks the events (None: all), `value` aggregates
    them; both per dialect."""

    name: str
    description: str
    unit: str
    value: Callable[[str], str]
    condition: Callable[[str], str] | None = None
    granularities: tuple[str, ...] = GRANULARITIES
    group_bys: tuple[str, ...] = GROUP_BYS
    sources: tuple[str, ...] = ("telemetry",)

    def cell_sql(self, query: MetricQuery, dialect: str) -> BoundSql:
        return cells_sql(query, self.value(dialect), None if self.condition is None else self.condition(dialect),
                         dialect)

    def freshness_sql(self, query: MetricQuery, dialect: str) -> BoundSql:
        return freshness_sql(query, dialect)


def _time_spent(dialect: str) -> str:
    # rounded to the millisecond in the store: sums of doubles differ in the last bits by summation order
    return f"round(COALESCE(sum({duration(dialect)}), 0), 3)"


def _count(dialect: str) -> str:
    return "count()" if dialect == "clickhouse" else "count(*)"


_ALL = (
    TelemetryMetric("active_learners", "distinct learners (actors of type User) with any event", "learners",
                    learners),
    TelemetryMetric("active_devices", "distinct devices (context.did) with any event", "devices",
                    lambda dialect: distinct("did")),
    TelemetryMetric("sessions", "distinct app sessions (context.sid) with any event", "sessions",
                    lambda dialect: distinct("sid")),
    TelemetryMetric("time_spent", "seconds spent playing content: edata.duration of the content player's END "
                    "events (0..86400 s each)", "seconds", _time_spent, timed_play_end),
    TelemetryMetric("content_plays", "content plays: START events of the content player (context.env "
                    "contentplayer or edata.type content)", "plays", _count,
                    lambda dialect: content_player("START", dialect)),
    TelemetryMetric("qr_scans", "QR (DIAL code) scans: SEARCH events whose edata.filters.dialcodes is not "
                    "empty", "scans", _count, qr_scan),
)

# The raw-event versions: what a rollup metric answers hour windows and windows off whole hours with, and
# the source of truth its figures are tested against.
TELEMETRY_METRICS: dict[str, TelemetryMetric] = {metric.name: metric for metric in _ALL}

from cohort.analytics.rollup_metric import SPECS, RollupMetric  # noqa: E402 (it reads TelemetryMetric above)

METRICS: dict[str, Metric] = {metric.name: RollupMetric(metric, SPECS[metric.name]) for metric in _ALL}


def find_metric(name: str) -> Metric | None:
    return METRICS.get(name)
