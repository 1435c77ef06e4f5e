"""Load and validate device profiles from TOML files."""

from __future__ import annotations

import tomllib
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Any

from devices.durations import parse_duration
from devices.modbus.codec import DataType, Point, Table, WordOrder
from devices.profiles.hj212_codes import (
    CodeTableError,
    Hj212Code,
    Hj212Settings,
    parse_codes,
    parse_settings,
)
from devices.quantities import QUANTITIES

PROFILE_DIR = Path(__file__).parent


class ProfileError(ValueError):
    """A profile file that cannot be used; the message names the file and the key."""


@dataclass(frozen=True, slots=True)
class ModbusTiming:
    """Protocol timing as named data, overridable per profile and per device."""

    response_timeout: float = 0.5  # seconds to wait for an answer
    retries: int = 1  # extra attempts before a read counts as failed
    inter_frame_chars: float = 3.5  # RTU silent interval, in character times

    def inter_frame_gap(self, baudrate: int, bits_per_char: int = 11) -> float:
        """RTU inter-frame gap in seconds at this baud rate (fixed 1.75 ms above 19200 baud)."""
        if baudrate > 19200:
            return 0.00175
        return self.inter_frame_chars * bits_per_char / baudrate


@dataclass(frozen=True, slots=True)
class Profile:
    """A device type: its kind, its points and its timing."""

    name: str
    kind: str
    protocol: str
    description: str
    points: tuple[Point, ...]
    timing: ModbusTiming = field(default_factory=ModbusTiming)
    heartbeat: float = 60.0  # full snapshot period, seconds
    max_gap: int = 8
    rules: dict[str, Any] = field(default_factory=dict)  # edge-rule thresholds (per kind)
    source: str = ""
    # protocol = "hj212": pollutant code (2017 and 2005 aliases) -> canonical quantity
    codes: dict[str, Hj212Code] = field(default_factory=dict)
    hj212: Hj212Settings = field(default_factory=Hj212Settings)

    def point(self, quantity: str) -> Point:
        """Return the point of a canonical quantity."""
        for p in self.points:
            if p.quantity == quantity:
                return p
        raise KeyError(f"profile {self.name} has no point {quantity!r}")


def available() -> list[str]:
    """Names of the profiles shipped with CityGate."""
    return sorted(p.stem for p in PROFILE_DIR.glob("*.toml"))


@cache
def load_profile(name_or_path: str) -> Profile:
    """Load a shipped profile by name, or a profile file by path."""
    path = Path(name_or_path)
    if not path.suffix:
        path = PROFILE_DIR / f"{name_or_path}.toml"
        if not path.exists():
            raise ProfileError(
                f"no profile named {name_or_path!r}; shipped profiles: {', '.join(available())}"
            )
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise ProfileError(f"{path}: {exc}") from None
    return _build(path, data)


def _build(path: Path, data: dict[str, Any]) -> Profile:
    where = str(path)
    for key in ("name", "kind", "protocol"):
        if key not in data:
            raise ProfileError(f"{where}: missing top-level key {key!r}")
    points = tuple(
        _point(where, q, spec) for q, spec in data.get("points", {}).items()
    )
    timing_spec = data.get("timing", {})
    try:
        timing = ModbusTiming(
            response_timeout=parse_duration(timing_spec.get("response_timeout", 0.5)),
            retries=int(timing_spec.get("retries", 1)),
            inter_frame_chars=float(timing_spec.get("inter_frame_chars", 3.5)),
        )
        heartbeat = parse_duration(data.get("report", {}).get("heartbeat", "60s"))
    except ValueError as exc:
        raise ProfileError(f"{where}: [timing]/[report]: {exc}") from None
    try:
        codes = parse_codes(data.get("codes", {}))
        hj212 = parse_settings(data.get("hj212", {}))
    except CodeTableError as exc:
        raise ProfileError(f"{where}: {exc}") from None
    if data["protocol"] == "hj212" and not codes:
        raise ProfileError(f"{where}: an hj212 profile needs a [codes] table")
    return Profile(
        name=data["name"], kind=data["kind"], protocol=data["protocol"],
        description=data.get("description", ""), points=points, timing=timing,
        heartbeat=heartbeat, max_gap=int(data.get("max_gap", 8)),
        rules=dict(data.get("rules", {})), source=where, codes=codes, hj212=hj212,
    )


def _point(where: str, quantity: str, spec: dict[str, Any]) -> Point:
    key = f"{where}: points.{quantity}"
    if quantity not in QUANTITIES:
        raise ProfileError(f"{key}: not a canonical quantity (see docs/data-model.md)")
    try:
        bits = spec.get("bits")
        point = Point(
            quantity=quantity,
            address=int(spec["address"]),
            table=Table(spec.get("table", "holding")),
            type=DataType(spec.get("type", "u16")),
            order=WordOrder(spec.get("order", "ABCD")),
            scale=float(spec.get("scale", 1.0)),
            offset=float(spec.get("offset", 0.0)),
            bits=(int(bits[0]), int(bits[1])) if bits is not None else None,
            enum={int(k): str(v) for k, v in spec.get("enum", {}).items()},
            not_available=tuple(int(v) for v in spec.get("not_available", ())),
            deadband=float(spec.get("deadband", 0.0)),
        )
    except KeyError as exc:
        raise ProfileError(f"{key}: missing {exc.args[0]!r}") from None
    except (TypeError, ValueError, IndexError, AttributeError) as exc:
        raise ProfileError(f"{key}: {exc}") from None
    q = QUANTITIES[quantity]
    unknown = sorted(set(point.enum.values()) - set(q.labels.values())) if q.labels else []
    if unknown:
        raise ProfileError(
            f"{key}.enum: {', '.join(map(repr, unknown))} not among {sorted(q.labels.values())}"
        )
    return point
