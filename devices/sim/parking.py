"""Simulated roadside parking: geomagnetic sensors behind a concentrator (serial) or on CoAP.

Traffic is either random (Poisson arrivals on free bays, log-normal dwell times of minutes to
hours, heartbeats, occasional line garbage; `time_scale` compresses simulated time) or a script
of timed steps for tests. Both produce the same SensorReports the real nodes send, encoded with
devices/parking.py. CoAP nodes apply the command a reply may carry (configure, recalibrate; as
firmware/remote.py does, once per tag) and acknowledge it in their next report; their traffic
schedule keeps the --heartbeat given. Run it as `python -m devices.sim.parking --help`.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import heapq
import logging
import math
import os
import random
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from devices.parking import (
    ACK_RESULTS,
    OP_CONFIGURE,
    OP_RECALIBRATE,
    SETTING_NAMES,
    SETTINGS,
    CommandAck,
    MessageType,
    NodeCommand,
    ParkingFrameError,
    ResetCause,
    SensorReport,
    decode_config,
    encode_cbor,
    encode_coap_body,
    encode_frame,
    response_command,
)

log = logging.getLogger(__name__)

ACTIONS = ("arrive", "depart", "swap", "heartbeat", "startup", "garbage")
CAR_SIGNATURE = (140, -60, 310)  # mG added at the sensor by a parked car (typical, per doc)
DEFAULT_SETTINGS = {"heartbeat_s": 1800, "enter_mg": 60, "leave_mg": 35, "enter_samples": 3,
                    "leave_samples": 3, "settle_mg": 14}  # as firmware/detector.py and main.py
RESULT = {name: code for code, name in ACK_RESULTS.items()}


@dataclass
class SensorSim:
    """One geomagnetic sensor node: its bay state and the counters it reports."""

    sensor_id: int
    occupied: bool = False
    send_counter: int = 0
    park_counter: int = 0
    battery_mv: int = 3600
    temperature_c: float = 18.0
    baseline: tuple[int, int, int] = (210, -150, 410)
    settings: dict[str, int] = field(default_factory=lambda: dict(DEFAULT_SETTINGS))
    heartbeat_fixed: bool = False  # a command set the heartbeat: the bus default no longer does
    last_tag: int = 0
    last_result: int = 0
    ack: CommandAck | None = None  # goes with every report until one is answered
    commands_applied: int = 0

    def command(self, cmd: NodeCommand) -> None:
        """Apply a command from a reply as the firmware does (once per tag) and prepare the ack."""
        if cmd.tag != self.last_tag:
            self.last_result = self._apply(cmd)
            self.last_tag = cmd.tag
            self.commands_applied += self.last_result == 0
        self.ack = CommandAck(cmd.tag, self.last_result, tuple(
            (SETTINGS[name][0], value) for name, value in self.settings.items()))

    def _apply(self, cmd: NodeCommand) -> int:
        if cmd.op == OP_RECALIBRATE:  # the field measured now becomes the empty-bay field
            car = CAR_SIGNATURE if self.occupied else (0, 0, 0)
            self.baseline = (self.baseline[0] + car[0], self.baseline[1] + car[1],
                             self.baseline[2] + car[2])
            self.occupied = False
            return RESULT["ok"]
        if cmd.op != OP_CONFIGURE:
            return RESULT["unsupported_operation"]
        new = dict(self.settings)
        for code, value in cmd.settings:
            name = SETTING_NAMES.get(code)
            if name is None or not SETTINGS[name][1] <= value <= SETTINGS[name][2]:
                return RESULT["bad_setting"]
            new[name] = value
        if new["leave_mg"] >= new["enter_mg"]:
            return RESULT["inconsistent"]
        self.settings = new
        self.heartbeat_fixed = self.heartbeat_fixed or any(
            code == SETTINGS["heartbeat_s"][0] for code, _ in cmd.settings)
        return RESULT["ok"]

    def answered(self, reply: bytes) -> None:
        """A report got its 2.04: the ack went with it; apply the reply's command, if any."""
        self.ack = None
        with contextlib.suppress(ParkingFrameError):
            heartbeat = decode_config(reply)
            if not self.heartbeat_fixed:
                self.settings["heartbeat_s"] = heartbeat
            command = response_command(reply)
            if command is not None:
                self.command(command)

    def report(self, msg_type: MessageType, rng: random.Random,
               reset_cause: int = ResetCause.DEEP_SLEEP_WAKE) -> SensorReport:
        """The next report of this node (advances its send counter)."""
        self.send_counter = (self.send_counter + 1) & 0xFFFF
        car = CAR_SIGNATURE if self.occupied else (0, 0, 0)
        mag = tuple(b + c + rng.randint(-2, 2) for b, c in zip(self.baseline, car, strict=True))
        return SensorReport(
            sensor_id=self.sensor_id, msg_type=msg_type, occupied=self.occupied,
            mag=(mag[0], mag[1], mag[2]), baseline=self.baseline, battery_mv=self.battery_mv,
            rssi_dbm=rng.randint(-105, -70), temperature_c=self.temperature_c,
            send_counter=self.send_counter, park_counter=self.park_counter,
            reset_cause=reset_cause, ack=self.ack)

    def apply(self, action: str, rng: random.Random) -> list[SensorReport]:
        """Perform a scripted or random action; return the reports the node sends for it."""
        change = MessageType.OCCUPANCY_CHANGE
        if action == "arrive":
            if self.occupied:
                return []
            self.occupied, self.park_counter = True, (self.park_counter + 1) & 0xFFFF
            return [self.report(change, rng)]
        if action == "depart":
            if not self.occupied:
                return []
            self.occupied = False
            return [self.report(change, rng)]
        if action == "swap":  # a fast swap is reported as free, then occupied
            self.occupied = False
            first = self.report(change, rng)
            self.occupied, self.park_counter = True, (self.park_counter + 1) & 0xFFFF
            return [first, self.report(change, rng)]
        if action == "startup":
            self.send_counter = 0
            return [self.report(MessageType.STARTUP, rng, ResetCause.POWER_ON)]
        if action == "heartbeat":
            self.battery_mv = max(2800, self.battery_mv - rng.choice((0, 0, 0, 1)))
            return [self.report(MessageType.HEARTBEAT, rng)]
        raise ValueError(f"unknown action {action!r}; use one of {ACTIONS}")


