"""HJ 212 data frames to canonical Readings, driven by a device profile's ``[codes]`` (pure).

- One canonical name and unit per value: the profile maps each pollutant code (2017 or 2005)
  to a quantity and scales the device unit to the canonical one.
- Data flags become quality: only N is GOOD; C, M, S are UNCERTAIN; D, F, T, B are BAD; the raw
  flag is kept as ``source_flag``. Values of one frame are grouped per flag into Readings that
  share the frame's timestamp.
- Averaging period: real-time (2011), minute (2051), hourly (2061) and daily (2031) data keep
  the canonical quantity names and go to distinct *series ids*: ``<device>`` for real-time,
  ``<device>:min``, ``<device>:hour``, ``<device>:day`` for the averages (docs/hj212.md).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum
from typing import Final

from devices.contract import MAX_FLAG, text_problem, value_problem
from devices.hj212.codec import Frame
from devices.model import Quality, Reading, Value
from devices.profiles import Profile

SERIES_SEP: Final = ":"
BAD_FLAG: Final = "\x00bad"  # stands for every flag no reading can carry (never on the wire)
_EPOCH: Final = datetime(1970, 1, 1)


class Interval(StrEnum):
    """Averaging period of HJ 212 data, named by the series-id suffix it travels under."""

    REALTIME = "rt"
    MINUTE = "min"
    HOUR = "hour"
    DAY = "day"


CN_INTERVAL: Final[Mapping[str, Interval]] = {
    "2011": Interval.REALTIME,
    "2051": Interval.MINUTE,
    "2061": Interval.HOUR,
    "2031": Interval.DAY,
}
# Which CP suffixes carry the value of a period: (measured, converted to reference O2).
_VALUE_SUFFIX: Final[Mapping[Interval, tuple[str, str]]] = {
    Interval.REALTIME: ("Rtd", "ZsRtd"),
    Interval.MINUTE: ("Avg", "ZsAvg"),
    Interval.HOUR: ("Avg", "ZsAvg"),
    Interval.DAY: ("Avg", "ZsAvg"),
}
# Suffixes that describe a value rather than carry one (never counted as ignored).
_META_SUFFIX: Final = frozenset({"Flag", "EFlag", "SampleTime", "ZsFlag"})

FLAG_QUALITY: Final[Mapping[str, Quality]] = {
    "N": Quality.GOOD,
    "C": Quality.UNCERTAIN,  # calibrating
    "M": Quality.UNCERTAIN,  # maintenance
    "S": Quality.UNCERTAIN,  # manually set value
    "D": Quality.BAD,  # instrument fault
    "F": Quality.BAD,  # stopped
    "T": Quality.BAD,  # over range
    "B": Quality.BAD,  # logger ↔ instrument link fault
}


def series_id(device: str, interval: Interval) -> str:
    """The device id a period's readings travel under (real-time keeps the plain id)."""
    return device if interval is Interval.REALTIME else f"{device}{SERIES_SEP}{interval.value}"


_AVERAGED: Final = {i.value: i for i in Interval if i is not Interval.REALTIME}


def split_series_id(series: str) -> tuple[str, Interval]:
    """Inverse of series_id: (device, interval); ids without a known suffix are real-time."""
    device, sep, suffix = series.rpartition(SERIES_SEP)
    interval = _AVERAGED.get(suffix) if sep else None
    if interval is not None:
        return device, interval
    return series, Interval.REALTIME


def flag_quality(flag: str | None) -> Quality:
    """Quality of an HJ 212 data flag; no flag (2005 traffic) is GOOD, unknown ones UNCERTAIN."""
    if flag is None or flag == "":
        return Quality.GOOD
    return FLAG_QUALITY.get(flag.upper(), Quality.UNCERTAIN)


def observed_ms(frame: Frame, utc_offset_minutes: int, received_ms: int) -> int | None:
    """Epoch ms of the frame's DataTime (station local time); the time it was received when
    the frame has no DataTime; None when its DataTime is not a time or lies before 1970."""
    if "DataTime" not in frame.cp:
        return received_ms
    local = frame.data_time
    if local is None:
        return None
    ms = int((local - _EPOCH).total_seconds() * 1000) - utc_offset_minutes * 60_000
    return ms if ms >= 0 else None


