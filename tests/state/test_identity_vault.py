"""One suite over every IdentityVault implementation (SQLite file, Redis): a backend proves itself by passing it.

Each backend is named by a spec (what a process needs to open the same vault again: a path, a URL), so
the suite can reopen it and open it from other processes. Faults are injected only where a real engine
cannot be made to fail on cue.
"""

from __future__ import annotations

import json
import multiprocessing
import random
import re
from pathlib import Path

import pytest
import redis
from hypothesis import HealthCheck, given, settings as hyp_settings, strategies as st

from cohort.core.errors import CohortError, ErrorCode, TransientFault
from cohort.core.pseudonyms import DEVICE, LEARNER, PseudonymResolver
from cohort.security.secrets import Secrets, load_or_create_secrets, load_secrets, rotate_vault_key
from cohort.settings import Settings
from cohort.state.identity_vault import (IdentityVault, RedisIdentityVault, SqliteIdentityVault, VaultUnavailable,
                                         open_identity_vault)

PSEUDONYM = re.compile(r"^(u|d):[0-9a-f]{32}$")


def _open_spec(spec: tuple[str, str], secrets: Secrets) -> IdentityVault:
    kind, where = spec
    if kind == "sqlite":
        return SqliteIdentityVault(Path(where), secrets)
    return RedisIdentityVault(where, secrets, socket_timeout_s=5.0)


def _raw_sqlite(spec: tuple[str, str]) -> bytes:
    return b"".join(Path(spec[1] + side).read_bytes() for side in ("", "-wal", "-shm") if Path(spec[1] + side).exists())


def _raw_redis(spec: tuple[str, str]) -> bytes:
    """Every key and value of the test's database, as Redis holds them."""
    client = redis.Redis.from_url(spec[1])
    parts: list[bytes] = []
    for key in client.scan_iter(count=1000):
        parts.append(key)
        kind = client.type(key)
        if kind == b"string":
            parts.append(client.get(key) or b"")
        elif kind == b"hash":
            parts.extend(field + value for field, value in client.hgetall(key).items())
        else:
            parts.append(client.dump(key) or b"")
    client.close()
    return b"\0".join(parts)


def _tamper_sqlite(spec: tuple[str, str], tenant: str, pseudonym: str) -> None:
    import sqlite3

    db = sqlite3.connect(spec[1])
    (sealed,) = db.execute("SELECT sealed FROM entries WHERE tenant = ? AND pseudonym = ?", (tenant, pseudonym)).fetchone()
    db.execute("UPDATE entries SET sealed = ? WHERE tenant = ? AND pseudonym = ?",
               (sealed[:-1] + bytes([sealed[-1] ^ 1]), tenant, pseudonym))
    db.commit()
    db.close()


def _tamper_redis(spec: tuple[str, str], tenant: str, pseudonym: str) -> None:
    client = redis.Redis.from_url(spec[1])
    key = f"cohort:vault:{{{tenant}}}:p:{pseudonym}"
    sealed = client.hget(key, "c")
    assert sealed is not None
    client.hset(key, "c", sealed[:-1] + bytes([sealed[-1] ^ 1]))
    client.close()


# name → (spec of a vault for this test, raw bytes of everything it holds, flip a bit of an entry's ciphertext)
IMPLEMENTATIONS = {
    "sqlite": (lambda request, tmp_path: ("sqlite", str(tmp_path / "identity-vault.sqlite")), _raw_sqlite, _tamper_sqlite),
    "redis": (lambda request, tmp_path: ("redis", request.getfixturevalue("redis_url")), _raw_redis, _tamper_redis),
}


@pytest.fixture(params=sorted(IMPLEMENTATIONS))
def backend(request) -> str:
    return request.param


@pytest.fixture
def secrets_file(tmp_path) -> Path:
    path = tmp_path / "secrets.json"
    load_or_create_secrets(Settings(data_dir=tmp_path, secrets_file=path))
    return path