@dataclass(frozen=True, slots=True)
class Step:
    """One scripted step: at `t` seconds (simulated), `action` on a sensor (0 for garbage)."""

    t: float
    sensor_id: int
    action: str


def parse_script(text: str) -> list[Step]:
    """Parse lines `SECONDS SENSOR_ID ACTION` (`#` comments); raise ValueError naming the line."""
    steps: list[Step] = []
    for n, raw in enumerate(text.splitlines(), 1):
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        parts = line.split()
        if len(parts) != 3 or parts[2] not in ACTIONS:
            raise ValueError(f"script line {n}: {raw!r}; want 'SECONDS SENSOR ACTION' with "
                             f"ACTION one of {', '.join(ACTIONS)}")
        steps.append(Step(float(parts[0]), int(parts[1]), parts[2]))
    return sorted(steps, key=lambda s: s.t)


@dataclass
class Traffic:
    """Random city traffic over a set of bays, in simulated seconds (a Poisson process)."""

    sensors: list[int]
    rng: random.Random
    arrivals_per_hour: float = 0.8  # per free bay
    dwell_median_s: float = 2700.0  # log-normal, sigma 1.0: minutes to hours
    heartbeat_s: float = 1800.0
    garbage_per_hour: float = 2.0  # per line
    _heap: list[tuple[float, int, int, str]] = field(default_factory=list)
    _seq: int = 0

    def start(self) -> None:
        """Schedule the first startup, arrival, heartbeat and garbage of every bay."""
        for sid in self.sensors:
            self._push(self.rng.uniform(0, 5), sid, "startup")
            self._push(self._arrival_gap(), sid, "arrive")
            self._push(self.rng.uniform(0, self.heartbeat_s), sid, "heartbeat")
        if self.garbage_per_hour > 0:
            self._push(self.rng.expovariate(self.garbage_per_hour / 3600), 0, "garbage")

    def _push(self, t: float, sid: int, action: str) -> None:
        self._seq += 1
        heapq.heappush(self._heap, (t, self._seq, sid, action))

    def _arrival_gap(self) -> float:
        return self.rng.expovariate(self.arrivals_per_hour / 3600)

    def _dwell(self) -> float:
        return max(60.0, self.rng.lognormvariate(math.log(self.dwell_median_s), 1.0))

    def due(self, now: float) -> Iterator[Step]:
        """Steps due by simulated time `now`, scheduling what follows each one."""
        while self._heap and self._heap[0][0] <= now:
            t, _, sid, action = heapq.heappop(self._heap)
            if action == "arrive":
                self._push(t + self._dwell(), sid, "depart")
            elif action == "depart":
                self._push(t + self._arrival_gap(), sid, "arrive")
            elif action == "heartbeat":
                self._push(t + self.heartbeat_s, sid, "heartbeat")
            elif action == "garbage":
                self._push(t + self.rng.expovariate(self.garbage_per_hour / 3600), 0, "garbage")
            yield Step(t, sid, action)


