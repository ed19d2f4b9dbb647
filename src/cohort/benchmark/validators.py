"""Which JSON-schema validator the core should use, measured: jsonschema-rs (what Cohort ships) beside
fastjsonschema (what it used before), on the official telemetry v3 schemas.

Events: the 500 real DIKSHA events of the test fixture (tests/fixtures/sunbird) and the synthetic
generator's, each as sent (valid) and broken the ways clients break them (a missing mid, ets as a
string, a missing edata field, an unexpected edata field, an unknown ver, a tag that is not a
string). Per data set and library: µs per event to decide each event and, for a refused one, to say
why in the words the quarantine stores; and whether both libraries decide every event the same way.

Then the whole CPU-heavy half of the core (`prepare_batch`: parse, validate, route, Arrow table) on
realistic batches, as a scale-out worker runs it (2,000 events a call: four 500-event requests with
msgids and channel headers), with the shipped validators and with fastjsonschema put back in their
place, rounds interleaved, GC tuned as the workers tune it; beside orjson parsing the same bodies
(the parse-only ceiling). fastjsonschema is no dependency of Cohort any more: `.venv/bin/pip install
fastjsonschema` to measure it (otherwise it is reported as skipped). Every figure is CPU time of this
thread (`time.thread_time`), so that other work on a shared machine inflates it less than wall time;
the per-stage split comes from the core's own timers (wall time).

    .venv/bin/python -m cohort.benchmark.validators                      # bench/results/validators-<time>.json
    .venv/bin/python -m cohort.benchmark.validators --cpu 1 --rounds 9   # pinned to one core
"""

from __future__ import annotations

import argparse
import copy
import gc
import json
import os
import platform
import statistics
import time
import uuid
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator

import orjson

from cohort.core import telemetry_schema
from cohort.core.log_record import LogRecord
from cohort.core.process_batch import prepare_batch
from cohort.core.stages import validate as validate_stage
from cohort.pipeline.gc_tuning import tune_gc
from cohort.synthetic import TelemetryGenerator

REPO = Path(__file__).resolve().parents[3]
SAMPLE = REPO / "tests" / "fixtures" / "sunbird" / "telemetry-sample.jsonl"
REQUEST_EVENTS = 500  # events per request, as the load benchmark sends them
CALL_EVENTS = 2000  # events per prepare_batch call: the scale-out worker's default batch

Check = Callable[[dict], "str | None"]  # None: valid; otherwise the quarantine's message


# -- the candidates -----------------------------------------------------------------------------------

class Shipped:
    """The validators Cohort ships (cohort.core.telemetry_schema)."""

    name = "jsonschema-rs"

    def __init__(self) -> None:
        telemetry_schema.compile_all()

    def check(self, eid: str) -> Check:
        schema = telemetry_schema.validator_for(eid)
        assert schema is not None
        is_valid, explain = schema.is_valid, schema.explain
        return lambda event: None if is_valid(event) else explain(event)

    @contextmanager
    def in_core(self) -> Iterator[None]:
        yield


class Fastjsonschema:
    """What the core ran before: fastjsonschema's generated Python, with the same resolution of the
    schemas' references from the package's files and the same rewording of its messages."""

    name = "fastjsonschema"

    def __init__(self) -> None:
        import fastjsonschema  # not a dependency any more: pip install fastjsonschema to measure it

        self._exception = fastjsonschema.JsonSchemaException
        handlers = {"resource": lambda uri: telemetry_schema.load_schema(uri.rsplit("/", 1)[1].removesuffix(".json"))}
        self._compiled = {eid: fastjsonschema.compile(telemetry_schema.load_schema(eid.lower()), handlers=handlers)
                          for eid in telemetry_schema.event_types()}

    def check(self, eid: str) -> Check:
        compiled, exception = self._compiled[eid], self._exception

        def check(event: dict) -> str | None:
            try:
                compiled(event)
                return None
            except exception as exc:
                return _fastjsonschema_message(exc)
        return check

    @contextmanager
    def in_core(self) -> Iterator[None]:
        """The validate stage looks its schemas up through `validator_for`: answer with these."""
        adapters = {eid: _StageAdapter(eid, self.check(eid)) for eid in self._compiled}
        shipped = validate_stage.validator_for
        validate_stage.validator_for = adapters.get  # type: ignore[assignment]
        try:
            yield
        finally:
            validate_stage.validator_for = shipped


