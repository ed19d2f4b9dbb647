"""The ASGI application: routes, coded error pages, and the node's lifecycle."""

from __future__ import annotations

import contextlib
import logging

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from cohort.api.access import PUBLIC, requires
from cohort.api.audit import read_audit
from cohort.api.exhaust import export_dataset
from cohort.api.forget import forget_learner
from cohort.api.health import health, index
from cohort.api.keys import list_keys
from cohort.api.ledger import read_ledger
from cohort.api.learners import reidentify_learners
from cohort.api.lineage import event_lineage, metric_lineage
from cohort.api.learning_metrics import get_metric
from cohort.api.metric_catalog import list_metrics
from cohort.api.metrics import ApiMetrics, metrics_endpoint
from cohort.api.query import QueryService, run_query
from cohort.api.responses import failure
from cohort.api.tables import list_tables
from cohort.api.telemetry import ingest_telemetry
from cohort.api.whoami import whoami
from cohort.core.errors import ErrorCode
from cohort.security.audit_log import open_audit_log
from cohort.security.authenticator import build_authenticator
from cohort.security.identity import Permission
from cohort.security.secrets import load_or_create_secrets
from cohort.settings import Settings
from cohort.state.identity_vault import open_identity_vault
from cohort.web.assets import dashboard_page, static_asset

log = logging.getLogger("cohort.api")


async def _http_error(request: Request, exc: HTTPException) -> Response:
    code = {404: ErrorCode.NOT_FOUND, 405: ErrorCode.METHOD_NOT_ALLOWED}.get(exc.status_code, ErrorCode.INTERNAL)
    message = {404: f"no such endpoint: {request.url.path}",
               405: f"{request.method} is not allowed on {request.url.path}"}.get(exc.status_code, str(exc.detail))
    return failure("api.error", code, message, exc.status_code)


async def _unexpected(request: Request, exc: Exception) -> Response:
    log.exception("unhandled error on %s %s", request.method, request.url.path)
    return failure("api.error", ErrorCode.INTERNAL, "internal error; nothing was acknowledged", 500)


def open_node(settings: Settings):
    """The node of the configured footprint: one process with its data directory, or the scale-out engines."""
    if settings.footprint == "scaleout":
        from cohort.pipeline.scaleout_node import ScaleoutNode

        return ScaleoutNode(settings)
    from cohort.pipeline.embedded import EmbeddedNode

    return EmbeddedNode(settings)


def create_app(settings: Settings | None = None, node=None) -> Starlette:
    """The API over `node` (EmbeddedNode or ScaleoutNode), or over a node of its own opened at startup."""
    settings = settings or Settings()

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette):
        own_node = app.state.node is None
        if own_node:
            app.state.node = open_node(settings)
            app.state.node.start()
        if settings.sql_checker_at_start:  # beside the server's own start-up, not on the first query
            app.state.queries.checker.warm_in_background()
        app.state.metrics = ApiMetrics(app.state.node)
        app.state.authenticator = build_authenticator(settings)
        app.state.audit = app.state.queries.audit = open_audit_log(settings)
        app.state.vault = open_identity_vault(settings, load_or_create_secrets(settings))
        if settings.auth == "off":
            log.warning("AUTHENTICATION IS OFF (COHORT_AUTH=off): anyone who reaches this port is an admin of "
                        "every tenant. For local development only.")
        try:
            yield
        finally:
            app.state.authenticator.close()
            app.state.queries.audit.close()
            app.state.vault.close()
            if own_node:
                app.state.node.close()

    app = Starlette(
        routes=[
            Route("/v1/telemetry", requires(Permission.INGEST, "api.telemetry")(ingest_telemetry), methods=["POST"]),
            Route("/v1/query", requires(Permission.QUERY_SQL, "api.query")(run_query), methods=["POST"]),
            Route("/v1/tables", requires(Permission.READ_TABLES, "api.tables")(list_tables), methods=["GET"]),
            Route("/v1/whoami", requires(PUBLIC, "api.whoami")(whoami), methods=["GET"]),
            Route("/v1/metrics", requires(Permission.READ_METRICS, "api.metrics.catalog")(list_metrics),
                  methods=["GET"]),
            Route("/v1/metrics/{name}", requires(Permission.READ_METRICS, "api.metrics.read")(get_metric),
                  methods=["GET"]),
            Route("/v1/learners/reidentify", requires(Permission.READ_LEARNERS, "api.learners.reidentify")(
                reidentify_learners), methods=["POST"]),
            Route("/v1/lineage/event/{mid}", requires(Permission.READ_METRICS, "api.lineage.event")(event_lineage),
                  methods=["GET"]),
            Route("/v1/lineage/metric/{name}", requires(Permission.READ_METRICS, "api.lineage.metric")(
                metric_lineage), methods=["GET"]),
            Route("/v1/exhaust/{dataset}", requires(Permission.EXPORT, "api.exhaust")(export_dataset), methods=["GET"]),
            Route("/v1/audit", requires(Permission.READ_AUDIT, "api.audit")(read_audit), methods=["GET"]),
            Route("/v1/forget", requires(Permission.FORGET, "api.forget")(forget_learner), methods=["POST"]),
            Route("/v1/keys", requires(Permission.MANAGE_KEYS, "api.keys")(list_keys), methods=["GET"]),
            Route("/v1/ledger", requires(Permission.READ_AUDIT, "api.ledger")(read_ledger), methods=["GET"]),
            Route("/v1", requires(PUBLIC, "api.index")(index), methods=["GET"]),
            Route("/", requires(PUBLIC, "web.dashboard")(dashboard_page), methods=["GET"]),
            Route("/static/{path:path}", requires(PUBLIC, "web.static")(static_asset), methods=["GET"]),
            Route("/health", requires(PUBLIC, "api.health")(health), methods=["GET"]),
            Route("/metrics", requires(PUBLIC, "api.metrics")(metrics_endpoint), methods=["GET"]),
        ],
        exception_handlers={HTTPException: _http_error, Exception: _unexpected},  # type: ignore[dict-item]
        lifespan=lifespan,
    )
    app.state.node = node
    app.state.degraded_after_s = settings.pipeline_degraded_seconds  # read by /health and the ledger
    app.state.queries = QueryService(settings, dialect="clickhouse" if settings.footprint == "scaleout" else "duckdb")
    return app
