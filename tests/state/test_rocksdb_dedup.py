"""What is specific to the on-disk dedup index (the contract suite covers the rest): expiry that
really deletes, in bounded steps; durability across kill -9; bounded memory; clear refusals of files
that are not an index."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import threading
from pathlib import Path

import pytest
import rocksdict

from cohort.core.errors import ErrorCode
from cohort.state.rocksdb_dedup import DedupIndexError, DiskDedupIndex

T0 = 1_800_000_000.0  # seconds
DAY = 86_400.0


class Clock:
    def __init__(self, now: float = T0):
        self.now = now

    def __call__(self) -> float:
        return self.now


def _ms(seconds: float) -> int:
    return int(seconds * 1000)


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def index(tmp_path, clock):
    opened = DiskDedupIndex(tmp_path / "dedup-mid", 7 * DAY, cache_bytes=8 << 20, clock=clock)
    yield opened
    opened.close()


def _dir_bytes(path: Path) -> int:
    return sum(f.stat().st_size for f in path.iterdir() if f.is_file())


def test_the_period_is_exact_to_the_millisecond(index, clock):
    index.add(["k"], _ms(T0))
    clock.now = T0 + 7 * DAY - 0.001
    assert index.seen(["k"]) == {"k"}
    clock.now = T0 + 7 * DAY
    assert index.seen(["k"]) == set()


def test_a_time_in_the_past_counts_from_that_time_and_one_a_period_old_is_not_kept(index, clock):
    index.add(["yesterday"], _ms(T0 - DAY))
    index.add(["too-old"], _ms(T0 - 7 * DAY))
    assert index.seen(["yesterday", "too-old"]) == {"yesterday"}
    clock.now = T0 + 6 * DAY
    assert index.seen(["yesterday"]) == set()
    clock.now = T0  # the clock rewound shows what is still on disk: the old key was never written
    assert index.seen(["too-old", "yesterday"]) == {"yesterday"}


@pytest.mark.parametrize("seen_first", [True, False], ids=["after-seen", "without-seen"])
def test_a_key_added_again_after_its_period_gets_a_new_period(index, clock, seen_first):
    index.add(["k", "other"], _ms(T0))
    clock.now = T0 + 7 * DAY + 1  # both expired, not deleted yet
    if seen_first:
        assert index.seen(["k"]) == set()
    index.add(["k"], _ms(clock.now))
    clock.now = T0 + 10 * DAY
    while index.expire():  # the old entries of both go; the new time of k must survive it
        pass
    assert index.seen(["k", "other"]) == {"k"}
    clock.now = T0 + 14 * DAY + 1
    assert index.seen(["k"]) == set()


def test_expiry_deletes_old_keys_in_bounded_steps_and_frees_the_space(tmp_path, clock):
    index = DiskDedupIndex(tmp_path / "dedup-mid", DAY, cache_bytes=8 << 20, clock=clock, sync=False)
    try:
        old = [f"old-{i:07d}-{'x' * 40}" for i in range(100_000)]
        for start in range(0, len(old), 5000):
            index.add(old[start:start + 5000], _ms(T0))
        index.compact()
        full = _dir_bytes(index.path)

        clock.now = T0 + DAY + 60
        fresh = [f"new-{i:05d}" for i in range(5000)]
        index.seen(fresh)
        index.add(fresh, _ms(clock.now))  # one batch of 5,000: deletes at most 2 × 5,000 + 1,000 old keys
        clock.now = T0  # rewound, the clock shows which old keys are still on disk
        assert len(index.seen(old)) == len(old) - 11_000

        clock.now = T0 + DAY + 60
        steps = 0
        while index.expire(max_keys=20_000):
            steps += 1
        assert steps == 5  # the 89,000 left, 20,000 at a time
        clock.now = T0
        assert index.seen(old) == set()
        assert index.seen(fresh) == set(fresh)
        index.compact()
        assert _dir_bytes(index.path) < full / 4
        assert index.approximate_keys() < 10_000
    finally:
        index.close()


def test_reach_grows_to_the_period_and_survives_reopening(tmp_path, clock):
    path = tmp_path / "dedup-mid"
    index = DiskDedupIndex(path, 7 * DAY, clock=clock)
    clock.now = T0 + 3600
    assert index.reach_seconds() == pytest.approx(3600)
    index.add(["k"], _ms(clock.now))
    index.close()
    clock.now = T0 + 2 * DAY
    again = DiskDedupIndex(path, 7 * DAY, clock=clock)
    try:
        assert again.reach_seconds() == pytest.approx(2 * DAY)
        clock.now = T0 + 30 * DAY
        assert again.reach_seconds() == 7 * DAY
    finally:
        again.close()


def test_reach_after_the_period_was_lengthened_counts_only_what_was_kept(tmp_path, clock):
    path = tmp_path / "dedup-mid"
    index = DiskDedupIndex(path, DAY, clock=clock)
    index.add(["k"], _ms(T0))
    clock.now = T0 + 3 * DAY
    index.add(["j"], _ms(clock.now))  # expires k (time T0)
    index.close()
    longer = DiskDedupIndex(path, 7 * DAY, clock=clock)
    try:
        assert longer.reach_seconds() == pytest.approx(3 * DAY)  # not 7 days: keys of T0 are gone
    finally:
        longer.close()


def test_reach_is_read_from_another_thread_while_batches_are_added(index, clock):
    errors: list[BaseException] = []
    stop = threading.Event()

    def metrics() -> None:
        try:
            while not stop.is_set():
                assert 0 <= index.reach_seconds() <= index.period_s
        except BaseException as exc:  # reported below
            errors.append(exc)

    reader = threading.Thread(target=metrics)
    reader.start()
    for batch in range(20):
        keys = [f"b{batch}-{i}" for i in range(2000)]
        index.seen(keys)
        index.add(keys, _ms(clock.now))
        clock.now += 3600
    stop.set()
    reader.join()
    assert errors == []


_KILLED_CHILD = textwrap.dedent("""
    import os, signal, sys
    from cohort.state.rocksdb_dedup import DiskDedupIndex
    index = DiskDedupIndex(sys.argv[1], 7 * 86400, sync=sys.argv[2] == "sync")
    for batch in range(20):
        keys = [f"b{batch}-k{i}" for i in range(5000)]
        index.seen(keys)
        index.add(keys, 1_800_000_000_000)
    os.kill(os.getpid(), signal.SIGKILL)  # right after the last add returned: no close, no flush
