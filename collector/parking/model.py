"""Spot status and zone availability, maintained incrementally (pure: times are passed in).

A spot is `closed` when the city closed it, `unknown` while its sensor is silent (no report for
more than silent_factor x heartbeat, or never heard) — a silent sensor is never counted free —
otherwise `occupied` or `free` from its last report. Zone counts change only on transitions, so
a query never scans spots. Sensor health alerts (low battery, silent, flapping, magnetic jump)
are raised and cleared here as data; the service stores them.
"""

from __future__ import annotations

import math
from array import array
from collections import deque
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from collector.parking.config import ParkingConfig
from collector.parking.geo import bay_positions, haversine_m

__all__ = ["SEVERITY", "AlertChange", "Changes", "ParkingModel", "Spot", "SpotStatus", "Transition",
           "Zone", "haversine_m"]

HOUR_MS = 3_600_000


class SpotStatus(StrEnum):
    """NGSI-LD ParkingSpot status."""

    FREE = "free"
    OCCUPIED = "occupied"
    CLOSED = "closed"
    UNKNOWN = "unknown"


SEVERITY = {"silent": "major", "low_battery": "warning", "flapping": "minor",
            "magnetic_jump": "minor"}


_NONE = -(1 << 63)  # an empty cell of a column
_NO_ALERTS: frozenset[str] = frozenset()  # shared: a new empty frozenset is 216 bytes
_LIMIT = 1 << 62  # larger numbers are not kept (the wire contract allows at most 1e15)


class SpotColumns(Mapping[str, "Spot"]):
    """Every spot, by id, its facts held in flat columns; a `Spot` is a view of one row.

    Held as attributes of an object per spot, each report would leave a few small long-lived
    objects (a time, a magnetometer tuple) among the short-lived ones of its decoding; at
    300,000 spots they pin most of the heap pages a burst of reports used, and the process
    keeps them all. The objects themselves cost 120 bytes a spot (36 MiB at 300,000); a row is
    twelve 8-byte cells, four 1-byte flags and three references (with its entry in `rows`, 241
    bytes of heap a spot where an object per spot took 336).
    """

    __slots__ = ("after", "alerts", "battery_mv", "before", "changes", "closed", "ids",
                 "last_jump", "last_ts", "mag_x", "mag_y", "mag_z", "occupied", "rows", "rssi",
                 "silent", "silent_after_ms", "since", "status", "stored", "zone")
    NUMBERS = ("after", "battery_mv", "before", "last_jump", "last_ts", "mag_x", "mag_y",
               "mag_z", "rssi", "silent_after_ms", "since", "stored")
    after: array[int]  # the silence queue's links (SilenceQueue)
    before: array[int]
    battery_mv: array[int]
    last_jump: array[int]
    last_ts: array[int]
    mag_x: array[int]
    mag_y: array[int]
    mag_z: array[int]
    rssi: array[int]
    silent_after_ms: array[int]
    since: array[int]
    stored: array[int]
    closed: array[int]  # 0/1
    occupied: array[int]  # -1 unknown, 0, 1
    silent: array[int]  # 0/1
    status: array[int]  # index in _STATUSES
    ids: list[str]  # by row
    zone: list[str | None]
    alerts: list[frozenset[str]]  # kinds currently raised
    changes: dict[int, deque[int]]  # row -> occupancy changes in the last hour, when any
    rows: dict[str, int]  # id -> row

    def __init__(self) -> None:
        for name in self.NUMBERS:
            setattr(self, name, array("q"))
        for name in ("closed", "occupied", "silent", "status"):
            setattr(self, name, array("b"))
        self.ids, self.zone, self.alerts = [], [], []
        self.changes, self.rows = {}, {}

    def new(self, spot_id: str, zone: str | None, silent_after_ms: int, *,
            closed: bool = False) -> Spot:
        """A new spot: never heard (silent, occupancy and numbers unknown)."""
        if spot_id in self.rows:
            raise ValueError(f"spot {spot_id!r} exists")
        for name in self.NUMBERS:
            getattr(self, name).append(_NONE)
        row = self.rows[spot_id] = len(self.ids)
        self.silent_after_ms[row] = silent_after_ms
        self.closed.append(1 if closed else 0)
        self.occupied.append(-1)
        self.silent.append(1)
        self.status.append(_STATUS_INDEX[SpotStatus.UNKNOWN])
        self.ids.append(spot_id)
        self.zone.append(zone)
        self.alerts.append(_NO_ALERTS)
        return Spot(self, row)

    def __getitem__(self, spot_id: str) -> Spot:
        return Spot(self, self.rows[spot_id])

    def __contains__(self, spot_id: object) -> bool:
        return spot_id in self.rows

    def __iter__(self) -> Iterator[str]:
        return iter(self.ids)

    def __len__(self) -> int:
        return len(self.ids)