@pytest.fixture
def spec(backend, request, tmp_path) -> tuple[str, str]:
    return IMPLEMENTATIONS[backend][0](request, tmp_path)


@pytest.fixture
def vault(spec, secrets_file):
    opened = _open_spec(spec, load_secrets(secrets_file))
    yield opened
    opened.close()


def _ids(n: int, tag: str = "learner") -> list[str]:
    return [f"{tag}-{i:06d}-{random.randrange(10**9)}" for i in range(n)]


def test_both_backends_are_pseudonym_resolvers(vault):
    resolver: PseudonymResolver = vault
    assert resolver.pseudonyms("t1", LEARNER, []) == {}


def test_the_same_id_keeps_its_pseudonym_across_reopen(spec, secrets_file, vault):
    ids = _ids(50)
    first = vault.pseudonyms("t1", LEARNER, ids)
    assert set(first) == set(ids) and len(set(first.values())) == 50
    assert all(PSEUDONYM.match(p) and p.startswith("u:") for p in first.values())
    assert vault.pseudonyms("t1", LEARNER, ids[:10] + ids[:10]) == {i: first[i] for i in ids[:10]}
    vault.close()
    reopened = _open_spec(spec, load_secrets(secrets_file))
    try:
        assert reopened.pseudonyms("t1", LEARNER, list(reversed(ids))) == first
        assert reopened.count("t1") == 50
    finally:
        reopened.close()


def test_a_batch_of_known_and_new_ids_gets_both(vault):
    known = _ids(20)
    held = vault.pseudonyms("t1", LEARNER, known)
    new = _ids(20, "new")
    mixed = vault.pseudonyms("t1", LEARNER, new + known)
    assert {i: mixed[i] for i in known} == held
    assert set(mixed) == set(new + known) and len(set(mixed.values())) == 40
    assert vault.count("t1") == 40


def test_kinds_are_apart(vault):
    learner = vault.pseudonyms("t1", LEARNER, ["same"])["same"]
    device = vault.pseudonyms("t1", DEVICE, ["same"])["same"]
    assert learner.startswith("u:") and device.startswith("d:") and learner[2:] != device[2:]
    assert vault.reidentify("t1", [learner, device]) == {learner: "same", device: "same"}


def test_tenants_are_isolated(vault):
    one = vault.pseudonyms("t1", LEARNER, ["child-1"])["child-1"]
    two = vault.pseudonyms("t2", LEARNER, ["child-1"])["child-1"]
    assert one != two
    assert vault.reidentify("t2", [one]) == {} and vault.reidentify("t1", [two]) == {}
    assert vault.reidentify("t1", [one, two]) == {one: "child-1"}
    assert not vault.forget_pseudonym("t2", one)
    assert vault.forget("t2", LEARNER, "child-1")
    assert vault.reidentify("t1", [one]) == {one: "child-1"}
    assert vault.count("t1") == 1 and vault.count("t2") == 0


def test_reidentify_returns_only_what_it_holds(vault):
    held = vault.pseudonyms("t1", LEARNER, ["a", "b"])
    unknown = "u:" + "0" * 32
    answer = vault.reidentify("t1", [held["a"], unknown, "not-a-pseudonym", held["b"], held["a"]])
    assert answer == {held["a"]: "a", held["b"]: "b"}
    assert vault.reidentify("t1", []) == {}


def test_forget_unlinks_the_old_pseudonym_and_a_new_one_is_issued(vault):
    held = vault.pseudonyms("t1", LEARNER, ["forget-me", "keep-me"])
    old = held["forget-me"]
    assert vault.forget("t1", LEARNER, "forget-me")
    assert not vault.forget("t1", LEARNER, "forget-me")
    assert vault.reidentify("t1", [old, held["keep-me"]]) == {held["keep-me"]: "keep-me"}
    assert not vault.forget_pseudonym("t1", old)
    assert vault.count("t1") == 1
    new = vault.pseudonyms("t1", LEARNER, ["forget-me"])["forget-me"]
    assert new != old and vault.reidentify("t1", [new]) == {new: "forget-me"}
    assert vault.pseudonyms("t1", LEARNER, ["keep-me"]) == {"keep-me": held["keep-me"]}


