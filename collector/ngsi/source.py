"""Where entities come from: the store's tables (and the environment site list), read on demand.

One read per request and type; nothing is cached, so an entity is exactly as fresh as the
committed state (parking rows are written on every transition, `latest` on every batch).
Builders take the local ids wanted (None: all) and read only those rows, in chunks, so the feed
worker builds thousands of changed entities with a handful of queries.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Iterator, Sequence
from typing import Any, TypeVar

import sqlalchemy as sa

from collector import schema
from collector.alarms.tables import alarms
from collector.ngsi import model
from collector.params import INT64_MAX
from collector.parking.schema import parking_spots, parking_zones
from collector.store import Store

CHUNK = 500  # ids per IN (...) list
T = TypeVar("T")
Locals = Sequence[str] | None  # local ids wanted; None: every entity of the type


def chunks(ids: Sequence[T]) -> Iterator[list[T]]:
    """`ids` in lists of at most CHUNK, for `IN (...)` lists."""
    for i in range(0, len(ids), CHUNK):
        yield list(ids[i:i + CHUNK])


class EntitySource:
    """Builds the NGSI-LD entities of one collector from its store."""

    def __init__(self, store: Store, sites: Iterable[model.SiteInfo] = (),
                 public_url: str = "") -> None:
        self.store = store
        self.sites = {s.id: s for s in sites}
        self.public_url = public_url.rstrip("/")

    def entities(self, types: Iterable[str]) -> list[dict[str, Any]]:
        """Every entity of these types, in a stable order (type, id)."""
        out: list[dict[str, Any]] = []
        for t in sorted(set(types)):
            builder = self._builders().get(t)
            if builder is not None:  # one builder may serve two types (on/off-street zones)
                out.extend(sorted((e for e in builder(None) if e["type"] == t),
                                  key=lambda e: e["id"]))
        return out

    def entity(self, entity_id: str) -> dict[str, Any] | None:
        """One entity by its URN, or None."""
        return self.entities_by_id([entity_id]).get(entity_id)

    def entities_by_id(self, entity_ids: Iterable[str]) -> dict[str, dict[str, Any]]:
        """The entities of these URNs that exist, by id (one set of reads per type)."""
        wanted: dict[str, set[str]] = defaultdict(set)
        for entity_id in entity_ids:
            parsed = model.split_urn(entity_id)
            if parsed is not None:
                wanted[parsed[0]].add(parsed[1])
        out: dict[str, dict[str, Any]] = {}
        builders = self._builders()
        for etype, locals_ in wanted.items():
            builder = builders.get(etype)
            if builder is None:
                continue
            for e in builder(sorted(locals_)):
                if e["type"] == etype:
                    out[e["id"]] = e
        return out

    def _builders(self) -> dict[str, Any]:
        return {"ParkingSpot": self.spots, "OnStreetParking": self.zones,
                "OffStreetParking": self.zones, "AirQualityObserved": self.air,
                "Device": self.devices, "Alert": self.alerts}

    @staticmethod
    def _rows(conn: sa.Connection, stmt: Any, column: Any,
              ids: Sequence[Any] | None) -> list[Any]:
        """Rows of `stmt`, restricted to `column IN ids` (chunked) unless ids is None."""
        if ids is None:
            return list(conn.execute(stmt).mappings())
        return [r for chunk in chunks(ids)
                for r in conn.execute(stmt.where(column.in_(chunk))).mappings()]

    # --- per type ----------------------------------------------------------------------------

    def _zones(self, conn: sa.Connection, ids: Locals) -> dict[str, model.ZoneInfo]:
        z = parking_zones
        stmt = sa.select(z.c.zone_id, z.c.name, z.c.kind, z.c.lat, z.c.lon)
        return {r["zone_id"]: model.ZoneInfo(r["zone_id"], r["name"], r["kind"], r["lat"],
                                             r["lon"])
                for r in self._rows(conn, stmt, z.c.zone_id, ids)}

    def spots(self, ids: Locals) -> list[dict[str, Any]]:
        """ParkingSpot entities (those of `ids`, or all)."""
        s = parking_spots
        with self.store.engine.connect() as conn:
            rows = self._rows(conn, sa.select(s), s.c.spot_id, ids)
            zone_ids = None if ids is None else sorted({r["zone_id"] for r in rows
                                                        if r["zone_id"]})
            zones = self._zones(conn, zone_ids)
        return [model.parking_spot(dict(r), zones.get(r["zone_id"] or "")) for r in rows]

    def zones(self, ids: Locals) -> list[dict[str, Any]]:
        """OnStreetParking / OffStreetParking entities."""
        z, s = parking_zones, parking_spots
        with self.store.engine.connect() as conn:
            rows = self._rows(conn, sa.select(z), z.c.zone_id, ids)
            members: dict[str, list[str]] = defaultdict(list)
            spot_stmt = sa.select(s.c.zone_id, s.c.spot_id).where(s.c.zone_id.is_not(None))
            for r in self._rows(conn, spot_stmt, s.c.zone_id, ids):
                members[r["zone_id"]].append(r["spot_id"])
        return [model.parking_zone(dict(r), sorted(members.get(r["zone_id"], [])))
                for r in rows]

    def air(self, ids: Locals) -> list[dict[str, Any]]:
        """AirQualityObserved of every dust and boiler site (real-time series)."""
        sites = [s for s in self.sites.values() if ids is None or s.id in ids]
        devices = {d: s.id for s in sites for d in s.devices}
        if not devices:
            return []
        t = schema.latest
        per_site: dict[str, list[dict[str, Any]]] = defaultdict(list)
        with self.store.engine.connect() as conn:
            for row in self._rows(conn, sa.select(t), t.c.device_id, sorted(devices)):
                per_site[devices[row["device_id"]]].append(dict(row))
        return [model.air_quality(s, per_site.get(s.id, [])) for s in sites]

    def devices(self, ids: Locals) -> list[dict[str, Any]]:
        """A Device for every field device and every gateway (`gateway:<id>`)."""
        d, g, lt, f = schema.devices, schema.gateways, schema.latest, schema.active_faults
        dev_ids = gw_ids = None
        if ids is not None:
            dev_ids = [i for i in ids if not i.startswith("gateway:")]
            gw_ids = [i.removeprefix("gateway:") for i in ids if i.startswith("gateway:")]
        with self.store.engine.connect() as conn:
            devs = self._rows(conn, sa.select(d), d.c.device_id, dev_ids) \
                if dev_ids is None or dev_ids else []
            latest: dict[str, list[dict[str, Any]]] = defaultdict(list)
            faulty: set[str] = set()
            if devs:
                for row in self._rows(conn, sa.select(lt), lt.c.device_id, dev_ids):
                    latest[row["device_id"]].append(dict(row))
                faulty = {r["device_id"] for r in self._rows(
                    conn, sa.select(f.c.device_id), f.c.device_id, dev_ids)}
            gws = {r["gateway_id"]: dict(r) for r in self._rows(
                conn, sa.select(g), g.c.gateway_id, gw_ids)} if gw_ids is None or gw_ids \
                else {}
            kinds: dict[str, set[str]] = defaultdict(set)
            if gws:
                for r in self._rows(conn, sa.select(d.c.gateway_id, d.c.kind).distinct(),
                                    d.c.gateway_id, None if gw_ids is None else list(gws)):
                    kinds[r["gateway_id"]].add(r["kind"])
            of_devs = sorted({r["gateway_id"] for r in devs})
            gw_state = {r["gateway_id"]: r["state"] for r in self._rows(
                conn, sa.select(g.c.gateway_id, g.c.state), g.c.gateway_id,
                None if ids is None else of_devs)} if devs else {}
        out = []
        for row in devs:
            state = "fault" if row["device_id"] in faulty else "ok"
            if gw_state.get(row["gateway_id"]) == "offline":
                state = "unreachable"
            out.append(model.device(dict(row), latest.get(row["device_id"], []), state))
        for gw in gws.values():
            controlled = sorted({p for k in kinds.get(gw["gateway_id"], ())
                                 for p in model.controlled_property(k, ())})
            out.append(model.gateway(gw, controlled))
        return out

    def alerts(self, ids: Locals) -> list[dict[str, Any]]:
        """An Alert for every active alarm."""
        a = alarms
        stmt = sa.select(a).where(a.c.active.is_(True), a.c.closed.is_(False))
        # Alert ids are row ids: ASCII digits within BIGINT ("²" is a digit to str.isdigit).
        nums = None if ids is None else [int(i) for i in ids if i.isascii() and i.isdigit()
                                         and int(i) <= INT64_MAX]
        with self.store.engine.connect() as conn:
            rows = self._rows(conn, stmt, a.c.id, nums)
        return [model.alert(dict(r), self.source_url(r["device_id"])) for r in rows]

    def sample_ids(self, entity_type: str, n: int) -> list[str]:
        """Local ids of up to `n` entities of a type ([] when none exist): cheap, for discovery."""
        with self.store.engine.connect() as conn:
            if entity_type == "ParkingSpot":
                return list(conn.scalars(sa.select(parking_spots.c.spot_id).limit(n)))
            if entity_type in ("OnStreetParking", "OffStreetParking"):
                z = parking_zones
                kind = "offStreet" if entity_type == "OffStreetParking" else "onStreet"
                return list(conn.scalars(sa.select(z.c.zone_id).where(z.c.kind == kind)
                                         .limit(n)))
            if entity_type == "Device":
                devs = list(conn.scalars(sa.select(schema.devices.c.device_id).limit(n)))
                gws = list(conn.scalars(sa.select(schema.gateways.c.gateway_id).limit(n)))
                return (devs + [f"gateway:{g}" for g in gws])[:n]
            if entity_type == "Alert":
                a = alarms
                return [str(i) for i in conn.scalars(
                    sa.select(a.c.id).where(a.c.active.is_(True), a.c.closed.is_(False))
                    .limit(n))]
        if entity_type == "AirQualityObserved":
            return sorted(self.sites)[:n]
        return []

    def source_url(self, device_id: str) -> str:
        """Where the Device entity behind an alert can be fetched."""
        base = self.public_url or "urn:citygate"
        return f"{base}/ngsi-ld/v1/entities/{model.urn('Device', device_id)}"
