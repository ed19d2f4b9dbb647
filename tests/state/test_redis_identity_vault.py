"""The scale-out identity vault beyond the contract suite: its keys, its round trips, and Redis going away
or restarting under it."""

from __future__ import annotations

import pytest
import redis
from engines import RedisServer
from redis.connection import Connection

from cohort.benchmark.server_process import free_port
from cohort.core.errors import ErrorCode, TerminalFault, TransientFault
from cohort.core.pseudonyms import DEVICE, LEARNER
from cohort.security.secrets import Secrets, load_or_create_secrets
from cohort.settings import Settings
from cohort.state.identity_vault import RedisIdentityVault, VaultMisconfigured, VaultUnavailable


@pytest.fixture
def secrets(tmp_path) -> Secrets:
    return load_or_create_secrets(Settings(data_dir=tmp_path / "keys"))


@pytest.fixture
def own_redis(tmp_path):
    """A server of this test's own, to stop and restart."""
    server = RedisServer(tmp_path / "own-redis").start()
    yield server
    server.stop(kill=True)


def test_every_key_is_under_the_vault_prefix_with_the_tenant_as_hash_tag(redis_url, secrets):
    vault = RedisIdentityVault(redis_url, secrets)
    vault.pseudonyms("state-ka", LEARNER, ["a", "b"])
    vault.pseudonyms("state-up", DEVICE, ["a"])
    keys = redis.Redis.from_url(redis_url).keys()
    assert all(key.startswith(b"cohort:vault:") for key in keys)
    assert sum(key.startswith(b"cohort:vault:{state-ka}:i:") for key in keys) == 2
    assert sum(key.startswith(b"cohort:vault:{state-ka}:p:u:") for key in keys) == 2
    assert sum(key.startswith(b"cohort:vault:{state-up}:p:d:") for key in keys) == 1
    assert len(keys) == 2 + 2 + 1 + 1 + 2 + 1  # indexes, entries, counts, meta
    vault.close()


def _count_round_trips(monkeypatch) -> list[int]:
    """How many times the client writes to Redis (a spy: every write still goes to the real server)."""
    sent = [0]
    real = Connection.send_packed_command

    def spy(self, command, check_health=True):
        sent[0] += 1
        return real(self, command, check_health)
    monkeypatch.setattr(Connection, "send_packed_command", spy)
    return sent


@pytest.mark.parametrize("n", [1, 100, 5000, 25_000])
def test_one_round_trip_for_known_ids_and_two_with_new_ones(redis_url, secrets, monkeypatch, n):
    vault = RedisIdentityVault(redis_url, secrets)
    vault.count("t1")  # the first call also checks the vault's keys
    sent = _count_round_trips(monkeypatch)
    ids = [f"learner-{i}" for i in range(n)]
    held = vault.pseudonyms("t1", LEARNER, ids)
    assert sent[0] == 2 and len(held) == n
    assert vault.pseudonyms("t1", LEARNER, ids) == held and sent[0] == 3
    assert vault.count("t1") == n
    vault.close()


def test_redis_away_is_a_transient_fault_never_a_partial_mapping(secrets):
    vault = RedisIdentityVault(f"redis://127.0.0.1:{free_port()}/0", secrets, socket_timeout_s=0.5)
    for call in (lambda: vault.pseudonyms("t1", LEARNER, ["a"]), lambda: vault.reidentify("t1", ["u:" + "0" * 32]),
                 lambda: vault.forget("t1", LEARNER, "a"), lambda: vault.count("t1"), lambda: vault.rekey("t1")):
        with pytest.raises(VaultUnavailable) as caught:
            call()
        assert isinstance(caught.value, TransientFault) and caught.value.code == ErrorCode.VAULT_UNAVAILABLE
    vault.close()


@pytest.mark.parametrize("kill", [False, True], ids=["shutdown", "kill-9"])
def test_entries_survive_a_redis_restart_and_calls_fail_only_while_it_is_away(own_redis, secrets, kill):
    vault = RedisIdentityVault(own_redis.url, secrets, socket_timeout_s=1.0)
    held = vault.pseudonyms("t1", LEARNER, [f"c-{i}" for i in range(500)])
    own_redis.stop(kill=kill)
    with pytest.raises(VaultUnavailable):
        vault.pseudonyms("t1", LEARNER, ["c-1", "new"])
    own_redis.start()
    assert vault.pseudonyms("t1", LEARNER, list(held)) == held  # appendfsync always: every acked entry kept
    assert vault.reidentify("t1", [held["c-3"]]) == {held["c-3"]: "c-3"}
    assert vault.count("t1") == 500
    vault.close()


def test_a_foreign_value_under_the_meta_key_is_refused(redis_url, secrets):
    redis.Redis.from_url(redis_url).set("cohort:vault:#meta", "not ours")
    vault = RedisIdentityVault(redis_url, secrets)
    with pytest.raises(VaultMisconfigured) as caught:
        vault.pseudonyms("t1", LEARNER, ["a"])
    assert isinstance(caught.value, TerminalFault) and caught.value.code == ErrorCode.CONFIG_INVALID
    vault.close()


def test_a_redis_that_may_evict_the_vaults_keys_is_refused(own_redis, secrets):
    client = redis.Redis.from_url(own_redis.url)
    client.config_set("maxmemory-policy", "allkeys-lru")
    vault = RedisIdentityVault(own_redis.url, secrets)
    with pytest.raises(VaultMisconfigured) as caught:
        vault.pseudonyms("t1", LEARNER, ["a"])
    assert "allkeys-lru" in caught.value.message
    client.config_set("maxmemory-policy", "volatile-lru")  # evicts only keys with an expiry: not the vault's
    assert vault.pseudonyms("t1", LEARNER, ["a"])
    vault.close()
    client.close()
