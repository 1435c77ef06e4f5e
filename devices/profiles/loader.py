"""Load and validate device profiles from TOML files."""

from __future__ import annotations

import math
import sys
import tomllib
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Any

from devices.contract import MAX_NUMBER
from devices.durations import parse_duration
from devices.modbus.codec import DataType, Point, Table, WordOrder, WriteSpec
from devices.modbus.writes import spec_problems
from devices.profiles.hj212_codes import (
    CodeTableError,
    Hj212Code,
    Hj212Settings,
    parse_codes,
    parse_settings,
)
from devices.quantities import QUANTITIES, ValueKind

PROFILE_DIR = Path(__file__).parent


class ProfileError(ValueError):
    """A profile file that cannot be used: every problem found, each naming the file and key."""

    def __init__(self, where: str, problems: list[str]) -> None:
        self.where = where
        self.problems = problems  # "key: what is wrong — the fix", one per problem
        super().__init__("\n".join(f"{where}: {p}" for p in problems))


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
    """Load a shipped profile by name, or a profile file by path; ProfileError lists every
    problem of the file."""
    path = Path(name_or_path)
    if not path.suffix:
        path = PROFILE_DIR / f"{name_or_path}.toml"
        if not path.exists():
            raise ProfileError("", [
                f"no profile named {name_or_path!r}; shipped profiles: {', '.join(available())}"])
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise ProfileError(str(path), [str(exc)]) from None
    return _build(path, data)


def _build(path: Path, data: dict[str, Any]) -> Profile:
    where = str(path)
    missing = [key for key in ("name", "kind", "protocol") if key not in data]
    if missing:
        raise ProfileError(where, [f"missing top-level key {key!r}" for key in missing])
    problems: list[str] = []
    unknown = sorted(set(data) - _TOP_KEYS)
    if unknown:
        problems.append(f"unknown top-level key(s) {unknown}: check the spelling or remove them")
    high = data.get("high_addresses", False)
    if not isinstance(high, bool):
        problems.append(f"high_addresses: {high!r} is not true or false")
    points_spec = data.get("points", {})
    if not isinstance(points_spec, dict):
        problems.append("points: must be a table of [points.<quantity>] tables")
        points_spec = {}
    points = []
    for quantity, spec in points_spec.items():
        point, found = _point(quantity, spec, high_addresses=high is True)
        problems += found
        if point is not None:
            points.append(point)
    timing_spec = data.get("timing", {})
    timing, heartbeat = ModbusTiming(), 60.0
    try:
        timing = ModbusTiming(
            response_timeout=parse_duration(timing_spec.get("response_timeout", 0.5)),
            retries=int(timing_spec.get("retries", 1)),
            inter_frame_chars=float(timing_spec.get("inter_frame_chars", 3.5)),
        )
        heartbeat = parse_duration(data.get("report", {}).get("heartbeat", "60s"))
    except (ValueError, TypeError, AttributeError) as exc:
        problems.append(f"[timing]/[report]: {exc}")
    codes: dict[str, Hj212Code] = {}
    hj212 = Hj212Settings()
    try:
        codes = parse_codes(data.get("codes", {}))
        hj212 = parse_settings(data.get("hj212", {}))
    except CodeTableError as exc:
        problems.append(str(exc))
    else:
        if data["protocol"] == "hj212" and not codes:
            problems.append("an hj212 profile needs a [codes] table")
    problems += _never_written_problems(data.get("never_write", []), points)
    if problems:
        raise ProfileError(where, problems)
    return Profile(
        name=data["name"], kind=data["kind"], protocol=data["protocol"],
        description=data.get("description", ""), points=tuple(points), timing=timing,
        heartbeat=heartbeat, max_gap=int(data.get("max_gap", 8)),
        rules=dict(data.get("rules", {})), source=where, codes=codes, hj212=hj212,
    )


_TOP_KEYS = frozenset({"name", "kind", "protocol", "description", "max_gap", "timing", "report",
                       "rules", "points", "codes", "hj212", "high_addresses",
                       "never_write"})
_POINT_KEYS = frozenset({"address", "table", "type", "order", "scale", "offset", "bits", "enum",
                         "not_available", "deadband", "write"})
_WRITE_KEYS = frozenset({"function", "min", "max", "allowed", "dangerous"})


def _never_written_problems(names: Any, points: list[Point]) -> list[str]:
    """Safety points listed in `never_write` must carry no write rules (a guard against a
    profile edit that makes, say, the safety circuit writable)."""
    if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
        return ["never_write: must be a list of point names"]
    return [f"points.{p.quantity}.write: {p.quantity} is listed in never_write; remove one"
            for p in points if p.quantity in names and p.write is not None]


