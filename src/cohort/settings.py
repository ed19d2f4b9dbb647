"""All configuration, read in one place (environment prefix COHORT_)."""

from __future__ import annotations

from pathlib import Path

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="COHORT_", extra="ignore")

    footprint: str = Field("embedded", pattern="^(embedded|scaleout)$", description="embedded: one process, "
                           "one data directory (SQLite log, DuckDB store); scaleout: `cohort serve` replicas and N "
                           "`cohort worker`s on Kafka, Redis and ClickHouse (the COHORT_KAFKA_*, COHORT_REDIS_*, "
                           "COHORT_CLICKHOUSE_* settings)")
    data_dir: Path = Path("./cohort-data")
    host: str = "127.0.0.1"
    port: int = 8000
    http_header_timeout_seconds: float = Field(10.0, gt=0, description="time to send a request's headers, from "
                                               "connecting or from the previous response (408 and close beyond)")
    http_body_timeout_seconds: float = Field(10.0, gt=0, description="time a request body may take beyond what "
                                             "the minimum rate earns (408 and close beyond)")
    http_body_min_bytes_per_second: int = Field(1000, gt=0, description="each byte of body received earns "
                                                "1/this seconds more (slow but steady uploads finish)")
    http_max_header_bytes: int = Field(16 * 1024, gt=0, description="largest request line + header section "
                                       "(431 and close beyond)")
    event_loop: str = Field("auto", description="uvicorn event loop: auto (uvloop if present), asyncio")

    # ingest
    max_body_bytes: int = Field(10 * 1024 * 1024, description="largest request body, after gunzip")
    max_events_per_batch: int = 10_000
    max_json_depth: int = Field(128, ge=3, le=1000, description="most arrays/objects a value in a request body "
                                "may sit inside, the envelope and its events array counted (real events: < 10)")
    max_msgid_chars: int = Field(256, gt=0, description="longest params.msgid (stored with the request; 400 beyond)")
    max_id_header_chars: int = Field(256, gt=0, description="longest X-Channel-Id / X-App-Id / X-Device-Id value "
                                     "(stored with the request; 400 beyond)")
    max_backlog_events: int = Field(2_000_000, description="events acked but not yet processed before 503")
    retry_after_seconds: int = 1
    group_commit_max_records: int = Field(1000, description="most requests folded into one fsync")
    log_retention_hours: float = Field(24.0, description="processed log records kept this long for replay")
    kafka_bootstrap_servers: str = Field("", description="scale-out: the Kafka brokers of the ingest log "
                                         "(host:port,host:port)")
    kafka_raw_topic: str = Field("cohort.raw", description="scale-out: topic of acknowledged requests, raw")
    kafka_partitions: int = Field(12, gt=0, description="partitions of the raw topic when Cohort creates it: the "
                                  "most pipeline workers that can share it (never changed on an existing topic)")
    kafka_replication_factor: int = Field(-1, description="replicas of the raw topic when Cohort creates it (-1: "
                                          "the broker's default; 3, with min.insync.replicas=2, in production)")
    kafka_partition_key: str = Field("channel", pattern="^(channel|app|device)$", description="request header the "
                                     "raw topic is partitioned by (X-Channel-Id, X-App-Id, X-Device-Id): one "
                                     "key's requests, retries included, reach one worker in order")
    kafka_delivery_timeout_seconds: float = Field(10.0, gt=0, description="longest wait for the brokers' acks of "
                                                  "a group of requests; beyond it the requests get 503")
    kafka_compression: str = Field("zstd", pattern="^(none|gzip|snappy|lz4|zstd)$", description="compression of "
                                   "the raw topic's messages by the producer (zstd: 500-event batches ≈ 18× smaller)")
    kafka_consumer_group: str = Field("cohort-pipeline", description="consumer group of the pipeline workers")
    kafka_processed_topic: str = Field("cohort.processed", description="scale-out: topic of prepared batches, from "
                                       "the workers to the store writer (as many partitions as the raw topic)")
    kafka_store_group: str = Field("cohort-store", description="scale-out: consumer group of the store writers")
    kafka_max_poll_interval_seconds: float = Field(10.0, gt=0, description="a worker that does not poll this long "
                                                   "leaves the group; a rebalance waits up to this for members")
    kafka_session_timeout_seconds: float = Field(6.0, gt=0, description="a worker silent this long (no "
                                                 "heartbeat) is removed from the group")
    kafka_heartbeat_interval_seconds: float = Field(1.0, gt=0, description="how often a worker tells the group "
                                                    "it is alive (well below the session timeout)")
    kafka_assignment_strategy: str = Field("cooperative-sticky", description="how partitions are shared "
                                           "(cooperative-sticky moves only the partitions that must move)")
    kafka_client_config: dict[str, str] = Field(default_factory=dict, description="extra librdkafka properties "
                                                "for every Kafka client, e.g. security.protocol, sasl.*, ssl.* "
                                                "(JSON in the environment)")

    # pipeline
    pipeline_batch_events: int = Field(5000, description="events per pipeline transaction")
    pipeline_workers: int = Field(2, description="processes running the CPU-heavy core; 0 runs it inline")
    pipeline_idle_wait_seconds: float = 0.02
    pipeline_stall_seconds: float = Field(60.0, description="failing this long, or no batch committed this long "
                                                            "while records wait: /health answers 503 (stalled)")
    pipeline_degraded_seconds: float = Field(10.0, gt=0, description="acknowledged events waiting this long: "
                                             "/health (and the ledger) say degraded")
    pipeline_batch_timeout_seconds: float = Field(120.0, description="a worker busy this long on one batch is "
                                                                     "killed and the batch treated as suspect")
    dedup_period_days: float = Field(7.0, description="how far back a repeated mid counts as duplicate")
    dedup_index_cache_mb: int = Field(128, ge=8, description="memory of each on-disk dedup index (embedded): its "
                                      "cache, memtables and filters; the keys themselves stay on disk")
    redis_url: str = Field("", description="scale-out: the Redis every worker shares for dedup state, "
                           "redis:// or rediss:// with password and database (run it with appendfsync always)")
    redis_socket_timeout_seconds: float = Field(5.0, gt=0, description="scale-out: longest wait for Redis to "
                                                "connect or answer one call; beyond it the pipeline backs off")

    serve_store_writer: str = Field("auto", pattern="^(auto|on|off)$", description="scale-out: whether `cohort "
                                    "serve` also runs the store writer (auto: when the store is the embedded ClickHouse "
                                    "engine, chdb://, which one process must own; off: run `cohort store-writer`)")
    metrics_port: int = Field(0, ge=0, le=65535, description="scale-out: port of the /metrics endpoint of `cohort "
                              "worker` and `cohort store-writer` (on COHORT_HOST; 0: none)")

    # store
    store_memory_limit: str = Field("384MB", description="DuckDB buffer memory; the rest spills to disk (384 MB: "
                                    "the server's whole RSS stays under 1.5 GB at 10,000 events/s; docs/PERFORMANCE.md)")
    store_checkpoint_threshold: str = Field("256MB", description="DuckDB WAL size that triggers a checkpoint")
    clickhouse_dsn: str = Field("", description="scale-out: the ClickHouse store, http(s)://user:password@host:8123 "
                                "(a server) or chdb:///path (the embedded engine: one process per path)")
    clickhouse_database: str = Field("cohort", pattern="^[A-Za-z_][A-Za-z0-9_]*$", description="scale-out: "
                                     "database of Cohort's tables in ClickHouse (created if missing)")
    clickhouse_dedup_window: int = Field(10_000, ge=1, description="scale-out: recent inserts each ClickHouse table "
                                         "remembers the token of; a batch replayed after more inserts than this "
                                         "(by all writers) would be stored twice")

    # query
    query_row_limit: int = 10_000
    query_niceness: int = Field(10, description="CPU niceness of the threads that run queries (executor and "
                                                "engine workers): they yield cores to acks and the pipeline")
    query_timeout_seconds: float = Field(10.0, description="one query's time limit, checking its SQL included")
    query_max_result_bytes: int = Field(16 * 1024 * 1024, description="most JSON bytes of rows in one response; "
                                                                      "beyond it the result is truncated")
    query_max_memory_mb: int = Field(512, description="most the server's memory may grow while queries run; "
                                                      "beyond it they are interrupted (ERR_QUERY_MEMORY)")
    query_max_sql_bytes: int = Field(16 * 1024, description="longest SQL statement (413 beyond)")
    sql_checker_at_start: bool = Field(True, description="start the SQL checker's process with the server, so the "
                                       "first query need not wait for it; off: on the first query (a node that "
                                       "answers no SQL keeps one process fewer)")
    query_max_concurrent: int = Field(4, description="queries running at once, on their own threads (429 beyond)")
    query_max_per_caller: int = Field(2, description="queries one caller may have running at once (429 beyond)")
    export_max_concurrent: int = Field(4, ge=1, description="exports (GET /v1/exhaust) streaming at once, on slots "
                                       "of their own apart from queries (429 beyond)")
    export_max_per_caller: int = Field(1, ge=1, description="exports one caller may have streaming at once")
    export_timeout_seconds: float = Field(3600.0, gt=0, description="one export's whole run, beyond which it is cut off")
    export_idle_seconds: float = Field(300.0, gt=0, description="an export whose client reads nothing for this long "
                                       "is cut off and its slot given back")

    # access and privacy (docs/SECURITY.md)
    auth: str = Field("required", pattern="^(required|off)$", description="required: every endpoint but /health "
                      "needs `Authorization: Bearer <API key or JWT>`; off: anyone reaching the port is admin "
                      "(local development only: the server says so loudly at start)")
    auth_db: Path | None = Field(None, description="API keys and tenants (SQLite); default <data_dir>/auth.sqlite. "
                                 "Scale-out: keys live in Redis (COHORT_REDIS_URL), shared by every replica")
    oidc_jwks: str = Field("", description="OIDC: JWKS of the identity provider, a file path or an https:// URL "
                           "(empty: JWTs are not accepted)")
    oidc_issuer: str = Field("", description="OIDC: required `iss` of accepted JWTs")
    oidc_audience: str = Field("", description="OIDC: required `aud` of accepted JWTs")
    oidc_algorithms: list[str] = Field(default_factory=lambda: ["RS256", "ES256"], description="OIDC: signature "
                                       "algorithms accepted (never `none`, never HMAC with a public key)")
    oidc_tenant_claim: str = Field("cohort_tenant", description="OIDC: claim holding the tenant (channel)")
    oidc_role_claim: str = Field("cohort_role", description="OIDC: claim holding the role")
    oidc_scope_claim: str = Field("cohort_scope", description="OIDC: claim holding the scope (kind:value,…)")
    oidc_leeway_seconds: float = Field(30.0, ge=0, description="OIDC: clock skew allowed on exp/nbf/iat")
    secrets_file: Path | None = Field(None, description="keys of pseudonymisation and of the identity vault "
                                      "(JSON, mode 0600); default <data_dir>/secrets.json, made on first start "
                                      "(embedded). Scale-out: required, the same file for every process")
    pseudonymise_fields: list[str] = Field(default_factory=lambda: [
        "actor.id", "context.did", "edata.dspec.id", "context.uid", "devicedata.devicespec.id:device",
        "edata.items[].origin.id:device?type=Device", "edata.items[].origin.id:learner?type=User",
        "object.id:learner?type=User", "edata.topn[].id:learner", "edata.filters.createdBy:drop",
        "edata.data:drop?type=fingerprint_info"], description="event fields replaced by pseudonyms before "
        "storage, each path[:learner|device|drop][?key=value]: a dotted path (a segment ending in [] means every "
        "element of that list), the kind (device for context.did and edata.dspec.id, else learner; drop removes "
        "free-form values that hold identifiers), and a sibling key and value it applies to (e.g. object.id of a "
        "User); the X-Device-Id header always is")
    pseudonym_cache_seconds: float = Field(30.0, gt=0, description="how long a process uses the pseudonyms it "
                                           "remembers: a learner forgotten in another process may get their old "
                                           "pseudonym (linked to nobody) this long; shorter asks the vault more often")
    rollup_refresh_seconds: float = Field(5.0, gt=0, description="how often the rollups and workflow summaries "
                                          "of the days written since are recomputed (metrics read the rest from "
                                          "telemetry, so they are exact either way; only their cost grows)")
    rollup_max_busy_share: float = Field(0.25, gt=0, le=1, description="the most of the time refreshing may take: "
                                         "after a refresh of t seconds the next waits t × (1 − share) / share, "
                                         "at least rollup_refresh_seconds")
    min_cell_learners: int = Field(10, ge=1, description="aggregates for roles not entitled to individual records "
                                   "hide cells computed from fewer distinct learners than this")

    @property
    def log_path(self) -> Path:
        return self.data_dir / "ingest-log.sqlite"

    @property
    def store_path(self) -> Path:
        return self.data_dir / "store.duckdb"

    @property
    def dedup_mid_path(self) -> Path:
        """Embedded: the on-disk index of event mids stored within the dedup period (a directory)."""
        return self.data_dir / "dedup-mid"

    @property
    def dedup_msgid_path(self) -> Path:
        """Embedded: the on-disk index of request keys (channel/msgid) committed within the period."""
        return self.data_dir / "dedup-msgid"

    @property
    def identity_vault_path(self) -> Path:
        """Embedded: the identity vault (pseudonym ↔ sealed identifier), mode 0600."""
        return self.data_dir / "identity-vault.sqlite"

    @property
    def secrets_path(self) -> Path:
        """The keys of pseudonymisation and of the vault (COHORT_SECRETS_FILE, default in the data dir)."""
        return self.secrets_file or self.data_dir / "secrets.json"

    @property
    def embedded_data_paths(self) -> list[Path]:
        """Every database of an embedded data directory, in the order a wipe erases them: the log first,
        the store next (dedup indexes without their store would call new events duplicates; a store
        without its indexes rebuilds them), then the identity vault (the store's pseudonyms then name
        nobody), the secrets (a vault without its keys cannot be opened) and the API keys, these two when
        they are in the data dir, and the audit log (a reset is a new start; its head goes with it)."""
        in_data_dir = [path for path in (self.secrets_path, self.auth_db or self.data_dir / "auth.sqlite")
                       if path.parent.resolve() == self.data_dir.resolve()]
        audit = [self.data_dir / name for name in ("audit.sqlite", "audit.head", "audit.lock")]
        return [self.log_path, self.dedup_mid_path, self.dedup_msgid_path, self.store_path,
                self.identity_vault_path, *in_data_dir, *audit]
