"""Embedded dedup state on disk: an exact index of the keys committed within the period (RocksDB).

Why RocksDB (rocksdict): measured against LMDB, SQLite and DuckDB by `cohort.benchmark.dedup_index`
(figures in docs/PERFORMANCE.md). Its memory is bounded by one cache (block cache, memtables, index
and bloom filters all charged to it), random keys are written sequentially (an LSM tree), and a key
not held costs a bloom-filter probe rather than a B-tree descent.

Layout, in one RocksDB directory per index (one for event mids, another for batch msgids):
- default column family: key → the time it was first added (8-byte big-endian epoch ms);
- `by_time`: (time, key) → nothing, so keys older than the period are found in time order without
  a scan; exactly one entry per held key (written and deleted in the same atomic write batch);
- `meta`: what the directory is (so a foreign or corrupt one is refused) and how far expiry went.

A key is seen while `now < time + period`: the stored time decides, so the answer is exact however
late expiry runs. Expiry deletes the oldest keys in steps done inside `add` (about twice the batch
added, so it catches up after downtime without stalling one call); deleted keys' space is reclaimed
by RocksDB's compactions. Every `add` is one write batch committed with the write-ahead log synced
(fsync) before it returns, so what `add` returned from survives power loss, and kill -9 even
without the fsync (the log is written to the OS at each write; `sync=False` keeps only that).

Thread safety: `seen`, `add`, `expire` and `close` take one lock (the pipeline thread calls them);
`reach_seconds` reads two numbers and takes no lock (the /metrics thread calls it).
"""

from __future__ import annotations

import json
import re
import threading
import time
from pathlib import Path
from typing import Callable, Sequence

import rocksdict

from cohort.core.errors import CohortError, ErrorCode, TransientFault, first_line

FORMAT = "cohort-dedup-index"
FORMAT_VERSION = 1
_META_KEY = b"index"
_CURSOR_KEY = b"expired-through"
_ROCKSDB_FILE = re.compile(r"rocksdict-config\.json|CURRENT|IDENTITY|LOCK|LOG(\.old\.\d+)?|MANIFEST-\d+|OPTIONS-\d+(\.dbtmp)?|\d+\.(log|sst|blob)"
                           r"|\d+\.dbtmp")
_MIN_EXPIRE_STEP = 1000  # keys an `add` may expire beyond twice its own batch


class DedupIndexError(CohortError, TransientFault):
    """The dedup index cannot be opened (corrupt, foreign, held by another process) or written. To the
    pipeline an infrastructure fault (retried with backoff, never blamed on the input it was given)."""

    def __init__(self, path: Path, message: str):
        super().__init__(ErrorCode.DEDUP_INDEX, f"dedup index at {path}: {message}")
        self.path = path


def _ms(ms: int) -> bytes:
    return ms.to_bytes(8, "big")


def _encode(key: str) -> bytes:
    return key.encode("utf-8", "surrogatepass")