def _write_spec(spec: Any) -> WriteSpec | None:
    """The `write` table of a point (None when absent); ValueError names what is wrong."""
    if spec is None:
        return None
    if not isinstance(spec, dict):
        raise ValueError("write must be a table, e.g. { function = 6, min = 0, max = 10 }")
    unknown = sorted(set(spec) - _WRITE_KEYS)
    if unknown:
        raise ValueError(f"write: unknown key(s) {unknown}; known: {sorted(_WRITE_KEYS)}")
    bound = {k: None if spec.get(k) is None else float(spec[k]) for k in ("min", "max")}
    allowed = spec.get("allowed", [])
    if not isinstance(allowed, list):
        raise ValueError("write.allowed must be a list of values")
    return WriteSpec(function=_integer(spec.get("function", 6)), minimum=bound["min"],
                     maximum=bound["max"], allowed=tuple(allowed),
                     dangerous=bool(spec.get("dangerous", False)))


def _point(quantity: str, spec: Any,
           *, high_addresses: bool = False) -> tuple[Point | None, list[str]]:
    """Build one point; return it (None when unusable) and every problem found in it."""
    key = f"points.{quantity}"
    if quantity not in QUANTITIES:
        return None, [f"{key}: not a canonical quantity (see docs/data-model.md)"]
    if not isinstance(spec, dict):
        return None, [f"{key}: must be a table with at least an address"]
    problems = [f"{key}.{k}: unknown key; check its spelling or remove it"
                for k in sorted(set(spec) - _POINT_KEYS)]
    try:
        bits = spec.get("bits")
        point = Point(
            quantity=quantity,
            address=_integer(spec["address"]),
            table=Table(spec.get("table", "holding")),
            type=DataType(spec.get("type", "u16")),
            order=WordOrder(spec.get("order", "ABCD")),
            scale=float(spec.get("scale", 1.0)),
            offset=float(spec.get("offset", 0.0)),
            bits=(_integer(bits[0]), _integer(bits[1])) if bits is not None else None,
            enum={int(k): str(v) for k, v in spec.get("enum", {}).items()},
            not_available=tuple(_integer(v) for v in spec.get("not_available", ())),
            deadband=float(spec.get("deadband", 0.0)),
            write=_write_spec(spec.get("write")),
        )
    except KeyError as exc:
        return None, [*problems, f"{key}: missing {exc.args[0]!r}"]
    except (TypeError, ValueError, IndexError, AttributeError) as exc:
        return None, [*problems, f"{key}: {exc}"]
    if bits is not None and len(bits) != 2:
        problems.append(f"{key}.bits: {bits!r} is not [lowest bit, width]")
    problems += [f"{key}.{k}: {msg}" for k, msg in point_problems(point, high_addresses)]
    problems += [f"{key}.{k}: {msg}" for k, msg in spec_problems(point)]
    return (None if problems else point), problems


