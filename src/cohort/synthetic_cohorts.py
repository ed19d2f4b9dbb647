"""A synthetic learning world whose answers are known: states, schools, classes, course batches and learners
whose days are simulated, with the figures the learning metrics must find computed alongside.

Why: metrics (active learners, time spent, item statistics, course progress, at-risk learners) are only
tested when the data has a known answer. `TelemetryGenerator` (synthetic.py) makes realistic traffic for
benchmarks but no world to ask questions of; this module builds one from a seed and reuses that module's
id helpers and event builders, so events look the same and validate against the same v3 schemas.

The world (`CohortWorld`):
- tenants: one per state (the Sunbird `channel`), each with districts → schools → classes; every event
  of a learner carries `context.rollup` = {l1: state (the channel), l2: district, l3: school, l4: class};
- courses per state, each with units (`object.rollup.l1` course, `l2` unit) holding videos, PDFs and
  practice sets (questions); every unit has a printed QR (DIAL) code;
- a class takes 1–3 of its state's courses; a course batch is (course, class), named in the
  `context.cdata` of course events as `{"type": "Batch", "id": …}` beside `{"type": "Course", "id": …}`;
- learners (`actor.id` a clear UUID, as an app sends it) each with a device; some devices are shared by
  two learners of a school, a few learners switch to a new device part-way;
- personas: steady, weekend (Saturdays and Sundays only), declining (stops after a day: inactive),
  struggling (scores fall below the threshold for the last weeks), stalled (still active, stops
  completing course content), never (enrolled, never active: no telemetry at all).

Rules the ground truth follows (and the metrics are expected to follow):
- days are UTC dates of `ets`; every session lies within one UTC day (01:00–18:00 UTC);
- a content play is a START of the content player (`context.env` contentplayer); time spent is the
  `edata.duration` of the player's END events; a QR scan is a SEARCH whose `edata.filters.dialcodes` is set
  (the scanner's INTERACT events come before it and are not counted again);
- ASSESS: `edata.item.id`/`maxscore`, `score`, `pass` ("Yes" when score = maxscore), `duration` (s) and
  `index` (the question's position in its set). A learner's first attempt at an item is their ASSESS of
  that item with the earliest `ets` (within the scope asked about);
- course progress: a content of course C is completed by a learner when a player END of it carries
  `edata.summary` `{"progress": 100}` and the course batch in `context.cdata` (plays from a QR scan or the
  library do not count); progress = completed distinct contents / contents of the course × 100;
- at-risk as of a day (defaults below): inactive — last active day at least INACTIVE_DAYS before;
  low scores — over the last RECENT_DAYS days at least MIN_RECENT_ASSESSMENTS ASSESS events whose
  sum(score)/sum(maxscore) is below LOW_SCORE; stalled — active within INACTIVE_DAYS, but in a course
  started (progress > 0) and not finished the last progress is at least STALLED_DAYS old. Learners who
  never sent an event are not at risk in telemetry (nothing says they exist): `never_active` lists them;
- scopes as the scope filter reads them: `batch:ID` covers events whose cdata names the batch (course
  pages and plays in the batch), `course:ID` those whose object.rollup.l1 or cdata Course is the course
  (also QR plays of its content), `rollup.lN:ID` every event of the learners there.

Offline sync: a quarter of devices are offline and upload every 2–7 days (in the evening); the others
upload each session seconds after it ends. An upload is one device's buffered events split into batch
envelopes whose envelope `ets` is the upload (sync) time, while each event's `ets` is when it happened, as
the app sends them; `uploads()` yields them in upload order, so a loader that sends them in that order
sends late events after later ones. Every event is uploaded: the last buffers sync after the range ends.

Streams are generated day by day (each day from its own seeded rng) and never hold more than a day's
events plus offline buffers; output depends only on the constructor's arguments, never on the clock.
"""

from __future__ import annotations

import gc
import random
from collections import Counter, defaultdict
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field, replace
from datetime import UTC, date, datetime, timedelta
from typing import Any

from cohort.synthetic import (_CPUS, _PHONES, APP_ID, APP_VERSIONS, ENVELOPE_ID, PLAYER_PID, _Device, _dialcode,
                              _do_id, _hex, _Session, _uuid, app_start_edata, impression_edata, interrupt_events,
                              question_events, search_event, touch_event)

__all__ = ["CohortWorld", "GroundTruth", "DeviceUpload", "AtRisk", "ItemStats", "PERSONAS", "DEFAULT_END"]

DEFAULT_END = date(2026, 6, 30)  # fixed, so a world never depends on today
DEFAULT_DAYS = 90
PERSONAS = ("steady", "weekend", "declining", "struggling", "stalled", "never")
_PERSONA_WEIGHTS = (0.45, 0.10, 0.12, 0.10, 0.13, 0.10)

INACTIVE_DAYS = 14
LOW_SCORE = 0.5
RECENT_DAYS = 14
MIN_RECENT_ASSESSMENTS = 5
STALLED_DAYS = 21

OFFLINE_SHARE = 0.25
SHARED_DEVICE_SHARE = 0.12  # of learners: they share a device with another learner of their school
SWITCHER_SHARE = 0.05  # of learners: they move to a new device part-way

_DAY_MS = 86_400_000
_FIRST_START_MS = 3_600_000  # sessions start 01:00–15:30 UTC (06:30–21:00 IST) ...
_LAST_START_MS = 55_800_000
_NO_START_AFTER_MS = 57_600_000  # ... and a device's sessions chained after 16:00 UTC are dropped
_SYNC_FROM_MS, _SYNC_TO_MS = 64_800_000, 72_000_000  # offline devices sync 18:00–20:00 UTC

_VIDEO = "video/mp4"
_PDF = "application/pdf"
_PRACTICE = "application/vnd.ekstep.ecml-archive"
_SUBJECTS = ("Mathematics", "Science", "English", "Hindi", "Social Science", "Environmental Studies")
_QUESTION_TYPES = (("mcq", 1), ("mcq", 1), ("mcq", 1), ("mtf", 2), ("ftb", 1), ("mtf", 4))