class DiskDedupIndex:
    """An exact, disk-backed DedupState: `seen`/`add` once per batch, memory bounded by `cache_bytes`."""

    def __init__(self, path: Path | str, period_s: float, *, cache_bytes: int = 128 << 20,
                 clock: Callable[[], float] = time.time, sync: bool = True, created_ms: int | None = None):
        """`created_ms`, for a new index only: the time from which it holds every key committed (an index
        rebuilt from the store holds the keys committed before it was made; `reach_seconds` counts from it)."""
        if period_s <= 0:
            raise ValueError("period_s must be positive")
        self.path = Path(path)
        self.period_s = period_s
        self._period_ms = int(period_s * 1000)
        self._clock = clock
        self._new_created_ms = created_ms
        self._lock = threading.Lock()
        self._check_path()
        self._db = self._open(max(cache_bytes, 8 << 20))
        self._by_time = self._db.get_column_family("by_time")
        self._by_time_cf = self._db.get_column_family_handle("by_time")
        self._meta = self._db.get_column_family("meta")
        self._meta_cf = self._db.get_column_family_handle("meta")
        self._write = rocksdict.WriteOptions()
        self._write.sync = sync
        # expiry needs no fsync of its own: lost in a crash, it is simply done again (its deletions and
        # cursor are one batch), and the next synced add syncs the log up to and including it
        self._write_unsynced = rocksdict.WriteOptions()
        self._write_unsynced.sync = False
        self._created_ms, self._cursor = self._read_meta()
        self._expired_through_ms = int.from_bytes(self._cursor[:8], "big") if self._cursor else 0
        # keys that the last `seen` found not held, with the stale time they had (None: absent):
        # `add` right after it need not look them up again (nothing else writes in between)
        self._not_held: dict[bytes, bytes | None] = {}
        self._closed = False

    # -- DedupState --------------------------------------------------------------------------

    def seen(self, keys: Sequence[str]) -> set[str]:
        if not keys:
            return set()
        unique = dict.fromkeys(keys)
        encoded = [_encode(key) for key in unique]
        with self._lock:
            self._check_open()
            cutoff = self._now_ms() - self._period_ms  # held while stored time > cutoff
            values = self._call(self._db.get, encoded)
            found, not_held = set(), {}
            for key, raw, value in zip(unique, encoded, values):
                if value is not None and int.from_bytes(value, "big") > cutoff:
                    found.add(key)
                else:
                    not_held[raw] = value
            self._not_held = not_held
        return found

    def add(self, keys: Sequence[str], at_ms: int) -> None:
        if at_ms < 0:
            raise ValueError("at_ms must be an epoch time in ms")
        with self._lock:
            self._check_open()
            now = self._now_ms()
            cutoff = now - self._period_ms
            memo, self._not_held = self._not_held, {}
            if keys and at_ms > cutoff:  # a time already a period old would be forgotten at once
                encoded = list(dict.fromkeys(_encode(key) for key in keys))
                unknown = [raw for raw in encoded if raw not in memo]
                current = dict(zip(unknown, self._call(self._db.get, unknown))) if unknown else {}
                stamp = _ms(at_ms)
                batch = rocksdict.WriteBatch(raw_mode=True)
                for raw in encoded:
                    old = memo[raw] if raw in memo else current[raw]
                    if old is not None:
                        if int.from_bytes(old, "big") > cutoff:
                            continue  # held: it keeps its first time
                        batch.delete(old + raw, self._by_time_cf)
                    batch.put(raw, stamp)
                    batch.put(stamp + raw, b"", self._by_time_cf)
                if len(batch):
                    if self._cursor and stamp < self._cursor[:8]:
                        self._cursor = b""  # behind the expiry cursor (the clock went back): rescan
                        batch.put(_CURSOR_KEY, b"", self._meta_cf)
                    self._call(self._db.write, batch, self._write)
            self._expire(cutoff, 2 * len(keys) + _MIN_EXPIRE_STEP)

    def forget(self, keys: Sequence[str]) -> int:
        """Delete the keys and their time entries in one synced write batch (expired but not yet swept ones
        too); how many were held. The deleted bytes leave the files at RocksDB's next compaction of them."""
        if not keys:
            return 0
        encoded = list(dict.fromkeys(_encode(key) for key in keys))
        with self._lock:
            self._check_open()
            self._not_held = {}  # the memo of the last `seen` may name a key deleted here
            held = [(raw, value) for raw, value in zip(encoded, self._call(self._db.get, encoded)) if value is not None]
            if held:
                batch = rocksdict.WriteBatch(raw_mode=True)
                for raw, stamp in held:
                    batch.delete(raw)
                    batch.delete(stamp + raw, self._by_time_cf)
                self._call(self._db.write, batch, self._write)
        return len(held)

    def reach_seconds(self) -> float:
        """How far back every key added is still held: the period, or less while the index is
        younger than one period (or expiry went further back, after the period was lengthened)."""
        held_since_ms = max(self._created_ms, self._expired_through_ms)
        return max(0.0, min(self.period_s, self._clock() - held_since_ms / 1000))

    def close(self) -> None:
        with self._lock:
            if not self._closed:
                self._closed = True
                self._release()

    # -- maintenance -------------------------------------------------------------------------

    def expire(self, max_keys: int = 100_000) -> int:
        """Delete up to `max_keys` keys older than the period (oldest first); how many went. `add`
        does this in bounded steps already: call it only to clean up an index that sees no adds."""
        with self._lock:
            self._check_open()
            return self._expire(self._now_ms() - self._period_ms, max_keys)

    def compact(self) -> None:
        """Rewrite the files now so the space of expired keys is returned (RocksDB does it in the
        background as it goes; this is for tests and for an operator shrinking a directory)."""
        with self._lock:
            self._check_open()
            for family in (self._db, self._by_time, self._meta):
                self._call(family.flush)  # with every family flushed, old write-ahead logs go too
                self._call(family.compact_range, None, None)

    def approximate_keys(self) -> int:
        """Keys held, expired but not yet deleted ones included (RocksDB's estimate)."""
        with self._lock:
            self._check_open()
            return int(self._db.property_int_value("rocksdb.estimate-num-keys") or 0)

    # -- inside ------------------------------------------------------------------------------

    def _expire(self, cutoff_ms: int, limit: int) -> int:
        """Delete the oldest keys whose time is ≤ cutoff, at most `limit`, in one atomic batch."""
        iterator = self._by_time.iter()
        iterator.seek(self._cursor)
        batch = rocksdict.WriteBatch(raw_mode=True)
        deleted, last = 0, None
        while deleted < limit and iterator.valid():
            entry = iterator.key()
            if int.from_bytes(entry[:8], "big") > cutoff_ms:
                break
            batch.delete(entry[8:])
            last = entry
            deleted += 1
            iterator.next()
        del iterator
        if last is None:
            return 0
        cursor = last + b"\x00"  # just past the last deleted entry
        batch.delete_range(self._cursor, cursor, self._by_time_cf)
        batch.put(_CURSOR_KEY, cursor, self._meta_cf)
        self._call(self._db.write, batch, self._write_unsynced)
        self._cursor = cursor
        self._expired_through_ms = max(self._expired_through_ms, int.from_bytes(last[:8], "big"))
        return deleted

    def _release(self) -> None:
        """Close the database: its column families' handles hold it (and its lock) open too."""
        self._by_time.close()
        self._meta.close()
        del self._by_time_cf, self._meta_cf
        self._db.close()

    def _now_ms(self) -> int:
        return int(self._clock() * 1000)

    def _check_open(self) -> None:
        if self._closed:
            raise DedupIndexError(self.path, "used after close()")

    def _call(self, method, *args):
        """An engine call whose failure (disk full, I/O error) is reported as the index's own error."""
        try:
            return method(*args)
        except Exception as exc:
            raise DedupIndexError(self.path, f"{method.__name__} failed: {first_line(exc)}") from exc

    def _check_path(self) -> None:
        """Refuse what is not one of ours before RocksDB touches it (it would create its files beside
        a foreign directory's content)."""
        path = self.path
        if path.exists() and not path.is_dir():
            raise DedupIndexError(path, "exists and is not a directory (is another file at this path?)")
        if path.is_dir():
            strangers = sorted(entry.name for entry in path.iterdir() if not _ROCKSDB_FILE.fullmatch(entry.name))
            if strangers:
                raise DedupIndexError(path, f"the directory holds files that are not a dedup index's "
                                            f"({', '.join(strangers[:3])}); give the index a directory of its own")

    def _open(self, cache_bytes: int) -> rocksdict.Rdict:
        """One cache bounds the memory: block cache, memtables (write buffer manager), index and
        bloom filter blocks (cached, not held beside the cache)."""
        cache = rocksdict.Cache(cache_bytes)
        memtables = rocksdict.WriteBufferManager.new_write_buffer_manager_with_cache(cache_bytes // 2, False, cache)
        keys = self._options(cache, memtables, cache_bytes, bloom=True)
        by_time = self._options(cache, memtables, cache_bytes, bloom=False)  # only ever read in order
        # an existing database must already have our column families: one without them is someone else's
        existing = (self.path / "CURRENT").exists()
        keys.create_missing_column_families(not existing)
        try:
            return rocksdict.Rdict(str(self.path), keys, column_families={"by_time": by_time, "meta": by_time})
        except Exception as exc:
            text = first_line(exc)
            if "lock" in text.lower():
                raise DedupIndexError(self.path, f"held by another process ({text})") from exc
            if existing and "column famil" in text.lower():
                raise DedupIndexError(self.path, f"a RocksDB database that is not a dedup index ({text})") from exc
            raise DedupIndexError(self.path, f"cannot be opened: corrupt, or not a dedup index ({text})") from exc

    @staticmethod
    def _options(cache: rocksdict.Cache, memtables: rocksdict.WriteBufferManager, cache_bytes: int,
                 bloom: bool) -> rocksdict.Options:
        table = rocksdict.BlockBasedOptions()
        table.set_block_cache(cache)
        if bloom:
            table.set_bloom_filter(10, False)  # ≈ 1 % of lookups of absent keys read a data block
            table.set_data_block_index_type(rocksdict.DataBlockIndexType.binary_and_hash())
            table.set_index_type(rocksdict.BlockBasedIndexType.two_level_index_search())
            table.set_partition_filters(True)  # only the filter partitions in use stay in the cache
            table.set_pin_top_level_index_and_filter(True)
        table.set_cache_index_and_filter_blocks(True)
        table.set_pin_l0_filter_and_index_blocks_in_cache(True)
        options = rocksdict.Options(raw_mode=True)
        if bloom:  # most keys looked up are new: a bloom filter on the memtable too spares them its skiplist
            options.set_memtable_prefix_bloom_ratio(0.1)  # (measured: 10 → 1.4 µs a miss in a full memtable)
            options.set_memtable_whole_key_filtering(True)
        options.create_if_missing(True)
        options.create_missing_column_families(True)
        options.set_block_based_table_factory(table)
        options.set_write_buffer_size(max(4 << 20, min(64 << 20, cache_bytes // 8)))
        options.set_max_write_buffer_number(2)
        options.set_write_buffer_manager(memtables)
        options.set_max_background_jobs(2)
        options.set_compression_type(rocksdict.DBCompressionType.lz4())
        options.set_level_compaction_dynamic_level_bytes(True)
        options.set_max_open_files(256)
        # the small `meta` family would otherwise keep every write-ahead log file alive until it flushes
        options.set_max_total_wal_size(max(16 << 20, cache_bytes // 4))
        options.set_keep_log_file_num(2)
        options.set_max_log_file_size(1 << 20)
        options.set_paranoid_checks(True)
        return options

    def _read_meta(self) -> tuple[int, bytes]:
        """(created_ms, expiry cursor); writes the identity of a new index, refuses a foreign one."""
        raw = self._meta.get(_META_KEY)
        if raw is None:
            probe = self._db.iter()
            probe.seek_to_first()
            foreign = probe.valid()
            del probe
            if foreign:
                self._release()
                raise DedupIndexError(self.path, "a RocksDB database that is not a dedup index")
            created_ms = self._new_created_ms if self._new_created_ms is not None else self._now_ms()
            identity = {"format": FORMAT, "version": FORMAT_VERSION, "created_ms": created_ms}
            self._meta.put(_META_KEY, json.dumps(identity).encode(), self._write_synced())
            return created_ms, b""
        try:
            identity = json.loads(raw)
            if identity.get("format") != FORMAT:
                raise ValueError(f"format {identity.get('format')!r}")
            if identity.get("version") != FORMAT_VERSION:
                raise ValueError(f"version {identity.get('version')!r}, this Cohort reads {FORMAT_VERSION}")
            created_ms = int(identity["created_ms"])
        except (ValueError, KeyError, TypeError) as exc:
            self._release()
            raise DedupIndexError(self.path, f"not a dedup index this Cohort can read ({first_line(exc)})") from exc
        return created_ms, self._meta.get(_CURSOR_KEY) or b""

    @staticmethod
    def _write_synced() -> rocksdict.WriteOptions:
        options = rocksdict.WriteOptions()
        options.sync = True
        return options
