"""The learning reports the API serves, by name (the list-shaped metrics; see report_query.py)."""

from __future__ import annotations

from cohort.analytics import content_reports, learner_reports
from cohort.analytics.report_query import Report

REPORTS: dict[str, Report] = {report.name: report for report in (*content_reports.REPORTS, *learner_reports.REPORTS)}


def find_report(name: str) -> Report | None:
    return REPORTS.get(name)
