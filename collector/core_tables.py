"""The core's schema steps: gateways, devices, batches, readings and events (`CORE`).

The tables themselves are defined in collector/schema.py; the API tokens of collector/auth.py
have their own set (`collector.auth_tables.AUTH`).
"""

from __future__ import annotations

import sqlalchemy as sa

from collector import schema
from collector.migrations import MigrationSet, creates

_PG_READINGS = """
CREATE TABLE readings (
    device_id TEXT NOT NULL, quantity TEXT NOT NULL, ts BIGINT NOT NULL,
    value DOUBLE PRECISION, vtext TEXT, quality TEXT NOT NULL, gateway_id TEXT NOT NULL,
    seq BIGINT NOT NULL, replay BOOLEAN NOT NULL
) PARTITION BY RANGE (ts)
"""


def _partition_readings(conn: sa.Connection) -> None:
    """PostgreSQL: make `readings` a table partitioned by day (SQLite: nothing to do).

    Existing rows are kept: the old table becomes one partition covering the days it holds
    (its index is adopted), so the conversion is a catalogue change plus one validation scan.
    The days around now are made by `Store.maintain`, which `Store.open` runs after migrating.
    """
    from collector.partitions import DAY_MS, day_of

    if conn.dialect.name != "postgresql":
        return
    conn.execute(sa.text("LOCK TABLE readings IN ACCESS EXCLUSIVE MODE"))
    lo, hi = conn.execute(sa.text("SELECT min(ts), max(ts) FROM readings")).one()
    conn.execute(sa.text("ALTER TABLE readings RENAME TO readings_legacy"))
    conn.execute(sa.text("ALTER INDEX readings_by_device RENAME TO readings_legacy_by_device"))
    conn.execute(sa.text(_PG_READINGS))
    conn.execute(sa.text("CREATE INDEX readings_by_device ON readings (device_id, quantity, ts)"))
    conn.execute(sa.text("CREATE TABLE readings_default PARTITION OF readings DEFAULT"))
    if lo is None:
        conn.execute(sa.text("DROP TABLE readings_legacy"))
    else:
        conn.execute(sa.text(
            f"ALTER TABLE readings ATTACH PARTITION readings_legacy "
            f"FOR VALUES FROM ({day_of(lo)}) TO ({day_of(hi) + DAY_MS})"))


_GATEWAY_CLOCK = (("clock_offset_ms", "BIGINT"), ("clock_measured_at", "BIGINT"),
                  ("clock_source", "TEXT NOT NULL DEFAULT ''"),
                  ("clock_wrong", "BOOLEAN NOT NULL DEFAULT FALSE"))


def _gateway_clock_and_quarantine(conn: sa.Connection) -> None:
    """Add the measured clock columns to `gateways` (unless step 1 made them) and create the
    quarantine table."""
    have = {c["name"] for c in sa.inspect(conn).get_columns("gateways")}
    for name, ddl in _GATEWAY_CLOCK:
        if name not in have:
            conn.execute(sa.text(f"ALTER TABLE gateways ADD COLUMN {name} {ddl}"))
    schema.metadata.create_all(conn, tables=[schema.quarantine])


LATEST_FILLFACTOR = 50  # % of each page filled by inserts: the rest takes newer versions


def _latest_fillfactor(conn: sa.Connection) -> None:
    """PostgreSQL: leave room in `latest`'s pages, so that a newer value replaces the old one
    in the same page (a HOT update: no index entry, no page split); SQLite: nothing to do."""
    if conn.dialect.name == "postgresql":
        conn.execute(sa.text(f"ALTER TABLE latest SET (fillfactor = {LATEST_FILLFACTOR})"))


def _devices_by_gateway(conn: sa.Connection) -> None:
    """Index devices by owner (unless step 1 made it): a gateway's device count."""
    index = next(i for i in schema.devices.indexes if i.name == "devices_by_gateway")
    index.create(conn, checkfirst=True)


CORE = MigrationSet("core", [
    (1, "core: gateways, devices, batches, readings, latest, events, active faults",
     creates(schema.metadata, schema.gateways, schema.devices, schema.batches, schema.readings,
             schema.latest, schema.events, schema.active_faults)),
    (2, "core: readings partitioned by day on PostgreSQL", _partition_readings),
    (3, "core: measured gateway clocks, quarantined messages", _gateway_clock_and_quarantine),
    (4, "core: room for in-page updates of latest values on PostgreSQL", _latest_fillfactor),
    (5, "core: devices indexed by gateway", _devices_by_gateway),
])