def test_forget_by_pseudonym(vault):
    held = vault.pseudonyms("t1", DEVICE, ["device-9"])["device-9"]
    assert vault.forget_pseudonym("t1", held)
    assert not vault.forget_pseudonym("t1", held) and not vault.forget_pseudonym("t1", "garbage")
    assert vault.reidentify("t1", [held]) == {} and vault.count("t1") == 0
    assert vault.pseudonyms("t1", DEVICE, ["device-9"])["device-9"] != held


def test_a_forget_drops_the_pseudonym_the_transform_stage_remembered_of_this_vault(vault):
    """The stage replaces ids it finds in `vault.cache`; a forget through this vault must take them out at
    once (the pseudonymiser of the process is built on the vault's own cache: pipeline/pseudonymisation.py)."""
    for kind, clear in ((LEARNER, "forget-me"), (DEVICE, "tablet-1")):
        vault.cache.remember("t1", kind, vault.pseudonyms("t1", kind, [clear, "keep-me"]))
    vault.cache.remember("t2", LEARNER, vault.pseudonyms("t2", LEARNER, ["forget-me"]))
    assert vault.forget("t1", LEARNER, "forget-me")
    assert set(vault.cache.known("t1")[LEARNER]) == {"keep-me"}
    assert set(vault.cache.known("t2")[LEARNER]) == {"forget-me"}  # another tenant's is another person's
    assert vault.forget_pseudonym("t1", vault.cache.known("t1")[DEVICE]["tablet-1"])
    assert set(vault.cache.known("t1")[DEVICE]) == {"keep-me"}


def test_a_tampered_ciphertext_fails_authentication(backend, spec, vault):
    held = vault.pseudonyms("t1", LEARNER, ["secret-child-name"])["secret-child-name"]
    IMPLEMENTATIONS[backend][2](spec, "t1", held)
    with pytest.raises(CohortError) as caught:
        vault.reidentify("t1", [held])
    assert caught.value.code == ErrorCode.VAULT_INTEGRITY
    assert "secret-child-name" not in str(caught.value)
    assert vault.pseudonyms("t1", LEARNER, ["secret-child-name"]) == {"secret-child-name": held}


def test_rotation_then_rekey_moves_entries_to_the_new_key(spec, secrets_file, vault):
    learners = vault.pseudonyms("t1", LEARNER, _ids(30))
    devices = vault.pseudonyms("t2", DEVICE, _ids(5, "dev"))
    vault.close()
    assert rotate_vault_key(secrets_file) == "v2"
    rotated = _open_spec(spec, load_secrets(secrets_file))
    try:
        later = rotated.pseudonyms("t1", LEARNER, _ids(3, "after"))  # sealed under v2 already
        assert len(rotated.reidentify("t1", list(learners.values()))) == 30  # v1 still readable
        assert rotated.rekey("t1") == 30 and rotated.rekey("t1") == 0
        assert rotated.pseudonyms("t1", LEARNER, list(learners)) == learners  # pseudonyms unchanged
    finally:
        rotated.close()
    data = json.loads(secrets_file.read_text())
    del data["vault_keys"]["v1"]  # v1 retired: t1's entries no longer need it, t2's (not rekeyed) still do
    secrets_file.write_text(json.dumps(data))
    without_v1 = _open_spec(spec, load_secrets(secrets_file))
    try:
        both = learners | later
        assert without_v1.reidentify("t1", list(both.values())) == {p: clear for clear, p in both.items()}
        with pytest.raises(CohortError) as caught:
            without_v1.reidentify("t2", list(devices.values()))
        assert caught.value.code == ErrorCode.CONFIG_INVALID and "v1" in caught.value.message
    finally:
        without_v1.close()


