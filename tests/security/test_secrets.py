"""The secrets file: made once (embedded) or required (scale-out), owner-only, checked, rotatable."""

from __future__ import annotations

import base64
import json
import multiprocessing
import os
import stat
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings as hyp_settings, strategies as st

from cohort.core.errors import CohortError, ErrorCode
from cohort.security.secrets import (KEY_BYTES, Secrets, load_or_create_secrets, load_secrets, rotate_vault_key,
                                     secrets_path)
from cohort.settings import Settings


def _settings(tmp_path: Path, **overrides) -> Settings:
    return Settings(data_dir=tmp_path / "data", **overrides)


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def _write(path: Path, content: object, mode: int = 0o600) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(content if isinstance(content, str) else json.dumps(content))
    path.chmod(mode)
    return path


def _valid() -> dict:
    key = base64.b64encode(bytes(range(32))).decode()
    return {"format": "cohort-secrets", "version": 1, "pseudonym_master_key": key,
            "vault_keys": {"v1": key}, "vault_current": "v1"}


def test_embedded_first_start_makes_an_owner_only_file_and_later_starts_read_it(tmp_path):
    settings = _settings(tmp_path)
    settings.data_dir.mkdir()
    (settings.data_dir / "store.duckdb").write_bytes(b"keep me")
    made = load_or_create_secrets(settings)
    path = settings.data_dir / "secrets.json"
    assert _mode(path) == 0o600
    assert sorted(p.name for p in settings.data_dir.iterdir()) == ["secrets.json", "store.duckdb"]
    assert (settings.data_dir / "store.duckdb").read_bytes() == b"keep me"
    again = load_or_create_secrets(settings)
    assert again.key_fingerprint() == made.key_fingerprint()
    assert again.vault_key("t1", "v1") == made.vault_key("t1", "v1")
    assert again.vault_current == "v1"


def test_there_is_no_built_in_key_every_deployment_makes_its_own(tmp_path):
    first = load_or_create_secrets(_settings(tmp_path / "a"))
    second = load_or_create_secrets(_settings(tmp_path / "b"))
    assert first.key_fingerprint() != second.key_fingerprint()
    assert first.blind_index_key("t") != second.blind_index_key("t")
    assert first.vault_key("t", "v1") != second.vault_key("t", "v1")


def test_the_secrets_file_setting_names_the_file(tmp_path):
    settings = _settings(tmp_path, secrets_file=tmp_path / "keys" / "cohort-secrets.json")
    load_or_create_secrets(settings)
    assert secrets_path(settings) == tmp_path / "keys" / "cohort-secrets.json"
    assert _mode(tmp_path / "keys" / "cohort-secrets.json") == 0o600
    assert not settings.data_dir.exists()


def test_scale_out_never_makes_the_file_every_process_needs_the_same_one(tmp_path):
    settings = _settings(tmp_path, footprint="scaleout")
    with pytest.raises(CohortError) as caught:
        load_or_create_secrets(settings)
    assert caught.value.code == ErrorCode.CONFIG_INVALID
    assert "every process needs the same file" in caught.value.message
    assert not (settings.data_dir / "secrets.json").exists()
    _write(settings.data_dir / "secrets.json", _valid())
    assert load_or_create_secrets(settings).vault_current == "v1"


@pytest.mark.parametrize("mode", [0o640, 0o604, 0o644, 0o660])
def test_a_file_others_may_read_is_refused(tmp_path, mode):
    path = _write(tmp_path / "secrets.json", _valid(), mode)
    with pytest.raises(CohortError) as caught:
        load_secrets(path)
    assert caught.value.code == ErrorCode.CONFIG_INVALID
    assert f"chmod 600 {path}" in caught.value.message


def test_a_symlink_or_a_directory_is_refused(tmp_path):
    target = _write(tmp_path / "real.json", _valid())
    (tmp_path / "link.json").symlink_to(target)
    (tmp_path / "dir.json").mkdir(mode=0o700)
    for path in (tmp_path / "link.json", tmp_path / "dir.json"):
        with pytest.raises(CohortError) as caught:
            load_secrets(path)
        assert caught.value.code == ErrorCode.CONFIG_INVALID


def _short_key() -> dict:
    data = _valid()
    data["vault_keys"]["v1"] = base64.b64encode(b"x" * 31).decode()
    return data


@pytest.mark.parametrize("content", [
    "not json", "[]", "null", json.dumps({**_valid(), "format": "other"}), json.dumps({**_valid(), "version": 2}),
    json.dumps({**_valid(), "pseudonym_master_key": "!!!not base64!!!"}),
    json.dumps({**_valid(), "pseudonym_master_key": base64.b64encode(b"k" * 33).decode()}),
    json.dumps({**_valid(), "pseudonym_master_key": 12}), json.dumps(_short_key()),
    json.dumps({**_valid(), "vault_current": "v2"}), json.dumps({**_valid(), "vault_keys": {}}),
    json.dumps({**_valid(), "vault_keys": {"k1": _valid()["pseudonym_master_key"]}, "vault_current": "k1"}),
], ids=["text", "array", "null", "format", "version", "base64", "long key", "not str", "short vault key",
        "current missing", "no vault keys", "bad key id"])
