"""Exports (exhaust): a dataset's rows over a time range, as Parquet or CSV, in constant memory.

A dataset is a catalog table read by one time column (`DATASETS`; rollups and summaries join the list
as they are declared). The request is checked into values of known shape (`parse_export_request`),
the statement is built as a tree from them (`export_sql`): the caller's rows are the table's
`rows_condition` (security/sql_scope: the one definition of what an identity may read), the range two
literals made from parsed datetimes, so no text a caller sent reaches the SQL but the tenant id, which
`check_tenant_id` has checked. The rows then pass batch by batch from the store's `stream_rows` through
a format writer (`ExportWriter`) into a sink that hands the bytes on in chunks: nothing holds the
whole export.

The output is the store's data, so identifiers are the pseudonyms it holds; nothing joins the vault.
Columns are every catalog column, in catalog order, with one type per column whichever store holds
it (times: UTC milliseconds; JSON columns: their JSON text). A truncated download is detectable:
Parquet has its footer last (a file cut short does not open), CSV ends with the line `# end rows=N`
(a comment to `pandas.read_csv(..., comment='#')`; every value is quoted, so a `#` inside one is data).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import UTC, date, datetime, timedelta
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pa_csv
import pyarrow.parquet as pq
from sqlglot import exp

from cohort.analytics.metric_query import narrowed_scope
from cohort.core.errors import CohortError, ErrorCode
from cohort.security.identity import Identity, check_tenant_id
from cohort.security.sql_scope import rows_condition
from cohort.security.table_catalog import FAILED_EVENTS, TELEMETRY, CatalogTable

FORMATS = ("parquet", "csv")
PARAMETERS = ("from", "to", "format", "tenant", "scope")
DEFAULT_DAYS = 7  # without `from`: the 7 days before `to` (default: the end of today, UTC)
EARLIEST = datetime(2000, 1, 1, tzinfo=UTC)  # the store holds no event before 2000 or from 2100 on (route stage)
LATEST = datetime(2100, 1, 1, tzinfo=UTC)
MAX_PARAM_CHARS = 64
CSV_END_PREFIX = "# end rows="
PARQUET_COMPRESSION = "zstd"
CHUNK_BYTES = 1024 * 1024  # what the sink hands on at a time


@dataclass(frozen=True, slots=True)
class ExportDataset:
    """A table users may export, and the column a range selects its rows by."""

    name: str
    table: CatalogTable
    time_column: str
    description: str

    @property
    def columns(self) -> tuple[str, ...]:
        return tuple(column.name for column in self.table.columns)


DATASETS: dict[str, ExportDataset] = {d.name: d for d in (
    ExportDataset("telemetry", TELEMETRY, "ets", "stored events, by event time (ets)"),
    ExportDataset("failed_events", FAILED_EVENTS, "failed_at", "quarantined events, by quarantine time (failed_at); "
                  "unscoped tenant roles only, as in SQL"),
)}


@dataclass(frozen=True, slots=True)
class ExportRequest:
    """A checked request: rows of `dataset` with start <= time < end, of `tenant` (None: every tenant, for an
    admin who names none), as `format`."""

    dataset: ExportDataset
    start: datetime
    end: datetime
    format: str
    tenant: str | None
    reader: Identity | None = None  # whose rows: the caller, or the caller narrowed by `scope=` (None: the caller)

    def as_params(self) -> dict[str, str | None]:
        scope = None if self.reader is None or self.reader.scope is None else str(self.reader.scope)
        return {"dataset": self.dataset.name, "from": iso(self.start), "to": iso(self.end), "format": self.format,
                "tenant": self.tenant, "scope": scope}

    def filename(self) -> str:
        """`<dataset>_<tenant or all>_<from>_<to>.<format>`, safe in a Content-Disposition header and a file system."""
        def stamp(moment: datetime) -> str:
            return moment.strftime("%Y%m%d" if moment == _midnight(moment) else "%Y%m%dT%H%M%S")
        tenant = (self.tenant or "all").replace(":", "-")
        return f"{self.dataset.name}_{tenant}_{stamp(self.start)}_{stamp(self.end)}.{self.format}"


def find_dataset(name: str) -> ExportDataset:
    dataset = DATASETS.get(name)
    if dataset is None:
        raise CohortError(ErrorCode.EXPORT_UNKNOWN, f"no dataset {name[:MAX_PARAM_CHARS]!r} to export; the datasets "
                          f"are {', '.join(DATASETS)}")
    return dataset


def parse_export_request(dataset: ExportDataset, params: Sequence[tuple[str, str]] | Mapping[str, str],
                         identity: Identity, now: datetime) -> ExportRequest:
    """The checked request of `identity` (ERR_EXPORT_PARAM for a bad parameter, ERR_AUTH_FORBIDDEN for another
    tenant's rows or a dataset its scope cannot be narrowed to)."""
    pairs = list(params.items()) if isinstance(params, Mapping) else list(params)
    given: dict[str, str] = {}
    for name, value in pairs:
        if name not in PARAMETERS:
            raise _bad(f"unknown parameter {name[:MAX_PARAM_CHARS]!r}; the parameters are {', '.join(PARAMETERS)}")
        if name in given:
            raise _bad(f"parameter {name!r} is given more than once")
        if len(value) > MAX_PARAM_CHARS:
            raise _bad(f"parameter {name!r} is longer than {MAX_PARAM_CHARS} characters")
        given[name] = value
    if "to" in given:
        end = parse_time(given["to"], "to")
    else:
        end = _midnight(now.astimezone(UTC)) + timedelta(days=1)
    start = parse_time(given["from"], "from") if "from" in given else max(EARLIEST, end - timedelta(days=DEFAULT_DAYS))
    if not (EARLIEST <= start and end <= LATEST):
        raise _bad(f"from and to lie between {iso(EARLIEST)} and {iso(LATEST)}")
    if start >= end:
        raise _bad("from must be before to (to is exclusive)")
    fmt = given.get("format", "parquet")
    if fmt not in FORMATS:
        raise _bad(f"format {fmt[:MAX_PARAM_CHARS]!r} is not one of {', '.join(FORMATS)}")
    tenant = _tenant(given.get("tenant"), identity)
    reader = _reader(identity, tenant, given.get("scope"))
    if not dataset.table.readable_by(reader):
        raise CohortError(ErrorCode.AUTH_FORBIDDEN, f"dataset {dataset.name} cannot be narrowed to the scope "
                          f"({reader.scope}); export one of "
                          f"{', '.join(n for n, d in DATASETS.items() if d.table.readable_by(reader))}")
    return ExportRequest(dataset, start, end, fmt, tenant, reader)


def _reader(identity: Identity, tenant: str | None, scope_text: str | None) -> Identity:
    """Whose rows an export reads: the caller's, or with `scope=` part of them (the metrics' rule: narrow, never
    widen), so a dashboard's Parquet button exports the events of the school or batch it shows."""
    if scope_text is None:
        return identity
    try:
        scope = narrowed_scope(scope_text, identity)
    except CohortError as exc:
        if exc.code == ErrorCode.METRIC_PARAM:
            raise _bad(exc.message) from None
        raise
    if identity.tenant is None and tenant is None:
        raise _bad("name the tenant whose rows scope= narrows (tenant=…)")
    return replace(identity, tenant=identity.tenant or tenant, scope=scope)


def parse_time(text: str, name: str) -> datetime:
    """An ISO 8601 date (midnight UTC) or date and time (UTC unless it carries an offset), to the millisecond."""
    try:
        if len(text) == 10:
            day = date.fromisoformat(text)
            return datetime(day.year, day.month, day.day, tzinfo=UTC)
        moment = datetime.fromisoformat(text)
        moment = moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)
    except (ValueError, OverflowError):
        raise _bad(f"{name} {text[:MAX_PARAM_CHARS]!r} is not an ISO 8601 date (2026-01-31) or date and time "
                   f"(2026-01-31T10:00:00Z)") from None
    if moment.microsecond % 1000:
        raise _bad(f"{name} is finer than a millisecond, the store's precision")
    return moment