def test_rekey_goes_through_every_entry_in_chunks(spec, secrets_file, vault):
    held = vault.pseudonyms("t1", LEARNER, _ids(2500))
    vault.close()
    rotate_vault_key(secrets_file)
    rotated = _open_spec(spec, load_secrets(secrets_file))
    try:
        assert rotated.rekey("t1") == 2500 and rotated.rekey("t1") == 0 and rotated.rekey("t2") == 0
        assert rotated.reidentify("t1", list(held.values())) == {p: clear for clear, p in held.items()}
    finally:
        rotated.close()


def test_a_vault_refuses_a_secrets_file_with_another_pseudonym_key(spec, tmp_path, vault):
    vault.pseudonyms("t1", LEARNER, ["x"])
    other = load_or_create_secrets(Settings(data_dir=tmp_path / "other"))
    with pytest.raises(CohortError) as caught:
        _open_spec(spec, other).pseudonyms("t1", LEARNER, ["x"])
    assert caught.value.code == ErrorCode.CONFIG_INVALID and "another pseudonym master key" in caught.value.message


def test_no_clear_id_is_stored_anywhere(backend, spec, vault):
    clear = [f"Aarav-Sharma-{i}@school-{i}.example" for i in range(200)] + ["ಕನ್ನಡ-ವಿದ್ಯಾರ್ಥಿ", "डिवाइस-42"]
    learners = vault.pseudonyms("t1", LEARNER, clear)
    devices = vault.pseudonyms("t1", DEVICE, clear[-2:])
    assert vault.reidentify("t1", list(learners.values()) + list(devices.values()))
    vault.forget("t1", LEARNER, clear[0])
    vault.rekey("t1")
    raw = IMPLEMENTATIONS[backend][1](spec)
    assert learners[clear[1]].encode() in raw  # the scan reads what the vault holds
    for clear_id in clear:
        assert clear_id.encode() not in raw
        assert clear_id.encode("utf-16-le") not in raw


@pytest.mark.parametrize("call", [
    lambda v: v.pseudonyms("t1", LEARNER, [1]),
    lambda v: v.pseudonyms("t1", LEARNER, [b"bytes"]),
    lambda v: v.pseudonyms("t1", LEARNER, [None]),
    lambda v: v.pseudonyms("t1", LEARNER, ["x" * 1025]),
    lambda v: v.pseudonyms("t1", LEARNER, [""]),
    lambda v: v.pseudonyms("t1", LEARNER, "a-single-str"),
    lambda v: v.pseudonyms("t1", "teacher", ["x"]),
    lambda v: v.pseudonyms("t1", None, ["x"]),
    lambda v: v.pseudonyms("bad tenant", LEARNER, ["x"]),
    lambda v: v.pseudonyms("", LEARNER, ["x"]),
    lambda v: v.pseudonyms(None, LEARNER, ["x"]),
    lambda v: v.pseudonyms("t" * 200, LEARNER, ["x"]),
    lambda v: v.reidentify("t1", [42]),
    lambda v: v.reidentify("t1", ["u:" + "0" * 2000]),
    lambda v: v.forget("t1", LEARNER, 7),
    lambda v: v.forget("t1", "x", "id"),
    lambda v: v.forget_pseudonym("t1", None),
    lambda v: v.rekey("{t1}"),
    lambda v: v.count("t1\0"),
], ids=["int", "bytes", "none", "too long", "empty", "str not collection", "kind", "kind none", "tenant space",
        "tenant empty", "tenant none", "tenant long", "reidentify int", "reidentify long", "forget int",
        "forget kind", "forget pseudonym none", "rekey tenant braces", "count tenant nul"])
def test_bad_input_is_a_coded_error_and_changes_nothing(vault, call):
    vault.pseudonyms("t1", LEARNER, ["before"])
    with pytest.raises(CohortError) as caught:
        call(vault)
    assert caught.value.code == ErrorCode.VAULT_INPUT
    assert vault.count("t1") == 1