def test_a_malformed_file_is_refused_with_a_coded_error(tmp_path, content):
    with pytest.raises(CohortError) as caught:
        load_secrets(_write(tmp_path / "secrets.json", content))
    assert caught.value.code == ErrorCode.CONFIG_INVALID
    assert "AAECAwQF" not in caught.value.message  # never a key in a message


@hyp_settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.one_of(st.binary(max_size=300), st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=50),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.sampled_from(
        ["format", "version", "vault_keys", "vault_current", "pseudonym_master_key", "v1"]), inner, max_size=5),
    max_leaves=12).map(lambda value: json.dumps(value).encode())))
def test_any_file_content_loads_or_is_refused_with_a_coded_error(tmp_path, content):
    path = tmp_path / "secrets.json"
    path.write_bytes(content)
    path.chmod(0o600)
    try:
        load_secrets(path)
    except CohortError as exc:
        assert exc.code == ErrorCode.CONFIG_INVALID


def test_derived_keys_differ_per_tenant_purpose_and_key_id(tmp_path):
    path = tmp_path / "secrets.json"
    secrets = load_or_create_secrets(_settings(tmp_path, secrets_file=path))
    rotate_vault_key(path)
    secrets = load_secrets(path)
    keys = [secrets.blind_index_key("t1"), secrets.blind_index_key("t2"), secrets.vault_key("t1", "v1"),
            secrets.vault_key("t2", "v1"), secrets.vault_key("t1", "v2"), secrets.vault_key("t2", "v2")]
    assert len(set(keys)) == len(keys)
    assert all(len(key) == KEY_BYTES for key in keys)
    assert secrets.blind_index_key("t1") == secrets.blind_index_key("t1")


def test_rotation_adds_a_current_key_and_keeps_the_old_ones_readable(tmp_path):
    path = tmp_path / "secrets.json"
    before = load_or_create_secrets(_settings(tmp_path, secrets_file=path))
    assert rotate_vault_key(path) == "v2"
    assert rotate_vault_key(path) == "v3"
    after = load_secrets(path)
    assert after.vault_current == "v3" and after.vault_key_ids == ("v1", "v2", "v3")
    assert after.vault_key("t", "v1") == before.vault_key("t", "v1")
    assert after.blind_index_key("t") == before.blind_index_key("t")  # pseudonyms stay the same
    assert after.key_fingerprint() == before.key_fingerprint()
    assert _mode(path) == 0o600
    assert sorted(p.name for p in tmp_path.iterdir()) == ["secrets.json"]


def test_an_unknown_key_id_is_a_coded_error(tmp_path):
    secrets = load_or_create_secrets(_settings(tmp_path))
    with pytest.raises(CohortError) as caught:
        secrets.vault_key("t", "v9")
    assert caught.value.code == ErrorCode.CONFIG_INVALID


def test_keys_never_show_in_repr(tmp_path):
    path = tmp_path / "secrets.json"
    secrets = load_or_create_secrets(_settings(tmp_path, secrets_file=path))
    data = json.loads(path.read_text())
    text = repr(secrets) + str(secrets)
    assert data["pseudonym_master_key"] not in text and data["vault_keys"]["v1"] not in text
    assert "v1" in text


def test_keys_of_the_wrong_length_are_refused_in_code_too():
    with pytest.raises(CohortError) as caught:
        Secrets(b"k" * 16, {"v1": b"k" * 32}, "v1")
    assert caught.value.code == ErrorCode.CONFIG_INVALID


def _start_and_report(data_dir: str, queue) -> None:
    queue.put(load_or_create_secrets(Settings(data_dir=Path(data_dir))).key_fingerprint())


def test_processes_starting_at_once_end_with_one_file(tmp_path):
    context = multiprocessing.get_context("fork")
    queue = context.Queue()
    processes = [context.Process(target=_start_and_report, args=(str(tmp_path / "data"), queue)) for _ in range(4)]
    for process in processes:
        process.start()
    for process in processes:
        process.join(30)
        assert process.exitcode == 0
    fingerprints = {queue.get(timeout=5) for _ in processes}
    assert fingerprints == {load_secrets(tmp_path / "data" / "secrets.json").key_fingerprint()}
    assert os.listdir(tmp_path / "data") == ["secrets.json"]


def test_derived_keys_stay_bounded_in_memory_whatever_tenants_are_named(tmp_path):
    secrets = load_or_create_secrets(_settings(tmp_path))
    first = secrets.blind_index_key("t-0")
    for i in range(5000):
        secrets.blind_index_key(f"t-{i}")
    assert len(secrets._derived) <= 4096
    assert secrets.blind_index_key("t-0") == first
