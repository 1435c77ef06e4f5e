"""Simulated HJ 212 data loggers of construction-dust, boiler and restaurant-fume stations.

A station writes real-time (2011) frames every interval and, when asked, minute (2051) and
hourly (2061) averages, onto a serial line (a pty it creates and links at a path, or a real
port) or over TCP as a client of the gateway's listener, reconnecting as real loggers do.
Scenarios (names shared with the tests and the demo): normal, dust_exceedance,
boiler_nox_exceedance, fume_exceedance, purifier_off (the exhaust fan runs while the fume
purifier is off), instrument_fault (flag D), calibration (flag C), babbling_line (garbage and
corrupt frames between good ones). Frame content is a pure function of the
scenario, the time and a seeded random source; averaged data (2051/2061/2031) is a pure
function of the seed, the MN and its DataTime, so a frame sent again is the same frame.

Like a real data logger it answers the platform's requests on the same line: 9011 (QnRtn=1,
or 3 for a wrong password), the 1011 time and 1061 interval replies, 1012 (sets the station's
clock: an offset applied to every DataTime after it), 1062 (sets its real-time interval: the
next 2011 upload follows the new interval), and history requests (2051/2061/2031
with BeginTime/EndTime) with the averaged frames of that range it remembers (a bounded ring of
what it generated, sent or not), then 9012 (ExeRtn=1, or 100 when it has none). An `--outage`
cuts the line for some minute uploads: they are generated and remembered, never sent.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
import random
import signal
import sys
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Literal

from devices.durations import parse_duration
from devices.hj212 import Frame, StreamDecoder, build, split

log = logging.getLogger("citygate.sim.environment")

Kind = Literal["dust", "boiler", "fume"]
SCENARIOS = ("normal", "dust_exceedance", "boiler_nox_exceedance", "fume_exceedance",
             "purifier_off", "instrument_fault", "calibration", "babbling_line")
O2_REF = 3.5  # gas boilers; coal boilers refer to 9 %
# code -> (2005 code, typical value, spread); particles in µg/m³, gases in mg/m³
DUST = {"a34001": ("a34001", 110.0, 15.0), "a34002": ("a34002", 65.0, 10.0),
        "a34004": ("a34004", 35.0, 5.0), "a34005": ("a34005", 20.0, 3.0),
        "a50001": ("a50001", 58.0, 4.0), "a01007": ("a01007", 2.5, 1.0),
        "a01008": ("a01008", 180.0, 90.0), "a01001": ("a01001", 22.0, 2.0),
        "a01002": ("a01002", 45.0, 5.0)}
BOILER = {"a21026": ("02", 5.0, 1.0), "a21002": ("03", 18.0, 2.0), "a34013": ("01", 3.0, 0.5),
          "a21005": ("04", 10.0, 2.0), "a19001": ("S01", 8.0, 0.3),
          "a01012": ("S03", 95.0, 3.0), "a01011": ("S02", 6.0, 0.5),
          "a01013": ("S08", 0.1, 0.01), "a01014": ("S05", 9.0, 0.5),
          "a00000": ("B02", 2.5, 0.2)}
# Cooking-fume platform codes (docs/hj212.md): fume, particulates, NMHC in mg/m³; purifier and
# fan current (A) and state (1 running, 0 off).
FUME = {"a34041": ("a34041", 0.6, 0.1), "a34000": ("a34000", 1.5, 0.3),
        "a24088": ("a24088", 3.0, 0.5), "ga0601": ("ga0601", 0.8, 0.05),
        "ga0701": ("ga0701", 1.0, 0.0), "ga2001": ("ga2001", 2.2, 0.1),
        "ga2101": ("ga2101", 1.0, 0.0)}
TABLES = {"dust": DUST, "boiler": BOILER, "fume": FUME}
KEY_CODE = {"dust": "a34002", "boiler": "a21002", "fume": "a34041"}
ST = {"dust": "39", "boiler": "31", "fume": "31"}
PARTICLES = ("a34001", "a34002", "a34004", "a34005")
CONVERTED = ("a21026", "a21002", "a34013")  # values with a -Zs counterpart
MAX_RTD_INTERVAL_S = 86_400  # the longest real-time interval a CN 1062 may set
AVERAGES = ("2051", "2061", "2031")  # the data a history request asks for
HISTORY_SIZE = 10_080  # averaged uploads remembered (a week of minute data)


@dataclass
class StationSim:
    """One simulated data logger; `frames(...)` gives the bytes it sends at a moment."""

    kind: Kind
    mn: str
    scenario: str = "normal"
    pw: str = "123456"
    codes_2005: bool = False  # HJ/T 212-2005 codes, no QN and no Flag (boilers)
    unit_mg: bool = False  # particles in mg/m³ instead of µg/m³ (dust)
    ack: bool = False  # ask for the 9014 data answer (Flag bit A)
    max_segment: int = 1024  # smaller values force split packets
    utc_offset_minutes: int = 480
    wind_from: float | None = None  # dust: a steady wind direction (°) instead of a random one
    wind_speed: float | None = None  # dust: a steady wind speed (m/s)
    rng: random.Random = field(default_factory=random.Random)
    seed: int = 0  # of the averaged data (a pure function of seed, MN and DataTime)
    rtd_interval: int = 30  # seconds, as CN 1061 reports it (and CN 1062 sets it)
    rtd_interval_set: bool = False  # a 1062 set it: the real-time uploads follow it
    clock_offset_s: float = 0.0  # the station's clock minus the true time (CN 1012 sets it)
    history_size: int = HISTORY_SIZE
    history: OrderedDict[tuple[str, str], list[bytes]] = field(default_factory=OrderedDict)

    def values(self) -> dict[str, tuple[float, str]]:
        """Current instrument values and data flags per 2017 code for this scenario."""
        out = {code: (max(0.0, self.rng.gauss(mean, spread)), "N")
               for code, (_, mean, spread) in TABLES[self.kind].items()}
        if self.kind == "dust" and self.wind_from is not None:
            out["a01008"] = (self.wind_from % 360.0, "N")
        if self.kind == "dust" and self.wind_speed is not None:
            out["a01007"] = (max(0.0, self.wind_speed), "N")
        if self.kind == "fume":
            out.update(self._fume_values())
        if self.scenario == "dust_exceedance" and self.kind == "dust":
            out["a34002"] = (self.rng.gauss(420.0, 15.0), "N")
            out["a34001"] = (self.rng.gauss(650.0, 20.0), "N")
        if self.scenario == "boiler_nox_exceedance" and self.kind == "boiler":
            out["a21002"] = (self.rng.gauss(36.0, 1.0), "N")
        key = KEY_CODE[self.kind]
        if self.scenario == "instrument_fault":
            out[key] = (0.0, "D")
        if self.scenario == "calibration":
            out[key] = (out[key][0], "C")
        return out

    def _fume_values(self) -> dict[str, tuple[float, str]]:
        """The fume scenarios: a concentration above the limit, or the purifier left off."""
        out: dict[str, tuple[float, str]] = {}
        if self.scenario == "fume_exceedance":
            out["a34041"] = (self.rng.gauss(3.5, 0.2), "N")
        if self.scenario == "purifier_off":  # fan on, purifier off: fumes go out unpurified
            out |= {"ga0601": (0.0, "N"), "ga0701": (0.0, "N"),
                    "a34041": (self.rng.gauss(2.6, 0.2), "N")}
        return out

    def cp(self, interval: Literal["rt", "avg"]) -> dict[str, str]:
        """CP items (without DataTime) of a real-time or an averaged upload."""
        o2 = 0.0
        cp: dict[str, str] = {}
        values = self.values()
        if self.kind == "boiler":
            o2 = values["a19001"][0]
        for code, (value, flag) in values.items():
            wire = BOILER[code][0] if self.codes_2005 and self.kind == "boiler" else code
            if code in ("ga0701", "ga2101"):  # states are integers on the wire
                cp[f"{wire}-Rtd" if interval == "rt" else f"{wire}-Avg"] = f"{value:.0f}"
                cp[f"{wire}-Flag"] = flag
                continue
            scale = 0.001 if self.unit_mg and code in PARTICLES else 1.0
            shown = f"{value * scale:.4f}" if scale != 1.0 else f"{value:.2f}"
            if interval == "rt":
                cp[f"{wire}-Rtd"] = shown
            else:
                low, high = value * 0.9 * scale, value * 1.1 * scale
                cp |= {f"{wire}-Min": f"{low:.4f}", f"{wire}-Avg": shown,
                       f"{wire}-Max": f"{high:.4f}"}
            if self.kind == "boiler" and code in CONVERTED:
                zs = value * (21.0 - O2_REF) / (21.0 - o2)
                cp[f"{wire}-Zs{'Rtd' if interval == 'rt' else 'Avg'}"] = f"{zs:.2f}"
            cp[f"{wire}-Flag"] = flag
        return cp

    def local(self, at: datetime) -> datetime:
        """The station's local clock reading (its offset from the true time included)."""
        return at.astimezone(UTC).replace(tzinfo=None) + timedelta(
            minutes=self.utc_offset_minutes, seconds=self.clock_offset_s)

    def frames(self, cn: str, at: datetime) -> list[bytes]:
        """The frame(s) of command `cn` (2011, 2051, 2061, 2031) for UTC time `at`; averaged
        ones are remembered for history requests."""
        local = self.local(at)
        if cn == "2031":
            local = local.replace(hour=0, minute=0, second=0, microsecond=0)
        elif cn == "2061":
            local = local.replace(minute=0, second=0, microsecond=0)
        elif cn == "2051":
            local = local.replace(second=0, microsecond=0)
        stamp = local.strftime("%Y%m%d%H%M%S")
        if cn in AVERAGES:
            saved, self.rng = self.rng, random.Random(f"{self.seed}|{self.mn}|{cn}|{stamp}")
            try:
                cp = {"DataTime": stamp, **self.cp("avg")}
            finally:
                self.rng = saved
        else:
            cp = {"DataTime": stamp, **self.cp("rt")}
        # QN is when this upload was made, as a logger stamps it: a history answer re-sends the
        # remembered frames as they were, so a copy of an upload carries its QN.
        qn = self.local(at).strftime("%Y%m%d%H%M%S%f")[:17]
        st = ST[self.kind]
        if self.codes_2005:
            out = [build(st=st, cn=cn, pw=self.pw, mn=self.mn, cp=cp)]
        else:
            out = split(st=st, cn=cn, pw=self.pw, mn=self.mn, cp=cp, qn=qn,
                        flag=5 if self.ack else 4, max_segment=self.max_segment)
        if cn in AVERAGES:
            self.history[(cn, stamp)] = out
            self.history.move_to_end((cn, stamp))
            while len(self.history) > self.history_size:
                self.history.popitem(last=False)
        return out

    # --- answers to the platform's requests ----------------------------------------------------

    def _answer(self, qn: str | None, cn: str, cp: dict[str, str]) -> bytes:
        return build(qn=qn, st="91", cn=cn, pw=self.pw, mn=self.mn, flag=4, cp=cp)

    def answer(self, req: Frame, now: datetime) -> list[bytes]:
        """What the logger sends back for a platform request (nothing for other frames)."""
        if req.mn != self.mn or req.cn not in ("1011", "1012", "1061", "1062", *AVERAGES):
            return []
        if req.pw != self.pw:
            return [self._answer(req.qn, "9011", {"QnRtn": "3"})]
        ready = self._answer(req.qn, "9011", {"QnRtn": "1"})
        done = self._answer(req.qn, "9012", {"ExeRtn": "1"})
        st = ST[self.kind]
        if req.cn == "1011":
            cp = {"SystemTime": self.local(now).strftime("%Y%m%d%H%M%S")}
            return [ready, build(qn=req.qn, st=st, cn="1011", pw=self.pw, mn=self.mn, flag=4,
                                 cp=cp), done]
        if req.cn == "1061":
            return [ready, build(qn=req.qn, st=st, cn="1061", pw=self.pw, mn=self.mn,
                                 flag=4, cp={"RtdInterval": str(self.rtd_interval)}), done]
        if req.cn == "1012":
            try:
                wanted = datetime.strptime(req.cp.get("SystemTime", ""), "%Y%m%d%H%M%S")
            except ValueError:
                return [ready, self._answer(req.qn, "9012", {"ExeRtn": "3"})]
            true_local = self.local(now) - timedelta(seconds=self.clock_offset_s)
            self.clock_offset_s = (wanted - true_local).total_seconds()
            return [ready, done]
        if req.cn == "1062":
            raw = req.cp.get("RtdInterval", "")
            if not (raw.isascii() and raw.isdigit() and 1 <= len(raw) <= 5
                    and 1 <= int(raw) <= MAX_RTD_INTERVAL_S):
                return [ready, self._answer(req.qn, "9012", {"ExeRtn": "3"})]
            self.rtd_interval, self.rtd_interval_set = int(raw), True
            return [ready, done]
        begin, end = req.cp.get("BeginTime", ""), req.cp.get("EndTime", "")
        if len(begin) != 14 or len(end) != 14 or not (begin + end).isdigit():
            return [ready, self._answer(req.qn, "9012", {"ExeRtn": "3"})]
        found = [b for (cn, stamp), frames in sorted(self.history.items())
                 if cn == req.cn and begin <= stamp <= end for b in frames]
        if not found:
            return [ready, self._answer(req.qn, "9012", {"ExeRtn": "100"})]
        return [ready, *found, done]

    def wire(self, cn: str, at: datetime) -> bytes:
        """Bytes put on the line for one upload, with babble when the scenario asks."""
        data = b"".join(self.frames(cn, at))
        if self.scenario != "babbling_line":
            return data
        noise = bytes(self.rng.choice(b"0123456789ABCDEF;=&,\r\n\x00\xff") for _ in
                      range(self.rng.randint(20, 300)))
        torn = data[: self.rng.randint(8, max(9, len(data) // 2))]  # a frame cut short
        flipped = bytearray(data)
        flipped[len(data) // 2] ^= 0x01  # a bit flipped in flight: bad CRC
        return noise + torn + bytes(flipped) + noise[:50] + data


# --- transports ------------------------------------------------------------------------------

Writer = Callable[[bytes], None]
MAX_UNSENT = 8 * 1024 * 1024  # bytes a serial line may hold back before more are dropped


class SimStats:
    """What the simulator did (logged at the end), and the line it answers requests on."""

    def __init__(self, sim: StationSim | None = None,
                 outage: tuple[int, int] = (0, -1)) -> None:
        self.uploads = 0
        self.answers = 0
        self.requests = 0
        self.minutes = 0  # minute uploads generated so far
        self.outage = outage  # minute uploads [first, last] during which the line is cut
        self.sim = sim
        self.rtd_every = 0.0  # seconds between real-time uploads now (the schedule's)
        self.rtd_due = 0.0  # loop time of the next real-time upload
        self.wake = asyncio.Event()  # a request changed the schedule (CN 1062)
        self.write: Writer | None = None
        self.decoder = StreamDecoder()

    @property
    def line_down(self) -> bool:
        """The line is cut (an --outage): nothing is sent, nothing is heard."""
        return self.outage[0] <= self.minutes <= self.outage[1]

    def received(self, data: bytes) -> None:
        """Count 9014 data answers coming back; answer the platform's requests."""
        for item in self.decoder.feed(data):
            if isinstance(item, Exception):
                continue
            if item.cn == "9014":
                self.answers += 1
            elif self.sim is not None and self.write is not None and not self.line_down:
                out = self.sim.answer(item, datetime.now(UTC))
                if out:
                    self.requests += 1
                    log.info("request CN=%s QN=%s: answering with %d frames", item.cn,
                             item.qn, len(out))
                    self.write(b"".join(out))
                    if item.cn == "1062":
                        self.wake.set()


async def _schedule(sim: StationSim, write: Writer, args: argparse.Namespace,
                    stats: SimStats, stop: asyncio.Event) -> None:
    loop = asyncio.get_running_loop()
    start = loop.time()
    first_minute = (datetime.now(UTC) - timedelta(seconds=args.minutes_from)).replace(
        second=0, microsecond=0)
    due = {"2011": start, "2051": start + args.minute_every, "2061": start + args.hour_every}
    every = {"2011": args.interval, "2051": args.minute_every, "2061": args.hour_every}
    while not stop.is_set() and (args.count == 0 or stats.uploads < args.count):
        now = loop.time()
        if sim.rtd_interval_set and every["2011"] != sim.rtd_interval:  # set by a CN 1062
            due["2011"] = min(due["2011"], now + sim.rtd_interval)
            every["2011"] = float(sim.rtd_interval)
        for cn, when in due.items():
            if cn == "2051" and args.minute_count and stats.minutes >= args.minute_count:
                every[cn] = 0.0  # the minute uploads asked for are done
            if every[cn] > 0 and now >= when:
                at = datetime.now(UTC)
                if cn == "2051":
                    stats.minutes += 1
                    if args.minutes_from:  # time-compressed: consecutive minutes
                        at = first_minute + timedelta(minutes=stats.minutes - 1)
                data = sim.wire(cn, at)
                if not stats.line_down:
                    write(data)
                due[cn] = when + every[cn]
                stats.uploads += cn == "2011"
        stats.rtd_every, stats.rtd_due = every["2011"], due["2011"]
        wait = min((when for cn, when in due.items() if every[cn] > 0),
                   default=loop.time() + 1.0) - loop.time()
        stats.wake.clear()
        waiters = [asyncio.ensure_future(stop.wait()), asyncio.ensure_future(stats.wake.wait())]
        await asyncio.wait(waiters, timeout=max(wait, 0.0), return_when=asyncio.FIRST_COMPLETED)
        for waiter in waiters:
            waiter.cancel()


async def run_serial(sim: StationSim, args: argparse.Namespace, stop: asyncio.Event) -> SimStats:
    """Write onto a pty linked at args.pty, or a real serial port."""
    from devices.sim.ptylink import PtyLink

    stats = SimStats(sim, args.outage)
    link: PtyLink | None = None
    port = None
    if args.pty:
        link = PtyLink().open()
        link.link(args.pty, end="b")
        fd = os.open(link.a_path, os.O_RDWR | os.O_NOCTTY | os.O_NONBLOCK)
    else:
        import serial

        port = serial.Serial(args.serial, baudrate=args.baud, timeout=0)
        fd = port.fileno()
    loop = asyncio.get_running_loop()

    def readable() -> None:
        with contextlib.suppress(OSError):
            stats.received(os.read(fd, 4096))

    out = bytearray()  # what the line has not taken yet (a history answer is long)

    def flush() -> None:
        while out:
            try:
                n = os.write(fd, out)
            except BlockingIOError:
                break
            except OSError:
                out.clear()
            else:
                del out[:n]
        if out:
            loop.add_writer(fd, flush)
        else:
            loop.remove_writer(fd)

    def write(data: bytes) -> None:
        if len(out) > MAX_UNSENT:  # nobody reads the line: the bytes are lost
            return
        out.extend(data)
        flush()

    stats.write = write
    loop.add_reader(fd, readable)
    try:
        await _schedule(sim, write, args, stats, stop)
    finally:
        loop.remove_reader(fd)
        loop.remove_writer(fd)
        if port is not None:
            port.close()
        else:
            os.close(fd)
        if link is not None:
            link.close()
            with contextlib.suppress(OSError):
                os.unlink(args.pty)
    return stats


async def run_tcp(sim: StationSim, args: argparse.Namespace, stop: asyncio.Event) -> SimStats:
    """Connect to the gateway's listener as a logger does; reconnect when the link drops."""
    stats = SimStats(sim, args.outage)
    host, _, port = args.tcp.rpartition(":")
    delay = 0.2
    while not stop.is_set() and (args.count == 0 or stats.uploads < args.count):
        try:
            reader, writer = await asyncio.open_connection(host, int(port))
        except OSError:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), delay)
            delay = min(delay * 2, 5.0)
            continue
        delay = 0.2
        stats.write = writer.write

        async def answers(r: asyncio.StreamReader = reader) -> None:
            while data := await r.read(4096):
                stats.received(data)

        task = asyncio.create_task(answers(), name="sim-answers")
        try:
            await _schedule(sim, writer.write, args, stats, stop)
            await writer.drain()
            await asyncio.sleep(0.3)  # let the last answers arrive
        except (ConnectionError, OSError):
            log.warning("connection to %s lost; reconnecting", args.tcp)
        finally:
            task.cancel()
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()
    return stats


def build_parser() -> argparse.ArgumentParser:
    """Arguments of `citygate sim environment`."""
    p = argparse.ArgumentParser(prog="citygate sim environment", description=__doc__)
    p.add_argument("--kind", choices=tuple(TABLES), required=True)
    p.add_argument("--mn", required=True, help="the station's MN code")
    p.add_argument("--scenario", choices=SCENARIOS, default="normal")
    where = p.add_mutually_exclusive_group(required=True)
    where.add_argument("--pty", help="create a serial line and link its gateway end at PATH")
    where.add_argument("--serial", help="write to a real serial port")
    where.add_argument("--tcp", help="connect to the gateway listener at HOST:PORT")
    p.add_argument("--baud", type=int, default=9600)
    p.add_argument("--interval", type=parse_duration, default=1.0,
                   help="real-time upload period (default 1s)")
    p.add_argument("--minute-every", type=parse_duration, default=0.0,
                   help="send minute data (2051) this often (default off)")
    p.add_argument("--hour-every", type=parse_duration, default=0.0,
                   help="send hourly data (2061) this often, time-compressed (default off)")
    p.add_argument("--count", type=int, default=0, help="stop after N real-time uploads")
    p.add_argument("--codes", choices=("2017", "2005"), default="2017")
    p.add_argument("--unit", choices=("ug", "mg"), default="ug", help="dust particle unit")
    p.add_argument("--ack", action="store_true", help="ask for 9014 data answers (Flag=5)")
    p.add_argument("--max-segment", type=int, default=1024, help="split longer uploads")
    p.add_argument("--seed", type=int)
    p.add_argument("--wind-from", type=float, help="dust: steady wind direction in degrees")
    p.add_argument("--wind-speed", type=float, help="dust: steady wind speed in m/s")
    p.add_argument("--pw", default="123456", help="the logger's access password (PW)")
    p.add_argument("--minutes-from", type=parse_duration, default=0.0,
                   help="time-compressed minute data: each minute upload carries the minute "
                   "after the previous one, the first this long ago (default: the current "
                   "minute, in real time)")
    p.add_argument("--minute-count", type=int, default=0,
                   help="stop the minute uploads after N of them (default: never)")
    p.add_argument("--outage", type=_outage, default=(0, -1), metavar="FIRST-LAST",
                   help="cut the line from minute upload FIRST to LAST (1-based): those are "
                   "generated and remembered for history requests but never sent")
    return p


def _outage(text: str) -> tuple[int, int]:
    first, _, last = text.partition("-")
    if not (first.isdigit() and last.isdigit() and 1 <= int(first) <= int(last)):
        raise argparse.ArgumentTypeError(f"{text!r} is not FIRST-LAST, e.g. 3-6")
    return int(first), int(last)


def main(argv: list[str] | None = None) -> int:
    """Run one simulated station until SIGINT/SIGTERM or --count uploads."""
    args = build_parser().parse_args(argv)
    if not logging.getLogger().handlers:
        logging.basicConfig(level=logging.INFO, stream=sys.stderr,
                            format="%(asctime)s %(levelname)-7s %(name)s: %(message)s")
    sim = StationSim(kind=args.kind, mn=args.mn, scenario=args.scenario,
                     codes_2005=args.codes == "2005", unit_mg=args.unit == "mg", ack=args.ack,
                     max_segment=args.max_segment, wind_from=args.wind_from,
                     wind_speed=args.wind_speed, pw=args.pw,
                     rng=random.Random(args.seed), seed=args.seed or 0,
                     rtd_interval=max(1, round(args.interval)))

    async def runner() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        where = args.pty or args.serial or args.tcp
        log.info("%s station %s (%s) on %s", args.kind, args.mn, args.scenario, where)
        run = run_tcp if args.tcp else run_serial
        stats = await run(sim, args, stop)
        log.info("station %s: %d uploads, %d data answers, %d requests answered", args.mn,
                 stats.uploads, stats.answers, stats.requests)

    asyncio.run(runner())
    return 0


if __name__ == "__main__":
    sys.exit(main())
