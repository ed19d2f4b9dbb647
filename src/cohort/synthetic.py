"""Deterministic, realistic synthetic Sunbird (DIKSHA-like) telemetry v3.

Demos, tests and benchmarks need traffic that looks like the real thing — same
shapes, sizes, event mix and id formats — without shipping any learner's data.
Events come from simulating app sessions on devices (QR-code scans, library
browsing, content plays with assessments), so the usual analytics (plays per
content, scores per question, session lengths) give sensible answers.

Every event validates against the official v3 schema for its eid. Output depends
only on the constructor arguments: all randomness comes from ``random.Random``
instances seeded from ``seed``, never from the clock, ``uuid4`` or global state,
so a seed reproduces a data set byte for byte.
"""

from __future__ import annotations

import itertools
import random
from dataclasses import dataclass
from os import PathLike
from typing import Iterable, Iterator

import orjson

__all__ = ["TelemetryGenerator", "write_jsonl", "DEFAULT_START_MS"]
# synthetic_cohorts.py builds its learning world from the same parts: the id helpers, `_Session` and the
# module-level event builders below (app_start_edata, impression_edata, touch_event, search_event,
# interrupt_events, question_events). Changing what they draw from the rng changes benchmark input.

DEFAULT_START_MS = 1_780_272_000_000  # 2026-06-01T00:00:00Z: fixed, so output never depends on today

APP_ID = "prod.diksha.app"
APP_PID = "sunbird.app"
PLAYER_PID = "sunbird.app.contentplayer"
APP_VERSIONS = ("3.2.10", "3.2.12", "3.2.15", "3.2.17", "3.2.19")
ENVELOPE_ID = "api.sunbird.telemetry"

# DIAL codes avoid 0/O so they survive being typed in by hand.
_DIAL_ALPHABET = "123456789ABCDEFGHIJKLMNPQRSTUVWXYZ"

_PHONES = (
    ("Samsung SM-J250F", "Android 7.1.1", 1.9, 5.0, "13.0,5.0"),
    ("Samsung SM-A105F", "Android 10", 2.0, 6.2, "13.0,5.0"),
    ("Xiaomi Redmi 8", "Android 10", 3.0, 6.22, "12.0,8.0"),
    ("Xiaomi Redmi Note 7S", "Android 9", 3.0, 6.3, "48.0,13.0"),
    ("Vivo 1906", "Android 11", 2.0, 6.35, "13.0,8.0"),
    ("OPPO CPH1909", "Android 8.1.0", 2.0, 6.2, "13.0,8.0"),
    ("Realme RMX1941", "Android 9", 2.0, 6.1, "13.0,5.0"),
    ("Lava Z61", "Android 8.1.0", 1.0, 5.45, "8.0,5.0"),
    ("Lenovo TB-X104L", "Android 8.1.0", 2.0, 10.1, "5.0,2.0"),
    ("Nokia TA-1053", "Android 9", 2.0, 5.5, "13.0,5.0"),
)
_CPUS = (
    "abi: armeabi-v7a processor: ARMv7 Processor rev 4 (v7l)",
    "abi: arm64-v8a processor: AArch64 Processor rev 4 (aarch64)",
    "abi: arm64-v8a processor: AArch64 Processor rev 2 (aarch64)",
)
_USER_TYPES = ("student", "student", "student", "teacher", "teacher", "parent", "other")

_ECML = "application/vnd.ekstep.ecml-archive"
_VIDEO = "video/mp4"
_YOUTUBE = "video/x-youtube"
_PDF = "application/pdf"
_H5P = "application/vnd.ekstep.h5p-archive"
_HTML = "application/vnd.ekstep.html-archive"
_MIMES = (_ECML, _ECML, _ECML, _VIDEO, _VIDEO, _YOUTUBE, _PDF, _PDF, _H5P, _HTML)
_QUESTION_TYPES = ("mcq", "mcq", "mcq", "mtf", "ftb")

