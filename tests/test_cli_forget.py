"""`cohort forget` as an operator runs it: through a running server (--url), refused on a data directory a
server holds, and on a stopped one (--data-dir), audited as the operator, with the events of a learner that
were still waiting in the log forgotten too.

The offline forget runs the installed `cohort` script (a process of its own, as an operator runs it); the other
calls run the same command in this process (`run`), sparing an interpreter start per call."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import duckdb
import orjson

from cohort.core.pseudonyms import LEARNER
from cohort.security.audit_log import SqliteAuditLog
from cohort.security.secrets import load_secrets
from cohort.state.sqlite_identity_vault import SqliteIdentityVault
from support import SAMPLE_FILE, ServerProcess, cohort_in_process, envelope

COHORT = str(Path(sys.executable).parent / "cohort")
TENANT = "505c7c48ac6dc1edc9b08f21db5a571d"


def cohort(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    clean = {k: v for k, v in os.environ.items() if k not in ("COHORT_URL", "COHORT_KEY")}
    return subprocess.run([COHORT, *args], capture_output=True, text=True, timeout=180,
                          env={**clean, "COLUMNS": "200", **(env or {})})


def run(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    """`cohort ARGS` in this process, with COHORT_URL and COHORT_KEY given only by `env`, as `cohort` gets them."""
    return cohort_in_process(*args, env={"COHORT_URL": None, "COHORT_KEY": None, **(env or {})}, columns=200)


def events_of(learner: str, tag: str, n: int = 4) -> list[dict]:
    sample = [orjson.loads(line) for line in SAMPLE_FILE.read_text().splitlines() if line.strip()]
    users = [e for e in sample if e.get("actor", {}).get("type") == "User" and e["context"]["channel"] == TENANT]
    return [dict(e, mid=f"{tag}-{i}", actor={**e["actor"], "id": learner}) for i, e in enumerate(users[:n])]


def rows_of(data_dir: Path, pseudonym: str) -> int:
    con = duckdb.connect(str(data_dir / "store.duckdb"), read_only=True)
    try:
        return con.execute("SELECT count(*) FROM telemetry WHERE actor_id = ?", [pseudonym]).fetchone()[0]
    finally:
        con.close()


def vault_of(data_dir: Path) -> SqliteIdentityVault:
    return SqliteIdentityVault(data_dir / "identity-vault.sqlite", load_secrets(data_dir / "secrets.json"))


def test_forget_through_the_server_refused_offline_while_it_runs_then_offline(tmp_path):
    data_dir = tmp_path / "data"
    server = ServerProcess(data_dir).start()
    try:
        with server.client(timeout=30) as http:
            for learner in ("cli-A", "cli-B", "cli-C"):
                assert http.post("/v1/telemetry", content=envelope(events_of(learner, learner))).status_code == 200
        server.wait_drained()

        held = run("forget", "--data-dir", str(data_dir), "--tenant", TENANT, "--learner", "cli-C")
        assert held.returncode == 2 and "--url" in held.stderr, held.stderr

        online = run("forget", "--tenant", TENANT, "--learner", "cli-A",
                     env={"COHORT_URL": server.url, "COHORT_KEY": server.key or ""})
        assert online.returncode == 0, online.stderr
        assert "4 telemetry rows" in online.stdout and "cli-A" not in online.stdout
        assert len(online.stdout.strip().splitlines()) == 1

        refused = run("forget", "--url", server.url, "--key", "ck_wrong", "--tenant", TENANT, "--learner", "cli-B")
        assert refused.returncode == 2 and "ERR_AUTH_INVALID" in refused.stderr
        # events of C acknowledged just before the stop, possibly still waiting in the log
        with server.client(timeout=30) as http:
            assert http.post("/v1/telemetry", content=envelope(events_of("cli-C", "cli-C-late"))).status_code == 200
    finally:
        server.stop()

    vault = vault_of(data_dir)
    try:
        pb, pc = vault.pseudonym_of(TENANT, LEARNER, "cli-B"), vault.pseudonym_of(TENANT, LEARNER, "cli-C")
        assert vault.pseudonym_of(TENANT, LEARNER, "cli-A") is None
    finally:
        vault.close()
    assert pb and pc

    offline = cohort("forget", "--data-dir", str(data_dir), "--tenant", TENANT, "--learner", "cli-C", "--compact")
    assert offline.returncode == 0, offline.stderr
    summary, compacted = offline.stdout.strip().splitlines()
    assert "8 telemetry rows" in summary and "8 dedup keys" in summary, offline.stdout
    assert compacted.startswith("store compacted")
    assert rows_of(data_dir, pc) == 0 and rows_of(data_dir, pb) == 4
    store_bytes = b"".join(p.read_bytes() for p in data_dir.glob("store.duckdb*"))
    assert pc.encode() not in store_bytes  # not a byte of C's rows left in the store's files
    vault = vault_of(data_dir)
    try:
        assert vault.reidentify(TENANT, [pb, pc]) == {pb: "cli-B"}
    finally:
        vault.close()
    audit = SqliteAuditLog(data_dir / "audit.sqlite")
    try:
        entries = [e for e in audit.entries(tenant=TENANT) if e.action == "forget"]
        assert [(e.detail.get("via"), e.outcome) for e in entries] == [
            ("api", "requested"), ("api", "ok"), ("cli", "requested"), ("cli", "ok")]
        assert entries[-1].detail["pseudonym"] == pc and entries[-1].actor_subject == "system"
        assert audit.verify().ok
        assert not any("cli-C" in repr(e.as_dict()) or "cli-A" in repr(e.as_dict()) for e in audit.entries(limit=10_000))
    finally:
        audit.close()

    again = run("forget", "--data-dir", str(data_dir), "--tenant", TENANT, "--learner", "cli-C")
    assert again.returncode == 0 and "not held" in again.stdout


def test_forget_offline_refuses_bad_input_and_a_missing_data_dir(tmp_path):
    missing = run("forget", "--data-dir", str(tmp_path / "nothing"), "--tenant", TENANT, "--learner", "x")
    assert missing.returncode == 2 and "no data directory" in missing.stderr
    assert not (tmp_path / "nothing").exists()
    no_tenant = run("forget", "--data-dir", str(tmp_path), "--learner", "x")
    assert no_tenant.returncode == 2 and "--tenant" in no_tenant.stderr