# --- transports -------------------------------------------------------------------------------

class Concentrator:
    """Writes the frames of its sensors onto a serial line (the concentrator's end of a pty)."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.fd = -1
        self.frames = 0

    def open(self) -> Concentrator:
        """Open the line."""
        self.fd = os.open(self.path, os.O_RDWR | os.O_NOCTTY)
        return self

    def send(self, report: SensorReport) -> None:
        """Write one frame."""
        os.write(self.fd, encode_frame(report))
        self.frames += 1

    def garbage(self, rng: random.Random) -> None:
        """Write a burst of line noise (never a valid frame)."""
        os.write(self.fd, bytes(rng.getrandbits(8) for _ in range(rng.randint(1, 40))))

    def close(self) -> None:
        """Close the line (idempotent)."""
        if self.fd >= 0:
            with contextlib.suppress(OSError):
                os.close(self.fd)
            self.fd = -1


class CoapNodes:
    """CoAP nodes: each report is a confirmable POST /p/r; the answer sets the heartbeat and
    may carry a command, which the node applies and acknowledges in its next report."""

    def __init__(self, host: str, port: int, *, cbor: bool = False) -> None:
        literal = f"[{host}]" if ":" in host else host
        self.uri = f"coap://{literal}:{port}/p/r"
        self.cbor = cbor
        self.ctx: Any = None
        self.heartbeat_s: int | None = None
        self.sent = self.failed = 0
        self.reply = b""  # payload of the last 2.04

    async def open(self) -> CoapNodes:
        """Create the client context."""
        import aiocoap

        self.ctx = await aiocoap.Context.create_client_context(transports=["udp6"])
        return self

    async def send(self, report: SensorReport) -> str:
        """POST one report; return the response code (e.g. '2.04 Changed')."""
        import aiocoap

        self.reply = b""
        payload, fmt = ((encode_cbor(report), 60) if self.cbor else
                        (encode_coap_body(report), 42))
        msg = aiocoap.Message(code=aiocoap.POST, uri=self.uri, payload=payload,
                              content_format=fmt)
        try:
            resp = await self.ctx.request(msg).response
        except Exception as exc:  # a real node retries at its next cycle
            self.failed += 1
            log.warning("CoAP report of sensor %d failed: %s", report.sensor_id, exc)
            return "error"
        self.sent += 1
        if resp.code.is_successful():
            self.reply = bytes(resp.payload)
            with contextlib.suppress(ValueError):
                self.heartbeat_s = decode_config(resp.payload)
        return str(resp.code)

    async def close(self) -> None:
        """Shut the client context down (idempotent)."""
        if self.ctx is not None:
            await self.ctx.shutdown()
            self.ctx = None


class City:
    """Sensors split between a concentrator line and CoAP nodes, driven by steps."""

    def __init__(self, serial_ids: list[int], coap_ids: list[int], seed: int | None = None,
                 concentrator: Concentrator | None = None, coap: CoapNodes | None = None) -> None:
        self.rng = random.Random(seed)
        self.sensors = {sid: SensorSim(sid) for sid in (*serial_ids, *coap_ids)}
        self.serial_ids, self.coap_ids = set(serial_ids), set(coap_ids)
        self.concentrator, self.coap = concentrator, coap
        self.steps_done = 0

    async def perform(self, step: Step) -> None:
        """Carry out one step over the sensor's transport."""
        if step.action == "garbage":
            if self.concentrator is not None:
                self.concentrator.garbage(self.rng)
            return
        sensor = self.sensors.get(step.sensor_id)
        if sensor is None:
            raise ValueError(f"sensor {step.sensor_id} is not simulated here")
        for report in sensor.apply(step.action, self.rng):
            if step.sensor_id in self.serial_ids and self.concentrator is not None:
                self.concentrator.send(report)
            elif step.sensor_id in self.coap_ids and self.coap is not None and (
                    await self.coap.send(report)).startswith("2."):
                sensor.answered(self.coap.reply)
        self.steps_done += 1

    async def play(self, steps: list[Step], time_scale: float = 1.0) -> None:
        """Perform scripted steps at their (scaled) times."""
        loop = asyncio.get_running_loop()
        start = loop.time()
        for step in steps:
            delay = start + step.t / time_scale - loop.time()
            if delay > 0:
                await asyncio.sleep(delay)
            await self.perform(step)
        log.info("script done: %d steps", len(steps))

    async def simulate(self, traffic: Traffic, time_scale: float, tick: float = 0.05) -> None:
        """Run random traffic until cancelled; simulated time runs `time_scale` times faster."""
        loop = asyncio.get_running_loop()
        start = loop.time()
        traffic.start()
        while True:
            for step in traffic.due((loop.time() - start) * time_scale):
                await self.perform(step)
            await asyncio.sleep(tick)


