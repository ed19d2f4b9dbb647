"""What a Redis dedup key costs: CPU per key for `seen` + `add` at pipeline batches, Redis memory per key.

Starts its own redis-server (AOF, `appendfsync always`, as the scale-out footprint runs it) on a free
port, then fills one namespace with N keys shaped like real Sunbird mids the way the pipeline does:
per batch, one `seen` of the whole batch, then one `add` of the keys not seen (a small share of each
batch repeats an earlier key, as retried events do). It reports, per key:
- the worker's CPU (this process) and the wall time for `seen` and for `add`;
- Redis's CPU (its process), the core every worker shares, and of it the time spent executing the
  MGETs and scripts (INFO commandstats; the rest is network I/O and the AOF);
- Redis memory (INFO used_memory) and disk (the AOF) per key held, and what a window of D days at
  E events a day would take at that figure (arithmetic, printed beside the measurement).
Two references run in the same process right after, on the same batches: the textbook client (MGET and
a pipeline of SET NX PX through redis-py's own objects: what the packing and the add script save) and
the embedded footprint's in-memory MidWindow. Compare by the ratios, which come from one run.

    .venv/bin/python -m cohort.benchmark.redis_dedup                        # 1 M keys, batches of 5,000
    .venv/bin/python -m cohort.benchmark.redis_dedup --keys 200000 --output -   # quick, JSON to stdout
"""

from __future__ import annotations

import argparse
import json
import random
import tempfile
import time
from pathlib import Path
from typing import Callable, Sequence

import psutil
import redis

from cohort.benchmark.redis_process import RedisProcess
from cohort.state.mid_window import MidWindow
from cohort.state.redis_dedup import RedisDedupState

WEEK_S = 7 * 86400
DUPLICATE_SHARE = 0.005  # share of each batch that repeats a key already added (a retried event)
REFERENCE_BATCHES = 20  # batches the references run (their figure per key does not need more)


def real_looking_mids(rng: random.Random, count: int, now_ms: int) -> list[str]:
    """Mids as Sunbird apps make them: "LP.1566242911079.e85ad028-c0c2-4ec2-a78e-cd33f7200df1"."""
    mids = []
    for _ in range(count):
        h = f"{rng.getrandbits(128):032x}"
        mids.append(f"LP.{now_ms - rng.randrange(86_400_000)}.{h[:8]}-{h[8:12]}-4{h[13:16]}-{h[16:20]}-{h[20:]}")
    return mids


def _batches(rng: random.Random, keys: int, batch: int) -> list[list[str]]:
    now_ms = int(time.time() * 1000)
    batches: list[list[str]] = []
    earlier: list[str] = []
    while sum(map(len, batches)) < keys:
        fresh = real_looking_mids(rng, batch, now_ms)
        repeats = rng.sample(earlier, min(len(earlier), int(batch * DUPLICATE_SHARE)))
        batches.append(fresh[:batch - len(repeats)] + repeats)
        earlier = fresh[:1000]  # repeats come from the batch before, as a retried request's would
    return batches


class _Meter:
    """Wall and this process's CPU, summed over the timed sections."""

    def __init__(self) -> None:
        self.wall = 0.0
        self.cpu = 0.0

    def time(self, fn: Callable[[], object]) -> object:
        wall, cpu = time.perf_counter(), time.process_time()
        result = fn()
        self.wall += time.perf_counter() - wall
        self.cpu += time.process_time() - cpu
        return result