_SUBJECTS = ("Mathematics", "Science", "English", "Hindi", "Social Science", "Environmental Studies")
_HOME_PAGES = ("resources", "library", "courses", "downloads", "profile")
_TEXT_QUERIES = (
    "class 6 maths", "fractions", "photosynthesis", "english grammar", "hindi varnamala",
    "class 10 science", "algebra", "water cycle", "tenses", "our environment",
)
_LOG_CALLS = (
    ("/api/content/v1/read", "Content detail fetched"),
    ("/api/course/v1/hierarchy", "Textbook hierarchy fetched"),
    ("/api/composite/v1/search", "Search results received"),
    ("/api/user/v2/read", "Profile refreshed"),
    ("/api/data/v1/form/read", "Form config loaded"),
)
_ERRORS = (
    ("NETWORK_ERROR", "Unable to resolve host \"diksha.gov.in\": No address associated with hostname"),
    ("CONTENT_LOAD_FAILED", "java.io.FileNotFoundException: /storage/emulated/0/Android/data/in.gov.diksha.app/files/content/index.ecml"),
    ("DOWNLOAD_FAILED", "DownloadManager: ERROR_INSUFFICIENT_SPACE while importing ecar"),
)


# --- pools -------------------------------------------------------------------------------
# Built once per generator; read-only afterwards, so every stream sees the same world.

@dataclass(frozen=True, slots=True)
class _Content:
    id: str
    channel: str
    textbook: str
    unit: str
    dialcode: str
    mime: str
    ver: str
    subject: str
    length_s: int                      # nominal play time: video length / pages / stages
    questions: tuple[tuple[str, str, str], ...]  # (id, type, title) for assessable content


@dataclass(frozen=True, slots=True)
class _Device:
    did: str
    channel: str
    app_ver: str
    dspec: tuple                       # (make, os, mem GB, screen in, camera, cpu, internal disk GB)
    users: tuple[int, ...]             # indices into the user pool: people who share this device


@dataclass(frozen=True, slots=True)
class _User:
    id: str
    kind: str
    skill: float                       # 0..1: drives assessment scores, so per-user analytics differ


def _hex(rng: random.Random, bits: int) -> str:
    return f"{rng.getrandbits(bits):0{bits // 4}x}"


def _uuid(rng: random.Random) -> str:
    """A version-4-shaped UUID drawn from ``rng`` (uuid4 would break determinism)."""
    h = f"{rng.getrandbits(128):032x}"
    return f"{h[:8]}-{h[8:12]}-4{h[13:16]}-{'89ab'[int(h[16], 16) & 3]}{h[17:20]}-{h[20:]}"


def _do_id(rng: random.Random) -> str:
    """A Sunbird object id: ``do_31`` followed by 20 digits."""
    return f"do_31{rng.randrange(10**19, 10**20)}"


def _dialcode(rng: random.Random) -> str:
    return "".join(rng.choices(_DIAL_ALPHABET, k=6))


def _zipf_cum_weights(n: int, s: float) -> list[float]:
    """Cumulative weights of a Zipf-like popularity: a few big states, devices and
    titles carry most traffic, as in real deployments."""
    return list(itertools.accumulate(1.0 / (i + 1) ** s for i in range(n)))


@dataclass(slots=True)
class _StreamState:
    """Mutable state of one ``events()``/``batches()`` call, so every call replays from scratch."""

    rng: random.Random
    clock: int                          # arrival time of the next session
    last_end: list[int]                 # per device: when its previous session ended


