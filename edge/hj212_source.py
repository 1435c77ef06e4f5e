"""HJ 212 data loggers on a serial line or connecting in over TCP, normalised to Readings.

Serial: the bus owns its port (pyserial sets baud/parity/framing; the event loop reads the fd).
A port that errors, reaches end of file or whose path now names another device (a USB adapter
unplugged and plugged back, a re-created symlink) is closed and reopened with jittered
backoff. TCP: a listener accepts many logger connections, each with its own stream decoder.
Either way partial frames, garbage and babbling lines are resynchronised by the sans-IO
StreamDecoder; a frame whose Flag asks for it gets the 9014 data answer once its readings are
handed to the outbox. Frames from an MN no device is configured with are counted and logged
once per MN, never answered. Commands to a station (set its time, read its parameters, ask
for history data) go out on the line the station is on (edge/hj212_commands.py); their
answers are taken off the stream here, history data frames are stored as any upload.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import random
import time
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from devices.commands import CommandResult
from devices.hj212 import (
    REASONS,
    Frame,
    FrameError,
    Reassembler,
    StreamDecoder,
    build_data_answer,
)
from devices.hj212.normalise import CN_INTERVAL, Interval, normalise
from devices.model import Action, Event, Quality, Reading, Severity
from devices.profiles import Profile, load_profile
from edge.config import DeviceSection, Hj212SerialBus, Hj212TcpBus
from edge.hj212_commands import StationCommands, Waiting

if TYPE_CHECKING:  # pyserial is imported only by gateways with an HJ 212 serial line
    import serial

log = logging.getLogger(__name__)

Sink = Callable[[Sequence[Reading | Event]], None]
Reply = Callable[[bytes], None]
FAULT_FLAGS = frozenset({"D", "B"})  # instrument fault, logger ↔ instrument link fault
MAX_LOGGED_MNS = 1000
RECENT_FRAMES = 64  # data-frame keys remembered per station to drop re-sent frames
# Why a frame is refused, each counted as rejected_<reason> (frame errors, then the source's own)
REJECT_REASONS = (*REASONS, "unknown_cn", "bad_time", "duplicate")


@dataclass(frozen=True, slots=True)
class Hj212Timing:
    """Timing of the HJ 212 source as named data."""

    reopen_min: float = 0.5  # first delay before reopening a lost serial port, seconds
    reopen_max: float = 30.0  # cap of the exponential backoff
    port_check: float = 2.0  # an idle serial port checks its path this often
    tcp_idle_timeout: float = 600.0  # a logger connection silent this long is dropped
    max_connections: int = 256
    offline_periods: float = 3.0  # a station is offline after this many upload periods
    answer_timeout: float = 10.0  # a command's station silent this long fails (no_answer)


def reopen_delay(attempt: int, timing: Hj212Timing, rand: float) -> float:
    """Full-jitter exponential backoff: `rand` in [0, 1) times min(cap, base * 2^attempt)."""
    return rand * min(timing.reopen_max, timing.reopen_min * 2 ** min(attempt, 30))


def faulty_codes(frame: Frame) -> frozenset[str]:
    """Pollutant codes whose data flag says the instrument or its link is faulty."""
    return frozenset(key.partition("-")[0] for key, flag in frame.cp.items()
                     if key.endswith("-Flag") and flag.upper() in FAULT_FLAGS)


FrameKey = tuple[str | None, str | None, str | None, str | None, int]


class RecentFrames:
    """The last `size` data-frame keys (MN, QN, CN, DataTime, CP) of one station, oldest first.

    A station that missed the 9014 answer sends the same frame again; the copy is answered
    but not stored twice. The CP (as a hash) is part of the key, so a frame that reuses a QN
    with other values is not mistaken for a copy. The window is bounded: a copy arriving
    after `size` newer frames of the same station is taken as new.
    """

    def __init__(self, size: int = RECENT_FRAMES) -> None:
        self.size = size
        self._keys: OrderedDict[FrameKey, None] = OrderedDict()

    def repeat(self, key: FrameKey) -> bool:
        """True when `key` was seen within the window; otherwise remember it."""
        if key in self._keys:
            return True
        self._keys[key] = None
        if len(self._keys) > self.size:
            self._keys.popitem(last=False)
        return False


def frame_key(frame: Frame) -> FrameKey | None:
    """The identity of a data upload, or None for frames that carry no DataTime to repeat."""
    data_time = frame.cp.get("DataTime")
    if frame.cn not in CN_INTERVAL or data_time is None:
        return None
    return frame.mn, frame.qn, frame.cn, data_time, hash(tuple(sorted(frame.cp.items())))


class PortGone(Exception):
    """The serial port went away (unplugged, closed by the other end, renamed)."""


@dataclass
class Station:
    """A configured data logger: its device entry, profile and counters."""

    cfg: DeviceSection
    profile: Profile
    frames: int = 0
    values: int = 0
    not_good: int = 0
    last_seen: float | None = None  # monotonic seconds of the last frame
    faults: frozenset[str] = frozenset()
    recent: RecentFrames = field(default_factory=RecentFrames)
    duplicates: int = 0
    line: Line | None = None  # where its last frame came from (commands go there)
    st: str | None = None  # the system code of its last frame
    waiting: Waiting | None = None  # the command exchange under way, if any

    def online(self, now: float, periods: float) -> bool:
        """Seen within `periods` upload periods (the profile's heartbeat)."""
        return self.last_seen is not None and now - self.last_seen <= periods * max(
            self.profile.heartbeat, 1.0)


@dataclass
class Line:
    """One byte stream (the serial port or one TCP connection) and its decoding state."""

    name: str
    reply: Reply
    decoder: StreamDecoder = field(default_factory=StreamDecoder)
    reassembler: Reassembler = field(default_factory=Reassembler)
    open: bool = True


class SerialLine:
    """An open serial port read through the event loop; `open` is the factory."""

    def __init__(self, port: serial.Serial, path: str) -> None:
        self.port = port
        self.path = path
        self.fd = port.fileno()
        self.rdev = os.fstat(self.fd).st_rdev

    @classmethod
    async def open(cls, cfg: Hj212SerialBus) -> SerialLine:
        """Open and configure the port (raises serial.SerialException / OSError)."""
        import serial

        port = serial.Serial(port=cfg.port, baudrate=cfg.baudrate, parity=cfg.parity,
                             bytesize=cfg.bytesize, stopbits=cfg.stopbits, timeout=0,
                             write_timeout=1.0, exclusive=True)
        try:
            port.reset_input_buffer()  # bytes queued before we owned the port are stale
            return cls(port, cfg.port)
        except BaseException:
            port.close()
            raise

    async def read(self, wait: float) -> bytes:
        """Return the next chunk, b"" after `wait` seconds of silence; raise PortGone."""
        loop = asyncio.get_running_loop()
        ready: asyncio.Future[None] = loop.create_future()

        def wake() -> None:
            if not ready.done():
                ready.set_result(None)

        loop.add_reader(self.fd, wake)
        try:
            await asyncio.wait_for(ready, wait)
        except TimeoutError:
            return b""
        finally:
            loop.remove_reader(self.fd)
        try:
            data = os.read(self.fd, 4096)
        except BlockingIOError:
            return b""
        except OSError as exc:
            raise PortGone(f"read failed: {exc.strerror}") from None
        if not data:
            raise PortGone("end of file (device disconnected)")
        return data

    def same_device(self) -> bool:
        """True while the configured path still names the device that was opened."""
        try:
            return os.stat(self.path).st_rdev == self.rdev
        except OSError:
            return False

    def write(self, data: bytes) -> None:
        """Send bytes (answers are short; a stuck port raises PortGone on the next read)."""
        import serial

        with contextlib.suppress(serial.SerialException, OSError):
            self.port.write(data)

    def close(self) -> None:
        """Close the port (idempotent)."""
        with contextlib.suppress(Exception):
            self.port.close()


class Hj212Source:
    """One HJ 212 bus (serial or TCP listener) feeding Readings and Events to the sink."""

    def __init__(self, cfg: Hj212SerialBus | Hj212TcpBus, devices: Sequence[DeviceSection],
                 sink: Sink, *, timing: Hj212Timing | None = None) -> None:
        self.cfg = cfg
        self.sink = sink
        self.timing = timing or Hj212Timing()
        self.stations: dict[str, Station] = {}
        for d in devices:
            if not d.mn:
                raise ValueError(f"device {d.id} on HJ 212 bus {cfg.name} needs its mn"
                                 " (the station's 24-character MN code)")
            if d.mn in self.stations:
                raise ValueError(f"devices {self.stations[d.mn].cfg.id} and {d.id} on HJ 212"
                                 f" bus {cfg.name} share mn {d.mn}; give each its own")
            self.stations[d.mn] = Station(d, load_profile(d.profile))
        self.counters = dict.fromkeys((
            "bytes", "frames", "bad_frames", "readings", "values", "answers", "unknown_mn",
            "unknown_codes", "opens", "port_lost", "open_failures", "connections", "refused",
            "idle_drops", "bad_values", "bad_flags", "rejected", "requests", "no_answer",
            "command_replies",
            *(f"rejected_{reason}" for reason in REJECT_REASONS)), 0)
        self.progress = time.monotonic()
        self.bound_port: int | None = None  # TCP: the port actually listened on
        self._unknown_mns: set[str] = set()
        self._logged: set[tuple[str, str]] = set()
        self._open_connections = 0
        self._rand = random.Random()
        self._serial_line: Line | None = None
        self.line_up = asyncio.Event()  # set when a line opens or a station is heard on one
        self.commands = StationCommands(self, self.timing.answer_timeout)

    def has_device(self, device: str) -> bool:
        """Whether a station of this bus has the device id."""
        return self.commands.station(device) is not None

    async def run_command(self, device: str, op: str, args: dict[str, object],
                          start: Callable[[int], bool]) -> CommandResult:
        """Run a device command on the station's line (queued behind any other on it)."""
        return await self.commands.run(device, op, args, start)

    def line_of(self, station: Station) -> Line | None:
        """The open line a command to the station goes out on, if any."""
        if isinstance(self.cfg, Hj212SerialBus):
            return self._serial_line
        return station.line if station.line is not None and station.line.open else None

    def device_health(self) -> dict[str, dict[str, object]]:
        """Per-station online state and counters for the health message."""
        now = time.monotonic()
        return {s.cfg.id: {"online": s.online(now, self.timing.offline_periods),
                           "frames": s.frames, "values": s.values, "not_good": s.not_good,
                           "duplicates": s.duplicates,
                           "faulty_codes": ",".join(sorted(s.faults))}
                for s in self.stations.values()}

    async def run(self) -> None:
        """Receive until cancelled; a missing port or a busy address is retried, never fatal."""
        if isinstance(self.cfg, Hj212SerialBus):
            await self._run_serial(self.cfg)
        else:
            await self._run_tcp(self.cfg)

    # --- serial ------------------------------------------------------------------------------

    async def _run_serial(self, cfg: Hj212SerialBus) -> None:
        import serial

        attempt = 0
        while True:
            try:
                line = await SerialLine.open(cfg)
            except (serial.SerialException, OSError, ValueError) as exc:
                self.counters["open_failures"] += 1
                if attempt == 0:
                    log.warning("bus %s: cannot open %s (%s); retrying with backoff",
                                cfg.name, cfg.port, exc)
                await asyncio.sleep(reopen_delay(attempt, self.timing, self._rand.random()))
                attempt += 1
                continue
            log.info("bus %s: listening on %s at %d %d%s%d", cfg.name, cfg.port, cfg.baudrate,
                     cfg.bytesize, cfg.parity, cfg.stopbits)
            attempt = 0
            self.counters["opens"] += 1
            try:
                await self._pump_serial(line)
            except PortGone as exc:
                self.counters["port_lost"] += 1
                log.warning("bus %s: lost %s: %s; reopening", cfg.name, cfg.port, exc)
            finally:
                line.close()

    async def _pump_serial(self, port: SerialLine) -> None:
        line = self._serial_line = Line(self.cfg.name, port.write)
        self.line_up.set()
        try:
            while True:
                data = await port.read(self.timing.port_check)
                self.progress = time.monotonic()
                if data:
                    self.feed(line, data)
                elif not port.same_device():
                    raise PortGone(f"{port.path} now names another device")
        finally:
            line.open = False
            self._serial_line = None
            self._handle_items(line, line.decoder.flush())

    # --- TCP ---------------------------------------------------------------------------------

    async def _run_tcp(self, cfg: Hj212TcpBus) -> None:
        attempt = 0
        while True:
            try:
                server = await asyncio.start_server(self._serve_logger, cfg.host, cfg.port)
                break
            except OSError as exc:
                self.counters["open_failures"] += 1
                if attempt == 0:
                    log.warning("bus %s: cannot listen on %s:%d (%s); retrying", cfg.name,
                                cfg.host, cfg.port, exc)
                await asyncio.sleep(reopen_delay(attempt, self.timing, self._rand.random()))
                attempt += 1
        self.bound_port = int(server.sockets[0].getsockname()[1])
        log.info("bus %s: accepting HJ 212 loggers on %s:%d", cfg.name, cfg.host,
                 self.bound_port)
        async with server:
            await server.serve_forever()

    async def _serve_logger(self, reader: asyncio.StreamReader,
                            writer: asyncio.StreamWriter) -> None:
        peer = writer.get_extra_info("peername")
        name = f"{self.cfg.name}:{peer[0]}:{peer[1]}" if peer else self.cfg.name
        if self._open_connections >= self.timing.max_connections:
            self.counters["refused"] += 1
            writer.close()
            return
        self._open_connections += 1
        self.counters["connections"] += 1
        line = Line(name, writer.write)
        try:
            while True:
                try:
                    data = await asyncio.wait_for(reader.read(4096),
                                                  self.timing.tcp_idle_timeout)
                except TimeoutError:
                    self.counters["idle_drops"] += 1
                    return
                if not data:
                    return
                self.progress = time.monotonic()
                self.feed(line, data)
                await writer.drain()
        except (ConnectionError, OSError):
            return
        except asyncio.CancelledError:
            # The bus is stopping. Nobody awaits this per-connection task, and asyncio's
            # stream callback logs an error for a cancelled one (3.11), so end it quietly.
            return
        finally:
            self._open_connections -= 1
            line.open = False
            self.commands.forget(line.name)
            self._handle_items(line, line.decoder.flush())
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()

    # --- frames ------------------------------------------------------------------------------

    def feed(self, line: Line, data: bytes) -> None:
        """Decode a chunk of a line and act on every frame and error it completes."""
        self.counters["bytes"] += len(data)
        self._handle_items(line, line.decoder.feed(data))

    def _handle_items(self, line: Line, items: Sequence[Frame | FrameError]) -> None:
        for item in items:
            if isinstance(item, FrameError):
                self.counters["bad_frames"] += 1
                self._reject(item.reason)
                self._log_once(self.cfg.name, item.reason, "bus %s: dropped a bad frame"
                               " (%s); counting further ones", line.name, item)
            else:
                self.handle_frame(line, item)

    def handle_frame(self, line: Line, frame: Frame) -> None:
        """Accept one frame: reassemble, normalise, hand to the sink, then answer if asked."""
        self.counters["frames"] += 1
        station = self.stations.get(frame.mn or "")
        if station is None:
            self.counters["unknown_mn"] += 1
            mn = frame.mn or ""
            if mn not in self._unknown_mns and len(self._unknown_mns) < MAX_LOGGED_MNS:
                self._unknown_mns.add(mn)
                log.warning("bus %s: frame from unknown MN %r (not in the config); ignoring"
                            " it and counting further ones", line.name, mn)
            return
        station.frames += 1
        station.last_seen = time.monotonic()
        if station.line is not line:
            station.line = line
            self.line_up.set()
        station.st = frame.st or station.st
        try:
            whole = line.reassembler.add(frame)
        except FrameError as exc:
            self.counters["bad_frames"] += 1
            self._reject(exc.reason)
            self._log_once(self.cfg.name, exc.reason, "bus %s: bad split packet: %s",
                           line.name, exc)
            return
        if whole is not None and station.waiting is not None \
                and station.waiting.feed(whole) == "answer":  # a command's answer: not data
            self.counters["command_replies"] += 1
        elif whole is not None and not self._repeat(station, whole):
            self._accept(station, whole)
        answer = build_data_answer(frame)
        if answer is not None:
            line.reply(answer)
            self.counters["answers"] += 1

    def _reject(self, reason: str) -> None:
        self.counters["rejected"] += 1
        self.counters[f"rejected_{reason}"] += 1

    def _repeat(self, station: Station, frame: Frame) -> bool:
        """A data frame the station sent again (it missed our answer): answered, not stored."""
        key = frame_key(frame)
        if key is None or not station.recent.repeat(key):
            return False
        station.duplicates += 1
        self._reject("duplicate")
        self._log_once(station.cfg.id, "duplicate", "device %s re-sent QN=%s (DataTime %s);"
                       " answering it without storing it again, counting further ones",
                       station.cfg.id, frame.qn, key[3])
        return True

    def _accept(self, station: Station, frame: Frame) -> None:
        ts_now = int(time.time() * 1000)
        mono = int(time.monotonic() * 1000)
        # No `mono` on the readings: their time is the station's DataTime, not an instant
        # of the gateway's clock, so the collector must not re-place them by it.
        out = normalise(frame, station.profile, station.cfg.id, received_ms=ts_now)
        if out.interval is None or out.rejected is not None:
            self._refuse_frame(station, frame, out.rejected or "unknown_cn")
            return
        self._note_bad_parts(station, out.bad_values, out.bad_flags)
        if out.unknown_codes:
            self.counters["unknown_codes"] += len(out.unknown_codes)
            self._log_once(station.cfg.id, "codes:" + ",".join(out.unknown_codes),
                           "device %s: codes %s are not in profile %s; ignoring them",
                           station.cfg.id, ", ".join(out.unknown_codes), station.profile.name)
        items: list[Reading | Event] = list(out.readings)
        station.values += out.values
        station.not_good += sum(len(r.values) for r in out.readings
                                if r.quality is not Quality.GOOD)
        if out.interval is Interval.REALTIME:
            items.extend(self._fault_events(station, frame, ts_now, mono))
        self.counters["readings"] += len(out.readings)
        self.counters["values"] += out.values
        if items:
            self.sink(items)

    def _refuse_frame(self, station: Station, frame: Frame, reason: str) -> None:
        self._reject(reason)
        if reason == "bad_time":
            self._log_once(station.cfg.id, reason, "device %s: DataTime %r of QN=%s is not a"
                           " time after 1970; dropping its readings, counting further ones",
                           station.cfg.id, frame.cp.get("DataTime"), frame.qn)
        else:
            self._log_once(station.cfg.id, f"cn:{frame.cn}", "device %s: frames with CN=%s"
                           " carry no data the gateway stores; ignoring them, counting further"
                           " ones", station.cfg.id, frame.cn)

    def _note_bad_parts(self, station: Station, bad_values: int,
                        bad_flags: tuple[str, ...]) -> None:
        self.counters["bad_values"] += bad_values
        self.counters["bad_flags"] += len(bad_flags)
        if bad_values:
            self._log_once(station.cfg.id, "bad_values", "device %s: dropped values that are"
                           " not finite numbers; counting further ones", station.cfg.id)
        if bad_flags:
            self._log_once(station.cfg.id, "bad_flags", "device %s: data flag(s) %s are not"
                           " HJ 212 flags; their values are kept as uncertain, counting"
                           " further ones", station.cfg.id, ", ".join(map(repr, bad_flags)))

    def _fault_events(self, station: Station, frame: Frame, ts: int, mono: int) -> list[Event]:
        faults = faulty_codes(frame)
        before, station.faults = station.faults, faults
        if bool(faults) == bool(before):
            return []
        action = Action.RAISE if faults else Action.CLEAR
        codes = ",".join(sorted(faults or before))
        log.log(logging.WARNING if faults else logging.INFO, "device %s: instrument fault %s"
                " (codes %s)", station.cfg.id, "raised" if faults else "cleared", codes)
        return [Event(station.cfg.id, ts, "instrument_fault", action, Severity.MINOR,
                      evidence={"codes": codes}, message=f"HJ 212 data flag D/B on {codes}",
                      mono=mono)]

    def _log_once(self, where: str, what: str, msg: str, *args: object) -> None:
        key = (where, what)
        if key not in self._logged and len(self._logged) < MAX_LOGGED_MNS:
            self._logged.add(key)
            log.warning(msg, *args)