def test_a_1024_character_id_is_accepted(vault):
    long_id = "é" * 1024
    held = vault.pseudonyms("t1", LEARNER, [long_id])
    assert vault.reidentify("t1", list(held.values())) == {held[long_id]: long_id}


@hyp_settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(ids=st.lists(st.text(min_size=1, max_size=60), min_size=1, max_size=30),
       kind=st.sampled_from([LEARNER, DEVICE]), tenant=st.from_regex(r"\A[A-Za-z0-9][A-Za-z0-9_.:-]{0,20}\Z"))
def test_any_ids_round_trip_and_stay_stable(vault, ids, kind, tenant):
    first = vault.pseudonyms(tenant, kind, ids)
    assert set(first) == set(ids) and len(set(first.values())) == len(set(ids))
    assert vault.pseudonyms(tenant, kind, list(reversed(ids))) == first
    assert vault.reidentify(tenant, list(first.values())) == {p: clear for clear, p in first.items()}


def _race(spec: tuple[str, str], secrets_path: str, ids: list[str], start, queue) -> None:
    vault = _open_spec(spec, load_secrets(Path(secrets_path)))
    random.shuffle(ids)
    start.wait(timeout=60)  # both processes ready: they start together
    result = {}
    for start in range(0, len(ids), 250):  # many small calls, so the two processes interleave
        result.update(vault.pseudonyms("t1", LEARNER, ids[start:start + 250]))
    vault.close()
    queue.put(result)


def test_two_processes_racing_on_the_same_new_ids_get_the_same_pseudonyms(spec, secrets_file):
    ids = _ids(3000)
    context = multiprocessing.get_context("spawn")
    queue = context.Queue()
    start = context.Barrier(2)  # not a start time: a spawned process may take seconds to come up on a busy machine
    processes = [context.Process(target=_race, args=(spec, str(secrets_file), list(ids), start, queue))
                 for _ in range(2)]
    for process in processes:
        process.start()
    results = [queue.get(timeout=60) for _ in processes]
    for process in processes:
        process.join(30)
        assert process.exitcode == 0
    assert results[0] == results[1] and set(results[0]) == set(ids)
    vault = _open_spec(spec, load_secrets(secrets_file))
    try:
        assert vault.count("t1") == 3000
        assert vault.pseudonyms("t1", LEARNER, ids) == results[0]
    finally:
        vault.close()


def test_the_footprint_chooses_the_vault(tmp_path, request, secrets_file):
    secrets = load_secrets(secrets_file)
    embedded = open_identity_vault(Settings(data_dir=tmp_path / "data"), secrets)
    assert isinstance(embedded, SqliteIdentityVault) and embedded.path == tmp_path / "data" / "identity-vault.sqlite"
    embedded.close()
    with pytest.raises(CohortError) as caught:
        open_identity_vault(Settings(data_dir=tmp_path, footprint="scaleout", redis_url=""), secrets)
    assert caught.value.code == ErrorCode.CONFIG_INVALID
    scaleout = open_identity_vault(Settings(data_dir=tmp_path, footprint="scaleout",
                                            redis_url=request.getfixturevalue("redis_url")), secrets)
    assert isinstance(scaleout, RedisIdentityVault)
    assert scaleout.pseudonyms("t1", LEARNER, ["x"])
    scaleout.close()


def test_an_infrastructure_fault_is_transient_and_gives_no_partial_mapping(backend, spec, vault, monkeypatch):
    vault.pseudonyms("t1", LEARNER, ["known"])
    if backend == "sqlite":
        import sqlite3

        def broken(*args, **kwargs):
            raise sqlite3.OperationalError("disk I/O error")
        monkeypatch.setattr(vault, "_create", lambda tenant, new: broken())
    else:
        monkeypatch.setattr(vault, "_create", lambda tenant, new: (_ for _ in ()).throw(redis.ConnectionError("gone")))
    with pytest.raises(VaultUnavailable) as caught:
        vault.pseudonyms("t1", LEARNER, ["known", "new"])
    assert isinstance(caught.value, TransientFault) and caught.value.code == ErrorCode.VAULT_UNAVAILABLE
    monkeypatch.undo()
    assert vault.count("t1") == 1
    assert set(vault.pseudonyms("t1", LEARNER, ["known", "new"])) == {"known", "new"}


