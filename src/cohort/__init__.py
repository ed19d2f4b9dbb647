"""Cohort: a lossless learning-analytics data platform for Sunbird telemetry."""

__version__ = "0.1.0"