# --- the world -------------------------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class Item:
    id: str
    type: str
    title: str
    maxscore: int


@dataclass(frozen=True, slots=True)
class Content:
    id: str
    title: str
    kind: str  # video | pdf | practice
    mime: str
    course: str
    unit: str
    ver: str
    length: int  # video seconds, PDF pages, or number of questions
    items: tuple[Item, ...] = ()


@dataclass(frozen=True, slots=True)
class Unit:
    id: str
    title: str
    dialcode: str
    contents: tuple[Content, ...]


@dataclass(frozen=True, slots=True)
class Course:
    id: str
    tenant: str
    name: str
    subject: str
    units: tuple[Unit, ...]
    contents: tuple[Content, ...] = field(init=False)  # in course order: the order a learner works through them

    def __post_init__(self) -> None:
        object.__setattr__(self, "contents", tuple(c for unit in self.units for c in unit.contents))


@dataclass(frozen=True, slots=True)
class SchoolClass:
    id: str
    name: str
    tenant: str
    district: str
    school: str

    @property
    def rollup(self) -> dict[str, str]:
        """`context.rollup` of its learners' events: l1 state (channel), l2 district, l3 school, l4 class."""
        return {"l1": self.tenant, "l2": self.district, "l3": self.school, "l4": self.id}


@dataclass(frozen=True, slots=True)
class Batch:
    id: str
    course: str
    class_id: str
    tenant: str


@dataclass(frozen=True, slots=True)
class Learner:
    id: str  # actor.id, in clear as the app sends it
    tenant: str
    class_id: str
    persona: str
    skill: float  # 0..1: drives the chance of a right answer
    activity: float  # scales the persona's chance of being active on a day
    batches: tuple[str, ...]
    devices: tuple[tuple[int, int], ...]  # (from day index, device index), first from day 0
    turn_day: int  # declining: last active day index; struggling: scores fall from it; stalled: progress stops

    def device_on(self, day_index: int) -> int:
        current = self.devices[0][1]
        for since, device in self.devices:
            if since <= day_index:
                current = device
        return current


@dataclass(frozen=True, slots=True)
class Tenant:
    channel: str
    name: str
    districts: tuple[tuple[str, str], ...]  # (id, name)
    schools: tuple[tuple[str, str, str], ...]  # (id, name, district id)


def _org_id(rng: random.Random) -> str:
    """A Sunbird organisation or batch id: 01 and 17 more digits."""
    return f"01{rng.randrange(10**16, 10**17)}"


@dataclass(frozen=True, slots=True)
class DeviceUpload:
    """One batch envelope a device uploaded, and when (the envelope's `ets`; its events keep their own)."""

    envelope: dict
    headers: dict[str, str]
    synced_ms: int
    late: bool  # its oldest event happened on an earlier UTC day than the upload


