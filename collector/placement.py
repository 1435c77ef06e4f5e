"""When was a reading observed, on the collector's clock: the gateway's time, or a fallback.

Pure policy (no I/O): the store calls it with what it knows of each gateway's clock. The rules
are written up in docs/store-and-forward.md ("Clocks").

A message can wait at the broker for as long as the broker keeps it (a collector outage, a
backlog): that is not clock skew, and a synchronised gateway's times are kept however old the
message is. A gateway's clock is judged wrong only on evidence:

- *ahead*: the message was sent, by the gateway's clock, more than `max_future_ms` after it was
  received. Waiting can only make a message look older, never newer, so this holds for queued
  messages too.
- *measured*: on a **live** message (one the ingest knows did not wait at the broker, see
  `live`) `sent − received` is the gateway's clock offset, give or take the live bound. An
  offset beyond `max_skew_ms` behind or `max_future_ms` ahead marks the clock wrong until a
  live message measures it right again. The offset is kept per gateway (`gateways.clock_*`).
"""

from __future__ import annotations

from dataclasses import dataclass

from devices.contract import ClockInfo
from devices.durations import parse_duration

EARLIEST_MS = 946_684_800_000  # 2000-01-01: nothing is ever placed before it


@dataclass(frozen=True, slots=True)
class ClockPolicy:
    """Tolerances of the clock rules (collector.toml `[ingest]`)."""

    max_skew_ms: int = 120_000  # a live message this far behind: the gateway's clock is wrong
    max_future_ms: int = 60_000  # a message or reading this far ahead: wrong, or clamped
    live_bound_ms: int = 10_000  # a message is live if it waited at the broker at most this


CLOCK_KEYS = {"max_skew": "max_skew_ms", "max_future": "max_future_ms",
              "live_bound": "live_bound_ms"}


def clock_policy(section: dict[str, object]) -> ClockPolicy:
    """The clock keys of collector.toml `[ingest]`: max_skew, max_future, live_bound durations
    (the section's other keys are collector.ingest's: `IngestSettings` checks them all)."""
    values = {}
    for key, attr in CLOCK_KEYS.items():
        if key in section:
            try:
                values[attr] = int(parse_duration(section[key]) * 1000)  # type: ignore[arg-type]
            except ValueError as exc:
                raise ValueError(f"ingest.{key}: {exc}") from None
    return ClockPolicy(**values)


@dataclass(frozen=True, slots=True)
class GatewayClock:
    """What the collector knows of one gateway's clock."""

    offset_ms: int | None = None  # gateway clock minus collector clock, None: never measured
    measured_at: int | None = None  # collector time of the measurement
    source: str = ""  # "live" (a live message) or "ahead" (a message sent in the future)
    wrong: bool = False

    def as_dict(self) -> dict[str, object]:
        """JSON-ready, as served with the gateway."""
        return {"offset_ms": self.offset_ms, "measured_at": self.measured_at,
                "source": self.source, "wrong": self.wrong}


# A gateway's measured clock is stored again once its offset moved by CLOCK_MOVE_MS, its verdict
# or source changed, or CLOCK_REWRITE_MS after the measurement stored: not after every message.
# The messages of one batch are judged with the newest measurement all the same; what waits is
# `clock` of GET /api/v1/gateways and the next batch's starting point for messages that were
# not live. Writing it after every batch cost PostgreSQL a row version per gateway per batch,
# 6.5 % of its ingest statements' time in the busiest hour's mix (pg_stat_statements during
# `python -m bench city_hour --workers 1 --rate 5000`, one writer).
CLOCK_MOVE_MS = 250
CLOCK_REWRITE_MS = 60_000


def worth_storing(stored: GatewayClock | None, now: GatewayClock) -> bool:
    """Whether the clock `now` (after a batch) is to be written over the one `stored`."""
    if not now.source or now == stored:
        return False
    if (stored is None or stored.source != now.source or stored.wrong != now.wrong
            or stored.offset_ms is None or stored.measured_at is None
            or now.offset_ms is None or now.measured_at is None):
        return True
    return (abs(now.offset_ms - stored.offset_ms) >= CLOCK_MOVE_MS
            or abs(now.measured_at - stored.measured_at) >= CLOCK_REWRITE_MS)


def judge(known: GatewayClock, sent: int, received: int, live: bool,
          policy: ClockPolicy) -> GatewayClock:
    """The gateway's clock after one more message: its measured offset and whether it is wrong."""
    sample = sent - received
    if sample > policy.max_future_ms:
        return GatewayClock(sample, received, "ahead", True)
    if live:
        return GatewayClock(sample, received, "live", sample < -policy.max_skew_ms)
    return known  # a message that may have waited proves nothing about a clock behind


@dataclass(frozen=True, slots=True)
class Placed:
    """An observation time and how it was obtained; `clamped` names why it was forced."""

    ts: int
    how: str  # gateway | monotonic | offset | clamped
    clamped: str = ""  # "" | before_2000 | future


def place_in_time(ts: int, mono: int | None, clock: ClockInfo, sent: int, received: int,
                  trusted: bool = True, policy: ClockPolicy | None = None,
                  station_time: bool = False) -> Placed:
    """Observation time on the collector's clock, and how it was obtained.

    A synchronised gateway whose clock is not shown wrong (`trusted`) keeps its time. Otherwise,
    within one boot the monotonic clock gives the exact age of the reading at sending; across a
    reboot only the send/receive offset is left. Nothing is placed before 2000 or in the future:
    such a time becomes the receive time, and says why. A `station_time` reading was timed by
    the instrument's own clock (HJ 212 DataTime), which the gateway's clock does not shift.
    """
    policy = policy or ClockPolicy()
    if station_time:
        how, placed = "station", ts
    elif clock.synced and trusted:
        how, placed = "gateway", ts
    elif mono is not None and clock.mono is not None and clock.boot and (
            clock.sent_boot in ("", clock.boot)):
        how, placed = "monotonic", received - max(0, clock.mono - mono)
    else:
        how, placed = "offset", ts + (received - sent)
    if placed < EARLIEST_MS:
        return Placed(received, "clamped", "before_2000")
    if placed > received + policy.max_future_ms:
        return Placed(received, "clamped", "future")
    return Placed(placed, how)
