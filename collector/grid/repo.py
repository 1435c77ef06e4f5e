"""Persistence of outlines and reads of the site registry: small functions over one connection."""

from __future__ import annotations

from typing import Any

import orjson
import sqlalchemy as sa

from collector import schema
from collector.grid.geo import Outline
from collector.grid.tables import outlines
from collector.registry import tables as reg


def load_outlines(conn: sa.Connection) -> list[Outline]:
    """Every stored outline (validated when it was imported)."""
    rows = conn.execute(sa.select(outlines).order_by(outlines.c.outline_id)).all()
    if not rows:
        return []  # and shapely is not imported (~22 MiB resident)
    from shapely.geometry import shape

    return [Outline(r.outline_id, r.level, r.name, r.parent, orjson.loads(r.departments),
                    shape(orjson.loads(r.geometry)))
            for r in rows]


def save_outlines(conn: sa.Connection, items: list[Outline], *, replace: bool, who: str,
                  now: int) -> None:
    """Store outlines: all of them instead of the old set (`replace`) or over it."""
    if replace:
        conn.execute(sa.delete(outlines))
    else:
        ids = [o.id for o in items]
        for i in range(0, len(ids), 500):
            conn.execute(sa.delete(outlines).where(outlines.c.outline_id.in_(ids[i:i + 500])))
    rows = [{"outline_id": o.id, "level": o.level, "parent": o.parent, "name": o.name,
             "departments": orjson.dumps(dict(o.departments)).decode(),
             "geometry": orjson.dumps(o.feature()["geometry"]).decode(),
             "updated_at": now, "updated_by": who} for o in items]
    if rows:
        conn.execute(sa.insert(outlines), rows)


def delete_outline(conn: sa.Connection, outline_id: str) -> bool:
    """Remove one outline; False when there was none."""
    return conn.execute(sa.delete(outlines).where(outlines.c.outline_id == outline_id)) \
        .rowcount > 0


def registry_site(conn: sa.Connection, site_id: str) -> dict[str, Any] | None:
    """One site of the registry (location, district, responsible unit), or None."""
    row = conn.execute(sa.select(reg.sites).where(reg.sites.c.site_id == site_id)).first()
    return dict(row._mapping) if row else None


def registry_sites(conn: sa.Connection) -> list[dict[str, Any]]:
    """Every site of the registry."""
    return [dict(r._mapping) for r in conn.execute(sa.select(reg.sites)
                                                   .order_by(reg.sites.c.site_id))]


def registry_links(conn: sa.Connection) -> tuple[dict[str, str], dict[str, str]]:
    """(device -> gateway, gateway -> site) as registered (revoked gateways left out)."""
    g, d = reg.gateways, reg.devices
    sites = {r.gateway_id: r.site_id for r in conn.execute(
        sa.select(g.c.gateway_id, g.c.site_id).where(g.c.revoked == sa.false()))}
    devices = {r.device_id: r.gateway_id for r in conn.execute(
        sa.select(d.c.device_id, d.c.gateway_id).order_by(d.c.gateway_id))}
    return devices, sites


def seen_devices(conn: sa.Connection) -> dict[str, str]:
    """Devices the collector has heard from, and the gateway each last reported through."""
    d = schema.devices
    return {r.device_id: r.gateway_id for r in conn.execute(sa.select(d.c.device_id,
                                                                      d.c.gateway_id))}