class _StageAdapter:
    """A check in the shape of the shipped `EventSchema` (is_valid, explain), for the validate stage."""

    def __init__(self, eid: str, check: Check):
        self.eid, self._check = eid, check

    def is_valid(self, event: dict) -> bool:
        return self._check(event) is None

    def explain(self, event: dict) -> str:
        return self._check(event) or ""


def _fastjsonschema_message(exc: Any) -> str:
    message = str(getattr(exc, "message", exc))
    if message.startswith("data."):
        return message[len("data."):]
    if message.startswith("data "):
        return "event " + message[len("data "):]
    return message


def candidates() -> tuple[list[Any], dict[str, str]]:
    found: list[Any] = [Shipped()]
    skipped: dict[str, str] = {}
    try:
        found.append(Fastjsonschema())
    except ImportError as exc:
        skipped["fastjsonschema"] = f"not installed ({exc}): .venv/bin/pip install fastjsonschema"
    return found, skipped


# -- the events ---------------------------------------------------------------------------------------

def sample_events(path: Path = SAMPLE) -> list[dict]:
    return [orjson.loads(line) for line in path.read_bytes().splitlines()] if path.exists() else []


def synthetic_events(count: int, seed: int) -> list[dict]:
    return list(TelemetryGenerator(seed=seed).events(count))


def _drop_mid(e: dict) -> None:
    e.pop("mid", None)


def _ets_as_text(e: dict) -> None:
    e["ets"] = str(e.get("ets"))


def _drop_edata_field(e: dict) -> None:
    edata = e.get("edata")
    if isinstance(edata, dict) and edata:
        edata.pop(next(iter(edata)))
    else:
        e.pop("edata", None)


def _extra_edata_field(e: dict) -> None:
    e.setdefault("edata", {})["clientSideOnly"] = True


def _unknown_ver(e: dict) -> None:
    e["ver"] = "2.0"


def _tag_not_text(e: dict) -> None:
    e["tags"] = ["diksha", 42]


BREAKS = (_drop_mid, _ets_as_text, _drop_edata_field, _extra_edata_field, _unknown_ver, _tag_not_text)


def broken(events: list[dict]) -> list[dict]:
    """Each event broken one way, the ways taken in turn."""
    out = []
    for n, event in enumerate(events):
        event = copy.deepcopy(event)
        BREAKS[n % len(BREAKS)](event)
        out.append(event)
    return out


# -- library alone ------------------------------------------------------------------------------------

@dataclass
class LibraryFigure:
    library: str
    data: str  # sample / synthetic
    kind: str  # valid / invalid
    events: int
    us_per_event: float  # median of the rounds
    us_min: float
    us_max: float
    refused: int  # events the library refused (valid data: should be 0; invalid: all)


def library_figures(cands: list[Any], data: dict[str, list[dict]], rounds: int) -> list[LibraryFigure]:
    figures = []
    for data_name, events in data.items():
        for kind, batch in (("valid", events), ("invalid", broken(events))):
            checks = {c.name: [(c.check(e["eid"]), e) for e in batch] for c in cands}
            times: dict[str, list[float]] = {name: [] for name in checks}
            refused: dict[str, int] = {}
            for _ in range(rounds):
                for name, pairs in checks.items():  # interleaved: noise on the machine hits both
                    started = time.thread_time()
                    verdicts = [check(event) for check, event in pairs]
                    times[name].append((time.thread_time() - started) / len(pairs) * 1e6)
                    refused[name] = sum(v is not None for v in verdicts)
            for name, runs in times.items():
                figures.append(LibraryFigure(name, data_name, kind, len(batch), round(statistics.median(runs), 3),
                                             round(min(runs), 3), round(max(runs), 3), refused[name]))
    return figures


@dataclass
class Agreement:
    events: int
    same_verdict: int
    same_message: int
    differences: list[dict] = field(default_factory=list)  # a few examples


def agreement(cands: list[Any], data: dict[str, list[dict]]) -> Agreement | None:
    """Do both libraries accept and refuse the same events, and say the same about them?"""
    if len(cands) < 2:
        return None
    everything = [e for events in data.values() for e in events + broken(events)]
    result = Agreement(len(everything), 0, 0)
    for event in everything:
        said = [c.check(event["eid"])(event) for c in cands]
        if all((s is None) == (said[0] is None) for s in said):
            result.same_verdict += 1
        if all(s == said[0] for s in said):
            result.same_message += 1
        elif len(result.differences) < 8:
            result.differences.append({"mid": event.get("mid"), "eid": event["eid"],
                                       **{c.name: s for c, s in zip(cands, said)}})
    return result


