"""Which disk engine should hold the embedded dedup index: measured, not guessed.

For each candidate engine this inserts N keys shaped like real Sunbird mids the way the pipeline
does (per 5,000-event batch: one `seen` lookup of the batch, then one durable `add` of the new keys,
each with its event time), and reports per event: lookup and insert cost, lookup cost for known keys
(hits) and new keys (misses), the cost of an fsync per batch, expiry of the oldest keys, peak RSS
(anonymous memory, and file pages mapped) and the size on disk, at 1 M, 10 M and 50 M keys.

Every candidate keeps the same layout, the one an exact period needs: key → first time, plus an
index by time so that keys older than the period can be found and deleted without a scan. Each runs
in its own process (so peak RSS is its own), one after the other (the machine has 2 shared cores),
and stops at the size it reached when its time runs out. Compare candidates by the ratios printed at
the end, which come from the same run. Only rocksdict is a dependency of Cohort: `.venv/bin/pip
install lmdb` to measure LMDB (a candidate not installed is reported and skipped).

    .venv/bin/python -m cohort.benchmark.dedup_index --keys 50000000 \\
        --output bench/results/dedup-index-{engine}.json            # all candidates, one file each
    .venv/bin/python -m cohort.benchmark.dedup_index --engine rocksdb --keys 1000000 \\
        --output bench/results/dedup-index-rocksdb.json             # one candidate, quick
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable, Protocol, Sequence

BATCH = 5000
DUPLICATE_SHARE = 0.005  # share of each batch that repeats a key already added (a retried event)
EVENTS_PER_SECOND = 25_000  # the simulated event clock: what the embedded footprint sustains
CHECKPOINTS = (1_000_000, 10_000_000, 50_000_000)
PROBE_BATCHES = 4  # batches of 5,000 per probe at a checkpoint
EXPIRE_STEP = 5000  # keys deleted per expiry call (the bounded work done beside one add)
ENGINES = ("rocksdb", "lmdb", "sqlite", "duckdb", "rocksdb-index")


def _uuid(rng: random.Random) -> str:
    h = f"{rng.getrandbits(128):032x}"
    return f"{h[:8]}-{h[8:12]}-4{h[13:16]}-{h[16:20]}-{h[20:]}"


def mid_batch(rng: random.Random, size: int, at_ms: int) -> list[str]:
    """Mids in the mix of the real DIKSHA sample (tests/fixtures): 67 % plain UUIDs, 18 % `EID:md5`,
    9 % `LP.<ms>.<uuid>` (portal), 6 % `<ms>.<uuid>` (client time: up to a day behind the server's)."""
    keys = []
    for _ in range(size):
        r = rng.random()
        if r < 0.67:
            keys.append(_uuid(rng))
        elif r < 0.85:
            keys.append(f"{rng.choice(('INTERACT', 'IMPRESSION', 'START', 'END', 'LOG'))}:{rng.getrandbits(128):032x}")
        elif r < 0.94:
            keys.append(f"LP.{at_ms - rng.randrange(86_400_000)}.{_uuid(rng)}")
        else:
            keys.append(f"{at_ms - rng.randrange(86_400_000)}.{_uuid(rng)}")
    return keys


class Candidate(Protocol):
    """One engine holding key → first time (ms) plus a by-time index, exactly as the index needs."""

    def lookup(self, keys: Sequence[bytes], now_ms: int, period_ms: int) -> set[bytes]: ...

    def add(self, keys: Sequence[bytes], at_ms: int, now_ms: int, period_ms: int) -> None: ...

    def expire(self, cutoff_ms: int, limit: int) -> int: ...

    def set_sync(self, sync: bool) -> None: ...

    def close(self) -> None: ...


def _ts(ms: int) -> bytes:
    return ms.to_bytes(8, "big")


class RocksDbCandidate:
    """rocksdict: keys in the default column family (bloom filter 10 bits/key), by-time in another;
    block cache and memtables bounded together by one cache (write buffer manager)."""

    def __init__(self, path: Path, cache_bytes: int):
        import rocksdict as r

        self.r = r
        cache = r.Cache(cache_bytes)
        table = r.BlockBasedOptions()
        table.set_block_cache(cache)
        table.set_bloom_filter(10, False)
        table.set_cache_index_and_filter_blocks(True)
        table.set_pin_l0_filter_and_index_blocks_in_cache(True)
        opts = r.Options(raw_mode=True)
        opts.create_if_missing(True)
        opts.create_missing_column_families(True)
        opts.set_block_based_table_factory(table)
        opts.set_write_buffer_size(min(64 << 20, cache_bytes // 4))
        opts.set_max_write_buffer_number(2)
        opts.set_write_buffer_manager(r.WriteBufferManager.new_write_buffer_manager_with_cache(cache_bytes // 2, False, cache))
        opts.set_max_background_jobs(2)
        opts.set_compression_type(r.DBCompressionType.lz4())
        opts.set_level_compaction_dynamic_level_bytes(True)
        opts.set_max_open_files(512)
        self.db = r.Rdict(str(path), opts, column_families={"by_time": opts})
        self.by_time = self.db.get_column_family("by_time")
        self.by_time_cf = self.db.get_column_family_handle("by_time")
        self.write_opts = r.WriteOptions()
        self.write_opts.sync = True
        self.lower = b""

    def set_sync(self, sync: bool) -> None:
        self.write_opts.sync = sync

    def lookup(self, keys, now_ms, period_ms):
        cutoff = now_ms - period_ms
        return {k for k, v in zip(keys, self.db.get(list(keys)) or []) if v is not None and int.from_bytes(v, "big") > cutoff}

    def add(self, keys, at_ms, now_ms, period_ms):
        cutoff = now_ms - period_ms
        batch = self.r.WriteBatch(raw_mode=True)
        ts = _ts(at_ms)
        for k, v in zip(keys, self.db.get(list(keys)) or []):
            if v is not None:
                if int.from_bytes(v, "big") > cutoff:
                    continue
                batch.delete(v + k, self.by_time_cf)
            batch.put(k, ts)
            batch.put(ts + k, b"", self.by_time_cf)
        self.db.write(batch, self.write_opts)

    def expire(self, cutoff_ms, limit):
        it = self.by_time.iter()
        it.seek(self.lower)
        batch = self.r.WriteBatch(raw_mode=True)
        n, last = 0, None
        while it.valid() and n < limit:
            key = it.key()
            if int.from_bytes(key[:8], "big") > cutoff_ms:
                break
            batch.delete(key[8:])
            last = key
            n += 1
            it.next()
        del it
        if last is not None:
            batch.delete_range(self.lower, last + b"\x00", self.by_time_cf)
            self.db.write(batch, self.write_opts)
            self.lower = last + b"\x00"
        return n

    def close(self):
        self.db.close()


class LmdbCandidate:
    """lmdb: two named B+trees in one memory-mapped file; sync on commit. It has no cache setting: the
    OS page cache is its cache, so file pages it touches count in RSS (RssFile)."""

    def __init__(self, path: Path, cache_bytes: int):
        import lmdb

        path.mkdir(parents=True, exist_ok=True)
        # Committed without sync, then synced explicitly when asked: the same fsync per commit as sync=True.
        self.env = lmdb.open(str(path), map_size=1 << 40, max_dbs=4, sync=False, metasync=False, readahead=False)
        self.keys = self.env.open_db(b"keys")
        self.by_time = self.env.open_db(b"by_time")
        self.sync = True

    def set_sync(self, sync):
        self.sync = sync

    def lookup(self, keys, now_ms, period_ms):
        cutoff = now_ms - period_ms
        with self.env.begin(db=self.keys) as txn:
            cursor = txn.cursor()
            return {k for k, v in cursor.getmulti(keys) if int.from_bytes(v, "big") > cutoff}

    def add(self, keys, at_ms, now_ms, period_ms):
        cutoff = now_ms - period_ms
        ts = _ts(at_ms)
        with self.env.begin(write=True) as txn:
            for k in keys:
                old = txn.get(k, db=self.keys)
                if old is not None:
                    if int.from_bytes(old, "big") > cutoff:
                        continue
                    txn.delete(old + k, db=self.by_time)
                txn.put(k, ts, db=self.keys)
                txn.put(ts + k, b"", db=self.by_time)
        if self.sync:
            self.env.sync(True)

    def expire(self, cutoff_ms, limit):
        n = 0
        with self.env.begin(write=True) as txn:
            cursor = txn.cursor(db=self.by_time)
            if not cursor.first():
                return 0
            while n < limit:
                key = cursor.key()
                if int.from_bytes(key[:8], "big") > cutoff_ms:
                    break
                txn.delete(key[8:], db=self.keys)
                n += 1
                if not cursor.delete():  # moves to the next entry
                    break
        if self.sync:
            self.env.sync(True)
        return n

    def close(self):
        self.env.close()


class SqliteCandidate:
    """stdlib sqlite3: a WITHOUT ROWID table keyed by the key, an index on time; WAL, synchronous=FULL
    per commit (NORMAL when not syncing), page cache bounded by cache_size, no mmap."""

    def __init__(self, path: Path, cache_bytes: int):
        path.mkdir(parents=True, exist_ok=True)
        self.con = sqlite3.connect(path / "dedup.sqlite", isolation_level=None, check_same_thread=False)
        for pragma in ("journal_mode=WAL", "synchronous=FULL", f"cache_size=-{cache_bytes // 1024}",
                       "temp_store=MEMORY", "mmap_size=0", "wal_autocheckpoint=4000"):
            self.con.execute(f"PRAGMA {pragma}")
        self.con.execute("CREATE TABLE IF NOT EXISTS keys (key BLOB PRIMARY KEY, ts INTEGER NOT NULL) WITHOUT ROWID")
        self.con.execute("CREATE INDEX IF NOT EXISTS keys_by_ts ON keys (ts)")

    def set_sync(self, sync):
        self.con.execute(f"PRAGMA synchronous={'FULL' if sync else 'NORMAL'}")

    def lookup(self, keys, now_ms, period_ms):
        cutoff = now_ms - period_ms
        found: set[bytes] = set()
        keys = list(keys)
        for i in range(0, len(keys), 10_000):
            chunk = keys[i:i + 10_000]
            sql = f"SELECT key FROM keys WHERE ts > ? AND key IN ({','.join('?' * len(chunk))})"
            found.update(row[0] for row in self.con.execute(sql, [cutoff, *chunk]))
        return found

    def add(self, keys, at_ms, now_ms, period_ms):
        cutoff = now_ms - period_ms
        self.con.execute("BEGIN")
        self.con.executemany(
            "INSERT INTO keys (key, ts) VALUES (?, ?) ON CONFLICT (key) DO UPDATE SET ts = excluded.ts WHERE ts <= ?",
            [(k, at_ms, cutoff) for k in keys])
        self.con.execute("COMMIT")

    def expire(self, cutoff_ms, limit):
        self.con.execute("BEGIN")
        n = self.con.execute("DELETE FROM keys WHERE key IN (SELECT key FROM keys WHERE ts <= ? ORDER BY ts LIMIT ?)",
                             (cutoff_ms, limit)).rowcount
        self.con.execute("COMMIT")
        return n

    def close(self):
        self.con.close()


class DuckDbCandidate:
    """duckdb: a table with a PRIMARY KEY (an ART index), batches joined as Arrow; memory_limit bounds
    its buffer manager. Inserts that meet a key already held do nothing (ON CONFLICT DO NOTHING)."""

    def __init__(self, path: Path, cache_bytes: int):
        import duckdb
        import pyarrow as pa

        self.pa = pa
        path.mkdir(parents=True, exist_ok=True)
        self.con = duckdb.connect(str(path / "dedup.duckdb"),
                                  config={"memory_limit": f"{cache_bytes // 2**20}MB", "threads": 2})
        self.con.execute("CREATE TABLE IF NOT EXISTS keys (key BLOB PRIMARY KEY, ts BIGINT NOT NULL)")

    def set_sync(self, sync):
        pass  # a DuckDB commit always syncs its WAL

    def lookup(self, keys, now_ms, period_ms):
        batch = self.pa.table({"key": self.pa.array(list(keys), self.pa.binary())})  # noqa: F841 (scanned by name)
        rows = self.con.execute("SELECT k.key FROM keys k JOIN batch b ON k.key = b.key WHERE k.ts > ?",
                                [now_ms - period_ms]).fetchall()
        return {row[0] for row in rows}

    def add(self, keys, at_ms, now_ms, period_ms):
        batch = self.pa.table({"key": self.pa.array(list(keys), self.pa.binary())})  # noqa: F841
        self.con.execute("INSERT INTO keys SELECT key, ? FROM batch ON CONFLICT DO NOTHING", [at_ms])

    def expire(self, cutoff_ms, limit):
        row = self.con.execute("DELETE FROM keys WHERE ts <= ?", [cutoff_ms]).fetchone()
        return int(row[0]) if row else 0

    def close(self):
        self.con.close()


class DiskDedupIndexCandidate:
    """Cohort's own index (cohort.state.rocksdb_dedup) through its DedupState calls, on the simulated
    clock: what the pipeline will pay, str keys and its bounded expiry inside `add` included."""

    def __init__(self, path: Path, cache_bytes: int):
        from cohort.state.rocksdb_dedup import DiskDedupIndex

        self.now_s = 0.0
        self.index = DiskDedupIndex(path, 7 * 86_400, cache_bytes=cache_bytes, clock=lambda: self.now_s)
        self.period_ms = 7 * 86_400_000

    def set_sync(self, sync):
        self.index._write.sync = sync

    def lookup(self, keys, now_ms, period_ms):
        self.now_s = now_ms / 1000
        return {k.encode() for k in self.index.seen([k.decode() for k in keys])}

    def add(self, keys, at_ms, now_ms, period_ms):
        self.now_s = now_ms / 1000
        self.index.add([k.decode() for k in keys], at_ms)

    def expire(self, cutoff_ms, limit):
        self.now_s = (cutoff_ms + 1 + self.period_ms) / 1000
        return self.index.expire(limit)

    def close(self):
        self.index.close()


CANDIDATES: dict[str, Callable[[Path, int], Candidate]] = {
    "rocksdb": RocksDbCandidate, "lmdb": LmdbCandidate, "sqlite": SqliteCandidate, "duckdb": DuckDbCandidate,
    "rocksdb-index": DiskDedupIndexCandidate,
}


def _memory() -> dict[str, int]:
    """This process's resident memory in bytes: anonymous (heap, caches) and file-backed (mapped files)."""
    fields = {}
    with open("/proc/self/status") as status:
        for line in status:
            name, _, value = line.partition(":")
            if name in ("VmRSS", "RssAnon", "RssFile", "VmHWM"):
                fields[name] = int(value.split()[0]) * 1024
    return fields


def _disk_bytes(path: Path) -> int:
    """Allocated bytes (sparse files such as LMDB's map count only what is written)."""
    return sum(f.stat().st_blocks * 512 for f in path.rglob("*") if f.is_file())


class Run:
    """One candidate's run: the main loop, the probes at each checkpoint, and what it measured."""

    def __init__(self, engine: str, path: Path, cache_bytes: int, period_ms: int, seed: int):
        self.engine = engine
        self.path = path
        self.index = CANDIDATES[engine](path, cache_bytes)
        self.period_ms = period_ms
        self.rng = random.Random(seed)
        self.t0_ms = 1_700_000_000_000
        self.added = 0  # keys added so far (the simulated clock runs on it)
        self.expired_through_ms = self.t0_ms - 1  # keys of this time or older were expired by the probes
        self.expired_keys = 0
        self.sample: list[tuple[int, bytes]] = []  # every 500th added key with its time, for hits
        self.window: dict[str, list[float]] = {"seen": [], "add": [], "pipeline": [], "seen_call": [], "add_call": []}
        self.peak = {"VmRSS": 0, "RssAnon": 0, "RssFile": 0}

    def now_ms(self) -> int:
        return self.t0_ms + self.added * 1000 // EVENTS_PER_SECOND

    def _live(self) -> list[bytes]:
        return [key for at_ms, key in self.sample if at_ms > self.expired_through_ms]

    def _track_memory(self) -> None:
        for name, value in _memory().items():
            if name in self.peak:
                self.peak[name] = max(self.peak[name], value)

    def step(self) -> None:
        """One pipeline batch: seen, then add the keys not seen."""
        now = self.now_ms()
        keys = [k.encode() for k in mid_batch(self.rng, BATCH, now)]
        live = self._live()
        for j in self.rng.sample(range(BATCH), int(BATCH * DUPLICATE_SHARE)) if live else ():
            keys[j] = self.rng.choice(live)
        started = time.perf_counter()
        seen = self.index.lookup(keys, now, self.period_ms)
        looked = time.perf_counter()
        new = [k for k in keys if k not in seen]
        self.index.add(new, now, now, self.period_ms)
        done = time.perf_counter()
        self.window["seen"].append((looked - started) / len(keys))
        self.window["add"].append((done - looked) / max(1, len(new)))
        self.window["pipeline"].append((done - started) / len(keys))
        self.window["seen_call"].append(looked - started)
        self.window["add_call"].append(done - looked)
        for i in range(0, len(new), 500):
            self.sample.append((now, new[i]))
        self.added += len(new)
        self._track_memory()

    def probe(self, elapsed_s: float) -> dict:
        """At a checkpoint: the window's costs, then lookups of hits and misses, fsync cost, expiry."""
        w = self.window
        row: dict = {
            "keys": self.added,
            "elapsed_s": round(elapsed_s, 1),
            "seen_us_per_event": round(statistics.fmean(w["seen"]) * 1e6, 2),
            "add_us_per_event": round(statistics.fmean(w["add"]) * 1e6, 2),
            "seen_and_add_us_per_event": round(statistics.fmean(w["pipeline"]) * 1e6, 2),
            "seen_call_p99_ms": round(_p99(w["seen_call"]) * 1e3, 1),
            "add_call_p99_ms": round(_p99(w["add_call"]) * 1e3, 1),
            "add_call_max_ms": round(max(w["add_call"]) * 1e3, 1),
        }
        now = self.now_ms()
        live = self._live()
        hit_us, miss_us = [], []
        for _ in range(PROBE_BATCHES):
            hits = self.rng.sample(live, min(BATCH, len(live)))  # distinct keys added earlier, any age
            started = time.perf_counter()
            found = self.index.lookup(hits, now, self.period_ms)
            hit_us.append((time.perf_counter() - started) / len(hits))
            assert len(found) == len(hits), f"{self.engine}: {len(hits) - len(found)} known keys not found"
            misses = [k.encode() for k in mid_batch(self.rng, BATCH, now)]
            started = time.perf_counter()
            found = self.index.lookup(misses, now, self.period_ms)
            miss_us.append((time.perf_counter() - started) / BATCH)
            assert not found, f"{self.engine}: new keys found"
        row["lookup_hit_us"] = round(statistics.fmean(hit_us) * 1e6, 2)
        row["lookup_miss_us"] = round(statistics.fmean(miss_us) * 1e6, 2)
        synced: list[float] = []
        unsynced: list[float] = []
        for sync, into in ((True, synced), (False, unsynced)) * PROBE_BATCHES:
            self.index.set_sync(sync)
            keys = [k.encode() for k in mid_batch(self.rng, BATCH, now)]
            started = time.perf_counter()
            self.index.add(keys, now, now, self.period_ms)
            into.append((time.perf_counter() - started) / BATCH)
            self.added += BATCH
        self.index.set_sync(True)
        row["add_synced_us"] = round(statistics.fmean(synced) * 1e6, 2)
        row["add_unsynced_us"] = round(statistics.fmean(unsynced) * 1e6, 2)
        expired, started = 0, time.perf_counter()
        # the oldest ≈ 20,000 keys: those of the next 0.8 s of the simulated clock
        cutoff = self.expired_through_ms + PROBE_BATCHES * EXPIRE_STEP * 1000 // EVENTS_PER_SECOND
        calls = []
        while True:
            call = time.perf_counter()
            n = self.index.expire(cutoff, EXPIRE_STEP)
            calls.append(time.perf_counter() - call)
            expired += n
            if n < EXPIRE_STEP:
                break
        row["expire_us_per_key"] = round((time.perf_counter() - started) / max(1, expired) * 1e6, 2)
        row["expire_call_max_ms"] = round(max(calls) * 1e3, 1)
        row["expired_keys"] = expired
        self.expired_through_ms = cutoff
        self.expired_keys += expired
        mem = _memory()
        row.update({
            "rss_mb": round(mem["VmRSS"] / 2**20), "rss_anon_mb": round(mem["RssAnon"] / 2**20),
            "rss_file_mb": round(mem["RssFile"] / 2**20),
            "peak_rss_anon_mb": round(self.peak["RssAnon"] / 2**20),
            "peak_rss_file_mb": round(self.peak["RssFile"] / 2**20),
            "disk_mb": round(_disk_bytes(self.path) / 2**20),
        })
        row["disk_bytes_per_key"] = round(_disk_bytes(self.path) / max(1, self.added - self.expired_keys))
        for values in self.window.values():
            values.clear()
        return row


def _p99(values: list[float]) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))] if ordered else 0.0


def run_one(engine: str, keys: int, cache_mb: int, max_seconds: float, directory: Path, seed: int) -> dict:
    path = directory / f"dedup-{engine}"
    shutil.rmtree(path, ignore_errors=True)
    try:
        run = Run(engine, path, cache_mb << 20, period_ms=7 * 86_400_000, seed=seed)
    except ImportError as exc:  # a candidate that is not a dependency of Cohort (lmdb): say how to add it
        return {"engine": engine, "keys_reached": 0, "checkpoints": [],
                "stopped": f"not installed ({exc.name}): .venv/bin/pip install {exc.name} to measure it"}
    checkpoints = sorted({c for c in CHECKPOINTS if c < keys} | {keys})
    rows, started = [], time.perf_counter()
    stopped = None
    print(f"[{engine}] start: {keys:,} keys, cache {cache_mb} MB, limit {max_seconds:.0f} s", flush=True)
    try:
        for checkpoint in checkpoints:
            while run.added < checkpoint:
                run.step()
                if time.perf_counter() - started > max_seconds:
                    stopped = f"time limit ({max_seconds:.0f} s) reached at {run.added:,} keys"
                    break
            rows.append(run.probe(time.perf_counter() - started))
            print(f"[{engine}] {json.dumps(rows[-1])}", flush=True)
            if stopped:
                break
    except Exception as exc:  # an engine that fails at some size: report where
        stopped = f"failed at {run.added:,} keys: {type(exc).__name__}: {str(exc)[:300]}"
    finally:
        try:
            run.index.close()
        except Exception:
            pass
    result = {
        "engine": engine, "keys_requested": keys, "keys_reached": run.added, "stopped": stopped,
        "cache_mb": cache_mb, "batch": BATCH, "duplicate_share": DUPLICATE_SHARE, "seconds": round(time.perf_counter() - started, 1),
        "peak_rss_mb": round(_memory()["VmHWM"] / 2**20), "checkpoints": rows,
        "versions": _versions(engine), "cpu_count": os.cpu_count(), "load_avg_at_end": os.getloadavg(),
    }
    shutil.rmtree(path, ignore_errors=True)
    return result


def _versions(engine: str) -> dict:
    if engine == "sqlite":
        return {"sqlite": sqlite3.sqlite_version}
    from importlib.metadata import version

    return {engine: version({"rocksdb": "rocksdict", "rocksdb-index": "rocksdict"}.get(engine, engine))}


def _summary(results: list[dict]) -> str:
    """A table per checkpoint size that every candidate reached, with ratios to the first candidate."""
    lines = []
    base = results[0]
    fields = ("seen_and_add_us_per_event", "seen_us_per_event", "add_us_per_event", "lookup_hit_us", "lookup_miss_us", "expire_us_per_key",
              "add_synced_us", "add_unsynced_us", "peak_rss_anon_mb", "peak_rss_file_mb", "disk_mb")
    for row in base["checkpoints"]:
        size = row["keys"]
        lines.append(f"\nat ≈ {size:,} keys (ratio to {base['engine']} in brackets)")
        lines.append("engine".ljust(10) + "".join(f.replace("_us", "").rjust(19) for f in fields))
        for result in results:
            other = min(result["checkpoints"], key=lambda r: abs(r["keys"] - size), default=None)
            if other is None or abs(other["keys"] - size) > size * 0.2:
                lines.append(f"{result['engine']:<10} (did not reach this size: {result['stopped']})")
                continue
            cells = []
            for f in fields:
                ratio = other[f] / row[f] if row[f] else float("nan")
                cells.append(f"{other[f]} (×{ratio:.2g})".rjust(19))
            lines.append(f"{result['engine']:<10}" + "".join(cells))
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--keys", type=int, default=1_000_000, help="keys to add per candidate")
    parser.add_argument("--engine", default=",".join(ENGINES), help=f"comma-separated, of {', '.join(ENGINES)}")
    parser.add_argument("--output", default="bench/results/dedup-index-{engine}.json",
                        help="JSON result; {engine} is replaced by the candidate's name")
    parser.add_argument("--cache-mb", type=int, default=256, help="each engine's cache bound (LMDB has none)")
    parser.add_argument("--max-seconds", type=float, default=600, help="per candidate; it stops at the size reached")
    parser.add_argument("--dir", type=Path, default=None, help="where the index files go (default: a temp dir)")
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    engines = [e.strip() for e in args.engine.split(",") if e.strip()]
    for engine in engines:
        if engine not in CANDIDATES:
            parser.error(f"unknown engine {engine!r}")
    if args.dir is not None:
        from cohort.pipeline.data_dir_lock import LOCK_FILE

        if (args.dir / LOCK_FILE).exists():  # it erases what it writes there: never a Cohort data directory
            parser.error(f"{args.dir} is a Cohort data directory; give the benchmark a directory of its own")
    directory = args.dir or Path(tempfile.mkdtemp(prefix="cohort-dedup-bench-", dir="/var/tmp"))
    directory.mkdir(parents=True, exist_ok=True)
    if args.child:
        result = run_one(engines[0], args.keys, args.cache_mb, args.max_seconds, directory, args.seed)
        Path(args.output).parent.mkdir(parents=True, exist_ok=True)
        Path(args.output).write_text(json.dumps(result, indent=2) + "\n")
        return
    results: list[dict] = []
    for engine in engines:  # one process each, one after the other
        output = args.output.replace("{engine}", engine) if len(engines) > 1 or "{engine}" in args.output else args.output
        command = [sys.executable, "-m", "cohort.benchmark.dedup_index", "--child", "--engine", engine,
                   "--keys", str(args.keys), "--output", output, "--cache-mb", str(args.cache_mb),
                   "--max-seconds", str(args.max_seconds), "--dir", str(directory), "--seed", str(args.seed)]
        subprocess.run(command, check=True)
        result = json.loads(Path(output).read_text())
        if result["checkpoints"]:
            results.append(result)
        else:
            print(f"[{engine}] {result['stopped']}")
    if args.dir is None:
        shutil.rmtree(directory, ignore_errors=True)
    if results:
        print(_summary(results))


if __name__ == "__main__":
    main()
