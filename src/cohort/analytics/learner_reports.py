"""Reports of individual learners: course progress and at-risk learners (being built)."""

from __future__ import annotations

from cohort.analytics.report_query import Report

REPORTS: tuple[Report, ...] = ()