class SilenceQueue:
    """The spots of one silence limit in report order, the next to fall silent in front: a
    list linked through the columns `before` and `after`, so that moving a spot to the back
    on every report allocates nothing."""

    __slots__ = ("cols", "head", "tail")

    def __init__(self, cols: SpotColumns) -> None:
        self.cols, self.head, self.tail = cols, _NONE, _NONE

    def __bool__(self) -> bool:
        return self.head != _NONE

    def __iter__(self) -> Iterator[Spot]:
        row = self.head
        while row != _NONE:
            yield Spot(self.cols, row)
            row = self.cols.after[row]

    def push(self, row: int) -> None:
        """Put a spot at the back (taking it out of its place first)."""
        if row == self.tail:
            return
        c = self.cols
        if c.after[row] != _NONE:  # queued, not last
            self.remove(row)
        c.before[row], c.after[row] = self.tail, _NONE
        if self.tail == _NONE:
            self.head = row
        else:
            c.after[self.tail] = row
        self.tail = row

    def remove(self, row: int) -> None:
        """Take a queued spot out."""
        c = self.cols
        before, after = c.before[row], c.after[row]
        if before == _NONE:
            self.head = after
        else:
            c.after[before] = after
        if after == _NONE:
            self.tail = before
        else:
            c.before[after] = before
        c.before[row] = c.after[row] = _NONE

    def front(self) -> Spot:
        """The spot that falls silent next (the queue is not empty)."""
        return Spot(self.cols, self.head)


def _held(value: int | None) -> int:
    """What a column holds for `value`: itself, or empty when unknown or out of bounds."""
    return value if value is not None and -_LIMIT < value < _LIMIT else _NONE


def _cell(name: str) -> Any:
    def get(spot: Spot) -> int | None:
        v: int = getattr(spot._cols, name)[spot._row]
        return None if v == _NONE else v

    def put(spot: Spot, value: int | None) -> None:
        getattr(spot._cols, name)[spot._row] = _held(value)

    return property(get, put, doc=f"{name} (None when not known)")


def _flag(name: str) -> Any:
    def get(spot: Spot) -> bool:
        return bool(getattr(spot._cols, name)[spot._row])

    def put(spot: Spot, value: bool) -> None:
        getattr(spot._cols, name)[spot._row] = 1 if value else 0

    return property(get, put, doc=f"{name} (a flag)")


_STATUSES = tuple(SpotStatus)
_STATUS_INDEX = {s: i for i, s in enumerate(_STATUSES)}


