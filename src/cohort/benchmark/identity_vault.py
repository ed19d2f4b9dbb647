"""What a pseudonym costs: µs per id of `IdentityVault.pseudonyms` for new and known ids, on both vaults.

The transform stage asks the vault once per batch and kind with the batch's distinct ids, so the figure
that matters is time per id in batches of the pipeline's size. Measured here: batches of `--batch` new
ids (each an entry sealed and written), then the same batches again (all known: the hot path of a
steady population), wall and CPU of this process; the storage each entry takes (SQLite file bytes,
Redis memory). Redis is a server of its own on 127.0.0.1, run as the scale-out footprint runs it (AOF,
appendfsync always).

    python -m cohort.benchmark.identity_vault --ids 50000 --batch 2000
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path
from typing import Any

import redis

from cohort.benchmark.redis_process import RedisProcess
from cohort.core.pseudonyms import LEARNER
from cohort.security.secrets import create_secrets
from cohort.state.identity_vault import IdentityVault, RedisIdentityVault, SqliteIdentityVault


def _timed(vault: IdentityVault, batches: list[list[str]]) -> dict[str, float]:
    wall, cpu = time.perf_counter(), time.process_time()
    for batch in batches:
        vault.pseudonyms("bench-tenant", LEARNER, batch)
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    n = sum(map(len, batches))
    return {"us_per_id_wall": round(wall / n * 1e6, 2), "us_per_id_cpu": round(cpu / n * 1e6, 2)}


def measure(vault: IdentityVault, n_ids: int, batch: int) -> dict[str, Any]:
    ids = [f"0{i:07d}-learner-{i * 7919 % 100003}" for i in range(n_ids)]
    batches = [ids[start:start + batch] for start in range(0, n_ids, batch)]
    return {"new": _timed(vault, batches), "known": _timed(vault, batches), "known_again": _timed(vault, batches)}


def run(n_ids: int, batch: int) -> dict[str, Any]:
    secrets = create_secrets()
    results: dict[str, Any] = {"ids": n_ids, "batch": batch}
    with tempfile.TemporaryDirectory(prefix="cohort-vault-bench-") as tmp:
        path = Path(tmp) / "identity-vault.sqlite"
        vault = SqliteIdentityVault(path, secrets)
        results["sqlite"] = measure(vault, n_ids, batch)
        vault._db().execute("PRAGMA wal_checkpoint(TRUNCATE)")
        vault.close()
        results["sqlite"]["file_bytes_per_entry"] = round(path.stat().st_size / n_ids, 1)
        server = RedisProcess(Path(tmp) / "redis").start()
        try:
            used_before = redis.Redis.from_url(server.url).info("memory")["used_memory"]
            remote = RedisIdentityVault(server.url, secrets)
            results["redis"] = measure(remote, n_ids, batch)
            remote.close()
            used_after = redis.Redis.from_url(server.url).info("memory")["used_memory"]
            results["redis"]["memory_bytes_per_entry"] = round((used_after - used_before) / n_ids, 1)
        finally:
            server.stop()
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ids", type=int, default=50_000)
    parser.add_argument("--batch", type=int, default=2000, help="distinct ids per call (one batch of one kind)")
    parser.add_argument("--output", type=Path, help="also write the result as JSON here")
    args = parser.parse_args()
    result = run(args.ids, args.batch)
    text = json.dumps(result, indent=2)
    print(text)
    if args.output:
        args.output.write_text(text + "\n")


if __name__ == "__main__":
    main()
