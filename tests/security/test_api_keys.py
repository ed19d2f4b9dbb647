"""The key store contract, one suite over both stores: a real SQLite file and a real Redis."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
import time
from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import HealthCheck, given, settings as hypothesis_settings, strategies as st

from cohort.core.errors import CohortError, ErrorCode
from cohort.security.api_keys import (
    REDIS_PREFIX,
    KeyStoreUnavailable,
    RedisKeyStore,
    SqliteKeyStore,
    open_key_store,
)
from cohort.security.identity import Role, Scope
from cohort.settings import Settings

T0 = 1_800_000_000.0


class FakeClock:
    """Wall-clock seconds the test moves by hand."""

    def __init__(self, now: float = T0):
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture(params=["sqlite", "redis"])
def make_store(request, tmp_path, clock):
    """A factory of stores sharing one backing (a second call is another process's view of it)."""
    opened = []

    def make(**kwargs):
        kwargs.setdefault("clock", clock)
        if request.param == "sqlite":
            store = SqliteKeyStore(tmp_path / "auth.sqlite", **kwargs)
        else:
            store = RedisKeyStore(request.getfixturevalue("redis_url"), **kwargs)
        opened.append(store)
        return store

    yield make
    for store in opened:
        store.close()


@pytest.fixture
def store(make_store):
    s = make_store()
    s.create_tenant("state-ka", "Karnataka")
    return s


def _code(call) -> ErrorCode:
    with pytest.raises(CohortError) as info:
        call()
    return info.value.code


def test_a_created_key_verifies_to_its_identity_and_is_shown_once(store):
    info, key = store.create_key("state-ka", Role.EDUCATOR, Scope.parse("batch:b1,b2"), label="teacher 1")
    assert key.startswith(f"ck_{info.key_id}_") and len(info.key_id) == 12
    identity = store.verify(key)
    assert (identity.subject, identity.role, identity.tenant, identity.scope, identity.via) == (
        info.key_id, Role.EDUCATOR, "state-ka", Scope("batch", ("b1", "b2")), "api_key")
    listed = store.list_keys()
    assert [k.key_id for k in listed] == [info.key_id] and listed[0].label == "teacher 1"
    secret = key[len(f"ck_{info.key_id}_"):][-20:]  # the secret may hold "_" itself (URL-safe base64)
    assert all(secret not in repr(k) for k in listed)  # no secret, no hash in what lists show
    assert "secret" not in repr(listed[0]).lower()


def test_keys_are_random_and_distinct(store):
    keys = {store.create_key("state-ka", Role.INGESTOR)[1] for _ in range(50)}
    assert len(keys) == 50 and len({k[3:15] for k in keys}) == 50


def test_the_secret_is_stored_only_as_its_sha256(store, tmp_path, request):
    import hashlib

    info, key = store.create_key(None, Role.ADMIN)
    secret = key.split("_", 2)[2]
    if isinstance(store, SqliteKeyStore):
        raw = b"".join(p.read_bytes() for p in tmp_path.iterdir() if p.name.startswith("auth.sqlite"))
        assert secret.encode() not in raw and hashlib.sha256(secret.encode()).hexdigest().encode() in raw
    else:
        fields = store._client.hgetall(REDIS_PREFIX + f"key:{info.key_id}")
        assert secret not in str(fields) and fields["secret_sha256"] == hashlib.sha256(secret.encode()).hexdigest()


@pytest.mark.parametrize("mangle, reason", [
    (lambda k: k[:-1] + ("A" if k[-1] != "A" else "B"), "unknown"),  # a wrong secret for a real id
    (lambda k: "ck_AAAAAAAAAAAA_" + k.split("_", 2)[2], "unknown"),
    (lambda k: k[:-1], "malformed"),
    (lambda k: k + "x", "malformed"),
    (lambda k: k.replace("ck_", "cx_"), "malformed"),
    (lambda k: "", "malformed"),
])
def test_a_wrong_key_is_refused_with_its_reason_and_never_echoed(store, mangle, reason):
    _, key = store.create_key("state-ka", Role.ANALYST)
    bad = mangle(key)
    with pytest.raises(CohortError) as info:
        store.verify(bad)
    assert info.value.code == ErrorCode.AUTH_INVALID and reason in info.value.message
    assert key.split("_", 2)[2][:10] not in info.value.message


def test_a_revoked_key_is_refused_at_once_here_and_within_the_cache_time_elsewhere(store, make_store, clock):
    info, key = store.create_key("state-ka", Role.INGESTOR)
    other = make_store()  # another process's view of the same store, with its own cache
    assert other.verify(key).subject == info.key_id
    assert store.revoke(info.key_id) is True
    assert store.revoke(info.key_id) is False  # already revoked
    assert store.revoke("AAAAAAAAAAAA") is False and store.revoke("not an id") is False
    assert "revoked" in _message(lambda: store.verify(key))
    assert other.verify(key).subject == info.key_id  # still cached over there…
    clock.advance(5.0)
    assert "revoked" in _message(lambda: other.verify(key))  # …for at most VERIFY_CACHE_SECONDS
    assert store.get_key(info.key_id).revoked_at == datetime.fromtimestamp(T0, UTC)


def _message(call) -> str:
    with pytest.raises(CohortError) as info:
        call()
    assert info.value.code == ErrorCode.AUTH_INVALID
    return info.value.message


def test_keys_verified_recently_keep_working_while_the_store_is_away(store, clock, monkeypatch):
    """Acks must not stop while Redis restarts: a key verified within the grace keeps working, one never
    verified (or verified too long ago, or expired meanwhile) gets the store's fault, never a false yes."""
    from cohort.security.api_keys import STALE_GRACE_SECONDS, KeyStoreUnavailable

    _, known = store.create_key("state-ka", Role.INGESTOR)
    _, unknown = store.create_key("state-ka", Role.INGESTOR)
    _, expiring = store.create_key("state-ka", Role.INGESTOR, expires_at=datetime.fromtimestamp(T0 + 120, UTC))
    store.verify(known), store.verify(expiring)

    def away(key_id):
        raise KeyStoreUnavailable("injected: the store is away")

    monkeypatch.setattr(store, "_load_key", away)
    clock.advance(60)  # past the 5 s cache: a store that answered would be asked again
    assert store.verify(known).role == Role.INGESTOR and store.verify(expiring).role == Role.INGESTOR
    with pytest.raises(KeyStoreUnavailable):
        store.verify(unknown)
    clock.advance(61)  # past the key's own expiry
    with pytest.raises(KeyStoreUnavailable):
        store.verify(expiring)
    clock.advance(STALE_GRACE_SECONDS)
    with pytest.raises(KeyStoreUnavailable):
        store.verify(known)


def test_a_key_expires_at_its_time_even_when_cached(store, clock):
    info, key = store.create_key("state-ka", Role.ANALYST, expires_at=datetime.fromtimestamp(T0 + 60, UTC))
    assert store.verify(key).subject == info.key_id
    clock.advance(59.9)
    assert store.verify(key).subject == info.key_id
    clock.advance(0.1)
    assert "expired" in _message(lambda: store.verify(key))


def test_the_cache_is_emptied_when_the_wall_clock_steps_back(store, make_store, clock):
    info, key = store.create_key("state-ka", Role.ANALYST)
    other = make_store()
    other.verify(key)
    store.revoke(info.key_id)
    clock.advance(-3600)
    assert "revoked" in _message(lambda: other.verify(key))


def test_an_expiry_in_the_past_is_refused_and_a_naive_one_is_utc(store):
    assert _code(lambda: store.create_key(None, Role.ADMIN, expires_at=datetime.fromtimestamp(T0 - 1, UTC))) \
        == ErrorCode.AUTH_INVALID_EXPIRY
    info, _ = store.create_key(None, Role.ADMIN, expires_at=datetime(2030, 1, 1))
    assert info.expires_at == datetime(2030, 1, 1, tzinfo=UTC)


def test_role_tenant_and_scope_rules(store):
    assert _code(lambda: store.create_key("state-ka", Role.ADMIN)) == ErrorCode.AUTH_INVALID_TENANT
    assert _code(lambda: store.create_key(None, Role.ADMIN, Scope.parse("batch:b"))) == ErrorCode.AUTH_INVALID_SCOPE
    for role in (Role.TENANT_ADMIN, Role.INGESTOR, Role.ANALYST, Role.EDUCATOR):
        assert _code(lambda: store.create_key(None, role)) == ErrorCode.AUTH_INVALID_TENANT
    assert _code(lambda: store.create_key("state-tn", Role.ANALYST)) == ErrorCode.AUTH_INVALID_TENANT  # unknown
    assert _code(lambda: store.create_key("bad tenant!", Role.ANALYST)) == ErrorCode.AUTH_INVALID_TENANT
    assert _code(lambda: store.create_key("state-ka", "superuser")) == ErrorCode.AUTH_INVALID_ROLE
    assert _code(lambda: store.create_key("state-ka", Role.ANALYST, label="x" * 201)) == ErrorCode.FIELD_TOO_LONG
    assert store.create_key("state-ka", "analyst")[0].role is Role.ANALYST
    assert store.create_key("state-ka", Role.ANALYST, label="a\x1b[31mb\n")[0].label == "a [31mb"
    assert store.list_keys() and store.list_keys("state-tn") == []


def test_tenants(store):
    store.create_tenant("state-tn", "Tamil Nadu")
    assert [(t.tenant_id, t.name) for t in store.list_tenants()] == [("state-ka", "Karnataka"),
                                                                     ("state-tn", "Tamil Nadu")]
    assert store.tenant_exists("state-tn") and not store.tenant_exists("state-up")
    assert not store.tenant_exists("no spaces allowed") and not store.tenant_exists("")
    assert _code(lambda: store.create_tenant("state-ka")) == ErrorCode.AUTH_INVALID_TENANT  # exists
    assert _code(lambda: store.create_tenant("../etc")) == ErrorCode.AUTH_INVALID_TENANT
    assert _code(lambda: store.create_tenant("x" * 129)) == ErrorCode.AUTH_INVALID_TENANT


def test_list_keys_by_tenant_in_creation_order(store, clock):
    store.create_tenant("state-tn")
    made = []
    for tenant, role in (("state-ka", Role.ANALYST), (None, Role.ADMIN), ("state-tn", Role.INGESTOR),
                         ("state-ka", Role.EDUCATOR)):
        made.append(store.create_key(tenant, role)[0].key_id)
        clock.advance(1)
    assert [k.key_id for k in store.list_keys()] == made
    assert [k.key_id for k in store.list_keys("state-ka")] == [made[0], made[3]]
    assert store.get_key(made[1]).role is Role.ADMIN and store.get_key("AAAAAAAAAAAA") is None


def test_has_admin_key_counts_only_usable_admin_keys(store, clock):
    assert not store.has_admin_key()
    store.create_key("state-ka", Role.TENANT_ADMIN)
    assert not store.has_admin_key()
    info, _ = store.create_key(None, Role.ADMIN, expires_at=datetime.fromtimestamp(T0 + 10, UTC))
    assert store.has_admin_key()
    clock.advance(10)
    assert not store.has_admin_key()
    info, _ = store.create_key(None, Role.ADMIN)
    store.revoke(info.key_id)
    assert not store.has_admin_key()


def test_the_cache_is_bounded(make_store):
    store = make_store(cache_entries=3)
    store.create_tenant("t")
    keys = [store.create_key("t", Role.INGESTOR)[1] for _ in range(10)]
    for key in keys:
        store.verify(key)
    assert len(store._cache._items) == 3


@hypothesis_settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(text=st.one_of(st.text(max_size=120), st.from_regex(r"ck_[A-Za-z0-9_-]{0,70}", fullmatch=True)))
def test_any_text_is_refused_with_a_code(store, text):
    with pytest.raises(CohortError) as info:
        store.verify(text)
    assert info.value.code == ErrorCode.AUTH_INVALID


def test_the_sqlite_file_and_its_side_files_have_mode_0600(tmp_path):
    path = tmp_path / "new" / "auth.sqlite"
    store = SqliteKeyStore(path)
    store.create_tenant("t")
    store.create_key("t", Role.INGESTOR)
    names = sorted(p.name for p in path.parent.iterdir())
    assert names == ["auth.sqlite", "auth.sqlite-shm", "auth.sqlite-wal"]
    for p in path.parent.iterdir():
        assert stat.S_IMODE(p.stat().st_mode) == 0o600, p
    store.close()
    os.chmod(path, 0o644)  # widened by hand: narrowed again when opened
    SqliteKeyStore(path).close()
    assert stat.S_IMODE(path.stat().st_mode) == 0o600


def test_a_key_created_in_another_process_verifies_here_concurrently(tmp_path):
    """Four processes verify keys while another creates them: WAL readers and a writer side by side."""
    path = tmp_path / "auth.sqlite"
    store = SqliteKeyStore(path, cache_seconds=0)
    store.create_tenant("t")
    script = ("import sys; from cohort.security.api_keys import SqliteKeyStore; from cohort.security.identity "
              "import Role\ns = SqliteKeyStore(sys.argv[1])\n"
              "for _ in range(40): print(s.create_key('t', Role.INGESTOR)[1], flush=True)")
    creator = subprocess.Popen([sys.executable, "-c", script, str(path)], stdout=subprocess.PIPE, text=True)
    verifier = ("import sys; from cohort.security.api_keys import SqliteKeyStore\n"
                "s = SqliteKeyStore(sys.argv[1], cache_seconds=0)\n"
                "keys = [line.strip() for line in sys.stdin]\n"
                "for _ in range(20):\n    assert all(s.verify(k).tenant == 't' for k in keys)\nprint(len(keys))")
    keys = creator.stdout.read().split()
    assert creator.wait(60) == 0 and len(keys) == 40
    readers = [subprocess.Popen([sys.executable, "-c", verifier, str(path)], stdin=subprocess.PIPE,
                                stdout=subprocess.PIPE, text=True) for _ in range(4)]
    writer = subprocess.Popen([sys.executable, "-c", script, str(path)], stdout=subprocess.PIPE, text=True)
    outputs = [r.communicate("\n".join(keys), timeout=120)[0] for r in readers]
    more = writer.communicate(timeout=60)[0].split()
    assert [r.returncode for r in readers] == [0] * 4 and outputs == ["40\n"] * 4
    assert all(store.verify(k).tenant == "t" for k in keys + more)


def test_an_unreachable_redis_is_a_transient_fault_not_an_auth_failure(clock):
    from cohort.benchmark.server_process import free_port

    store = RedisKeyStore(f"redis://127.0.0.1:{free_port()}/0", socket_timeout_s=0.5, clock=clock)
    key = "ck_AAAAAAAAAAAA_" + "A" * 43
    with pytest.raises(KeyStoreUnavailable):
        store.verify(key)
    with pytest.raises(KeyStoreUnavailable):
        store.create_tenant("t")


def test_open_key_store_follows_the_footprint(tmp_path, redis_url):
    embedded = open_key_store(Settings(data_dir=tmp_path))
    assert isinstance(embedded, SqliteKeyStore) and embedded.path == tmp_path / "auth.sqlite"
    embedded.close()
    other = open_key_store(Settings(data_dir=tmp_path, auth_db=tmp_path / "elsewhere.sqlite"))
    assert other.path == tmp_path / "elsewhere.sqlite"
    other.close()
    assert isinstance(open_key_store(Settings(footprint="scaleout", redis_url=redis_url)), RedisKeyStore)
    assert _code(lambda: open_key_store(Settings(footprint="scaleout", redis_url=""))) == ErrorCode.CONFIG_INVALID


@pytest.mark.parametrize("cached", [True, False])
def test_verify_cost(make_store, cached, record_property):
    """Not a bound (the machine is shared): prints µs per verify for the report."""
    store = make_store(clock=time.time, cache_seconds=5.0 if cached else 0)
    store.create_tenant("t")
    _, key = store.create_key("t", Role.INGESTOR)
    store.verify(key)
    n = 2000
    start = time.perf_counter()
    for _ in range(n):
        store.verify(key)
    micros = (time.perf_counter() - start) / n * 1e6
    record_property("verify_us", micros)
    print(f"\n{type(store).__name__} verify {'cached' if cached else 'uncached'}: {micros:.1f} µs")
    assert micros < (200 if cached else 5000)


def test_a_rotated_key_works_until_its_overlap_ends_and_the_end_is_never_pushed_later(store, make_store, clock):
    info, key = store.create_key("state-ka", Role.ANALYST)
    other = make_store()
    assert other.verify(key).subject == info.key_id  # cached in another process
    assert store.expire(info.key_id, clock() + 3600) is True  # a rotation's overlap: an hour
    assert store.verify(key).subject == info.key_id
    assert store.expire(info.key_id, clock() + 7200) is False  # never later
    assert store.get_key(info.key_id).expires_at == datetime.fromtimestamp(T0 + 3600, UTC)
    clock.advance(3600)
    assert "expired" in _message(lambda: store.verify(key))
    assert "expired" in _message(lambda: other.verify(key))  # the cached identity ends with the overlap

    second, second_key = store.create_key("state-ka", Role.ANALYST)
    assert store.expire(second.key_id, clock()) is True  # no overlap: refused at once
    assert "expired" in _message(lambda: store.verify(second_key))
    assert _code(lambda: store.expire(second.key_id, clock() - 2)) == ErrorCode.AUTH_INVALID_EXPIRY
    assert store.expire("nosuchkeyid0", clock() + 10) is False
    store.revoke(second.key_id)
    assert store.expire(second.key_id, clock() + 10) is False  # a revoked key stays revoked
