"""Parking sensor sources: the concentrator serial line and the CoAP endpoint for IP/NB-IoT nodes.

Both turn SensorReports (devices/parking.py) into Readings for device `<prefix><sensor id>`,
stamped with the gateway's receive time, after dropping retransmissions by the sensor's send
counter. The serial reader waits on the port's fd in the event loop (no threads) and treats a
quiet line as the end of any partial frame; the CoAP endpoint is an aiocoap server whose own
message-id deduplication covers CoAP retransmissions.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import os
import time
import traceback
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from devices.model import Event, Reading, Value
from devices.parking import (
    MessageType,
    ParkingFrameError,
    SensorReport,
    StreamDecoder,
    config_response,
    decode_cbor,
    decode_coap_body,
)
from edge.config import CoapBus, DeviceSection, ParkingSerialBus
from edge.node_commands import NodeCommands, NodeJob
from edge.report import ChangeFilter

log = logging.getLogger(__name__)

Sink = Callable[[Sequence[Reading | Event]], None]
CF_OCTET_STREAM = 42
CF_CBOR = 60
DEDUP_WINDOW = 32  # recent reports kept per sensor: the node holds at most 4 unsent reports


def now_ms() -> int:
    """Wall-clock time in epoch milliseconds."""
    return int(time.time() * 1000)


def mono_ms() -> int:
    """Monotonic time in milliseconds."""
    return int(time.monotonic() * 1000)


# --- pure policy: duplicate suppression and report → reading ---------------------------------

def _identity(report: SensorReport) -> SensorReport:
    # A concentrator may overwrite RSSI on a relayed copy; everything else of a repeat is equal.
    return dataclasses.replace(report, rssi_dbm=None)


@dataclass
class SensorTrack:
    """What the gateway remembers of one sensor: its recent reports and counters."""

    recent: OrderedDict[int, SensorReport] = field(default_factory=OrderedDict)
    last_counter: int | None = None
    last_seen_ms: int = 0
    counters: dict[str, int] = field(default_factory=lambda: {
        "reports": 0, "duplicates": 0, "lost": 0, "restarts": 0})
    # what was sent of it (every value of every report unless the registry says otherwise)
    filter: ChangeFilter = field(default_factory=lambda: ChangeFilter(0.0))

    def admit(self, report: SensorReport) -> bool:
        """Record a report; False when it repeats one already seen (same counter and content)."""
        ident = _identity(report)
        if self.recent.get(report.send_counter) == ident:
            self.counters["duplicates"] += 1
            return False
        if report.msg_type is MessageType.STARTUP:
            self.recent.clear()  # counters restart after power loss: old ones mean nothing now
            self.counters["restarts"] += 1
        elif self.last_counter is not None:
            gap = (report.send_counter - self.last_counter) & 0xFFFF
            if 1 < gap < 0x8000:
                self.counters["lost"] += gap - 1
        self.recent[report.send_counter] = ident
        self.recent.move_to_end(report.send_counter)
        while len(self.recent) > DEDUP_WINDOW:
            self.recent.popitem(last=False)
        self.last_counter = report.send_counter
        self.counters["reports"] += 1
        return True


def report_values(report: SensorReport) -> dict[str, Value]:
    """Canonical quantities of a report (not-available fields are left out)."""
    values: dict[str, Value] = {
        "occupied": report.occupied,
        "report_type": int(report.msg_type),
        "mag_x": report.mag[0], "mag_y": report.mag[1], "mag_z": report.mag[2],
        "send_counter": report.send_counter,
        "park_counter": report.park_counter,
        "reset_cause": int(report.reset_cause),
    }
    if report.battery_mv is not None:
        values["battery_mv"] = report.battery_mv
    if report.rssi_dbm is not None:
        values["rssi"] = report.rssi_dbm
    if report.temperature_c is not None:
        values["temperature"] = report.temperature_c
    return values


class SensorRegistry:
    """Sensors heard on one bus: dedup by send counter, readings named by prefix + sensor id.

    Reports by exception, like a polled device's points (edge/report.py): a reading carries the
    values that changed since the sensor's last reading (beyond `deadbands`), and every value
    at least every `full_every` seconds, on a sensor's first report after the gateway started
    and on its start-up report. `full_every = 0` sends every value of every report.
    """

    def __init__(self, prefix: str, full_every: float = 0.0,
                 deadbands: dict[str, float] | None = None) -> None:
        self.prefix = prefix
        self.full_every = full_every
        self.deadbands = dict(deadbands or {})
        self.sensors: dict[int, SensorTrack] = {}

    def reading(self, report: SensorReport, ts: int, mono: int) -> Reading | None:
        """The reading for a fresh report, or None for a repeat."""
        track = self.sensors.get(report.sensor_id)
        if track is None:
            track = self.sensors[report.sensor_id] = SensorTrack(
                filter=ChangeFilter(self.full_every, self.deadbands))
        if not track.admit(report):
            return None
        track.last_seen_ms = ts
        if report.msg_type is MessageType.STARTUP:
            track.filter.forget()
        values = track.filter.select(report_values(report), mono / 1000)
        return Reading(f"{self.prefix}{report.sensor_id}", ts, values, mono=mono)

    def device_health(self) -> dict[str, dict[str, object]]:
        """Per-sensor counters and last report time for the health message."""
        return {f"{self.prefix}{sid}": {"last_seen": t.last_seen_ms, **t.counters}
                for sid, t in self.sensors.items()}


# --- the concentrator serial line ---------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class LineTiming:
    """Timing of the concentrator line: idle gap that ends a frame, reopen backoff."""

    idle_s: float
    reopen_min_s: float = 0.5
    reopen_max_s: float = 30.0

    @classmethod
    def for_line(cls, baudrate: int, bits_per_char: int = 10) -> LineTiming:
        """20 character times, at least 50 ms (pty and USB latency), at most 1 s."""
        return cls(idle_s=min(1.0, max(0.05, 20 * bits_per_char / baudrate)))

    def backoff(self, attempt: int) -> float:
        """Seconds before reopen attempt `attempt` (0-based): doubling, capped."""
        return min(self.reopen_max_s, self.reopen_min_s * 2 ** min(attempt, 16))


def _wake(ready: asyncio.Future[None]) -> None:
    if not ready.done():
        ready.set_result(None)


class LineLost(Exception):
    """The serial port went away (unplugged USB adapter, closed pty)."""


class ParkingSerialSource:
    """Reads concentrator frames from a serial port; reopens it with backoff when it vanishes."""

    def __init__(self, cfg: ParkingSerialBus, devices: Sequence[DeviceSection],
                 sink: Sink) -> None:
        self.cfg = cfg
        self.sink = sink
        self.registry = SensorRegistry(cfg.device_prefix, cfg.full_report_every, cfg.deadbands)
        bits = 1 + cfg.bytesize + (0 if cfg.parity == "N" else 1) + cfg.stopbits
        self.timing = LineTiming.for_line(cfg.baudrate, bits)
        self.decoder = StreamDecoder()
        self.counters: dict[str, int] = {"opens": 0, "open_failures": 0, "line_lost": 0,
                                         "reports": 0, "duplicates": 0, "readings": 0}
        self.progress = time.monotonic()
        self.line_open = False
        self._open_warned = False
        self._noisy = False

    def device_health(self) -> dict[str, dict[str, object]]:
        """Per-sensor counters for the health message."""
        return self.registry.device_health()

    async def run(self) -> None:
        """Read until cancelled; a missing or lost port is retried with backoff, never fatal."""
        attempt = 0
        while True:
            fd = await self._open()
            if fd is None:
                attempt += 1
                await asyncio.sleep(self.timing.backoff(attempt - 1))
                self.progress = time.monotonic()  # waiting for the port is not a hang
                continue
            attempt = 0
            try:
                await self._read_loop(fd)
            except LineLost as exc:
                self.counters["line_lost"] += 1
                self.line_open = False
                log.warning("bus %s: lost %s (%s); reopening", self.cfg.name, self.cfg.port, exc)
            finally:
                with contextlib.suppress(OSError):
                    os.close(fd)

    async def _open(self) -> int | None:
        try:
            fd = await asyncio.to_thread(self._open_port)
        except OSError as exc:
            self.counters["open_failures"] += 1
            if not self._open_warned:
                self._open_warned = True
                log.warning("bus %s: cannot open %s: %s; retrying with backoff", self.cfg.name,
                            self.cfg.port, exc)
            return None
        self.counters["opens"] += 1
        self.line_open, self._open_warned = True, False
        log.info("bus %s: %s open at %d %d%s%d", self.cfg.name, self.cfg.port,
                 self.cfg.baudrate, self.cfg.bytesize, self.cfg.parity, self.cfg.stopbits)
        return fd

    def _open_port(self) -> int:
        """Open and configure the port with pyserial; hand back a dup of its non-blocking fd."""
        import serial

        c = self.cfg
        try:
            port = serial.Serial(c.port, c.baudrate, bytesize=c.bytesize, parity=c.parity,
                                 stopbits=c.stopbits, timeout=0, exclusive=True)
        except (serial.SerialException, ValueError) as exc:
            raise OSError(str(exc)) from None
        try:
            fd = os.dup(port.fileno())
        finally:
            port.close()  # the dup keeps the line open with pyserial's termios settings
        os.set_blocking(fd, False)
        return fd

    async def _read_loop(self, fd: int) -> None:
        loop = asyncio.get_running_loop()
        while True:
            ready = loop.create_future()
            loop.add_reader(fd, _wake, ready)
            try:
                await asyncio.wait_for(ready, self.timing.idle_s)
            except TimeoutError:
                self.progress = time.monotonic()
                if self.decoder.buffered:
                    self._handle(self.decoder.idle())
                continue
            finally:
                loop.remove_reader(fd)
            try:
                chunk = os.read(fd, 4096)
            except BlockingIOError:
                continue
            except OSError as exc:
                raise LineLost(exc.strerror or str(exc)) from None
            if not chunk:
                raise LineLost("end of file")
            self.progress = time.monotonic()
            self._handle(self.decoder.feed(chunk))

    def _handle(self, results: list[SensorReport | ParkingFrameError]) -> None:
        ts, mono = now_ms(), mono_ms()
        out: list[Reading | Event] = []
        for item in results:
            if isinstance(item, ParkingFrameError):
                self._noise(item)
                continue
            self.counters["reports"] += 1
            reading = self.registry.reading(item, ts, mono)
            if reading is None:
                self.counters["duplicates"] += 1
                continue
            out.append(reading)
        self.counters["readings"] += len(out)
        for reason, n in self.decoder.stats.errors.items():
            self.counters[f"err_{reason}"] = n
        self.counters["bytes_in"] = self.decoder.stats.bytes_in
        self.counters["bytes_discarded"] = self.decoder.stats.bytes_discarded
        if out:
            self.sink(out)

    def _noise(self, exc: ParkingFrameError) -> None:
        if not self._noisy:
            self._noisy = True
            log.warning("bus %s: undecodable bytes on %s: %s (counted from now on)",
                        self.cfg.name, self.cfg.port, exc)


# --- the CoAP endpoint --------------------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class CoapAnswer:
    """What the endpoint answers to one POST: a CoAP code name and payload."""

    code: str  # "CHANGED", "BAD_REQUEST" or "UNSUPPORTED_CONTENT_FORMAT"
    payload: bytes


def decode_post(content_format: int | None, payload: bytes) -> SensorReport:
    """Decode a POST /p/r payload by its content format; raise ParkingFrameError or LookupError."""
    if content_format == CF_OCTET_STREAM:
        return decode_coap_body(payload)
    if content_format == CF_CBOR:
        return decode_cbor(payload)
    raise LookupError(f"content format {content_format}, use 42 (report body) or 60 (CBOR)")


@dataclass
class NoiseLog:
    """When to log a stream of unparsable datagrams: one line when it starts, then at most one
    summary per `interval` while it goes on (pure; the caller passes the monotonic time)."""

    interval: float = 60.0
    total: int = 0
    pending: int = 0  # datagrams since the last line
    last_line: float | None = None

    def hit(self, now: float) -> bool:
        """Count one datagram; True when it starts a new burst (log it)."""
        self.total += 1
        if self.last_line is None or (not self.pending and now - self.last_line >= self.interval):
            self.last_line = now
            return True
        self.pending += 1
        return False

    def due(self, now: float) -> int:
        """Datagrams to summarise now (0: nothing to log yet)."""
        if not self.pending or self.last_line is None or now - self.last_line < self.interval:
            return 0
        count, self.pending, self.last_line = self.pending, 0, now
        return count


UNPARSABLE = "Ignoring unparsable message from %s"  # aiocoap's record for a datagram it drops
NOISE_KINDS = {"unparsable_datagrams": "datagrams that are not CoAP",
               "ignored_messages": "CoAP messages that are not reports (stray ACK/RST, answers"
                                   " to nothing, unknown paths)"}


def _from_coap_decoder(exc: BaseException) -> bool:
    """An exception that escaped aiocoap's datagram decoding (it only catches its own type)."""
    names = [(frame.filename.replace("\\", "/"), frame.name)
             for frame in traceback.extract_tb(exc.__traceback__)]
    return any(name == "datagram_msg_received" for _, name in names) and any(
        "aiocoap/" in path and name == "decode" for path, name in names)


