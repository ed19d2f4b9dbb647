"""What a metric request asks for: a time window, a granularity, a grouping, and whose events.

Everything a caller sends is checked here, before any SQL is written, and turned into values of known
shape: datetimes in UTC at millisecond precision (the store's), one of a few granularities and group-bys,
and a tenant that is the caller's own (or, for an admin, any valid channel id). The SQL of a metric is
then built from these values only, so no text a caller sent reaches the store except the tenant, which
is bound as a parameter. Every bad parameter is ERR_METRIC_PARAM (400); asking for another tenant's
figures is ERR_AUTH_FORBIDDEN (403).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta

from cohort.core.errors import CohortError, ErrorCode
from cohort.security.identity import Identity, Scope, check_tenant_id

GRANULARITIES = ("hour", "day", "week", "month", "all")
GROUP_BYS = ("none", "rollup.l1", "rollup.l2", "rollup.l3", "rollup.l4", "pdata_id", "object_id")
PARAMETERS = ("from", "to", "granularity", "by", "tenant", "scope")

DEFAULT_DAYS = 30  # without `from`: the last 30 days, today included
MAX_RANGE = timedelta(days=400)
MAX_HOURLY_RANGE = timedelta(days=31)  # 744 hourly buckets per group at most
EARLIEST = datetime(2000, 1, 1, tzinfo=UTC)  # the store holds no event before 2000 or from 2100 on (route stage)
LATEST = datetime(2100, 1, 1, tzinfo=UTC)
MAX_PARAM_CHARS = 64


@dataclass(frozen=True, slots=True)
class MetricQuery:
    """A checked request: [start, end) in UTC, bucketed by `granularity`, grouped by `by`, over `tenant`
    (None: every tenant, for an admin who names none) narrowed to `scope` (the caller's, if it has one)."""

    start: datetime
    end: datetime
    granularity: str
    by: str
    tenant: str | None
    scope: Scope | None

    def as_params(self) -> dict[str, str | None]:
        """The request as it was understood (the response and the audit log say this)."""
        return {"from": iso(self.start), "to": iso(self.end), "granularity": self.granularity, "by": self.by,
                "tenant": self.tenant, "scope": None if self.scope is None else str(self.scope)}


def parse_metric_query(params: Mapping[str, str] | Sequence[tuple[str, str]], identity: Identity,
                       now: datetime) -> MetricQuery:
    """The checked request of `identity` from query-string `params` (pairs, so a repeated name is caught)."""
    given = given_parameters(params, PARAMETERS, "the parameters are")
    start, end = checked_window(given.get("from"), given.get("to"), now)
    granularity = _choice(given, "granularity", GRANULARITIES, "day")
    by = _choice(given, "by", GROUP_BYS, "none")
    if granularity == "hour" and end - start > MAX_HOURLY_RANGE:
        raise param_error(f"hourly figures cover at most {MAX_HOURLY_RANGE.days} days; narrow from/to or choose a "
                   f"coarser granularity")
    return MetricQuery(start, end, granularity, by, checked_tenant(given.get("tenant"), identity),
                       narrowed_scope(given.get("scope"), identity))


def given_parameters(params: Mapping[str, str] | Sequence[tuple[str, str]], allowed: Sequence[str],
                     listing: str) -> dict[str, str]:
    """`params` by name, once each: an unknown, repeated or over-long one is ERR_METRIC_PARAM (`listing` leads
    the list of the allowed names in the message)."""
    pairs = list(params.items()) if isinstance(params, Mapping) else list(params)
    given: dict[str, str] = {}
    for name, value in pairs:
        if name not in allowed:
            raise param_error(f"unknown parameter {name[:MAX_PARAM_CHARS]!r}; {listing} {', '.join(allowed)}")
        if name in given:
            raise param_error(f"parameter {name!r} is given more than once")
        if len(value) > MAX_PARAM_CHARS:
            raise param_error(f"parameter {name!r} is longer than {MAX_PARAM_CHARS} characters")
        given[name] = value
    return given


def parse_time(text: str, name: str) -> datetime:
    """An ISO 8601 date (midnight UTC) or date and time (UTC unless it carries an offset), to the millisecond."""
    try:
        if len(text) == 10:
            day = date.fromisoformat(text)
            return datetime(day.year, day.month, day.day, tzinfo=UTC)
        moment = datetime.fromisoformat(text)
        moment = moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)
    except (ValueError, OverflowError):  # OverflowError: a time whose offset takes it past year 9999
        raise param_error(f"{name} {text[:MAX_PARAM_CHARS]!r} is not an ISO 8601 date (2026-01-31) or date and time "
                   f"(2026-01-31T10:00:00Z)") from None
    if moment.microsecond % 1000:
        raise param_error(f"{name} is finer than a millisecond, the store's precision")
    return moment


def iso(moment: datetime) -> str:
    """UTC, `Z`-suffixed, milliseconds only when there are any."""
    text = moment.astimezone(UTC).isoformat(timespec="milliseconds" if moment.microsecond else "seconds")
    return text.replace("+00:00", "Z")


def checked_window(start_text: str | None, end_text: str | None, now: datetime) -> tuple[datetime, datetime]:
    if end_text is not None:
        end = parse_time(end_text, "to")
    else:
        today = now.astimezone(UTC).date()
        end = datetime(today.year, today.month, today.day, tzinfo=UTC) + timedelta(days=1)
    start = parse_time(start_text, "from") if start_text is not None else end - timedelta(days=DEFAULT_DAYS)
    if start_text is None and end_text is not None and start < EARLIEST:
        start = EARLIEST
    if not (EARLIEST <= start and end <= LATEST):
        raise param_error(f"from and to lie between {iso(EARLIEST)} and {iso(LATEST)}")
    if start >= end:
        raise param_error("from must be before to (to is exclusive)")
    if end - start > MAX_RANGE:
        raise param_error(f"from..to covers at most {MAX_RANGE.days} days")
    return start, end


def _choice(given: dict[str, str], name: str, allowed: tuple[str, ...], default: str) -> str:
    value = given.get(name, default)
    if value not in allowed:
        raise param_error(f"{name} {value!r} is not one of {', '.join(allowed)}")
    return value


def checked_tenant(text: str | None, identity: Identity) -> str | None:
    """An admin names the tenant (or none: every tenant); everyone else reads its own, and naming another
    is refused (403) rather than silently answered with the caller's own figures."""
    if text is None:
        return identity.tenant
    try:
        tenant = check_tenant_id(text)
    except CohortError as exc:
        raise param_error(exc.message) from None
    if identity.tenant is not None and tenant != identity.tenant:
        raise CohortError(ErrorCode.AUTH_FORBIDDEN, "you may read the metrics of your own tenant only")
    return tenant


def narrowed_scope(text: str | None, identity: Identity) -> Scope | None:
    """The scope a request reads: the identity's, or a narrower one it names (`scope=rollup.l3:school-1`), so
    a tenant-wide reader (an administrator, a district officer) can look at one school, class or batch. A
    scoped identity may name only part of its own scope (same kind, some of its values); anything wider
    is refused (403), never silently answered with its own scope."""
    if text is None:
        return identity.scope
    try:
        asked = Scope.parse(text)
    except CohortError as exc:
        raise param_error(exc.message) from None
    own = identity.scope
    if own is not None and (asked.kind != own.kind or not set(asked.values) <= set(own.values)):
        raise CohortError(ErrorCode.AUTH_FORBIDDEN, f"your scope is {own}; you may narrow it, not widen it")
    return asked


def param_error(message: str) -> CohortError:
    return CohortError(ErrorCode.METRIC_PARAM, message)
