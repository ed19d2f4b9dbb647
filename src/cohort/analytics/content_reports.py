"""Reports over content and assessment items: top content and item statistics (being built)."""

from __future__ import annotations

from cohort.analytics.report_query import Report

REPORTS: tuple[Report, ...] = ()