class CoapSource:
    """A CoAP server taking POST /p/r reports; answers 2.04 with the node's configuration and
    the command waiting for the node, if any (edge/node_commands.py)."""

    def __init__(self, cfg: CoapBus, devices: Sequence[DeviceSection], sink: Sink) -> None:
        self.cfg = cfg
        self.sink = sink
        heartbeat = round(cfg.heartbeat)
        try:
            self.config_payload = config_response(heartbeat)
        except ValueError:
            raise ValueError(f"bus {cfg.name}: heartbeat {cfg.heartbeat:g}s is outside "
                             "60s..86400s, the range a node accepts") from None
        self.heartbeat = heartbeat
        self.registry = SensorRegistry(cfg.device_prefix, cfg.full_report_every, cfg.deadbands)
        self.counters: dict[str, int] = {"requests": 0, "reports": 0, "duplicates": 0,
                                         "readings": 0, "rejected": 0,
                                         "unparsable_datagrams": 0, "ignored_messages": 0}
        self.node_commands = NodeCommands(self.counters)
        self.progress = time.monotonic()
        self.bound: tuple[str, int] | None = None
        self._warned: set[str] = set()
        self.noise = {"unparsable_datagrams": NoiseLog(), "ignored_messages": NoiseLog()}

    def device_health(self) -> dict[str, dict[str, object]]:
        """Per-sensor counters for the health message."""
        return self.registry.device_health()

    def sensor_of(self, device: str) -> int | None:
        """The sensor id of a device id of this bus (`<prefix><sensor id>`), else None."""
        rest = device.removeprefix(self.cfg.device_prefix)
        if (rest == device and self.cfg.device_prefix) or not rest.isdecimal() or len(rest) > 10:
            return None
        sid = int(rest)
        return sid if sid <= 0xFFFF_FFFF else None

    def submit_command(self, sensor_id: int, job: NodeJob) -> None:
        """Queue a command for a node: it goes out in the reply to the node's next report."""
        self.node_commands.submit(sensor_id, job)

    def handle(self, content_format: int | None, payload: bytes) -> CoapAnswer:
        """Decode one report, hand a fresh one to the sink and say what to answer (sans-IO)."""
        self.counters["requests"] += 1
        self.progress = time.monotonic()
        try:
            report = decode_post(content_format, payload)
        except LookupError as exc:
            return self._reject("unsupported_format", "UNSUPPORTED_CONTENT_FORMAT", str(exc))
        except (ParkingFrameError, ValueError) as exc:
            reason = exc.reason if isinstance(exc, ParkingFrameError) else "bad_field"
            return self._reject(reason, "BAD_REQUEST", str(exc))
        self.counters["reports"] += 1
        reading = self.registry.reading(report, now_ms(), mono_ms())
        if reading is None:
            self.counters["duplicates"] += 1
        else:
            self.counters["readings"] += 1
            self.sink([reading])
        command = self.node_commands.on_report(report, now_ms())
        if command is None:
            return CoapAnswer("CHANGED", self.config_payload)
        return CoapAnswer("CHANGED", config_response(self.heartbeat, command))

    def _reject(self, reason: str, code: str, detail: str) -> CoapAnswer:
        self.counters["rejected"] += 1
        key = f"rejected_{reason}"
        self.counters[key] = self.counters.get(key, 0) + 1
        if reason not in self._warned:
            self._warned.add(reason)
            log.warning("bus %s: rejected a report: %s (counted from now on)", self.cfg.name,
                        detail)
        return CoapAnswer(code, f"{reason}: {detail}"[:200].encode())

    async def run(self) -> None:
        """Serve until cancelled."""
        import aiocoap
        import aiocoap.resource

        source = self

        class ReportResource(aiocoap.resource.Resource):
            async def render_post(self, request: Any) -> Any:
                answer = source.handle(request.opt.content_format, bytes(request.payload))
                msg = aiocoap.Message(code=getattr(aiocoap.Code, answer.code),
                                      payload=answer.payload)
                if answer.code == "CHANGED":
                    msg.opt.content_format = CF_OCTET_STREAM
                return msg

        site = aiocoap.resource.Site()
        site.add_resource(["p", "r"], ReportResource())
        coap_log = logging.getLogger(f"{__name__}.coap.{self.cfg.name}")
        coap_log.addFilter(self._filter_coap_log)
        loop = asyncio.get_running_loop()
        previous = loop.get_exception_handler()
        loop.set_exception_handler(self._exception_handler(previous))
        try:
            ctx = await aiocoap.Context.create_server_context(
                site, bind=(self.cfg.host, self.cfg.port), transports=["udp6"],
                loggername=coap_log.name)
            self.bound = (self.cfg.host, self.cfg.port)
            log.info("bus %s: CoAP endpoint on [%s]:%d/p/r", self.cfg.name, self.cfg.host,
                     self.cfg.port)
            try:
                while True:  # commands expire to the second; noise is summarised rarely
                    for _ in range(30):
                        await asyncio.sleep(1.0)
                        self.node_commands.sweep(now_ms())
                    self.progress = time.monotonic()
                    self._summarise_noise()
            finally:
                await ctx.shutdown()
        finally:
            loop.set_exception_handler(previous)
            coap_log.removeFilter(self._filter_coap_log)

    # aiocoap logs a line for every datagram it cannot parse or does not expect (a stray ACK or
    # RST, a response to nothing), and lets some decoding errors (an option that is not UTF-8)
    # escape to the event loop with a traceback. On a gateway each kind becomes a counter and
    # rate-limited lines, so a noisy network cannot fill the log; aiocoap's errors pass.

    def noise_seen(self, kind: str, example: str) -> None:
        """Count one unparsable datagram or ignored message; log when a burst of it starts."""
        self.counters[kind] += 1
        what = NOISE_KINDS[kind]
        if self.noise[kind].hit(time.monotonic()):
            log.warning("bus %s: ignoring %s (first: %s); counting them as %s, a summary at"
                        " most every %gs", self.cfg.name, what, example, kind,
                        self.noise[kind].interval)
        else:
            self._summarise_noise()

    def _summarise_noise(self) -> None:
        for kind, noise in self.noise.items():
            count = noise.due(time.monotonic())
            if count:
                log.warning("bus %s: %d more %s (%d in all)", self.cfg.name, count,
                            NOISE_KINDS[kind], noise.total)

    def _filter_coap_log(self, record: logging.LogRecord) -> bool:
        if record.levelno >= logging.ERROR:
            return True
        if record.msg == UNPARSABLE:
            args = record.args if isinstance(record.args, tuple) else ()
            self.noise_seen("unparsable_datagrams", f"from {args[0] if args else '?'}")
        else:
            self.noise_seen("ignored_messages", record.getMessage()[:200])
        return False

    def _exception_handler(self, previous: Any) -> Any:
        def handler(loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
            exc = context.get("exception")
            if exc is not None and _from_coap_decoder(exc):
                self.noise_seen("unparsable_datagrams", f"{type(exc).__name__}: {exc}"[:200])
            elif previous is not None:
                previous(loop, context)
            else:
                loop.default_exception_handler(context)
        return handler