def id_range(text: str) -> list[int]:
    """Parse '1001-1030,2001' into sensor ids."""
    out: list[int] = []
    for part in filter(None, text.split(",")):
        lo, _, hi = part.partition("-")
        out.extend(range(int(lo), int(hi or lo) + 1))
    return out


def build_parser() -> argparse.ArgumentParser:
    """Arguments of `citygate sim parking`."""
    p = argparse.ArgumentParser(prog="citygate sim parking", description=__doc__)
    p.add_argument("--serial", help="create a pty and link the gateway's end at this path")
    p.add_argument("--sensors", type=id_range, default=[], help="ids behind the concentrator")
    p.add_argument("--coap", help="HOST:PORT of the gateway's CoAP endpoint")
    p.add_argument("--coap-sensors", type=id_range, default=[], help="ids of CoAP nodes")
    p.add_argument("--cbor", action="store_true", help="CoAP nodes send the CBOR form")
    p.add_argument("--script", type=Path, help="scripted steps instead of random traffic")
    p.add_argument("--time-scale", type=float, default=1.0, help="simulated s per real s")
    p.add_argument("--heartbeat", type=float, default=1800.0, help="seconds (random mode)")
    p.add_argument("--arrivals", type=float, default=0.8, help="per free bay per hour")
    p.add_argument("--dwell", type=float, default=45.0, help="median dwell, minutes")
    p.add_argument("--garbage", type=float, default=2.0, help="noise bursts per hour")
    p.add_argument("--duration", type=float, help="stop after this many real seconds")
    p.add_argument("--start-when", type=Path,
                   help="hold traffic until this file exists (a cue from a test harness)")
    p.add_argument("--seed", type=int)
    return p


async def _run(args: argparse.Namespace) -> None:
    from devices.sim.ptylink import PtyLink

    link = concentrator = coap = None
    try:
        if args.serial:
            link = PtyLink().open()
            link.link(args.serial, end="b")
            concentrator = Concentrator(link.a_path).open()
        if args.coap:
            host, _, port = args.coap.rpartition(":")
            coap = await CoapNodes(host.strip("[]"), int(port), cbor=args.cbor).open()
        city = City(args.sensors, args.coap_sensors, args.seed, concentrator, coap)
        log.info("simulating %d concentrator sensors%s and %d CoAP nodes%s", len(args.sensors),
                 f" on {args.serial}" if args.serial else "", len(args.coap_sensors),
                 f" to {coap.uri}" if coap else "")
        cue = args.start_when
        while cue is not None and not cue.exists():  # noqa: ASYNC110 - a file has no event
            await asyncio.sleep(0.05)
        if args.script:
            work = city.play(parse_script(args.script.read_text()), args.time_scale)
        else:
            traffic = Traffic(sorted(city.sensors), city.rng, args.arrivals, args.dwell * 60,
                              args.heartbeat, args.garbage)
            work = city.simulate(traffic, args.time_scale)
        async with asyncio.timeout(args.duration):
            await work
            await asyncio.Event().wait()  # keep the line up after a script ends
    except TimeoutError:
        pass
    finally:
        if coap is not None:
            await coap.close()
        if concentrator is not None:
            concentrator.close()
        if link is not None:
            link.close()


def main(argv: list[str] | None = None) -> int:
    """Entry point of `citygate sim parking` (until SIGINT/SIGTERM or --duration)."""
    import signal

    args = build_parser().parse_args(argv)
    if not args.serial and not args.coap:
        print("give --serial PATH and/or --coap HOST:PORT", file=sys.stderr)
        return 2
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)-7s %(name)s: "
                        "%(message)s")

    async def runner() -> None:
        task = asyncio.current_task()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, task.cancel)  # type: ignore[union-attr]
        with contextlib.suppress(asyncio.CancelledError):
            await _run(args)

    asyncio.run(runner())
    return 0


if __name__ == "__main__":
    sys.exit(main())
