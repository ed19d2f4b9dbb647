"""The dashboard: a page and its static assets, served by the API process (cohort.web.assets)."""