def _integer(value: Any) -> int:
    """A TOML integer (not a float, a string or a boolean)."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"{value!r} is not an integer")
    return value


# --- what the decoder can honour ------------------------------------------------------------------

_INT_RANGE = {  # raw value range of the integer register types
    DataType.U16: (0, 0xFFFF), DataType.I16: (-0x8000, 0x7FFF),
    DataType.U32: (0, 0xFFFF_FFFF), DataType.I32: (-0x8000_0000, 0x7FFF_FFFF),
    DataType.U64: (0, 2**64 - 1), DataType.I64: (-(2**63), 2**63 - 1),
    DataType.BOOL: (0, 1),
}
_FLOAT_MAX = {DataType.F32: 3.4028234663852886e38, DataType.F64: sys.float_info.max}
_BOOL_LABELS = frozenset({"true", "false", "1", "0", "on", "off", "yes", "no"})
# Modicon references: 4xxxx holding and 3xxxx input registers, numbered from 1.
_MODICON = {Table.HOLDING: (40001, 49999, 400001, 465536),
            Table.INPUT: (30001, 39999, 300001, 365536)}


def point_problems(point: Point, high_addresses: bool = False) -> list[tuple[str, str]]:
    """Everything in a point the register decoder cannot honour, as (key, problem) pairs."""
    q = QUANTITIES[point.quantity]
    return [*_address_problems(point, high_addresses), *_bits_problems(point),
            *_sentinel_problems(point), *_enum_problems(point, q.kind, q.labels),
            *_range_problems(point, q.kind)]


def _address_problems(p: Point, high_addresses: bool) -> list[tuple[str, str]]:
    if not 0 <= p.address <= 0xFFFF or p.end > 0x10000:
        hint = _modicon_hint(p)
        return [("address", f"{p.address} is outside the Modbus address space 0..65535"
                 f" ({p.count} register(s) from it){hint}")]
    if high_addresses or not (hint := _modicon_hint(p)):
        return []
    return [("address", f"{p.address} looks like a 1-based Modicon reference{hint}; if the"
             " device really has registers there, set high_addresses = true in the profile")]


def _modicon_hint(p: Point) -> str:
    ranges = _MODICON.get(p.table)
    if ranges is None:
        return ""
    low5, high5, low6, high6 = ranges
    for low, high in ((low5, high5), (low6, high6)):
        if low <= p.address <= high:
            return (f"; Modbus addresses are 0-based: reference {p.address} is"
                    f" address = {p.address - low}")
    return ""


def _bits_problems(p: Point) -> list[tuple[str, str]]:
    if p.bits is None:
        return []
    low, width = p.bits
    size = 16 * p.count
    if p.table.is_bits:
        return [("bits", f"a {p.table.value} is a single bit; remove bits")]
    if p.type in _FLOAT_MAX:
        return [("bits", f"bit fields need an integer register type, not {p.type.value}")]
    if width < 1 or low < 0:
        return [("bits", f"[{low}, {width}] needs lowest bit >= 0 and width >= 1")]
    if low + width > size:
        return [("bits", f"[{low}, {width}] reaches bit {low + width - 1}, beyond the"
                 f" {size} bits of {p.type.value}")]
    return []


def _raw_range(p: Point) -> tuple[float, float]:
    if p.table.is_bits or (p.type is DataType.BOOL and p.bits is None):
        return 0, 1
    if p.type in _FLOAT_MAX:
        return -_FLOAT_MAX[p.type], _FLOAT_MAX[p.type]
    return _INT_RANGE[p.type]


def _sentinel_problems(p: Point) -> list[tuple[str, str]]:
    if not p.not_available:
        return []
    if p.type in _FLOAT_MAX and not p.table.is_bits:
        return [("not_available", f"{p.type.value} values are never compared with integer"
                 " sentinels; NaN and infinity already mean not available — remove it")]
    low, high = _raw_range(p)
    bad = [v for v in p.not_available if not low <= v <= high]
    if not bad:
        return []
    what = "a bit" if p.table.is_bits else p.type.value
    return [("not_available", f"{', '.join(map(str, bad))} cannot occur in {what}"
             f" ({low:g}..{high:g}); write the raw register value, e.g. 65535 for 0xFFFF")]


def _enum_problems(p: Point, kind: ValueKind, labels: dict[int, str]) -> list[tuple[str, str]]:
    if not p.enum:
        return []
    if kind is ValueKind.ENUM:
        unknown = sorted(set(p.enum.values()) - set(labels.values()))
        if unknown:
            return [("enum", f"{', '.join(map(repr, unknown))} not among"
                     f" {sorted(labels.values())}")]
        return []
    bad = [label for label in p.enum.values() if not _label_fits(label, kind)]
    if not bad:
        return []
    want = {ValueKind.BOOL: f"one of {sorted(_BOOL_LABELS)}",
            ValueKind.INTEGER: "an integer", ValueKind.NUMBER: "a number"}[kind]
    return [("enum", f"label(s) {', '.join(map(repr, bad))} of {kind.value} quantity"
             f" {p.quantity} must each be {want}")]


def _label_fits(label: str, kind: ValueKind) -> bool:
    if kind is ValueKind.BOOL:
        return label.lower() in _BOOL_LABELS
    try:
        value = int(label) if kind is ValueKind.INTEGER else float(label)
    except ValueError:
        return False
    return math.isfinite(value) and abs(value) <= MAX_NUMBER


def _range_problems(p: Point, kind: ValueKind) -> list[tuple[str, str]]:
    problems = [(k, f"{v!r} is not a finite number") for k, v in
                (("scale", p.scale), ("offset", p.offset)) if not math.isfinite(v)]
    if p.scale == 0:
        problems.append(("scale", "0 makes every value the offset; use 1 for no scaling"))
    if problems or p.enum or kind not in (ValueKind.INTEGER, ValueKind.ENUM):
        return problems
    if p.bits is not None:
        low, high = 0.0, float(2 ** p.bits[1] - 1)
    else:
        low, high = _raw_range(p)
    if p.type in (DataType.U64, DataType.I64) and p.scale == 1 and p.offset == 0:
        return []  # a counter: a value beyond MAX_NUMBER is refused per reading, at run time
    reach = max(abs(low * p.scale + p.offset), abs(high * p.scale + p.offset))
    if reach > MAX_NUMBER:
        problems.append(("type", f"{p.type.value} scaled by {p.scale:g} reaches ±{reach:.3g},"
                         f" beyond ±{MAX_NUMBER:.0e}, the largest {kind.value} a reading"
                         " carries; use an integer register type or a smaller scale"))
    return problems
