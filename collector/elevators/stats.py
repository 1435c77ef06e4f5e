"""Trip and fault statistics and the risk ranking of lifts: pure functions over rows.

No database and no clock here: the caller passes rows and the time, so the arithmetic can be
tested with tables (STYLE.md "Policy is small pure functions").
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime

DAY_MS = 86_400_000
ENTRAPMENT = "trapped_passenger"
# Raised conditions that say nothing about the lift itself (communication, bookkeeping).
NOT_FAULTS = frozenset({"device_offline", "data_gap", "gateway_offline"})
DOOR_KINDS = frozenset({"door_open_while_running", "moving_with_door_open", "door_cycling"})
DOOR_CODES = frozenset({2, 3})  # GB/T 24476 controller codes: door close / door open fault
# Weights of the risk score's parts (points per fault, per entrapment, per door fault).
W_FAULT, W_ENTRAPMENT, W_DOOR, W_TREND = 1.0, 5.0, 2.0, 2.0


def day_of(ts_ms: int) -> str:
    """The UTC calendar day of an epoch-ms time, as YYYY-MM-DD."""
    return datetime.fromtimestamp(ts_ms / 1000, UTC).strftime("%Y-%m-%d")


def days_between(since_ms: int, until_ms: int) -> list[str]:
    """Every UTC day touched by [since, until), oldest first."""
    days: list[str] = []
    t = since_ms - since_ms % DAY_MS
    while t < until_ms:
        days.append(day_of(t))
        t += DAY_MS
    return days


def trips_per_day(samples: Sequence[tuple[int, float]], baseline: float | None) -> Counter[str]:
    """Trips per day from trip_count samples (ts, value) in time order.

    Each increase is a number of trips, counted on the day of the later sample; a decrease is
    a counter reset (controller replaced or wrapped) and counts nothing.
    """
    out: Counter[str] = Counter()
    previous = baseline
    for ts, value in samples:
        if previous is not None and value > previous:
            out[day_of(ts)] += int(value - previous)
        previous = value
    return out


def is_fault(kind: str, action: str) -> bool:
    """Whether an event is a lift fault being raised."""
    return action == "raise" and kind not in NOT_FAULTS


def is_door_fault(kind: str, code: int | None) -> bool:
    """Door faults: detected door conditions and the controller's door fault codes."""
    return kind in DOOR_KINDS or (kind == "gbt24476_fault" and code in DOOR_CODES)


def faults_per_day(events: Iterable[Mapping[str, object]]) -> dict[str, Counter[str]]:
    """Raised faults per day and kind."""
    out: dict[str, Counter[str]] = {}
    for e in events:
        kind, action = str(e["kind"]), str(e["action"])
        if is_fault(kind, action):
            out.setdefault(day_of(int(str(e["ts"]))), Counter())[kind] += 1
    return out


@dataclass
class Risk:
    """A lift's risk score and its parts, each explained in plain words."""

    device: str
    score: float
    faults: int
    entrapments: int
    door_faults: int
    last_7_days: int
    previous_23_days: int
    explanation: list[str] = field(default_factory=list)


def risk_of(device: str, events: Iterable[Mapping[str, object]], now_ms: int) -> Risk:
    """Score one lift from its raised faults of the last 30 days (higher is riskier).

    score = 1 per fault + 5 per entrapment + 2 per door fault + 2 per fault above the
    earlier rate in the last 7 days (the trend part never lowers the score).
    """
    faults = entrapments = doors = recent = earlier = 0
    for e in events:
        kind, action, ts = str(e["kind"]), str(e["action"]), int(str(e["ts"]))
        code = e.get("code")
        if not is_fault(kind, action) or ts < now_ms - 30 * DAY_MS or ts > now_ms:
            continue
        faults += 1
        entrapments += kind == ENTRAPMENT
        doors += is_door_fault(kind, code if isinstance(code, int) else None)
        if ts >= now_ms - 7 * DAY_MS:
            recent += 1
        else:
            earlier += 1
    excess = max(0.0, recent - earlier * 7 / 23)
    parts = [(W_FAULT * faults, f"{faults} fault(s) in 30 days"),
             (W_ENTRAPMENT * entrapments, f"{entrapments} entrapment(s)"),
             (W_DOOR * doors, f"{doors} door fault(s)"),
             (W_TREND * excess, _trend_words(recent, earlier))]
    explanation = [f"{words}: +{points:g}" for points, words in parts if points > 0]
    if not explanation:
        explanation = ["no faults in the last 30 days"]
    return Risk(device, round(sum(p for p, _ in parts), 2), faults, entrapments, doors, recent,
                earlier, explanation)


def _trend_words(recent: int, earlier: int) -> str:
    if earlier == 0:
        return f"getting worse: {recent} fault(s) in the last 7 days, none in the 23 before"
    ratio = (recent / 7) / (earlier / 23)
    return (f"getting worse: {recent} fault(s) in the last 7 days against {earlier} in the 23 "
            f"days before ({ratio:.1f}x the earlier daily rate)")


def rank(risks: Iterable[Risk]) -> list[Risk]:
    """Riskiest first; ties by most entrapments, then by device id."""
    return sorted(risks, key=lambda r: (-r.score, -r.entrapments, r.device))


MIN_TRIPS = 1000  # usage scaling assumes at least this many trips (a month of a quiet lift)


@dataclass(frozen=True, slots=True)
class Usage:
    """A risk score scaled by how much the lift is used, with its explanation."""

    trips: int
    per_1000: float
    words: str


def usage_scaled(risk: Risk, trips: int) -> Usage:
    """Score per 1000 trips (at least MIN_TRIPS assumed): faults per use, not per lift."""
    per_1000 = round(risk.score * 1000 / max(trips, MIN_TRIPS), 2)
    floor = f" (counted as {MIN_TRIPS})" if trips < MIN_TRIPS else ""
    return Usage(trips, per_1000, f"{trips} trip(s) in 30 days{floor}: {per_1000:g} points "
                                  f"per 1000 trips")
