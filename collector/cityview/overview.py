"""The operator's overview: gateways and devices online, and how fresh each kind's data is.

A device is `offline` when its gateway is offline or it has a device_offline fault raised,
`stale` when it has not reported within its family's limit (lifts and environment monitors
10 min, parking sensors twice their heartbeat), `unknown` when never heard, else `online`.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Literal

from devices.hj212.normalise import Interval, split_series_id

DeviceState = Literal["online", "offline", "stale", "unknown"]
DEFAULT_STALE_S = {"lift": 600.0, "environment": 600.0, "parking": 3600.0, "other": 900.0}


def family(kind: str) -> str:
    """The family of a device kind that the overview groups by."""
    if kind == "elevator":
        return "lift"
    if kind.startswith("parking"):
        return "parking"
    if kind in ("dust_monitor", "boiler_cems") or "hj212" in kind:
        return "environment"
    return "other"


def device_state(last_seen: int | None, gateway_state: str, offline_fault: bool, now: int,
                 stale_after_s: float) -> DeviceState:
    """One device's state by the rules above."""
    if gateway_state == "offline" or offline_fault:
        return "offline"
    if last_seen is None:
        return "unknown"
    return "stale" if now - last_seen > stale_after_s * 1000 else "online"


@dataclass
class KindFigures:
    """Counts and freshness of one family."""

    kind: str
    stale_after_s: float
    devices: int = 0
    online: int = 0
    offline: int = 0
    stale: int = 0
    unknown: int = 0
    newest: int | None = None
    oldest: int | None = None

    def add(self, state: DeviceState, last_seen: int | None) -> None:
        """Count one device."""
        self.devices += 1
        setattr(self, state, getattr(self, state) + 1)
        if last_seen is not None:
            self.newest = last_seen if self.newest is None else max(self.newest, last_seen)
            self.oldest = last_seen if self.oldest is None else min(self.oldest, last_seen)


def is_series(device_id: str) -> bool:
    """Whether a device id is an HJ 212 averaging series of a device (not a device itself)."""
    return split_series_id(device_id)[1] is not Interval.REALTIME


def figures(devices: Iterable[Mapping[str, Any]], gateway_states: Mapping[str, str],
            offline: set[str], now: int,
            stale_s: Mapping[str, float]) -> tuple[dict[str, KindFigures], list[dict[str, Any]]]:
    """Per-family figures and every device with its state and family (series left out)."""
    kinds: dict[str, KindFigures] = {}
    listed: list[dict[str, Any]] = []
    for d in devices:
        if is_series(d["device_id"]):
            continue
        fam = family(d["kind"])
        limit = stale_s.get(fam, DEFAULT_STALE_S["other"])
        st = device_state(d["last_seen"], gateway_states.get(d["gateway_id"], "unknown"),
                          d["device_id"] in offline, now, limit)
        kinds.setdefault(fam, KindFigures(fam, limit)).add(st, d["last_seen"])
        listed.append({**d, "family": fam, "state": st})
    return kinds, listed


def gateway_counts(states: Iterable[str]) -> dict[str, int]:
    """Gateways per state (online, offline, unknown) and the total."""
    out: dict[str, int] = defaultdict(int)
    for s in states:
        out[s if s in ("online", "offline") else "unknown"] += 1
    return {"total": sum(out.values()), "online": out["online"], "offline": out["offline"],
            "unknown": out["unknown"]}