def flag_problem(flag: str | None) -> str | None:
    """Why a data flag cannot travel as a reading's source flag (too long, NUL ...), or None."""
    if flag is None:
        return None
    problem = text_problem(flag, MAX_FLAG, "flag")
    return None if problem is None else problem[1]


@dataclass(frozen=True, slots=True)
class Normalised:
    """What one frame yields: its readings and what was left out, for counters."""

    interval: Interval | None  # None: not a data upload (answers, heartbeats, 2081 ...)
    readings: list[Reading] = field(default_factory=list)
    unknown_codes: tuple[str, ...] = ()  # codes the profile does not map
    bad_values: int = 0  # values that are not numbers, or numbers the wire contract refuses
    ignored: int = 0  # values with no canonical home (-Min, -Max, -Cou, Zs without mapping)
    # "bad_time": DataTime is not a time or lies before 1970, so the frame yields no readings
    rejected: str | None = None
    # Data flags no reading can carry (e.g. longer than MAX_FLAG): their values are kept,
    # UNCERTAIN and without source flag.
    bad_flags: tuple[str, ...] = ()

    @property
    def values(self) -> int:
        """Number of canonical values produced."""
        return sum(len(r.values) for r in self.readings)


def _number(text: str) -> float | None:
    try:
        value = float(text)
    except ValueError:
        return None
    return value if math.isfinite(value) else None


def _reading(series: str, ts: int, mono: int | None, flag: str | None,
             values: dict[str, Value], station_time: bool) -> Reading:
    if flag == BAD_FLAG:
        return Reading(series, ts, values, quality=Quality.UNCERTAIN, mono=mono,
                       station_time=station_time)
    return Reading(series, ts, values, quality=flag_quality(flag), mono=mono, source_flag=flag,
                   station_time=station_time)


def normalise(frame: Frame, profile: Profile, device: str, *, received_ms: int,
              mono: int | None = None) -> Normalised:
    """Turn one (reassembled) data frame into canonical Readings for `device`."""
    interval = CN_INTERVAL.get(frame.cn or "")
    if interval is None:
        return Normalised(None)
    ts = observed_ms(frame, profile.hj212.utc_offset_minutes, received_ms)
    if ts is None:
        return Normalised(interval, rejected="bad_time")
    measured, converted = _VALUE_SUFFIX[interval]
    by_flag: dict[str | None, dict[str, Value]] = {}
    bad_flags: list[str | None] = []
    unknown: list[str] = []
    bad = ignored = 0
    cp = frame.cp
    for key, text in cp.items():
        code, dash, suffix = key.partition("-")
        if not dash or suffix in _META_SUFFIX:
            continue  # DataTime, RtdInterval, flags ...
        entry = profile.codes.get(code)
        if entry is None:
            if code not in unknown:
                unknown.append(code)
            continue
        quantity = entry.quantity if suffix == measured else (
            entry.converted if suffix == converted else None)
        if quantity is None:
            ignored += 1
            continue
        value = _number(text)
        converted_value = None if value is None else _number(f"{value * entry.factor:.12g}")
        if converted_value is None or value_problem(quantity, converted_value) is not None:
            bad += 1  # not a number, or one the wire contract refuses (e.g. beyond ±1e15)
            continue
        flag = cp.get(f"{code}-Flag")
        if flag_problem(flag) is not None:
            if flag not in bad_flags:
                bad_flags.append(flag)
            flag = BAD_FLAG
        by_flag.setdefault(flag, {})[quantity] = converted_value
    series = series_id(device, interval)
    timed = "DataTime" in cp  # otherwise `ts` is the gateway's receive time
    readings = [_reading(series, ts, mono, flag, values, timed)
                for flag, values in by_flag.items()]
    return Normalised(interval, readings, tuple(unknown), bad, ignored,
                      bad_flags=tuple(f for f in bad_flags if f is not None))