def _run_state(seen: Callable[[Sequence[str]], set[str]], add: Callable[[Sequence[str], int], None],
               batches: list[list[str]], server: psutil.Process | None) -> dict:
    seen_meter, add_meter = _Meter(), _Meter()
    server_cpu = sum(server.cpu_times()[:2]) if server else 0.0
    keys = duplicates = 0
    for batch in batches:
        found = seen_meter.time(lambda: seen(batch))
        assert isinstance(found, set)
        new = [key for key in batch if key not in found]
        add_meter.time(lambda: add(new, int(time.time() * 1000)))
        keys += len(batch)
        duplicates += len(found)
    us = 1e6 / keys
    figures = {"keys": keys, "duplicates_found": duplicates,
               "seen_cpu_us_per_key": round(seen_meter.cpu * us, 3), "add_cpu_us_per_key": round(add_meter.cpu * us, 3),
               "seen_wall_us_per_key": round(seen_meter.wall * us, 3), "add_wall_us_per_key": round(add_meter.wall * us, 3)}
    figures["worker_cpu_us_per_key"] = round((seen_meter.cpu + add_meter.cpu) * us, 3)
    figures["wall_us_per_key"] = round((seen_meter.wall + add_meter.wall) * us, 3)
    if server:
        figures["redis_cpu_us_per_key"] = round((sum(server.cpu_times()[:2]) - server_cpu) * us, 3)
    return figures


def _redis_py_pipeline(client: redis.Redis, period_ms: int) -> tuple[Callable[[Sequence[str]], set[str]],
                                                                    Callable[[Sequence[str], int], None]]:
    """The same commands through redis-py's own objects: MGET, and a pipeline of SET NX PX."""
    prefix = "cohort:dedup:ref:"

    def seen(keys: Sequence[str]) -> set[str]:
        values = client.mget([prefix + key for key in keys])
        return {key for key, value in zip(keys, values) if value is not None}

    def add(keys: Sequence[str], at_ms: int) -> None:
        pipe = client.pipeline(transaction=False)
        for key in keys:
            pipe.set(prefix + key, at_ms, nx=True, px=at_ms + period_ms - int(time.time() * 1000))
        pipe.execute()

    return seen, add


def _command_usec(admin: redis.Redis) -> dict[str, int]:
    """Microseconds Redis spent executing each command (INFO commandstats), I/O and AOF excluded."""
    return {name.removeprefix("cmdstat_"): stats["usec"] for name, stats in admin.info("commandstats").items()}