def iso(moment: datetime) -> str:
    text = moment.astimezone(UTC).isoformat(timespec="milliseconds" if moment.microsecond else "seconds")
    return text.replace("+00:00", "Z")


def export_sql(request: ExportRequest, identity: Identity, dialect: str) -> str:
    """The statement that reads exactly the rows `identity` may export of `request`, every catalog column."""
    dataset = request.dataset
    entry = dataset.table
    columns = [_column_as_text(column.name, column.duckdb_type, dialect) for column in entry.columns]
    time_column = exp.column(dataset.time_column)
    conditions: list[exp.Expr] = [
        exp.GTE(this=time_column.copy(), expression=_time_literal(request.start, dialect)),
        exp.LT(this=time_column.copy(), expression=_time_literal(request.end, dialect)),
    ]
    identity = request.reader or identity
    if identity.tenant is not None:
        conditions.insert(0, rows_condition(entry, identity, dialect))
    elif request.tenant is not None:  # an admin naming a tenant: its rows, exactly as a tenant's read them
        assert entry.tenant_column is not None
        conditions.insert(0, exp.EQ(this=exp.column(entry.tenant_column),
                                    expression=exp.Literal.string(check_tenant_id(request.tenant))))
    where = conditions[0]
    for condition in conditions[1:]:
        where = exp.And(this=where, expression=condition)
    select = exp.Select(expressions=columns).from_(exp.Table(this=exp.to_identifier(entry.name)), copy=False)
    select = select.where(where, copy=False)
    return select.sql(dialect=dialect)


