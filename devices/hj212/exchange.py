"""Platform requests to an HJ 212 station and the frames that answer them (sans-IO).

HJ 212-2017 request flow: the platform sends a request with a fresh QN and Flag A=1; the
station answers 9011 (`QnRtn`, 1 = ready), then sends what the request asked for (a 1011
time, a 1061 interval, or the minute/hour/day data frames of a history request), then 9012
(`ExeRtn`, 1 = done). 9011 and 9012 carry the request's QN; that is how a reply is matched to
its request (frames of another QN are not this exchange's).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Final, Literal

from devices.hj212.codec import Frame, build

# QnRtn of the 9011 request answer, ExeRtn of the 9012 execution result (HJ 212-2017 6.6).
QN_RTN: Final = {1: "ready", 2: "refused", 3: "wrong password", 4: "wrong MN", 5: "wrong ST",
                 6: "wrong Flag", 7: "wrong QN", 8: "wrong CN", 9: "wrong CRC",
                 100: "unknown error"}
EXE_RTN: Final = {1: "done", 2: "failed", 3: "request condition error",
                  4: "communication timeout", 5: "system busy", 6: "system fault",
                  100: "no data"}
REQUEST_FLAG: Final = 5  # version 1 (2017), A = 1: the station answers 9011
_MAX_RTN: Final = 999
Belongs = Literal["no", "answer", "data"]


def local_time(ms: int, utc_offset_minutes: int) -> str:
    """Epoch ms as the station's local `YYYYMMDDhhmmss` (SystemTime, BeginTime, DataTime)."""
    when = datetime.fromtimestamp(ms / 1000, UTC).replace(tzinfo=None)
    return (when + timedelta(minutes=utc_offset_minutes)).strftime("%Y%m%d%H%M%S")


def from_local_time(text: str | None, utc_offset_minutes: int) -> int | None:
    """A station's local `YYYYMMDDhhmmss[zzz]` as epoch ms; None when it is not a time."""
    if text is None or not (text.isascii() and text.isdigit() and len(text) in (14, 17)):
        return None
    try:
        when = datetime.strptime(text[:14], "%Y%m%d%H%M%S")
    except ValueError:
        return None
    when -= timedelta(minutes=utc_offset_minutes)
    ms = int(when.replace(tzinfo=UTC).timestamp() * 1000)
    return ms + (int(text[14:]) if len(text) == 17 else 0)


def request(*, qn: str, st: str, cn: str, pw: str, mn: str, cp: dict[str, str]) -> bytes:
    """A platform request frame (Flag=5: answer with 9011)."""
    return build(qn=qn, st=st, cn=cn, pw=pw, mn=mn, flag=REQUEST_FLAG, cp=cp)


def _rtn(text: str | None) -> int | None:
    if text is None or not (text.isascii() and text.isdigit() and len(text) <= 3):
        return -1 if text is not None else None
    value = int(text)
    return value if value <= _MAX_RTN else -1


@dataclass
class Exchange:
    """One request and what answered it so far; `feed` every frame of the station."""

    qn: str
    cn: str  # the request's CN
    history: tuple[int, int] | None = None  # [begin, end] ms of a history request
    utc_offset_minutes: int = 480
    qn_rtn: int | None = None  # -1: not a number
    exe_rtn: int | None = None
    reply: dict[str, str] = field(default_factory=dict)  # CP of a 1011/1061 reply
    frames: int = 0  # history data frames received within [begin, end]

    def feed(self, frame: Frame) -> Belongs:
        """Whether the frame is this exchange's: an `answer` (9011, 9012, a parameter reply:
        consumed here) or history `data` (counted here, stored as any upload), else `no`."""
        if frame.qn == self.qn and frame.cn == "9011":
            self.qn_rtn = _rtn(frame.cp.get("QnRtn"))
            return "answer"
        if frame.qn == self.qn and frame.cn == "9012":
            self.exe_rtn = _rtn(frame.cp.get("ExeRtn"))
            return "answer"
        if self.history is None and frame.cn == self.cn and frame.qn == self.qn:
            self.reply = dict(frame.cp)
            return "answer"
        if self.history is not None and frame.cn == self.cn:
            ts = from_local_time(frame.cp.get("DataTime"), self.utc_offset_minutes)
            if ts is not None and self.history[0] <= ts <= self.history[1]:
                self.frames += 1
                return "data"
        return "no"

    @property
    def finished(self) -> bool:
        """The station refused, or reported the execution result."""
        return (self.qn_rtn is not None and self.qn_rtn != 1) or self.exe_rtn is not None
