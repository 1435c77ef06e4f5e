"""Versioned schema migrations, applied in order at start-up on SQLite and PostgreSQL alike.

A migration is appended, never edited once released: version numbers are forever.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

import sqlalchemy as sa

from collector import schema

log = logging.getLogger(__name__)

Migration = tuple[int, str, Callable[[sa.Connection], None]]


def _create(*tables: sa.Table) -> Callable[[sa.Connection], None]:
    def apply(conn: sa.Connection) -> None:
        schema.metadata.create_all(conn, tables=list(tables))
    return apply


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
    """Add the measured clock columns to `gateways` (unless migration 1 made them) and create
    the quarantine table."""
    have = {c["name"] for c in sa.inspect(conn).get_columns("gateways")}
    for name, ddl in _GATEWAY_CLOCK:
        if name not in have:
            conn.execute(sa.text(f"ALTER TABLE gateways ADD COLUMN {name} {ddl}"))
    schema.metadata.create_all(conn, tables=[schema.quarantine])


MIGRATIONS: list[Migration] = [
    (1, "core: gateways, devices, batches, readings, latest, events, active faults",
     _create(schema.gateways, schema.devices, schema.batches, schema.readings, schema.latest,
             schema.events, schema.active_faults)),
    (2, "core: readings partitioned by day on PostgreSQL", _partition_readings),
    (3, "core: measured gateway clocks, quarantined messages", _gateway_clock_and_quarantine),
]


def all_migrations() -> list[Migration]:
    """The core migrations and those of every feature, in version order.

    Version ranges: 1-9 core, 10-14 push notifications, 15-19 alarms and incidents,
    20-29 environment, 30-39 parking, 40-49 hub feeds, 50-59 registry and security,
    60-64 agent updates, 70-79 grid governance.
    """
    from collector.alarms.tables import MIGRATIONS as alarms
    from collector.environment.tables import MIGRATIONS as environment
    from collector.grid.tables import MIGRATIONS as grid
    from collector.ngsi.tables import MIGRATIONS as hub_feeds
    from collector.notify.queue import MIGRATIONS as notify
    from collector.parking.schema import MIGRATIONS as parking
    from collector.registry.tables import MIGRATIONS as registry
    from collector.updates.tables import MIGRATIONS as updates

    by_version: dict[int, Migration] = {}
    for m in [*MIGRATIONS, *notify, *alarms, *environment, *parking, *hub_feeds, *registry,
              *updates, *grid]:
        known = by_version.setdefault(m[0], m)
        if known[1] != m[1]:
            raise RuntimeError(f"migration {m[0]} is both {known[1]!r} and {m[1]!r}")
    return [by_version[v] for v in sorted(by_version)]


def migrate(engine: sa.Engine) -> list[int]:
    """Apply every migration not yet applied; return the versions applied now."""
    applied_now: list[int] = []
    with engine.begin() as conn:
        schema.metadata.create_all(conn, tables=[schema.schema_migrations])
        if conn.dialect.name == "postgresql":  # one migrator at a time across collectors
            conn.execute(sa.text("SELECT pg_advisory_xact_lock(7212024)"))
        done = set(conn.scalars(sa.select(schema.schema_migrations.c.version)))
        for version, name, apply in all_migrations():
            if version in done:
                continue
            apply(conn)
            conn.execute(sa.insert(schema.schema_migrations).values(
                version=version, name=name, applied_at=int(time.time() * 1000)))
            applied_now.append(version)
            log.info("schema migration %d applied: %s", version, name)
    return applied_now