_JUNK = st.one_of(st.none(), st.integers(), st.floats(), st.binary(max_size=8), st.text(max_size=40),
                  st.text(min_size=1020, max_size=1030), st.sampled_from(["t1", LEARNER, DEVICE, "u:" + "0" * 32]),
                  st.lists(st.one_of(st.text(max_size=1030), st.integers(), st.none(), st.lists(st.integers())),
                           max_size=4))


@hyp_settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(tenant=_JUNK, kind=_JUNK, ids=_JUNK, method=st.sampled_from(
    ["pseudonyms", "reidentify", "forget", "forget_pseudonym", "rekey", "count"]))
def test_any_input_is_answered_or_refused_with_a_coded_error(vault, tenant, kind, ids, method):
    calls = {"pseudonyms": lambda: vault.pseudonyms(tenant, kind, ids), "reidentify": lambda: vault.reidentify(tenant, ids),
             "forget": lambda: vault.forget(tenant, kind, ids), "forget_pseudonym": lambda: vault.forget_pseudonym(tenant, ids),
             "rekey": lambda: vault.rekey(tenant), "count": lambda: vault.count(tenant)}
    try:
        calls[method]()
    except CohortError as exc:
        assert exc.code == ErrorCode.VAULT_INPUT


def test_pseudonym_of_looks_up_without_creating(vault):
    held = vault.pseudonyms("t1", LEARNER, ["known"])["known"]
    assert vault.pseudonym_of("t1", LEARNER, "known") == held
    assert vault.pseudonym_of("t1", LEARNER, "unknown") is None
    assert vault.pseudonym_of("t1", DEVICE, "known") is None  # kinds apart
    assert vault.pseudonym_of("t2", LEARNER, "known") is None  # tenants apart
    assert vault.count("t1") == 1 and vault.count("t2") == 0  # nothing was created by looking
    assert vault.pseudonyms("t1", LEARNER, ["unknown"])["unknown"] == vault.pseudonym_of("t1", LEARNER, "unknown")
    assert vault.forget("t1", LEARNER, "known")
    assert vault.pseudonym_of("t1", LEARNER, "known") is None


@pytest.mark.parametrize("tenant, kind, clear_id", [("", LEARNER, "x"), ("t1", "z", "x"), ("t1", LEARNER, ""),
                                                    ("t1", LEARNER, "x" * 1025), ("t1", LEARNER, 7)])
def test_pseudonym_of_refuses_bad_input_with_a_code(vault, tenant, kind, clear_id):
    with pytest.raises(CohortError) as caught:
        vault.pseudonym_of(tenant, kind, clear_id)
    assert caught.value.code == ErrorCode.VAULT_INPUT


def test_a_process_opened_before_a_rotation_reads_entries_rekeyed_after_it(spec, secrets_file, vault):
    learners = vault.pseudonyms("t1", LEARNER, _ids(10))  # `vault`: a server started before the rotation
    assert rotate_vault_key(secrets_file) == "v2"
    operator = _open_spec(spec, load_secrets(secrets_file))  # `cohort vault rekey`, after the rotation
    try:
        assert operator.rekey("t1") == 10
    finally:
        operator.close()
    assert vault.reidentify("t1", list(learners.values())) == {p: clear for clear, p in learners.items()}


def test_tenants_lists_those_holding_entries(vault):
    assert vault.tenants() == []
    vault.pseudonyms("state-b", LEARNER, _ids(2))
    vault.pseudonyms("state-a", DEVICE, _ids(1, "dev"))
    assert vault.tenants() == ["state-a", "state-b"]