""")


@pytest.mark.parametrize("sync", ["sync", "no-sync"])
def test_what_add_returned_from_survives_kill_9(tmp_path, sync):
    """With fsync (the default) it survives power loss too; without, the write-ahead log is still
    handed to the OS at each write, which is what a killed process needs."""
    path = tmp_path / "dedup-mid"
    child = subprocess.run([sys.executable, "-c", _KILLED_CHILD, str(path), sync], capture_output=True, text=True,
                           timeout=120)
    assert child.returncode == -signal.SIGKILL, child.stderr
    index = DiskDedupIndex(path, 7 * 86400, clock=lambda: 1_800_000_000.0)
    try:
        every = [f"b{batch}-k{i}" for batch in range(20) for i in range(5000)]
        assert len(index.seen(every)) == 100_000
    finally:
        index.close()


_MEMORY_CHILD = textwrap.dedent("""
    import json, random, sys
    from cohort.state.rocksdb_dedup import DiskDedupIndex

    def anon_kb():
        with open("/proc/self/status") as status:
            return next(int(line.split()[1]) for line in status if line.startswith("RssAnon:"))

    def keys(seed, n):
        rng = random.Random(seed)
        return [f"{rng.getrandbits(128):032x}-{i:08d}-mid" for i in range(n)]  # 50 characters, like a uuid mid

    total, batch = int(sys.argv[2]), 5000
    index = DiskDedupIndex(sys.argv[1], 7 * 86400, cache_bytes=16 << 20, sync=False)
    before = peak = anon_kb()
    for start in range(0, total, batch):
        chunk = keys(start, batch)
        index.seen(chunk)
        index.add(chunk, 1_800_000_000_000)
        peak = max(peak, anon_kb())
    index.close()
    base = anon_kb()
    held = set()
    for start in range(0, total, batch):
        held.update(keys(start, batch))
    print(json.dumps({"index_growth_kb": peak - before, "set_growth_kb": anon_kb() - base}))
