"""Commands to HJ 212 stations, run by the bus that owns the station's line.

One command at a time on a line (a lock per line: the others wait their turn), each request
written as one whole frame between the frames the gateway answers, matched to its replies by
QN (devices/hj212/exchange.py). A station silent for its answer timeout fails the command with
`no_answer`; QnRtn ≠ 1 fails it with `wrong_password` (3) or `station_refused`; ExeRtn ≠ 1
with `execution_failed`. History data frames go through the normal ingest path as they come.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from devices.commands import DONE, EXPIRED, FAILED, STATION_PARAMS, CommandResult
from devices.hj212.exchange import (
    EXE_RTN,
    QN_RTN,
    Exchange,
    from_local_time,
    local_time,
    request,
)
from edge.clock import now_ms

if TYPE_CHECKING:
    from edge.hj212_source import Hj212Source, Line, Station

log = logging.getLogger(__name__)

DEFAULT_PW = "123456"  # the data loggers' factory access password
MAX_EXCHANGE_S = 900.0  # one request's answers end within this, however many frames come


@dataclass
class Waiting:
    """An exchange under way and the event its frames set."""

    exchange: Exchange
    moved: asyncio.Event = field(default_factory=asyncio.Event)

    def feed(self, frame: Any) -> str:
        """Give a frame of the station to the exchange; wake the waiter when it was ours."""
        belongs = self.exchange.feed(frame)
        if belongs != "no":
            self.moved.set()
        return belongs


class StationCommands:
    """The command side of one HJ 212 bus."""

    def __init__(self, source: Hj212Source, answer_timeout: float) -> None:
        self.source = source
        self.answer_timeout = answer_timeout
        self._locks: dict[str, asyncio.Lock] = {}
        self._last_qn = 0

    def station(self, device: str) -> Station | None:
        """The configured station of a device id."""
        return next((s for s in self.source.stations.values() if s.cfg.id == device), None)

    def _qn(self, offset_minutes: int) -> str:
        ms = max(now_ms(), self._last_qn + 1)
        self._last_qn = ms
        text = local_time(ms, offset_minutes)
        return f"{text}{ms % 1000:03d}"

    async def run(self, device: str, op: str, args: dict[str, Any],
                  start: Callable[[int], bool]) -> CommandResult:
        """Run one command for a station; the result (never raises for the bus)."""
        station = self.station(device)
        if station is None:
            return _failed("unknown_device", f"no HJ 212 station {device!r} on this bus")
        timeout = station.cfg.response_timeout or self.answer_timeout
        line = await self._line_within(station, timeout)
        while line is not None:
            async with self._locks.setdefault(line.name, asyncio.Lock()):
                current = self.source.line_of(station)
                if current is line:  # still the station's line after waiting for our turn
                    if not start(now_ms()):
                        return CommandResult(EXPIRED, now_ms())
                    try:
                        return await self._execute(station, line, op, args)
                    except Exception as exc:  # the bus must survive any command
                        log.exception("command %s to station %s failed unexpectedly", op,
                                      device)
                        return _failed("device_error", f"{type(exc).__name__}: {exc}")
                    finally:
                        station.waiting = None
            line = current or await self._line_within(station, timeout)
        if not start(now_ms()):
            return CommandResult(EXPIRED, now_ms())
        self.source.counters["no_answer"] += 1
        return _failed("no_answer", f"station {device} is not connected (waited "
                       f"{timeout:g} s)")

    async def _line_within(self, station: Station, timeout: float) -> Line | None:
        """The station's line, waiting up to `timeout` for a TCP station to dial in."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while (line := self.source.line_of(station)) is None:
            remaining = deadline - loop.time()
            if remaining <= 0:
                break
            self.source.line_up.clear()
            try:
                await asyncio.wait_for(self.source.line_up.wait(), remaining)
            except TimeoutError:
                break
        return line

    def forget(self, line_name: str) -> None:
        """A line closed: drop its lock unless a command holds it."""
        lock = self._locks.get(line_name)
        if lock is not None and not lock.locked():
            del self._locks[line_name]

    async def _execute(self, station: Station, line: Line, op: str,
                       args: dict[str, Any]) -> CommandResult:
        offset = station.profile.hj212.utc_offset_minutes
        if op == "set_time":
            at = int(args.get("time", now_ms()))
            text = local_time(at, offset)
            res = await self._exchange(station, line, "1012", {"SystemTime": text})
            if isinstance(res, CommandResult):
                return res
            return CommandResult(DONE, now_ms(), value={"SystemTime": text, "time": at,
                                                        "exe_rtn": res.exe_rtn})
        if op == "set_rtd_interval":
            seconds = int(args["rtd_interval"])
            res = await self._exchange(station, line, "1062", {"RtdInterval": str(seconds)})
            if isinstance(res, CommandResult):
                return res
            return CommandResult(DONE, now_ms(), value={"rtd_interval": seconds,
                                                        "exe_rtn": res.exe_rtn})
        if op == "read_params":
            value: dict[str, Any] = {}
            for name in args["params"]:
                res = await self._exchange(station, line, STATION_PARAMS[name], {},
                                           reply_needed=True)
                if isinstance(res, CommandResult):
                    return res
                if name == "time":
                    text = res.reply.get("SystemTime", "")[:17]
                    value |= {"SystemTime": text, "time": from_local_time(text, offset)}
                else:
                    raw = res.reply.get("RtdInterval", "")[:10]
                    value["rtd_interval"] = int(raw) if raw.isascii() and raw.isdigit() \
                        else raw
            return CommandResult(DONE, now_ms(), value=value)
        if op == "request_history":
            cp = {"BeginTime": local_time(args["begin"], offset),
                  "EndTime": local_time(args["end"], offset)}
            res = await self._exchange(station, line, args["cn"], cp,
                                       history=(args["begin"], args["end"]))
            if isinstance(res, CommandResult):
                return res
            return CommandResult(DONE, now_ms(), value={"frames": res.frames,
                                                        "exe_rtn": res.exe_rtn,
                                                        "cn": args["cn"]})
        return _failed("unsupported_operation", f"{op} is not an HJ 212 station operation")

    async def _exchange(self, station: Station, line: Line, cn: str, cp: dict[str, str], *,
                        history: tuple[int, int] | None = None,
                        reply_needed: bool = False) -> Exchange | CommandResult:
        """Send one request and follow it to its end: the Exchange, or a failed result."""
        offset = station.profile.hj212.utc_offset_minutes
        ex = Exchange(qn=self._qn(offset), cn=cn, history=history, utc_offset_minutes=offset)
        waiting = station.waiting = Waiting(ex)
        frame = request(qn=ex.qn, st=station.profile.hj212.st or station.st or "91", cn=cn,
                        pw=station.cfg.pw or DEFAULT_PW, mn=station.cfg.mn or "", cp=cp)
        line.reply(frame)
        self.source.counters["requests"] += 1
        timeout = station.cfg.response_timeout or self.answer_timeout
        loop = asyncio.get_running_loop()
        give_up = loop.time() + MAX_EXCHANGE_S  # a station that never stops sending data
        while not ex.finished:
            waiting.moved.clear()
            wait = min(timeout, give_up - loop.time())
            try:  # each frame of the exchange gives the station another timeout
                await asyncio.wait_for(waiting.moved.wait(), max(wait, 0.0))
            except TimeoutError:
                if reply_needed and ex.reply and ex.qn_rtn == 1:
                    return ex  # the value came; a logger that sends no 9012 after it
                self.source.counters["no_answer"] += 1
                said = "no request answer (9011)" if ex.qn_rtn is None else \
                    "no execution result (9012)"
                within = f"{timeout:g} s" if wait >= timeout else \
                    f"{MAX_EXCHANGE_S:g} s in all"
                return _failed("no_answer", f"station {station.cfg.id}: {said} to CN={cn} "
                               f"QN={ex.qn} within {within} ({ex.frames} data frames)")
        if ex.qn_rtn is not None and ex.qn_rtn != 1:
            why = QN_RTN.get(ex.qn_rtn, "not a QnRtn")
            reason = "wrong_password" if ex.qn_rtn == 3 else "station_refused"
            return _failed(reason, f"station {station.cfg.id} answered CN={cn} with "
                           f"QnRtn={ex.qn_rtn} ({why})")
        if ex.exe_rtn != 1:
            why = EXE_RTN.get(ex.exe_rtn or 0, "not an ExeRtn")
            return _failed("execution_failed", f"station {station.cfg.id} ran CN={cn} with "
                           f"ExeRtn={ex.exe_rtn} ({why}; {ex.frames} data frames)")
        if reply_needed and not ex.reply:
            return _failed("execution_failed", f"station {station.cfg.id} sent no CN={cn} "
                           "reply before its execution result")
        return ex


def _failed(reason: str, message: str) -> CommandResult:
    return CommandResult(FAILED, now_ms(), reason=reason, message=message)