def arrow_schema(dataset: ExportDataset) -> pa.Schema:
    """The export's columns and types, the same whichever store holds the rows."""
    return pa.schema([(column.name, _ARROW_TYPES[column.duckdb_type.upper()]) for column in dataset.table.columns])


# the catalog's (DuckDB) column types as exported; a dataset with a type not listed here fails its test
_ARROW_TYPES = {"VARCHAR": pa.string(), "JSON": pa.string(), "TIMESTAMP": pa.timestamp("ms", tz="UTC"),
                "TIMESTAMP WITH TIME ZONE": pa.timestamp("ms", tz="UTC"), "DATE": pa.date32(),
                "BIGINT": pa.int64(), "INTEGER": pa.int32(), "SMALLINT": pa.int16(), "UBIGINT": pa.uint64(),
                "DOUBLE": pa.float64(), "FLOAT": pa.float32(), "BOOLEAN": pa.bool_()}


def conform(batch: pa.RecordBatch, schema: pa.Schema) -> pa.RecordBatch:
    """`batch` with the export's column types (the stores' Arrow types differ: microseconds or milliseconds,
    naive or UTC, dictionary or plain strings)."""
    arrays = []
    for field in schema:
        column = batch.column(field.name)
        if column.type != field.type:
            if pa.types.is_timestamp(column.type) and column.type.tz is None and field.type.tz is not None:
                column = pc.assume_timezone(column, "UTC")
            column = pc.cast(column, field.type, safe=False)
        arrays.append(column)
    return pa.RecordBatch.from_arrays(arrays, schema=schema)


class ChunkSink:
    """A write-only file that hands its bytes to `emit` in chunks of about CHUNK_BYTES (and the rest at
    `close`): what the format writers write to, so an export never holds more than a chunk and a batch."""

    def __init__(self, emit: Callable[[bytes], None], chunk_bytes: int = CHUNK_BYTES):
        self._emit = emit
        self._chunk_bytes = chunk_bytes
        self._buffer = bytearray()
        self.bytes_written = 0
        self.closed = False

    def write(self, data: Any) -> int:
        view = memoryview(data).cast("B")
        self._buffer += view
        self.bytes_written += len(view)
        if len(self._buffer) >= self._chunk_bytes:
            self._pass_on()
        return len(view)

    def tell(self) -> int:
        return self.bytes_written

    def writable(self) -> bool:
        return True

    def flush(self) -> None:
        pass

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            self._pass_on()

    def _pass_on(self) -> None:
        if self._buffer:
            chunk, self._buffer = bytes(self._buffer), bytearray()
            self._emit(chunk)