class Spot:
    """One bay and what its sensor last told us: a view of its row in the model's columns
    (two views of one spot are equal; what one sets, the other reads)."""

    __slots__ = ("_cols", "_row")

    last_ts = _cell("last_ts")
    since = _cell("since")
    battery_mv = _cell("battery_mv")
    rssi = _cell("rssi")
    last_jump = _cell("last_jump")
    closed = _flag("closed")
    silent = _flag("silent")

    def __init__(self, columns: SpotColumns, row: int) -> None:
        self._cols, self._row = columns, row

    def __repr__(self) -> str:
        return (f"Spot({self.id!r}, zone={self.zone!r}, status={self.status.value}, "
                f"occupied={self.occupied}, last_ts={self.last_ts})")

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Spot) and other._cols is self._cols and other._row == self._row

    def __hash__(self) -> int:
        return hash((id(self._cols), self._row))

    @property
    def id(self) -> str:
        """The sensor's device id."""
        return self._cols.ids[self._row]

    @property
    def zone(self) -> str | None:
        """The zone it belongs to, None for a sensor mapped to no zone."""
        return self._cols.zone[self._row]

    @property
    def silent_after_ms(self) -> int:
        """How long after its last report it counts as silent."""
        return self._cols.silent_after_ms[self._row]

    @property
    def occupied(self) -> bool | None:
        """Occupancy from its last report that said, None when never said."""
        v = self._cols.occupied[self._row]
        return None if v < 0 else bool(v)

    @occupied.setter
    def occupied(self, value: bool | None) -> None:
        self._cols.occupied[self._row] = -1 if value is None else 1 if value else 0

    @property
    def status(self) -> SpotStatus:
        """The status counted in its zone."""
        return _STATUSES[self._cols.status[self._row]]

    @status.setter
    def status(self, value: SpotStatus) -> None:
        self._cols.status[self._row] = _STATUS_INDEX[value]

    @property
    def alerts(self) -> frozenset[str]:
        """The alert kinds currently raised."""
        return self._cols.alerts[self._row]

    @alerts.setter
    def alerts(self, kinds: frozenset[str]) -> None:
        self._cols.alerts[self._row] = kinds if kinds else _NO_ALERTS

    @property
    def changes(self) -> deque[int] | None:
        """Occupancy changes in the last hour, None when there are none."""
        return self._cols.changes.get(self._row)

    @changes.setter
    def changes(self, value: deque[int] | None) -> None:
        if value is None:
            self._cols.changes.pop(self._row, None)
        else:
            self._cols.changes[self._row] = value

    @property
    def stored(self) -> int | None:
        """A digest of the spot's row as stored (kept by the parking service), None if none."""
        v: int = self._cols.stored[self._row]
        return None if v == _NONE else v

    @stored.setter
    def stored(self, digest: int | None) -> None:
        self._cols.stored[self._row] = _NONE if digest is None else digest

    @property
    def mag(self) -> tuple[int, int, int] | None:
        """The last magnetic field (x, y, z in mG), None when not known."""
        c, i = self._cols, self._row
        x = c.mag_x[i]
        return None if x == _NONE else (x, c.mag_y[i], c.mag_z[i])

    @mag.setter
    def mag(self, value: tuple[int, int, int] | None) -> None:
        c, i = self._cols, self._row
        held = (_NONE,) * 3 if value is None else tuple(_held(v) for v in value)
        if _NONE in held:  # the field is known whole or not at all
            held = (_NONE,) * 3
        c.mag_x[i], c.mag_y[i], c.mag_z[i] = held

    def derived_status(self) -> SpotStatus:
        """What the status should be from the facts held."""
        if self.closed:
            return SpotStatus.CLOSED
        if self.silent or self.occupied is None:
            return SpotStatus.UNKNOWN
        return SpotStatus.OCCUPIED if self.occupied else SpotStatus.FREE


@dataclass(slots=True)
class Zone:
    """A street segment or lot and its live counts."""

    id: str
    name: str
    kind: str
    lat: float
    lon: float
    total: int
    unmonitored: int  # capacity without a sensor: always counted unknown
    district: str = ""
    outline: tuple[tuple[float, float], ...] = ()  # [lon, lat] ring, empty when not drawn
    counts: dict[SpotStatus, int] = field(default_factory=lambda: dict.fromkeys(SpotStatus, 0))
    updated: int | None = None

    @property
    def available(self) -> int:
        """Free spaces."""
        return self.counts[SpotStatus.FREE]

    @property
    def free_share(self) -> float | None:
        """Free spaces over the spaces in use (capacity less closed); None when none are."""
        usable = self.total - self.closed
        return round(self.available / usable, 4) if usable > 0 else None

    @property
    def occupied(self) -> int:
        """Spaces known to be occupied."""
        return self.counts[SpotStatus.OCCUPIED]

    @property
    def closed(self) -> int:
        """Spaces closed by the city."""
        return self.counts[SpotStatus.CLOSED]

    @property
    def unknown(self) -> int:
        """Spaces whose state nobody knows (silent sensors and unmonitored capacity)."""
        return self.counts[SpotStatus.UNKNOWN] + self.unmonitored


@dataclass(frozen=True, slots=True)
class Transition:
    """A spot changed status."""

    spot: str
    zone: str | None
    old: SpotStatus
    new: SpotStatus
    ts: int


@dataclass(frozen=True, slots=True)
class AlertChange:
    """A sensor health alert raised or cleared."""

    spot: str
    zone: str | None
    kind: str
    raised: bool
    ts: int
    value: float | None = None
    message: str = ""


@dataclass
class Changes:
    """What one batch of observations or a tick changed (for the service to persist)."""

    transitions: list[Transition] = field(default_factory=list)
    alerts: list[AlertChange] = field(default_factory=list)
    spots: set[str] = field(default_factory=set)  # spots whose stored row is stale
    zones: set[str] = field(default_factory=set)


def _int(value: Any) -> int | None:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        return None
    return int(value)