class CohortWorld:
    """Tenants, schools, classes, courses, batches, learners and devices built from `seed`; `uploads()`
    simulates `days` days from `start` (default: the `days` days ending on DEFAULT_END) and
    `ground_truth()` says what those days hold."""

    def __init__(self, seed: int = 0, *, states: int = 2, districts: int = 2, schools: int = 3, classes: int = 2,
                 learners: int = 15, courses: int = 5, days: int = DEFAULT_DAYS, start: date | None = None) -> None:
        if min(states, districts, schools, classes, learners, courses, days) < 1:
            raise ValueError("states, districts, schools, classes, learners, courses and days must each be ≥ 1")
        self.seed = seed
        self.days = days
        self.start = start if start is not None else DEFAULT_END - timedelta(days=days - 1)
        self.end = self.start + timedelta(days=days - 1)
        rng = random.Random(f"cohort.cohorts.world:{seed}")

        self.tenants: list[Tenant] = []
        self.classes: dict[str, SchoolClass] = {}
        self.courses: dict[str, Course] = {}
        self.batches: dict[str, Batch] = {}
        self.learners: list[Learner] = []
        self.devices: list[_Device] = []
        self.sync_every: list[int] = []  # per device: 0 online, else days between uploads
        self.sync_phase: list[int] = []
        for s in range(states):
            channel = _hex(rng, 128)
            tenant_courses = [self._make_course(rng, channel, s, c) for c in range(courses)]
            district_rows, school_rows = [], []
            for d in range(districts):
                district = (_org_id(rng), f"District {s + 1}.{d + 1}")
                district_rows.append(district)
                for k in range(schools):
                    school = (_org_id(rng), f"School {s + 1}.{d + 1}.{k + 1}", district[0])
                    school_rows.append(school)
                    school_learners: list[tuple[str, int]] = []  # (learner id, learner index) of this school
                    for c in range(classes):
                        cls = SchoolClass(_org_id(rng), f"Class {6 + c % 5} {'ABCDEFGH'[c // 5 % 8]}", channel,
                                          district[0], school[0])
                        self.classes[cls.id] = cls
                        taken = rng.sample(tenant_courses, min(len(tenant_courses), rng.randint(1, 3)))
                        batch_ids = []
                        for course in taken:
                            batch = Batch(_org_id(rng), course.id, cls.id, channel)
                            self.batches[batch.id] = batch
                            batch_ids.append(batch.id)
                        for _ in range(learners):
                            school_learners.append(self._make_learner(rng, cls, tuple(batch_ids)))
                    self._give_devices(rng, channel, school_learners)
            self.tenants.append(Tenant(channel, f"State {s + 1}", tuple(district_rows), tuple(school_rows)))
        self._content_by_id = {c.id: c for course in self.courses.values() for c in course.contents}
        self._tenant_contents = {t.channel: [c for course in self.courses.values() if course.tenant == t.channel
                                             for c in course.contents] for t in self.tenants}

    # --- building ------------------------------------------------------------------------------

    def _make_course(self, rng: random.Random, channel: str, state: int, number: int) -> Course:
        subject = _SUBJECTS[(state + number) % len(_SUBJECTS)]
        course_id = _do_id(rng)
        units = []
        for u in range(rng.randint(4, 5)):
            unit_id = _do_id(rng)
            contents = []
            for k, kind in enumerate(("video", "pdf", "practice", rng.choice(("video", "practice")))):
                title = f"{subject} {u + 1}.{k + 1}"
                if kind == "practice":
                    items = tuple(Item(_do_id(rng), qtype, f"{title}: question {q + 1}", maxscore)
                                  for q in range(rng.randint(3, 6))
                                  for qtype, maxscore in (rng.choice(_QUESTION_TYPES),))
                    contents.append(Content(_do_id(rng), title, kind, _PRACTICE, course_id, unit_id,
                                            str(rng.randint(1, 9)), len(items), items))
                elif kind == "video":
                    contents.append(Content(_do_id(rng), title, kind, _VIDEO, course_id, unit_id,
                                            str(rng.randint(1, 9)), rng.randint(120, 600)))
                else:
                    contents.append(Content(_do_id(rng), title, kind, _PDF, course_id, unit_id,
                                            str(rng.randint(1, 9)), rng.randint(4, 12)))
            units.append(Unit(unit_id, f"{subject} unit {u + 1}", _dialcode(rng), tuple(contents)))
        course = Course(course_id, channel, f"{subject} for class {6 + number % 5}", subject, tuple(units))
        self.courses[course.id] = course
        return course

    def _make_learner(self, rng: random.Random, cls: SchoolClass, batch_ids: tuple[str, ...]) -> tuple[str, int]:
        persona = rng.choices(PERSONAS, weights=_PERSONA_WEIGHTS)[0]
        days = self.days
        if persona == "declining":  # stops early enough to be inactive ≥ INACTIVE_DAYS at the end
            earliest = max(1, days // 5)
            turn = rng.randint(earliest, max(earliest, days - INACTIVE_DAYS - 5))
        elif persona == "struggling":
            turn = max(0, days - RECENT_DAYS - rng.randint(5, 15))
        elif persona == "stalled":
            turn = max(1, days - STALLED_DAYS - rng.randint(8, 20))
        else:
            turn = days
        learner = Learner(_uuid(rng), cls.tenant, cls.id, persona, 0.35 + 0.65 * rng.betavariate(3, 2),
                          rng.uniform(0.6, 1.2), batch_ids, (), turn)
        self.learners.append(learner)
        return learner.id, len(self.learners) - 1

    def _new_device(self, rng: random.Random, channel: str, users: tuple[int, ...]) -> int:
        make, os_name, mem, scrn, camera = rng.choice(_PHONES)
        self.devices.append(_Device(_hex(rng, 160), channel, rng.choice(APP_VERSIONS),
                                    (make, os_name, mem, scrn, camera, rng.choice(_CPUS),
                                     rng.choice((8.0, 16.0, 32.0, 64.0))), users))
        offline = rng.random() < OFFLINE_SHARE
        every = rng.randint(2, 7) if offline else 0
        self.sync_every.append(every)
        self.sync_phase.append(rng.randrange(every) if every else 0)
        return len(self.devices) - 1

    def _give_devices(self, rng: random.Random, channel: str, school: list[tuple[str, int]]) -> None:
        """One device a learner; a few pairs share one; a few learners switch to a new device part-way."""
        order = [index for _, index in school]
        rng.shuffle(order)
        pairs = round(len(order) * SHARED_DEVICE_SHARE / 2)
        owners: list[tuple[int, ...]] = [tuple(order[2 * i:2 * i + 2]) for i in range(pairs)]
        owners += [(index,) for index in order[2 * pairs:]]
        for users in owners:
            device = self._new_device(rng, channel, users)
            for index in users:
                devices: tuple[tuple[int, int], ...] = ((0, device),)
                if rng.random() < SWITCHER_SHARE and self.days > 2:
                    devices += ((rng.randint(1, self.days - 1), self._new_device(rng, channel, (index,))),)
                self.learners[index] = replace(self.learners[index], devices=devices)

    # --- lookups -------------------------------------------------------------------------------

    def tenant_of(self, channel: str) -> Tenant:
        return next(t for t in self.tenants if t.channel == channel)

    def batches_of(self, channel: str) -> list[Batch]:
        return [b for b in self.batches.values() if b.tenant == channel]

    def content(self, content_id: str) -> Content:
        return self._content_by_id[content_id]

    # --- simulation ----------------------------------------------------------------------------

    def ground_truth(self) -> GroundTruth:
        """What the simulated days hold: runs the simulation once (without building envelopes)."""
        run = _Run(self)
        for _ in run.uploads(batch_size=0):
            pass
        return run.truth

    def uploads(self, batch_size: int = 200, truth: GroundTruth | None = None) -> Iterator[DeviceUpload]:
        """Every event of the range as device uploads of ≤ `batch_size` events, in upload order. If `truth`
        is given it is filled as the stream goes (complete once the stream is exhausted)."""
        if batch_size < 1:
            raise ValueError("batch_size must be at least 1")
        return _Run(self, truth).uploads(batch_size)

    def batches_with_headers(self, batch_size: int = 200) -> Iterator[tuple[dict, dict[str, str]]]:
        """(envelope, HTTP headers) pairs, as `TelemetryGenerator.batches_with_headers` gives them."""
        for upload in self.uploads(batch_size):
            yield upload.envelope, upload.headers

    def events(self) -> Iterator[dict]:
        """Every event, in upload order (a late upload's events come after later events of others)."""
        for upload in self.uploads(500):
            yield from upload.envelope["events"]


def day_start_ms(day: date) -> int:
    return int(datetime(day.year, day.month, day.day, tzinfo=UTC).timestamp() * 1000)


# --- one run of the simulation -------------------------------------------------------------------

class _Run:
    """The mutable state of one pass over the days, so every `uploads()` call replays from scratch."""

    def __init__(self, world: CohortWorld, truth: GroundTruth | None = None) -> None:
        self.world = world
        self.truth = truth if truth is not None else GroundTruth(world)
        self.completed: list[dict[str, set[str]]] = [defaultdict(set) for _ in world.learners]
        self.attempts: list[Counter[str]] = [Counter() for _ in world.learners]
        self.buffers: dict[int, list[dict]] = {}  # offline devices: events not uploaded yet
        self.sync_rng = random.Random(f"cohort.cohorts.sync:{world.seed}")  # when devices upload
        self.msgid_rng = random.Random(f"cohort.cohorts.msgid:{world.seed}")  # envelopes: depends on the batch size

    def uploads(self, batch_size: int) -> Iterator[DeviceUpload]:
        world = self.world
        for day_index in range(world.days):
            day = world.start + timedelta(days=day_index)
            collecting = gc.isenabled()
            gc.disable()  # a day allocates ~10⁴ acyclic dicts: the cycle collector's passes over them halved speed
            try:
                pending = self._simulate_day(day_index, day)
            finally:
                if collecting:
                    gc.enable()
            base = day_start_ms(day)
            for dev, every in enumerate(world.sync_every):
                if every and day_index % every == world.sync_phase[dev] and self.buffers.get(dev):
                    pending.append((base + self.sync_rng.randint(_SYNC_FROM_MS, _SYNC_TO_MS), dev,
                                    self.buffers.pop(dev)))
            pending.sort(key=lambda p: (p[0], p[1]))
            for synced, dev, events in pending:
                yield from self._envelopes(synced, dev, events, batch_size)
        # what offline devices still hold syncs on their next sync day after the range
        tail = []
        for dev, events in sorted(self.buffers.items()):
            every, phase = world.sync_every[dev], world.sync_phase[dev]
            next_day = world.days + (phase - world.days) % every
            synced = day_start_ms(world.start + timedelta(days=next_day)) + self.sync_rng.randint(
                _SYNC_FROM_MS, _SYNC_TO_MS)
            tail.append((synced, dev, events))
        self.buffers.clear()
        for synced, dev, events in sorted(tail, key=lambda p: (p[0], p[1])):
            yield from self._envelopes(synced, dev, events, batch_size)

    def _envelopes(self, synced: int, dev: int, events: list[dict], batch_size: int) -> Iterator[DeviceUpload]:
        device = self.world.devices[dev]
        sync_day = synced // _DAY_MS
        self.truth._upload(len(events), synced - events[0]["ets"], events[0]["ets"] // _DAY_MS < sync_day)
        if batch_size == 0:  # ground truth only
            return
        headers = {"X-Channel-Id": device.channel, "X-App-Id": APP_ID, "X-Device-Id": device.did}
        for n, i in enumerate(range(0, len(events), batch_size)):
            chunk = events[i:i + batch_size]
            envelope = {"id": ENVELOPE_ID, "ver": "3.0", "params": {"msgid": _uuid(self.msgid_rng)},
                        "ets": synced + n, "events": chunk}
            yield DeviceUpload(envelope, dict(headers), synced + n, chunk[0]["ets"] // _DAY_MS < sync_day)

    def _simulate_day(self, day_index: int, day: date) -> list[tuple[int, int, list[dict]]]:
        """Every session of the day, device by device; returns the uploads of online devices (offline
        devices' sessions go to their buffers)."""
        world = self.world
        rng = random.Random(f"cohort.cohorts.day:{world.seed}:{day_index}")
        weekend = day.weekday() >= 5
        base = day_start_ms(day)
        planned: dict[int, list[tuple[int, int]]] = defaultdict(list)
        for index, learner in enumerate(world.learners):
            for _ in range(self._sessions_today(learner, day_index, weekend, rng)):
                planned[learner.device_on(day_index)].append(
                    (base + rng.randint(_FIRST_START_MS, _LAST_START_MS), index))
        pending = []
        for dev in sorted(planned):
            last_end = 0
            for start, index in sorted(planned[dev]):
                start = max(start, last_end + rng.randint(60_000, 900_000))
                if start - base > _NO_START_AFTER_MS:
                    break
                events = self._session(rng, index, dev, start, day)
                last_end = events[-1]["ets"]
                if world.sync_every[dev]:
                    self.buffers.setdefault(dev, []).extend(events)
                else:
                    pending.append((last_end + rng.randint(2_000, 90_000), dev, events))
        return pending

    @staticmethod
    def _sessions_today(learner: Learner, day_index: int, weekend: bool, rng: random.Random) -> int:
        persona = learner.persona
        if persona == "never":
            return 0
        if persona == "weekend":
            p = 0.8 if weekend else 0.0
        else:
            p = 0.25 if weekend else 0.5
            if persona == "declining":
                if day_index > learner.turn_day:
                    return 0
                p *= 1 - 0.6 * day_index / max(1, learner.turn_day)
        if rng.random() >= p * learner.activity:
            return 0
        return 1 + (rng.random() < 0.25) + (rng.random() < 0.05)

    # --- one session -----------------------------------------------------------------------------

    def _session(self, rng: random.Random, index: int, dev: int, start: int, day: date) -> list[dict]:
        world = self.world
        learner = world.learners[index]
        device = world.devices[dev]
        cls = world.classes[learner.class_id]
        s = _Session(rng, device, learner.id, "student", True, start, rollup=cls.rollup)
        tally = _Tally(self.truth, learner, cls, day, device.did, s.sid)
        out = [s.event("START", "home", app_start_edata(s, device))]
        s.tick(1, 4)
        shown = [c.id for c in rng.sample(world._tenant_contents[learner.tenant], 3)]
        out.append(s.event("IMPRESSION", "home", impression_edata(s, "resources", "view", shown)))
        for _ in range(1 + (rng.random() < 0.5) + (rng.random() < 0.2)):
            r = rng.random()
            if r < 0.6:
                self._course_flow(s, index, day, tally, out)
            elif r < 0.85:
                self._qr_flow(s, index, day, tally, out)
            else:
                self._library_flow(s, index, day, tally, out)
            if rng.random() < 0.15:
                out.extend(interrupt_events(s, "library"))
        s.tick(1, 8)
        duration = round((s.now - start) / 1000, 1)
        out.append(s.event("END", "home", {"type": "app", "mode": "", "duration": duration, "pageid": "resources"}))
        tally.close(duration)
        return out

    def _p_correct(self, index: int, day_index: int, item: Item) -> float:
        learner = self.world.learners[index]
        if learner.persona == "struggling" and day_index >= learner.turn_day:
            return 0.12
        return min(0.95, 0.3 + 0.6 * learner.skill + 0.1 * self.attempts[index][item.id])

    def _course_flow(self, s: _Session, index: int, day: date, tally: _Tally, out: list[dict]) -> None:
        """Open a course of one of the learner's batches and play its next content (or revisit one)."""
        rng = s.rng
        world = self.world
        learner = world.learners[index]
        day_index = (day - world.start).days
        completed = self.completed[index]
        batches = [world.batches[b] for b in learner.batches]
        if rng.random() < 0.7:  # mostly the course they are least far in
            batch = min(batches, key=lambda b: len(completed[b.course]) / len(world.courses[b.course].contents))
        else:
            batch = rng.choice(batches)
        course = world.courses[batch.course]
        ctx = (("Course", course.id), ("Batch", batch.id))
        keys = tally.course_keys(batch)
        course_obj = {"id": course.id, "type": "Course", "ver": "1", "rollup": {"l1": course.id}}
        out.append(touch_event(s, "home", "courses", "course-card", "course-clicked", obj=course_obj, cdata=ctx))
        s.tick(1, 4)
        out.append(s.event("IMPRESSION", "course", impression_edata(
            s, "course-toc", "view", [c.id for c in course.contents[:8]], course.name), obj=course_obj, cdata=ctx))
        tally.touch(keys)
        done = completed[course.id]
        upcoming = next((c for c in course.contents if c.id not in done), None)
        stalled = learner.persona == "stalled" and day_index >= learner.turn_day
        if upcoming is None or (done and rng.random() < (0.7 if stalled else 0.2)):
            content = world.content(rng.choice(sorted(done)))
            complete = rng.random() < 0.9
        else:
            content = upcoming
            complete = not stalled and rng.random() < 0.8
        obj = {"id": content.id, "type": "Content", "ver": content.ver,
               "rollup": {"l1": course.id, "l2": content.unit}}
        if self._play(s, index, day_index, content, obj, ctx, complete, keys, tally, out) and content.id not in done:
            done.add(content.id)
            self.truth._progress(learner, course.id, content.id, day)

    def _qr_flow(self, s: _Session, index: int, day: date, tally: _Tally, out: list[dict]) -> None:
        """Scan the QR code printed in a unit of one of the learner's courses; maybe play what it links."""
        rng = s.rng
        world = self.world
        learner = world.learners[index]
        course = world.courses[world.batches[rng.choice(learner.batches)].course]
        unit = rng.choice(course.units)
        qr = (("Source", "QRCode"), ("DialCode", unit.dialcode))
        found = [c.id for c in unit.contents]
        out.append(touch_event(s, "home", "resources", "qrcode-scanner", "qr-code-scanner-clicked"))
        out.append(touch_event(s, "qr", "qr-code-scanner", "scan-success", "qr-code-scanned", cdata=qr))
        out.append(search_event(s, "qr", unit.dialcode, {"dialcodes": unit.dialcode}, found))
        tally.qr_scan()
        s.tick(1, 4)
        out.append(s.event("IMPRESSION", "qr", impression_edata(s, "dial-code-search-result", "search", found,
                                                                "Textbook units"), cdata=qr))
        if rng.random() < 0.8:
            content = rng.choice(unit.contents)
            obj = {"id": content.id, "type": "Content", "ver": content.ver,
                   "rollup": {"l1": course.id, "l2": unit.id}}
            keys = tally.qr_play_keys(course.id)
            self._play(s, index, (day - world.start).days, content, obj, qr, rng.random() < 0.7, keys, tally, out)

    def _library_flow(self, s: _Session, index: int, day: date, tally: _Tally, out: list[dict]) -> None:
        """Browse the state's library; maybe play a content on its own (no course, no rollup)."""
        rng = s.rng
        world = self.world
        learner = world.learners[index]
        found = rng.sample(world._tenant_contents[learner.tenant], 4)
        ids = [c.id for c in found]
        out.append(touch_event(s, "home", "resources", "tab-library", "tab-clicked"))
        out.append(search_event(s, "library", "", {"subject": [found[0].title.rsplit(" ", 1)[0]],
                                                   "status": ["Live"]}, ids))
        s.tick(1, 4)
        out.append(s.event("IMPRESSION", "library", impression_edata(s, "library", "view", ids, "Popular")))
        if rng.random() < 0.5:
            content = rng.choice(found)
            obj = {"id": content.id, "type": "Content", "ver": content.ver}
            self._play(s, index, (day - world.start).days, content, obj, (("Source", "Library"),),
                       rng.random() < 0.6, tally.base, tally, out)

    def _play(self, s: _Session, index: int, day_index: int, content: Content, obj: dict, ctx: tuple,
              complete: bool, keys: tuple[str, ...], tally: _Tally, out: list[dict]) -> bool:
        """Play a content in the player; return whether it was completed (summary progress 100)."""
        rng = s.rng
        env = "contentplayer"
        out.append(touch_event(s, "home", "content-detail", "play-content", "play-clicked", obj=obj, cdata=ctx))
        play = (*ctx, ("ContentSession", _hex(rng, 128)), ("PlaySession", _hex(rng, 128)))
        s.tick(1, 6)
        started = s.now
        out.append(s.event("START", env, {"type": "content", "mode": "play", "duration": round(rng.uniform(0.5, 5), 2),
                                          "pageid": ""}, pid=PLAYER_PID, obj=obj, cdata=play))
        tally.play(keys, content.id)
        if content.kind == "practice":
            answered = content.length if complete else rng.randint(0, content.length - 1)
            for position, item in enumerate(content.items[:answered], 1):
                out.extend(question_events(s, obj, play, position, item.id, item.type, item.title,
                                           self._p_correct(index, day_index, item), item.maxscore))
                assess = out[-1]["edata"]
                tally.assess(keys, item, assess["score"], assess["duration"])
                self.attempts[index][item.id] += 1
            progress, seen = (100 if complete else round(100 * answered / content.length)), answered
        elif content.kind == "video":
            progress = 100 if complete else rng.randint(10, 95)
            watched = content.length * 1000 * progress // 100
            clicks = rng.randint(0, 3)
            for _ in range(clicks):
                s.now += watched // (clicks + 1)
                action = rng.choice(("pause", "play", "seek"))
                out.append(s.event("INTERACT", env, {"type": "CLICK", "subtype": action, "id": f"video-{action}",
                                                     "pageid": "video",
                                                     "extra": {"values": [{"position": s.now - started}]}},
                                   pid=PLAYER_PID, obj=obj, cdata=play))
            s.now += watched - clicks * (watched // (clicks + 1))
            seen = content.length * progress // 100
        else:
            seen = content.length if complete else rng.randint(1, content.length - 1)
            for page in range(1, seen + 1):
                s.tick(5, 40)
                out.append(s.event("INTERACT", env, {
                    "type": "TOUCH", "subtype": "", "id": "next", "pageid": str(page),
                    "plugin": {"id": "org.ekstep.navigation", "ver": "1.0", "category": "core"},
                    "extra": {"pos": [{"x": rng.randint(0, 720), "y": rng.randint(0, 1280)}], "values": []},
                }, pid=PLAYER_PID, obj=obj, cdata=play))
            progress = 100 if complete else round(100 * seen / content.length)
        s.tick(1, 5)
        duration = round((s.now - started) / 1000, 1)
        out.append(s.event("END", env, {"type": "content", "mode": "play", "pageid": str(seen), "duration": duration,
                                        "summary": [{"progress": progress}, {"totallength": content.length},
                                                    {"visitedlength": seen}, {"endpageseen": progress == 100}]},
                           pid=PLAYER_PID, obj=obj, cdata=play))
        tally.play_time(keys, duration)
        return progress == 100


def _tenths(seconds: float) -> int:
    """Durations are emitted with one decimal; summed as integer tenths they add up exactly."""
    return round(seconds * 10)


class _Tally:
    """What one session adds to the ground truth, by scope key ("" the whole tenant, "batch:…",
    "course:…", "rollup.lN:…"): a session counts in every scope any of its events is in."""

    __slots__ = ("truth", "learner", "tenant", "day", "did", "sid", "base", "keys")

    def __init__(self, truth: GroundTruth, learner: Learner, cls: SchoolClass, day: date, did: str, sid: str) -> None:
        self.truth, self.learner, self.tenant, self.day, self.did, self.sid = truth, learner, cls.tenant, day, did, sid
        self.base = ("", f"rollup.l1:{cls.tenant}", f"rollup.l2:{cls.district}", f"rollup.l3:{cls.school}",
                     f"rollup.l4:{cls.id}")
        self.keys: set[str] = set(self.base)

    def course_keys(self, batch: Batch) -> tuple[str, ...]:
        return (*self.base, f"batch:{batch.id}", f"course:{batch.course}")

    def qr_play_keys(self, course: str) -> tuple[str, ...]:
        return (*self.base, f"course:{course}")

    def touch(self, keys: tuple[str, ...]) -> None:
        self.keys.update(keys)

    def cell(self, key: str) -> _DayCell:
        return self.truth._cell(self.tenant, self.day, key)

    def play(self, keys: tuple[str, ...], content_id: str) -> None:
        self.keys.update(keys)
        for key in keys:
            cell = self.cell(key)
            cell.plays += 1
            cell.by_content[content_id] += 1

    def play_time(self, keys: tuple[str, ...], seconds: float) -> None:
        for key in keys:
            self.cell(key).time_tenths += _tenths(seconds)

    def qr_scan(self) -> None:
        for key in self.base:
            self.cell(key).qr_scans += 1

    def assess(self, keys: tuple[str, ...], item: Item, score: float, seconds: float) -> None:
        self.truth._assess(self.learner, self.tenant, self.day, keys, item, score, seconds)

    def close(self, app_seconds: float) -> None:
        for key in self.keys:
            cell = self.cell(key)
            cell.learners.add(self.learner.id)
            cell.devices.add(self.did)
            cell.sessions.add(self.sid)
        for key in self.base:
            self.cell(key).app_tenths += _tenths(app_seconds)
        self.truth._active(self.learner, self.day, self.keys)


# --- ground truth --------------------------------------------------------------------------------

@dataclass(slots=True)
class _DayCell:
    learners: set[str] = field(default_factory=set)
    devices: set[str] = field(default_factory=set)
    sessions: set[str] = field(default_factory=set)
    plays: int = 0
    qr_scans: int = 0
    time_tenths: int = 0
    app_tenths: int = 0
    by_content: Counter[str] = field(default_factory=Counter)


@dataclass(slots=True)
class _ItemCell:
    maxscore: int
    attempts: int = 0
    score_sum: float = 0
    tenths: int = 0
    first_correct: int = 0
    learners: set[str] = field(default_factory=set)


@dataclass(frozen=True, slots=True)
class ItemStats:
    item: str
    maxscore: int
    attempts: int  # ASSESS events
    learners: int  # distinct learners who attempted it (= first attempts)
    first_attempt_correct: int  # learners whose first attempt passed (score = maxscore)
    avg_score: float  # mean edata.score over attempts
    avg_seconds: float  # mean edata.duration over attempts

    @property
    def first_attempt_correct_pct(self) -> float:
        return 100 * self.first_attempt_correct / self.learners


@dataclass(frozen=True, slots=True)
class AtRisk:
    learner: str  # actor.id in clear
    reasons: tuple[str, ...]  # inactive | low_scores | stalled
    last_active: date
    recent_score: float | None  # sum(score)/sum(maxscore) of the recent window (None: too few assessments)
    recent_assessments: int
    stalled_courses: tuple[tuple[str, float, date], ...]  # (course, progress %, last progress day)
    persona: str  # what the simulation meant them to be (the detection rules decide, not this)


@dataclass(slots=True)
class _LearnerFacts:
    learner: Learner
    active_days: set[date] = field(default_factory=set)
    scopes: set[str] = field(default_factory=set)  # every scope key any of their events is in
    assessments: list[tuple[date, float, int]] = field(default_factory=list)
    completions: dict[str, dict[str, date]] = field(default_factory=dict)  # course -> content -> first day


def _scope_keys(scope: Any) -> tuple[str, ...]:
    """Scope keys of None (the whole tenant), "kind:v1,v2" text, or an object with `kind` and `values`
    (identity.Scope)."""
    if scope is None:
        return ("",)
    if isinstance(scope, str):
        kind, _, values = scope.partition(":")
        return tuple(f"{kind}:{v}" for v in values.split(",") if v)
    return tuple(f"{scope.kind}:{v}" for v in scope.values)


class GroundTruth:
    """The answers, per tenant (channel), UTC day and scope. Distinct counts over several days or scope
    values are of the union; counts and sums add up. `day`..`until` is inclusive (until defaults to day)."""

    def __init__(self, world: CohortWorld) -> None:
        self.world = world
        self.start, self.end = world.start, world.end
        self.tenants = tuple(t.channel for t in world.tenants)
        self._cells: dict[tuple[str, date, str], _DayCell] = {}
        self._items: dict[tuple[str, str, str], _ItemCell] = {}
        self._facts = {learner.id: _LearnerFacts(learner) for learner in world.learners}
        self.events = 0
        self.uploads = 0  # device uploads (each split into envelopes of the batch size)
        self.late_uploads = 0  # uploads whose oldest event happened on an earlier day
        self.late_events = 0
        self.max_sync_delay_ms = 0

    # --- filled while generating -------------------------------------------------------------

    def _cell(self, tenant: str, day: date, key: str) -> _DayCell:
        cell = self._cells.get((tenant, day, key))
        if cell is None:
            cell = self._cells[(tenant, day, key)] = _DayCell()
        return cell

    def _active(self, learner: Learner, day: date, keys: Iterable[str]) -> None:
        facts = self._facts[learner.id]
        facts.active_days.add(day)
        facts.scopes.update(keys)

    def _assess(self, learner: Learner, tenant: str, day: date, keys: tuple[str, ...], item: Item, score: float,
                seconds: float) -> None:
        self._facts[learner.id].assessments.append((day, score, item.maxscore))
        for key in keys:
            cell = self._items.get((tenant, key, item.id))
            if cell is None:
                cell = self._items[(tenant, key, item.id)] = _ItemCell(item.maxscore)
            cell.attempts += 1
            cell.score_sum += score
            cell.tenths += _tenths(seconds)
            if learner.id not in cell.learners:
                cell.learners.add(learner.id)
                cell.first_correct += score == item.maxscore

    def _progress(self, learner: Learner, course: str, content: str, day: date) -> None:
        self._facts[learner.id].completions.setdefault(course, {}).setdefault(content, day)

    def _upload(self, events: int, delay_ms: int, late: bool) -> None:
        self.events += events
        self.uploads += 1
        self.late_uploads += late
        self.late_events += events if late else 0
        self.max_sync_delay_ms = max(self.max_sync_delay_ms, delay_ms)

    # --- activity --------------------------------------------------------------------------------

    def _cells_of(self, tenant: str, day: date, until: date | None, scope: Any) -> Iterator[_DayCell]:
        keys = _scope_keys(scope)
        current = day
        while current <= (until or day):
            for key in keys:
                cell = self._cells.get((tenant, current, key))
                if cell is not None:
                    yield cell
            current += timedelta(days=1)

    def _distinct(self, attr: str, tenant: str, day: date, until: date | None, scope: Any) -> set[str]:
        found: set[str] = set()
        for cell in self._cells_of(tenant, day, until, scope):
            found |= getattr(cell, attr)
        return found

    def active_learners(self, tenant: str, day: date, scope: Any = None, until: date | None = None) -> int:
        """Distinct learners (actor.id) with an event in scope: DAU; with `until` 6 or 29 days on, WAU/MAU."""
        return len(self._distinct("learners", tenant, day, until, scope))

    def active_learner_ids(self, tenant: str, day: date, scope: Any = None, until: date | None = None) -> set[str]:
        return self._distinct("learners", tenant, day, until, scope)

    def active_devices(self, tenant: str, day: date, scope: Any = None, until: date | None = None) -> int:
        return len(self._distinct("devices", tenant, day, until, scope))

    def sessions(self, tenant: str, day: date, scope: Any = None, until: date | None = None) -> int:
        """Distinct app sessions (context.sid) with an event in scope."""
        return len(self._distinct("sessions", tenant, day, until, scope))

    def time_spent(self, tenant: str, day: date, scope: Any = None, until: date | None = None) -> float:
        """Seconds of content play: the sum of the player END events' edata.duration."""
        return sum(c.time_tenths for c in self._cells_of(tenant, day, until, scope)) / 10

    def app_time(self, tenant: str, day: date, scope: Any = None, until: date | None = None) -> float:
        """Seconds in the app: the sum of app END durations (rollup and tenant scopes: every session event
        is in them; batch and course scopes hold no app END)."""
        return sum(c.app_tenths for c in self._cells_of(tenant, day, until, scope)) / 10

    def content_plays(self, tenant: str, day: date, scope: Any = None, until: date | None = None) -> int:
        return sum(c.plays for c in self._cells_of(tenant, day, until, scope))

    def plays_by_content(self, tenant: str, day: date, scope: Any = None, until: date | None = None) -> Counter[str]:
        total: Counter[str] = Counter()
        for cell in self._cells_of(tenant, day, until, scope):
            total.update(cell.by_content)
        return total

    def top_content(self, tenant: str, day: date, scope: Any = None, until: date | None = None,
                    n: int = 10) -> list[tuple[str, int]]:
        """The most played contents, most plays first, ties by content id."""
        plays = self.plays_by_content(tenant, day, scope, until)
        return sorted(plays.items(), key=lambda kv: (-kv[1], kv[0]))[:n]

    def qr_scans(self, tenant: str, day: date, scope: Any = None, until: date | None = None) -> int:
        """SEARCH events with edata.filters.dialcodes (tenant and rollup scopes: a scan is in no course)."""
        return sum(c.qr_scans for c in self._cells_of(tenant, day, until, scope))

    def days(self) -> list[date]:
        return [self.start + timedelta(days=i) for i in range((self.end - self.start).days + 1)]

    # --- assessments ------------------------------------------------------------------------------

    def item_stats(self, tenant: str, scope: Any = None) -> dict[str, ItemStats]:
        """Per item (edata.item.id), over the whole range and the scope's events."""
        keys = _scope_keys(scope)
        cells: dict[str, list[_ItemCell]] = defaultdict(list)
        for (cell_tenant, key, item), cell in self._items.items():
            if cell_tenant == tenant and key in keys:
                cells[item].append(cell)
        stats = {}
        for item, parts in cells.items():
            attempts = sum(c.attempts for c in parts)
            stats[item] = ItemStats(item, parts[0].maxscore, attempts, sum(len(c.learners) for c in parts),
                                    sum(c.first_correct for c in parts),
                                    sum(c.score_sum for c in parts) / attempts,
                                    sum(c.tenths for c in parts) / 10 / attempts)
        return stats

    # --- learners -------------------------------------------------------------------------------

    def persona_of(self, learner: str) -> str:
        return self._facts[learner].learner.persona

    def last_active(self, learner: str, as_of: date | None = None) -> date | None:
        as_of = as_of or self.end
        days = [d for d in self._facts[learner].active_days if d <= as_of]
        return max(days) if days else None

    def course_progress(self, learner: str, course: str, as_of: date | None = None) -> float:
        """% of the course's contents the learner completed in a batch of it by `as_of`."""
        as_of = as_of or self.end
        done = self._facts[learner].completions.get(course, {})
        total = len(self.world.courses[course].contents)
        return 100 * sum(1 for day in done.values() if day <= as_of) / total

    def progress_by_learner(self, course: str, as_of: date | None = None) -> dict[str, float]:
        """Every learner enrolled in a batch of `course`, with their progress (0 too)."""
        enrolled = {b.class_id for b in self.world.batches.values() if b.course == course}
        return {f.learner.id: self.course_progress(f.learner.id, course, as_of)
                for f in self._facts.values() if f.learner.class_id in enrolled}

    def last_progress(self, learner: str, course: str, as_of: date | None = None) -> date | None:
        as_of = as_of or self.end
        days = [d for d in self._facts[learner].completions.get(course, {}).values() if d <= as_of]
        return max(days) if days else None

    def never_active(self, tenant: str) -> list[str]:
        """Learners with no event at all: invisible to telemetry, so never in the at-risk list."""
        return sorted(f.learner.id for f in self._facts.values()
                      if f.learner.tenant == tenant and not f.active_days)

    def learners_in(self, tenant: str, scope: Any = None) -> set[str]:
        """Learners with any event in the scope over the whole range."""
        keys = set(_scope_keys(scope))
        return {f.learner.id for f in self._facts.values()
                if f.learner.tenant == tenant and f.active_days and f.scopes & keys}

    def at_risk(self, tenant: str, as_of: date | None = None, scope: Any = None, *,
                inactive_days: int = INACTIVE_DAYS, low_score: float = LOW_SCORE, recent_days: int = RECENT_DAYS,
                min_assessments: int = MIN_RECENT_ASSESSMENTS, stalled_days: int = STALLED_DAYS) -> list[AtRisk]:
        """Learners at risk as of `as_of` (default: the last day), by the rules in the module's docstring,
        among learners with an event in `scope`; ordered by learner id."""
        as_of = as_of or self.end
        found = []
        for learner_id in sorted(self.learners_in(tenant, scope)):
            facts = self._facts[learner_id]
            last = self.last_active(learner_id, as_of)
            if last is None:
                continue
            reasons = []
            inactive = (as_of - last).days >= inactive_days
            if inactive:
                reasons.append("inactive")
            recent = [(score, maxscore) for day, score, maxscore in facts.assessments
                      if as_of - timedelta(days=recent_days) < day <= as_of]
            ratio = sum(s for s, _ in recent) / sum(m for _, m in recent) if len(recent) >= min_assessments else None
            if ratio is not None and ratio < low_score:
                reasons.append("low_scores")
            stalled = []
            if not inactive:
                for course in sorted(facts.completions):
                    progress = self.course_progress(learner_id, course, as_of)
                    moved = self.last_progress(learner_id, course, as_of)
                    if moved is not None and 0 < progress < 100 and (as_of - moved).days >= stalled_days:
                        stalled.append((course, progress, moved))
                if stalled:
                    reasons.append("stalled")
            if reasons:
                found.append(AtRisk(learner_id, tuple(reasons), last, ratio, len(recent), tuple(stalled),
                                    facts.learner.persona))
        return found