class _Session:
    """Stamps events of one app session: shared actor, device, channel, sid and a clock."""

    __slots__ = ("rng", "channel", "did", "sid", "actor_id", "app_ver", "tags", "base_cdata", "now", "rollup")

    def __init__(self, rng: random.Random, device: _Device, actor_id: str, user_kind: str,
                 logged_in: bool, start_ms: int, rollup: dict[str, str] | None = None) -> None:
        self.rng = rng
        self.channel = device.channel
        self.did = device.did
        self.app_ver = device.app_ver
        self.sid = _uuid(rng)
        self.actor_id = actor_id
        self.tags = (device.channel,) if logged_in else ()
        self.base_cdata = (("UserType", user_kind), ("UserSession", _hex(rng, 128)))
        self.now = start_ms
        self.rollup = rollup or {}  # context.rollup: where the user sits in the tenant's organisation

    def tick(self, lo: float, hi: float) -> None:
        """Advance the session clock by a uniform number of seconds (kept integral ms)."""
        self.now += int(self.rng.uniform(lo, hi) * 1000)

    def event(self, eid: str, env: str, edata: dict, *, pid: str = APP_PID, obj: dict | None = None,
              cdata: tuple = ()) -> dict:
        """Build one event in Sunbird's field order; every nested dict is fresh, so
        a consumer that mutates one event never changes another."""
        ev = {
            "eid": eid,
            "ets": self.now,
            "ver": "3.0",
            "mid": f"{eid}:{self.rng.getrandbits(128):032x}",
            "actor": {"id": self.actor_id, "type": "User"},
            "context": {
                "channel": self.channel,
                "pdata": {"id": APP_ID, "pid": pid, "ver": self.app_ver},
                "env": env,
                "sid": self.sid,
                "did": self.did,
                "cdata": [{"id": i, "type": t} for t, i in (*self.base_cdata, *cdata)],
                "rollup": dict(self.rollup),
            },
        }
        if obj is not None:
            ev["object"] = obj
        ev["tags"] = list(self.tags)
        ev["edata"] = edata
        return ev