class ParkingModel:
    """Every spot and zone in memory; observations and ticks return what changed."""

    def __init__(self, cfg: ParkingConfig) -> None:
        self.cfg = cfg
        self.columns = SpotColumns()
        self.spots: Mapping[str, Spot] = self.columns  # by id
        self.zones: dict[str, Zone] = {}
        self._default_silent_ms = int(cfg.heartbeat * cfg.silent_factor * 1000)
        # One queue per silence limit, in report order: the front is always the next to expire.
        self._watch: dict[int, SilenceQueue] = {}
        self._flagged: set[str] = set()  # spots with a flapping or magnetic-jump alert
        self.locations: dict[str, tuple[float, float]] = {}  # spot -> (lat, lon) when known
        for z in cfg.zones:
            ids = cfg.spots_of(z)
            limit = int((z.heartbeat or cfg.heartbeat) * cfg.silent_factor * 1000)
            zone = Zone(z.id, z.name, z.kind, z.lat, z.lon, z.capacity or len(ids),
                        (z.capacity or len(ids)) - len(ids), z.district, tuple(z.outline))
            self.locations.update(bay_positions(z, ids))
            self.zones[z.id] = zone
            closed = set(z.closed)
            for sid in ids:
                spot = self.columns.new(sid, z.id, limit, closed=sid in closed)
                spot.status = spot.derived_status()
                zone.counts[spot.status] += 1

    def is_parking(self, device: str) -> bool:
        """True for a configured spot or a device id with the parking prefix."""
        return device in self.spots or device.startswith(self.cfg.device_prefix)

    def _spot(self, device: str) -> Spot:
        row = self.columns.rows.get(device)
        if row is None:  # reporting but mapped to no zone: tracked for health alerts
            return self.columns.new(device, None, self._default_silent_ms)
        return Spot(self.columns, row)

    def _refresh(self, spot: Spot, ts: int, out: Changes) -> None:
        new = spot.derived_status()
        if new is spot.status:
            return
        old, spot.status, spot.since = spot.status, new, ts
        zone = self.zones.get(spot.zone) if spot.zone else None
        if zone is not None:
            zone.counts[old] -= 1
            zone.counts[new] += 1
            zone.updated = ts
            out.zones.add(zone.id)
        out.transitions.append(Transition(spot.id, spot.zone, old, new, ts))
        out.spots.add(spot.id)

    def _alert(self, spot: Spot, kind: str, raised: bool, ts: int, out: Changes,
               value: float | None = None, message: str = "") -> None:
        if raised == (kind in spot.alerts):
            return
        spot.alerts = spot.alerts | {kind} if raised else spot.alerts - {kind}
        out.alerts.append(AlertChange(spot.id, spot.zone, kind, raised, ts, value, message))

    def _watch_spot(self, spot: Spot) -> None:
        queue = self._watch.get(spot.silent_after_ms)
        if queue is None:
            queue = self._watch[spot.silent_after_ms] = SilenceQueue(self.columns)
        queue.push(spot._row)

    def observe(self, device: str, ts: int, values: Mapping[str, Any], now: int,
                out: Changes) -> None:
        """Apply one reading of a parking sensor (observed at `ts`, processed at `now`)."""
        spot = self._spot(device)
        if spot.last_ts is not None and ts < spot.last_ts:
            return  # an older report replayed late: the newer state stands
        spot.last_ts = ts
        out.spots.add(spot.id)
        fresh = ts + spot.silent_after_ms > now
        if fresh:
            spot.silent = False
            self._watch_spot(spot)
            self._alert(spot, "silent", False, ts, out)
        occupied = values.get("occupied")
        prev_occupied = spot.occupied
        if isinstance(occupied, bool | int):
            spot.occupied = bool(occupied)
            if prev_occupied is not None and spot.occupied != prev_occupied:
                self._flapping(spot, ts, out)
        self._health(spot, values, prev_occupied, ts, out)
        self._refresh(spot, ts, out)

    def _flapping(self, spot: Spot, ts: int, out: Changes) -> None:
        if spot.changes is None:
            spot.changes = deque()
        spot.changes.append(ts)
        n = self._prune_changes(spot, ts)
        if n > self.cfg.alerts.flapping_changes_per_hour:
            self._flagged.add(spot.id)
            self._alert(spot, "flapping", True, ts, out, n,
                        f"{n} occupancy changes in the last hour")

    @staticmethod
    def _prune_changes(spot: Spot, now: int) -> int:
        """Forget changes older than an hour; return how many are left."""
        changes = spot.changes
        if changes is None:
            return 0
        while changes and changes[0] <= now - HOUR_MS:
            changes.popleft()
        if not changes:
            spot.changes = None
            return 0
        return len(changes)

    def _health(self, spot: Spot, values: Mapping[str, Any], prev_occupied: bool | None,
                ts: int, out: Changes) -> None:
        a = self.cfg.alerts
        battery = _int(values.get("battery_mv"))
        if battery is not None:
            spot.battery_mv = battery
            if battery < a.low_battery_mv:
                self._alert(spot, "low_battery", True, ts, out, battery,
                            f"battery {battery} mV < {a.low_battery_mv} mV")
            elif battery >= a.low_battery_mv + a.battery_clear_mv:
                self._alert(spot, "low_battery", False, ts, out, battery)
        rssi = _int(values.get("rssi"))
        if rssi is not None:
            spot.rssi = rssi
        axes = [_int(values.get(k)) for k in ("mag_x", "mag_y", "mag_z")]
        last = spot.mag
        if None in axes:  # a gateway reporting by exception sends the axes that moved
            if last is None or axes == [None, None, None]:
                return
            axes = [old if new is None else new for new, old in zip(axes, last, strict=True)]
        mag = (axes[0] or 0, axes[1] or 0, axes[2] or 0)
        if last is not None and prev_occupied is not None and prev_occupied == spot.occupied:
            jump = math.dist(mag, last)
            if jump > a.mag_jump_mg:
                spot.last_jump = ts
                self._flagged.add(spot.id)
                self._alert(spot, "magnetic_jump", True, ts, out, round(jump),
                            f"field moved {jump:.0f} mG without an occupancy change")
        spot.mag = mag

    def tick(self, now: int, out: Changes) -> None:
        """Advance time: silent sensors become unknown; quiet alerts clear."""
        for limit, queue in self._watch.items():
            while queue:
                spot = queue.front()
                if spot.last_ts is not None and spot.last_ts + limit > now:
                    break
                queue.remove(spot._row)
                spot.silent = True
                self._alert(spot, "silent", True, now, out, None,
                            f"no report for more than {limit // 1000} s")
                self._refresh(spot, now, out)
        for sid in list(self._flagged):
            self._settle(self.spots[sid], now, out)

    def _settle(self, spot: Spot, now: int, out: Changes) -> None:
        a = self.cfg.alerts
        n = self._prune_changes(spot, now)
        if n <= a.flapping_changes_per_hour // 2:
            self._alert(spot, "flapping", False, now, out, n)
        quiet_ms = int(a.mag_jump_quiet * 1000)
        if spot.last_jump is None or now - spot.last_jump >= quiet_ms:
            self._alert(spot, "magnetic_jump", False, now, out)
        if not spot.alerts & {"flapping", "magnetic_jump"}:
            self._flagged.discard(spot.id)

    def restore(self, row: Mapping[str, Any], active_alerts: set[str], now: int) -> None:
        """Load a spot's stored state at start-up (the zone mapping comes from the config)."""
        spot = self._spot(str(row["spot_id"]))
        occ = row.get("occupied")
        spot.occupied = None if occ is None else bool(occ)
        spot.last_ts, spot.since = row.get("last_ts"), row.get("since")
        spot.battery_mv, spot.rssi = row.get("battery_mv"), row.get("rssi")
        spot.alerts = frozenset(active_alerts)
        if spot.alerts & {"flapping", "magnetic_jump"}:
            spot.last_jump = now
            self._flagged.add(spot.id)
        if spot.last_ts is not None and spot.last_ts + spot.silent_after_ms > now:
            spot.silent = False
        old, new = spot.status, spot.derived_status()
        zone = self.zones.get(spot.zone) if spot.zone else None
        if zone is not None and old is not new:
            zone.counts[old] -= 1
            zone.counts[new] += 1
        spot.status = new

    def start_watching(self) -> None:
        """After restore: queue every non-silent spot for expiry, oldest report first."""
        live = sorted((s for s in self.spots.values() if not s.silent),
                      key=lambda s: s.last_ts or 0)
        for spot in live:
            self._watch_spot(spot)

    def near(self, lat: float, lon: float, radius_m: float) -> list[tuple[float, Zone]]:
        """Zones with free spaces within `radius_m`, nearest first."""
        hits = [(haversine_m(lat, lon, z.lat, z.lon), z) for z in self.zones.values()
                if z.available > 0]
        return sorted(((d, z) for d, z in hits if d <= radius_m), key=lambda h: h[0])