def run(keys: int, batch: int, events_per_day: float, days: float, chunk_keys: int = 10_000,
        script_keys: int = 2500, seed: int = 7) -> dict:
    rng = random.Random(seed)
    batches = _batches(rng, keys, batch)
    with tempfile.TemporaryDirectory(prefix="cohort-redis-bench-") as directory:
        server = RedisProcess(Path(directory) / "redis").start()
        try:
            admin = redis.Redis.from_url(server.url)
            process = psutil.Process(server.pid)
            memory_before = admin.info("memory")
            disk_before = server.disk_bytes()
            state = RedisDedupState(server.url, WEEK_S, "mid", socket_timeout_s=30.0, chunk_keys=chunk_keys,
                                    script_keys=script_keys)
            state.add(["warm-up"], int(time.time() * 1000))  # the namespace marker, once
            usec_before = _command_usec(admin)
            filled = _run_state(state.seen, state.add, batches, process)
            usec_after = _command_usec(admin)
            for command, figure in (("mget", "redis_mget_exec_us_per_key"), ("eval", "redis_script_exec_us_per_key")):
                spent = usec_after.get(command, 0) - usec_before.get(command, 0)
                filled[figure] = round(spent / filled["keys"], 3)
            memory_after = admin.info("memory")
            held = admin.dbsize() - 2  # the warm-up key and the marker
            bytes_per_key = (memory_after["used_memory"] - memory_before["used_memory"]) / held
            figures = {
                "redis_dedup_state": filled,
                "keys_held": held,
                "redis_used_memory_bytes_per_key": round(bytes_per_key, 1),
                "redis_rss_bytes_per_key": round((memory_after["used_memory_rss"]
                                                  - memory_before["used_memory_rss"]) / held, 1),
                "redis_disk_bytes_per_key": round((server.disk_bytes() - disk_before) / held, 1),
                "reach_seconds": round(state.reach_seconds(), 3),
            }
            state.close()
            references = batches[:REFERENCE_BATCHES]
            ref_client = redis.Redis.from_url(server.url.rsplit("/", 1)[0] + "/1")
            ref_seen, ref_add = _redis_py_pipeline(ref_client, WEEK_S * 1000)
            figures["reference_redis_py_pipeline"] = _run_state(ref_seen, ref_add, references, process)
            window = MidWindow(WEEK_S, max_mids=keys * 2)
            figures["reference_mid_window_in_memory"] = _run_state(window.seen, window.add, references, None)
            ref_client.close()
            admin.close()
        finally:
            server.stop()
    ours = figures["redis_dedup_state"]["worker_cpu_us_per_key"]
    figures["ratios"] = {
        "redis_py_pipeline_worker_cpu_over_ours":
            round(figures["reference_redis_py_pipeline"]["worker_cpu_us_per_key"] / ours, 2),
        "ours_worker_cpu_over_mid_window":
            round(ours / max(figures["reference_mid_window_in_memory"]["worker_cpu_us_per_key"], 1e-9), 1),
    }
    window_keys = events_per_day * days
    figures["projection"] = {
        "events_per_day": events_per_day, "days": days, "keys": window_keys,
        "redis_used_memory_gib": round(window_keys * bytes_per_key / 2**30, 1),
        "note": "arithmetic: keys in the window × measured bytes per key; Redis needs headroom beyond it "
                "(fragmentation, AOF rewrite fork) — compare redis_rss_bytes_per_key",
    }
    figures["setup"] = {"keys": keys, "batch": batch, "duplicate_share": DUPLICATE_SHARE,
                        "redis_server": "appendonly yes, appendfsync always", "script_keys": script_keys, "chunk_keys": chunk_keys,
                        "reply_parser": "hiredis" if redis.utils.HIREDIS_AVAILABLE else "python",
                        "cpu_count": psutil.cpu_count(), "load_average": [round(x, 2) for x in psutil.getloadavg()]}
    return figures


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--keys", type=int, default=1_000_000, help="keys to fill the namespace with")
    parser.add_argument("--batch", type=int, default=5000, help="keys per seen/add call (a pipeline batch)")
    parser.add_argument("--events-per-day", type=float, default=2e9, help="for the projection (DIKSHA's peak)")
    parser.add_argument("--days", type=float, default=7.0, help="the dedup period, for the projection")
    parser.add_argument("--chunk-keys", type=int, default=10_000, help="keys per round trip")
    parser.add_argument("--script-keys", type=int, default=2500, help="keys per add script")
    parser.add_argument("--output", default="bench/results/redis-dedup.json", help="JSON file, or - for stdout")
    args = parser.parse_args(argv)
    figures = run(args.keys, args.batch, args.events_per_day, args.days, args.chunk_keys, args.script_keys)
    text = json.dumps(figures, indent=2)
    if args.output == "-":
        print(text)
        return
    Path(args.output).parent.mkdir(parents=True, exist_ok=True)
    Path(args.output).write_text(text + "\n")
    ours, ref = figures["redis_dedup_state"], figures["reference_redis_py_pipeline"]
    print(f"seen+add at batches of {args.batch}: worker CPU {ours['worker_cpu_us_per_key']} µs/key "
          f"(seen {ours['seen_cpu_us_per_key']}, add {ours['add_cpu_us_per_key']}), Redis CPU "
          f"{ours.get('redis_cpu_us_per_key')} µs/key, wall {ours['wall_us_per_key']} µs/key; "
          f"redis-py pipeline object: worker CPU {ref['worker_cpu_us_per_key']} µs/key")
    print(f"memory: {figures['redis_used_memory_bytes_per_key']} B/key used_memory, "
          f"{figures['redis_rss_bytes_per_key']} B/key RSS, {figures['redis_disk_bytes_per_key']} B/key AOF "
          f"at {figures['keys_held']:,} keys → {figures['projection']['redis_used_memory_gib']} GiB for "
          f"{args.days:g} days at {args.events_per_day:.3g} events/day")
    print(f"written to {args.output}")


if __name__ == "__main__":
    main()
