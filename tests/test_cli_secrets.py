"""`cohort secrets rotate` and `cohort vault rekey` as an operator runs them, beside a live vault (the installed
script for the first call of each; the others in this process, which spares an interpreter start)."""

from __future__ import annotations

import json
import stat

from cohort.security.audit_log import SqliteAuditLog
from cohort.security.secrets import load_or_create_secrets, load_secrets
from cohort.settings import Settings
from cohort.state.identity_vault import open_identity_vault
from support import cohort_in_process as run
from test_cli_keys import cohort


def test_rotate_then_rekey_moves_every_entry_and_a_running_vault_still_reads_them(tmp_path):
    settings = Settings(data_dir=tmp_path)
    running = open_identity_vault(settings, load_or_create_secrets(settings))  # a server started before
    try:
        a = running.pseudonyms("state-a", "learner", ["learner-1", "learner-2"])
        b = running.pseudonyms("state-b", "device", ["device-1"])

        rotated = cohort("secrets", "rotate", "--data-dir", str(tmp_path))
        assert rotated.returncode == 0, rotated.stderr
        assert "vault key v2 is now current" in rotated.stdout
        assert stat.S_IMODE((tmp_path / "secrets.json").stat().st_mode) == 0o600
        assert load_secrets(tmp_path / "secrets.json").vault_current == "v2"

        rekeyed = cohort("vault", "rekey", "--data-dir", str(tmp_path))
        assert rekeyed.returncode == 0, rekeyed.stderr
        assert "state-a: 2 entries" in rekeyed.stdout and "state-b: 1 entries" in rekeyed.stdout
        assert run("vault", "rekey", "--data-dir", str(tmp_path)).stdout.endswith("rekeyed 0 entries of 2 tenants\n")

        # the server opened before the rotation reads entries now sealed under v2 (it reads the file again)
        assert running.reidentify("state-a", list(a.values())) == {p: c for c, p in a.items()}
        assert running.reidentify("state-b", list(b.values())) == {p: c for c, p in b.items()}
    finally:
        running.close()

    data = json.loads((tmp_path / "secrets.json").read_text())
    del data["vault_keys"]["v1"]  # every entry is under v2 now: v1 may be retired
    (tmp_path / "secrets.json").write_text(json.dumps(data))
    after = open_identity_vault(settings, load_secrets(tmp_path / "secrets.json"))
    try:
        assert after.reidentify("state-a", list(a.values())) == {p: c for c, p in a.items()}
    finally:
        after.close()

    log = SqliteAuditLog(tmp_path / "audit.sqlite")
    try:
        assert [e.action for e in log.entries()] == ["secrets.rotate", "vault.rekey", "vault.rekey"]
        assert log.verify().ok
    finally:
        log.close()


def test_rotate_without_a_secrets_file_is_one_coded_line(tmp_path):
    result = run("secrets", "rotate", "--data-dir", str(tmp_path / "nowhere"))
    assert result.returncode == 2 and result.stderr.startswith("error: ERR_")