class TelemetryGenerator:
    """Simulates DIKSHA app usage and yields the telemetry it would send.

    The world (channels, devices, users, textbooks and contents) is built in the
    constructor from ``seed``; each call to :meth:`events` or :meth:`batches`
    replays sessions from the start of that world, so a shorter call is a prefix
    of a longer one with the same seed.
    """

    def __init__(self, seed: int = 0, channels: int = 8, devices: int = 2000, users: int = 5000,
                 contents: int = 300, start_ms: int | None = None) -> None:
        if min(channels, devices, users, contents) < 1:
            raise ValueError("channels, devices, users and contents must each be at least 1")
        self.seed = seed
        self.start_ms = DEFAULT_START_MS if start_ms is None else int(start_ms)
        rng = random.Random(f"cohort.synthetic.world:{seed}")

        self._channels = [_hex(rng, 128) for _ in range(channels)]
        channel_weights = _zipf_cum_weights(channels, 0.9)

        self._users = [_User(_uuid(rng), rng.choice(_USER_TYPES), rng.betavariate(2.5, 2.0))
                       for _ in range(users)]

        # Textbooks belong to a channel; each unit has its own printed QR (DIAL) code.
        textbooks: list[tuple[str, str, str, list[tuple[str, str]]]] = []
        for i in range(max(channels, contents // 12)):
            channel = self._channels[i] if i < channels else rng.choices(self._channels, cum_weights=channel_weights)[0]
            units = [(_do_id(rng), _dialcode(rng)) for _ in range(rng.randint(3, 8))]
            textbooks.append((_do_id(rng), channel, rng.choice(_SUBJECTS), units))

        self._contents: list[_Content] = []
        for _ in range(contents):
            book_id, channel, subject, units = rng.choice(textbooks)
            unit_id, dialcode = rng.choice(units)
            mime = rng.choice(_MIMES)
            if mime == _ECML and rng.random() < 0.7:
                questions = tuple((_do_id(rng), rng.choice(_QUESTION_TYPES), f"{subject}: question {q + 1}")
                                  for q in range(rng.randint(3, 10)))
            else:
                questions = ()
            length = rng.randint(120, 900) if mime in (_VIDEO, _YOUTUBE) else rng.randint(4, 20)
            self._contents.append(_Content(_do_id(rng), channel, book_id, unit_id, dialcode, mime,
                                           str(rng.randint(1, 12)), subject, length, questions))
        self._content_weights = _zipf_cum_weights(contents, 0.8)

        # Per channel: its contents and the DIAL codes that resolve to some of them.
        by_channel: dict[str, list[int]] = {c: [] for c in self._channels}
        for idx, content in enumerate(self._contents):
            by_channel[content.channel].append(idx)
        self._channel_contents = {c: (ids or list(range(contents))) for c, ids in by_channel.items()}
        self._dial_contents: dict[str, list[int]] = {}
        for idx, content in enumerate(self._contents):
            self._dial_contents.setdefault(content.dialcode, []).append(idx)
        self._channel_dials = {
            c: sorted({self._contents[i].dialcode for i in ids}) for c, ids in self._channel_contents.items()
        }

        self._devices: list[_Device] = []
        for _ in range(devices):
            make, os_name, mem, scrn, camera = rng.choice(_PHONES)
            self._devices.append(_Device(
                did=_hex(rng, 160),
                channel=rng.choices(self._channels, cum_weights=channel_weights)[0],
                app_ver=rng.choice(APP_VERSIONS),
                dspec=(make, os_name, mem, scrn, camera, rng.choice(_CPUS), rng.choice((8.0, 16.0, 32.0, 64.0))),
                users=tuple(rng.randrange(users) for _ in range(rng.randint(1, 3))),
            ))
        self._device_weights = _zipf_cum_weights(devices, 0.6)

    # --- public API ----------------------------------------------------------------------

    def events(self, n: int) -> Iterator[dict]:
        """Exactly ``n`` events from back-to-back simulated sessions (the last may be cut short)."""
        state = self._new_state("events")
        return itertools.islice(self._session_stream(state), n)

    def batches(self, n_events: int, batch_size: int) -> Iterator[dict]:
        """Sunbird batch envelopes totalling ``n_events``, ``batch_size`` events each (the last may be smaller)."""
        for envelope, _headers in self.batches_with_headers(n_events, batch_size):
            yield envelope

    def batches_with_headers(self, n_events: int, batch_size: int) -> Iterator[tuple[dict, dict]]:
        """(envelope, HTTP headers) pairs, as a device's app would sync them.

        A real app uploads its own buffered telemetry, so each batch holds events of
        one device, often ending mid-session and resuming in that device's next batch.
        Each device's sessions are therefore generated lazily and paused between its
        batches, which keeps memory small however many devices are in flight.
        """
        if batch_size < 1:
            raise ValueError("batch_size must be at least 1")
        state = self._new_state("batches")
        rng = state.rng
        streams: dict[int, Iterator[dict]] = {}
        device_ids = range(len(self._devices))
        remaining = n_events
        while remaining > 0:
            dev_idx = rng.choices(device_ids, cum_weights=self._device_weights)[0]
            stream = streams.get(dev_idx)
            if stream is None:
                stream = streams[dev_idx] = self._device_stream(state, dev_idx)
            events = list(itertools.islice(stream, min(batch_size, remaining)))
            remaining -= len(events)
            device = self._devices[dev_idx]
            envelope = {
                "id": ENVELOPE_ID,
                "ver": "3.0",
                "params": {"msgid": _uuid(rng)},
                "ets": events[-1]["ets"] + rng.randint(500, 30_000),  # synced shortly after the last event
                "events": events,
            }
            headers = {"X-Channel-Id": device.channel, "X-App-Id": APP_ID, "X-Device-Id": device.did}
            yield envelope, headers

    # --- simulation ----------------------------------------------------------------------

    def _new_state(self, purpose: str) -> _StreamState:
        return _StreamState(random.Random(f"cohort.synthetic.{purpose}:{self.seed}"), self.start_ms,
                            [0] * len(self._devices))

    def _session_stream(self, state: _StreamState) -> Iterator[dict]:
        device_ids = range(len(self._devices))
        while True:
            dev_idx = state.rng.choices(device_ids, cum_weights=self._device_weights)[0]
            yield from self._session(state, dev_idx)

    def _device_stream(self, state: _StreamState, dev_idx: int) -> Iterator[dict]:
        while True:
            yield from self._session(state, dev_idx)

    def _session(self, state: _StreamState, dev_idx: int) -> Iterator[dict]:
        """One app session: launch, a few activities, close.

        Session arrivals are a Poisson-like process on a shared clock; a device never
        starts a session before its previous one ended.
        """
        rng = state.rng
        device = self._devices[dev_idx]
        state.clock += int(rng.expovariate(1 / 2500))  # mean 2.5 s between session starts
        start = max(state.clock, state.last_end[dev_idx] + rng.randint(60_000, 3_600_000))

        if rng.random() < 0.3:  # anonymous: DIKSHA identifies a guest by the device id
            actor_id, kind, skill, logged_in = device.did, "guest", 0.55, False
        else:
            user = self._users[rng.choice(device.users)]
            actor_id, kind, skill, logged_in = user.id, user.kind, user.skill, True
        s = _Session(rng, device, actor_id, kind, logged_in, start)

        yield s.event("START", "home", self._app_start_edata(s, device))
        s.tick(1, 4)
        yield s.event("IMPRESSION", "home", self._impression_edata(s, "resources", "view"))

        for _ in range(min(1 + int(rng.expovariate(0.55)), 8)):
            r = rng.random()
            if r < 0.45:
                yield from self._qr_flow(s, skill)
            elif r < 0.80:
                yield from self._library_flow(s, skill)
            else:
                yield from self._profile_flow(s)
            if rng.random() < 0.35:
                yield from self._interrupt(s, "library")

        s.tick(1, 8)
        yield s.event("END", "home", {"type": "app", "mode": "", "duration": round((s.now - start) / 1000, 1),
                                      "pageid": "resources"})
        state.last_end[dev_idx] = s.now

    def _app_start_edata(self, s: _Session, device: _Device) -> dict:
        return app_start_edata(s, device)

    def _impression_edata(self, s: _Session, pageid: str, kind: str, shown: list[int] | None = None,
                          section: str = "") -> dict:
        if shown is None:
            shown = self._pick_contents(s, s.rng.randint(2, 5))
        return impression_edata(s, pageid, kind, [self._contents[i].id for i in shown], section)

    def _pick_contents(self, s: _Session, k: int) -> list[int]:
        """Contents of the session's channel, favouring popular ones."""
        pool = self._channel_contents[s.channel]
        return [pool[int(len(pool) * s.rng.random() ** 2)] for _ in range(k)]

    def _touch(self, s: _Session, env: str, pageid: str, target_id: str, subtype: str = "",
               obj: dict | None = None, cdata: tuple = ()) -> dict:
        return touch_event(s, env, pageid, target_id, subtype, obj, cdata)

    def _search(self, s: _Session, env: str, query: str, filters: dict, found: list[int]) -> dict:
        return search_event(s, env, query, filters, [self._contents[i].id for i in found])

    def _qr_flow(self, s: _Session, skill: float) -> Iterator[dict]:
        """Scan a textbook's QR code, see the linked contents, maybe play one."""
        rng = s.rng
        dials = self._channel_dials[s.channel]
        dial = dials[int(len(dials) * rng.random() ** 1.5)]
        found = self._dial_contents[dial]
        qr = (("Source", "QRCode"), ("DialCode", dial))
        yield self._touch(s, "home", "resources", "qrcode-scanner", "qr-code-scanner-clicked")
        if rng.random() < 0.4:
            yield self._touch(s, "qr", "qr-code-scanner", "scan-success", "qr-code-scanned", cdata=qr)
        yield self._search(s, "qr", dial, {"dialcodes": dial}, found)
        s.tick(1, 4)
        yield s.event("IMPRESSION", "qr", self._impression_edata(s, "dial-code-search-result", "search", found,
                                                                 "Textbook units"), cdata=qr)
        if rng.random() < 0.85:
            yield from self._content(s, found[int(len(found) * rng.random() ** 2)], skill, qr)

    def _library_flow(self, s: _Session, skill: float) -> Iterator[dict]:
        """Browse the library (each section is its own search call) or type a search."""
        rng = s.rng
        page = "library"
        source = (("Source", "Library"),)
        yield self._touch(s, "home", "resources", "tab-library", "tab-clicked")
        for _ in range(rng.randint(2, 4)):
            subject = rng.choice(_SUBJECTS)
            found = self._pick_contents(s, rng.randint(3, 8))
            yield self._search(s, "library", "", {"subject": [subject], "status": ["Live"],
                                                  "contentType": ["TextBook", "Resource"]}, found)
        if rng.random() < 0.5:
            query = rng.choice(_TEXT_QUERIES)
            found = self._pick_contents(s, rng.randint(1, 8))
            yield self._touch(s, "library", page, "search-button", "search-clicked")
            yield self._search(s, "library", query, {"status": ["Live"]}, found)
        s.tick(1, 4)
        shown = self._pick_contents(s, rng.randint(3, 6))
        yield s.event("IMPRESSION", "library", self._impression_edata(s, page, "view", shown, "Popular"))
        for _ in range(rng.randint(0, 3)):
            yield self._touch(s, "library", page, "scroll", "section-scrolled")
        if rng.random() < 0.85:
            yield from self._content(s, rng.choice(shown), skill, source)

    def _profile_flow(self, s: _Session) -> Iterator[dict]:
        """Non-learning screens: profile, downloads, settings; where LOG/ERROR/SHARE come from."""
        rng = s.rng
        page = rng.choice(_HOME_PAGES[2:])
        yield self._touch(s, "home", "resources", f"tab-{page}", "tab-clicked")
        s.tick(1, 4)
        yield s.event("IMPRESSION", "user", self._impression_edata(s, page, "view", []))
        url, message = rng.choice(_LOG_CALLS)
        s.tick(0.2, 2)
        yield s.event("LOG", "user", {"type": "api_call", "level": "INFO", "message": message, "pageid": page,
                                      "params": [{"url": url}, {"status": 200}]})
        for _ in range(rng.randint(1, 3)):
            yield self._touch(s, "user", page, rng.choice(("edit-profile", "settings", "language", "sync-now")))
        if rng.random() < 0.2:
            err, trace = rng.choice(_ERRORS)
            s.tick(0.5, 3)
            yield s.event("ERROR", "user", {"err": err, "errtype": "MOBILEAPP", "stacktrace": trace, "pageid": page})

    def _interrupt(self, s: _Session, pageid: str) -> Iterator[dict]:
        return interrupt_events(s, pageid)

    def _content(self, s: _Session, idx: int, skill: float, source: tuple) -> Iterator[dict]:
        """Open a content's detail page, then play it in the content player."""
        rng = s.rng
        c = self._contents[idx]
        obj = {"id": c.id, "type": "Content", "ver": c.ver, "rollup": {"l1": c.textbook, "l2": c.unit}}
        yield self._touch(s, "home", "library", "content-clicked", "content-clicked", obj=obj, cdata=source)
        s.tick(1, 3)
        yield s.event("IMPRESSION", "home", {"type": "detail", "subtype": "", "pageid": "content-detail",
                                             "uri": "content-detail", "duration": round(rng.uniform(1, 8), 2)},
                      obj=obj, cdata=source)
        if rng.random() < 0.1:
            s.tick(1, 5)
            yield s.event("SHARE", "home", {"dir": "Out", "type": "Link", "items": [
                {"id": c.id, "type": "Content", "ver": c.ver, "params": [{"transfers": 0, "size": 0}],
                 "origin": {"id": s.did, "type": "Device"}, "to": {"id": "", "type": "Device"}}]},
                obj=obj, cdata=source)
        yield self._touch(s, "home", "content-detail", "play-content", "play-clicked", obj=obj, cdata=source)

        play = (*source, ("ContentSession", _hex(rng, 128)), ("PlaySession", _hex(rng, 128)))
        env = "contentplayer"
        s.tick(1, 6)
        started = s.now
        yield s.event("START", env, {"type": "player", "mode": "play", "duration": round(rng.uniform(0.5, 5), 2),
                                     "pageid": ""}, pid=PLAYER_PID, obj=obj, cdata=play)

        # How far the learner gets: most finish short content, many abandon long videos.
        progress = 1.0 if rng.random() < 0.6 else rng.uniform(0.1, 0.95)
        stage = 1
        if c.questions:
            asked = c.questions[:max(1, round(len(c.questions) * progress))]
            for index, (qid, qtype, title) in enumerate(asked, 1):
                yield from self._question(s, obj, play, index, qid, qtype, title, skill)
                stage = index
        elif c.mime in (_VIDEO, _YOUTUBE):
            for _ in range(1 + int(rng.expovariate(0.25))):
                s.tick(10, c.length_s / 4)
                action = rng.choice(("pause", "play", "seek", "fullscreen"))
                yield s.event("INTERACT", env, {"type": "CLICK", "subtype": action, "id": f"video-{action}",
                                                "pageid": "video", "extra": {"values": [{"position": s.now - started}]}},
                              pid=PLAYER_PID, obj=obj, cdata=play)
        else:
            pages = max(1, round(c.length_s * progress))
            for stage in range(1, pages + 1):
                s.tick(5, 40)
                if c.mime == _ECML and rng.random() < 0.3:
                    itype, target = "LISTEN", "audio-narration"
                else:
                    itype, target = "TOUCH", "next"
                yield s.event("INTERACT", env, {
                    "type": itype, "subtype": "", "id": target, "pageid": str(stage),
                    "plugin": {"id": "org.ekstep.navigation", "ver": "1.0", "category": "core"},
                    "extra": {"pos": [{"x": rng.randint(0, 720), "y": rng.randint(0, 1280)}], "values": []},
                }, pid=PLAYER_PID, obj=obj, cdata=play)

        if rng.random() < 0.08:
            yield from self._interrupt(s, str(stage))
        s.tick(1, 10)
        duration = round((s.now - started) / 1000, 1)
        yield s.event("END", env, {"type": "player", "mode": "play", "pageid": str(stage), "duration": duration,
                                   "summary": [{"progress": round(progress * 100)},
                                               {"totallength": c.length_s}, {"endpageseen": progress >= 1.0}]},
                      pid=PLAYER_PID, obj=obj, cdata=play)
        if rng.random() < 0.06:
            s.tick(2, 15)
            yield s.event("FEEDBACK", "contentplayer", {"rating": rng.randint(1, 5), "comments": ""},
                          pid=PLAYER_PID, obj=obj, cdata=play)

    def _question(self, s: _Session, obj: dict, play: tuple, index: int, qid: str, qtype: str, title: str,
                  skill: float) -> Iterator[dict]:
        return question_events(s, obj, play, index, qid, qtype, title, 0.25 + 0.7 * skill)


# --- event builders ------------------------------------------------------------------------
# Shared with synthetic_cohorts.py; each draws from the session's rng in a fixed order.

def app_start_edata(s: _Session, device: _Device) -> dict:
    """The app START's edata: the device's spec and the splash screen's load time."""
    make, os_name, mem, scrn, camera, cpu, disk = device.dspec
    return {
        "type": "app",
        "dspec": {"os": os_name, "make": make, "id": device.did, "mem": mem, "idisk": disk,
                  "edisk": -1, "scrn": scrn, "camera": camera, "cpu": cpu, "sims": -1, "cap": []},
        "loc": "",
        "mode": "",
        "duration": round(s.rng.uniform(1.5, 9.0), 2),
        "pageid": "splash",
    }


def impression_edata(s: _Session, pageid: str, kind: str, shown: list[str], section: str = "") -> dict:
    """An IMPRESSION's edata: the page and the contents (ids) it showed."""
    edata: dict[str, object] = {"type": kind, "subtype": "", "pageid": pageid, "uri": pageid}
    edata["visits"] = [{"objid": content_id, "objtype": "Content", "section": section, "index": n}
                       for n, content_id in enumerate(shown)]
    edata["duration"] = round(s.rng.uniform(0.5, 6.0), 2)
    return edata


def touch_event(s: _Session, env: str, pageid: str, target_id: str, subtype: str = "",
                obj: dict | None = None, cdata: tuple = ()) -> dict:
    s.tick(1, 12)
    return s.event("INTERACT", env, {"type": "TOUCH", "subtype": subtype, "id": target_id, "pageid": pageid},
                   obj=obj, cdata=cdata)


def search_event(s: _Session, env: str, query: str, filters: dict, found: list[str]) -> dict:
    """A SEARCH call and the content ids it found (a QR scan is one whose filters hold `dialcodes`)."""
    s.tick(1, 5)
    topn = [{"identifier": content_id} for content_id in found[:5]]
    return s.event("SEARCH", env, {"type": "content", "query": query, "filters": filters,
                                   "sort": {}, "correlationid": _uuid(s.rng), "size": len(found), "topn": topn})


def interrupt_events(s: _Session, pageid: str) -> Iterator[dict]:
    """The app goes to the background (a call, another app) and comes back."""
    s.tick(1, 10)
    yield s.event("INTERRUPT", "home", {"type": "background", "pageid": pageid})
    s.tick(5, 300)
    yield s.event("INTERRUPT", "home", {"type": "resume", "pageid": pageid})


def question_events(s: _Session, obj: dict, play: tuple, index: int, qid: str, qtype: str, title: str,
                    p_correct: float, maxscore: int = 1) -> Iterator[dict]:
    """Answer one question: touch options, then the player's ASSESS verdict (right with `p_correct`; a
    wrong answer to an item worth more than 1 may still earn part of it)."""
    rng = s.rng
    env = "contentplayer"
    s.tick(3, 15)
    yield s.event("INTERACT", env, {"type": "TOUCH", "subtype": "", "id": "next", "pageid": str(index),
                                    "plugin": {"id": "org.ekstep.navigation", "ver": "1.0", "category": "core"},
                                    "extra": {"pos": [{"x": rng.randint(0, 720), "y": rng.randint(0, 1280)}]}},
                  pid=PLAYER_PID, obj=obj, cdata=play)
    asked_at = s.now
    option = 0
    for _ in range(rng.randint(1, 3)):
        s.tick(2, 20)
        option = rng.randint(0, 3)
        yield s.event("INTERACT", env, {"type": "CLICK", "subtype": "", "id": f"option-{option}",
                                        "pageid": str(index),
                                        "plugin": {"id": f"org.ekstep.questionunit.{qtype}", "ver": "1.1"},
                                        "extra": {"values": [{"option": option}]}},
                      pid=PLAYER_PID, obj=obj, cdata=play)
    correct = rng.random() < p_correct
    score = maxscore if correct else (rng.randint(0, maxscore - 1) if maxscore > 1 else 0)
    s.tick(0.2, 1)
    yield s.event("ASSESS", env, {
        "item": {"id": qid, "maxscore": maxscore, "exlength": 0, "params": [{"1": '{"text":"option 1"}'}],
                 "uri": "", "desc": "", "title": title, "type": qtype, "mmc": [], "mc": []},
        "index": index,
        "pass": "Yes" if correct else "No",
        "score": score,
        "resvalues": [{str(option + 1): f'{{"text":"option {option + 1}"}}'}],
        "duration": round((s.now - asked_at) / 1000, 1),
    }, pid=PLAYER_PID, obj=obj, cdata=play)


def write_jsonl(path: str | PathLike[str], events: Iterable[dict]) -> int:
    """Write events as JSON Lines (one orjson-serialised event per line); return how many."""
    count = 0
    with open(path, "wb") as out:
        for event in events:
            out.write(orjson.dumps(event, option=orjson.OPT_APPEND_NEWLINE))
            count += 1
    return count