# -- the whole core -----------------------------------------------------------------------------------

def requests_of(events: list[dict], seed: int) -> list[LogRecord]:
    """500-event requests with msgids and channel headers, as the ingest API logs them."""
    records = []
    for start in range(0, len(events), REQUEST_EVENTS):
        chunk = events[start:start + REQUEST_EVENTS]
        channel = (chunk[0].get("context") or {}).get("channel", "bench")
        msgid = f"bench-{seed}-{start}-{uuid.uuid4().hex[:8]}"
        body = orjson.dumps({"id": "api.sunbird.telemetry", "ver": "3.0", "params": {"msgid": msgid}, "events": chunk})
        records.append(LogRecord(payload=body, event_count=len(chunk), received_at_ms=int(time.time() * 1000),
                                 headers={"x-channel-id": channel, "msgid": msgid}, offset=start // REQUEST_EVENTS))
    return records


def synthetic_requests(count: int, seed: int) -> list[LogRecord]:
    records = []
    for offset, (envelope, headers) in enumerate(TelemetryGenerator(seed=seed).batches_with_headers(count, REQUEST_EVENTS)):
        kept = {name.lower(): value for name, value in headers.items()}
        kept["msgid"] = envelope["params"]["msgid"]
        records.append(LogRecord(payload=orjson.dumps(envelope), event_count=len(envelope["events"]),
                                 received_at_ms=int(time.time() * 1000), headers=kept, offset=offset))
    return records


@dataclass
class CoreFigure:
    validator: str
    data: str
    events: int
    us_per_event: float  # prepare_batch, CPU time, median of the rounds
    us_min: float
    us_max: float
    stage_us_per_event: dict[str, float]  # median per stage (extract, validate, route incl. Arrow), wall time
    parse_only_us_per_event: float  # orjson over the same bodies, same rounds
    ratio_to_parse_only: float  # parse-only µs / core µs: the share of the parse ceiling the core reaches


def core_figures(cands: list[Any], data: dict[str, list[LogRecord]], rounds: int) -> list[CoreFigure]:
    version = telemetry_schema.schema_version()
    figures = []
    for data_name, records in data.items():
        calls = [records[i:i + CALL_EVENTS // REQUEST_EVENTS] for i in range(0, len(records), CALL_EVENTS // REQUEST_EVENTS)]
        events = sum(r.event_count for r in records)
        totals: dict[str, list[float]] = {c.name: [] for c in cands}
        stages: dict[str, dict[str, list[float]]] = {c.name: {} for c in cands}
        parse: list[float] = []
        for _ in range(rounds):
            started = time.thread_time()
            for record in records:
                orjson.loads(record.payload)
            parse.append((time.thread_time() - started) / events * 1e6)
            for c in cands:
                with c.in_core():
                    now = int(time.time() * 1000)
                    started = time.thread_time()
                    prepared = [prepare_batch(call, now_ms=now, config_version=version) for call in calls]
                    totals[c.name].append((time.thread_time() - started) / events * 1e6)
                stored = sum(p.rows.num_rows for p in prepared)
                assert stored + sum(f.event_count for p in prepared for f in p.failed) == events
                for stage in prepared[0].stage_micros:
                    micros = sum(p.stage_micros.get(stage, 0) for p in prepared)
                    stages[c.name].setdefault(stage, []).append(micros / events)
                del prepared
        parse_us = statistics.median(parse)
        for c in cands:
            runs = totals[c.name]
            per_stage = {stage: round(statistics.median(v), 3) for stage, v in stages[c.name].items()}
            figures.append(CoreFigure(c.name, data_name, events, round(statistics.median(runs), 3), round(min(runs), 3),
                                      round(max(runs), 3), per_stage, round(parse_us, 3),
                                      round(parse_us / statistics.median(runs), 3)))
    return figures


# -- the run ------------------------------------------------------------------------------------------

def run(synthetic: int, rounds: int, seed: int, sample: Path = SAMPLE) -> dict:
    cands, skipped = candidates()
    threshold = gc.get_threshold()
    tune_gc()  # as the workers run the core
    try:
        return _run(cands, skipped, synthetic, rounds, seed, sample)
    finally:  # a caller's process (a test's) gets its collector back
        gc.unfreeze()
        gc.set_threshold(*threshold)


def _run(cands: list[Any], skipped: dict[str, str], synthetic: int, rounds: int, seed: int, sample: Path) -> dict:
    real = sample_events(sample)
    data = {"sample": real, "synthetic": synthetic_events(synthetic, seed)} if real else \
        {"synthetic": synthetic_events(synthetic, seed)}
    if not real:
        skipped["sample"] = f"{sample} not found (run from a checkout of the repository)"
    library = library_figures(cands, data, rounds)
    agreed = agreement(cands, data)
    core_data = {"synthetic": synthetic_requests(synthetic, seed + 1)}
    if real:
        core_data["sample"] = requests_of(real * max(1, synthetic // len(real) // 4), seed)  # re-sent with new msgids
    gc.collect()
    core = core_figures(cands, core_data, rounds)
    return {
        "command": "python -m cohort.benchmark.validators",
        "machine": {"cpus": os.cpu_count(), "affinity": sorted(os.sched_getaffinity(0)),
                    "python": platform.python_version(), "load_average": os.getloadavg()},
        "versions": _versions(), "rounds": rounds, "skipped": skipped,
        "library": [asdict(f) for f in library],
        "agreement": asdict(agreed) if agreed else None,
        "core": [asdict(f) for f in core],
    }


def _versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    found = {}
    for name in ("jsonschema-rs", "fastjsonschema", "orjson", "pyarrow"):
        try:
            found[name] = version(name)
        except PackageNotFoundError:
            found[name] = "not installed"
    return found


def print_table(result: dict) -> None:
    print(f"\nlibrary alone (CPU µs/event, median of {result['rounds']} rounds; min–max)")
    print(f"{'data':10} {'events':8} {'library':15} {'µs/event':>9} {'min–max':>14} {'refused':>8}")
    for f in result["library"]:
        print(f"{f['data'] + ' ' + f['kind']:18} {f['library']:15} {f['us_per_event']:>9.2f} "
              f"{f['us_min']:>6.2f}–{f['us_max']:<6.2f} {f['refused']:>8}")
    if result["agreement"]:
        a = result["agreement"]
        print(f"\nagreement: {a['same_verdict']}/{a['events']} same verdict, {a['same_message']}/{a['events']} same message")
        for d in a["differences"]:
            print("  ", d)
    print("\nprepare_batch (2,000-event calls of 500-event requests), CPU µs/event; stages: wall µs/event")
    print(f"{'data':10} {'validator':15} {'core':>7} {'min–max':>14} {'extract':>8} {'validate':>9} {'route':>7} "
          f"{'parse-only':>10} {'ratio':>6}")
    for f in result["core"]:
        s = f["stage_us_per_event"]
        print(f"{f['data']:10} {f['validator']:15} {f['us_per_event']:>7.2f} {f['us_min']:>6.2f}–{f['us_max']:<6.2f} "
              f"{s.get('extract', 0):>8.2f} {s.get('validate', 0):>9.2f} {s.get('route', 0):>7.2f} "
              f"{f['parse_only_us_per_event']:>10.2f} {f['ratio_to_parse_only']:>6.3f}")
    for name, why in result["skipped"].items():
        print(f"skipped {name}: {why}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--synthetic", type=int, default=20_000, help="synthetic events (and core events per round)")
    parser.add_argument("--rounds", type=int, default=7, help="interleaved rounds per figure (the median is reported)")
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--cpu", type=int, default=None, help="pin this process to one core")
    parser.add_argument("--sample", type=Path, default=SAMPLE, help="the real Sunbird events (JSON lines)")
    parser.add_argument("--output", type=Path, default=None,
                        help="JSON result (default bench/results/validators-<time>.json)")
    args = parser.parse_args()
    if args.cpu is not None:
        os.sched_setaffinity(0, {args.cpu})
    result = run(args.synthetic, args.rounds, args.seed, args.sample)
    output = args.output or Path("bench/results") / f"validators-{time.strftime('%Y%m%d-%H%M%S')}.json"
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(json.dumps(result, indent=1))
    print_table(result)
    print(f"\n{output}")


if __name__ == "__main__":
    main()