""")


def test_memory_stays_bounded_by_the_cache_while_many_keys_are_added(tmp_path):
    child = subprocess.run([sys.executable, "-c", _MEMORY_CHILD, str(tmp_path / "dedup-mid"), "500000"],
                           capture_output=True, text=True, timeout=240)
    assert child.returncode == 0, child.stderr
    growth = json.loads(child.stdout)
    # 500,000 keys in a Python set take ≈ 60 MB (2 M: ≈ 250 MB); the index, with a 16 MB cache, stays
    # near its cache whatever the count (measured: ≈ 28 MB at 500,000 keys, ≈ 32 MB at 1 M)
    assert growth["set_growth_kb"] > 40_000
    assert growth["index_growth_kb"] < 48_000, growth
    assert growth["index_growth_kb"] < 0.75 * growth["set_growth_kb"], growth


def _assert_refused(path: Path, *words: str) -> DedupIndexError:
    with pytest.raises(DedupIndexError) as refused:
        DiskDedupIndex(path, DAY)
    assert refused.value.code == ErrorCode.DEDUP_INDEX
    assert str(path) in refused.value.message
    for word in words:
        assert word in refused.value.message
    return refused.value


def test_a_file_at_the_path_is_refused(tmp_path):
    path = tmp_path / "dedup-mid"
    path.write_bytes(b"SQLite format 3\x00" + b"\x00" * 100)
    _assert_refused(path, "not a directory")
    assert path.read_bytes().startswith(b"SQLite format 3")


def test_a_directory_of_other_files_is_refused_and_left_alone(tmp_path):
    path = tmp_path / "data"
    path.mkdir()
    (path / "store.duckdb").write_bytes(b"not ours")
    _assert_refused(path, "store.duckdb", "directory of its own")
    assert sorted(p.name for p in path.iterdir()) == ["store.duckdb"]


def test_a_foreign_rocksdb_database_is_refused_and_not_changed(tmp_path):
    path = tmp_path / "other-db"
    options = rocksdict.Options(raw_mode=True)
    options.create_if_missing(True)
    other = rocksdict.Rdict(str(path), options)
    other.put(b"someone", b"else's")
    other.close()
    _assert_refused(path, "not a dedup index")
    assert rocksdict.Rdict.list_cf(str(path)) == ["default"]


def test_a_corrupt_index_is_refused_with_the_engines_reason(tmp_path):
    path = tmp_path / "dedup-mid"
    DiskDedupIndex(path, DAY).close()
    manifest = next(path.glob("MANIFEST-*"))
    manifest.write_bytes(b"\xff" * manifest.stat().st_size)
    _assert_refused(path, "cannot be opened", "orrupt")


def test_an_index_held_by_another_process_is_refused(tmp_path):
    path = tmp_path / "dedup-mid"
    holder = subprocess.Popen([sys.executable, "-c", textwrap.dedent(f"""
        import sys, time
        from cohort.state.rocksdb_dedup import DiskDedupIndex
        index = DiskDedupIndex({str(path)!r}, 86400)
        print("open", flush=True)
        sys.stdin.read()
    """)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "open"
        _assert_refused(path, "held by another process")
    finally:
        holder.kill()
        holder.wait()


def test_an_index_of_another_format_version_is_refused(tmp_path):
    path = tmp_path / "dedup-mid"
    DiskDedupIndex(path, DAY).close()
    options = rocksdict.Options(raw_mode=True)
    db = rocksdict.Rdict(str(path), options, column_families={"by_time": options, "meta": options})
    meta = db.get_column_family("meta")
    meta.put(b"index", json.dumps({"format": "cohort-dedup-index", "version": 99, "created_ms": 1}).encode())
    meta.close()
    db.close()
    _assert_refused(path, "version 99")


def test_use_after_close_is_a_clear_error(index):
    index.close()
    with pytest.raises(DedupIndexError, match="after close"):
        index.seen(["k"])
    index.close()  # twice is fine
    assert os.path.isdir(index.path)