class ExportWriter:
    """Batches in, a Parquet file (one row group a batch, zstd) or a CSV text (header, every value quoted,
    `# end rows=N` last) out, through `sink`. `finish` completes the file; without it, what was written is
    detectably incomplete."""

    def __init__(self, fmt: str, schema: pa.Schema, sink: ChunkSink):
        self.format = fmt
        self.schema = schema
        self.sink = sink
        self.rows = 0
        if fmt == "parquet":
            self._parquet: pq.ParquetWriter | None = pq.ParquetWriter(sink, schema, compression=PARQUET_COMPRESSION)
            self._csv: pa_csv.CSVWriter | None = None
        else:
            self._parquet = None
            self._csv = pa_csv.CSVWriter(sink, schema, write_options=pa_csv.WriteOptions(
                include_header=True, quoting_style="all_valid"))

    def write(self, batch: pa.RecordBatch) -> None:
        batch = conform(batch, self.schema)
        if not batch.num_rows:
            return
        if self._parquet is not None:
            self._parquet.write_batch(batch, row_group_size=batch.num_rows)
        elif self._csv is not None:
            self._csv.write_batch(batch)
        self.rows += batch.num_rows

    def finish(self) -> None:
        if self._parquet is not None:
            self._parquet.close()
        elif self._csv is not None:
            self._csv.close()
            self.sink.write(f"{CSV_END_PREFIX}{self.rows}\n".encode())
        self.sink.close()


def csv_end_rows(tail: bytes) -> int | None:
    """The row count the last line of a CSV export states, or None when the export was cut short."""
    lines = tail.rstrip(b"\n").rsplit(b"\n", 1)
    last = lines[-1].decode("ascii", "replace")
    if not tail.endswith(b"\n") or not last.startswith(CSV_END_PREFIX):
        return None
    count = last[len(CSV_END_PREFIX):]
    return int(count) if count.isdigit() else None


def _column_as_text(name: str, duckdb_type: str, dialect: str) -> exp.Expr:
    """JSON columns as their JSON text (ClickHouse holds them as text already)."""
    column = exp.column(name)
    if duckdb_type == "JSON" and dialect == "duckdb":
        return exp.Alias(this=exp.Cast(this=column, to=exp.DataType.build("VARCHAR")), alias=exp.to_identifier(name))
    return column


def _time_literal(moment: datetime, dialect: str) -> exp.Expr:
    text = moment.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S.") + f"{moment.microsecond // 1000:03d}"
    if dialect == "clickhouse":
        return exp.Anonymous(this="toDateTime64", expressions=[exp.Literal.string(text), exp.Literal.number(3),
                                                               exp.Literal.string("UTC")])
    return exp.Cast(this=exp.Literal.string(text), to=exp.DataType.build("TIMESTAMP"))


def _midnight(moment: datetime) -> datetime:
    return datetime(moment.year, moment.month, moment.day, tzinfo=UTC)


def _tenant(text: str | None, identity: Identity) -> str | None:
    if text is None:
        return identity.tenant
    try:
        check_tenant_id(text)
    except CohortError as exc:
        raise _bad(exc.message) from None
    if identity.tenant is not None and text != identity.tenant:
        raise CohortError(ErrorCode.AUTH_FORBIDDEN, f"this key exports tenant {identity.tenant}'s rows only")
    return text


def _bad(message: str) -> CohortError:
    return CohortError(ErrorCode.EXPORT_PARAM, message)
