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


MIGRATIONS: list[Migration] = [
    (1, "core: gateways, devices, batches, readings, latest, events, active faults",
     _create(schema.gateways, schema.devices, schema.batches, schema.readings, schema.latest,
             schema.events, schema.active_faults)),
]


def migrate(engine: sa.Engine) -> list[int]:
    """Apply every migration not yet applied; return the versions applied now."""
    applied_now: list[int] = []
    with engine.begin() as conn:
        schema.metadata.create_all(conn, tables=[schema.schema_migrations])
        if conn.dialect.name == "postgresql":  # one migrator at a time across collectors
            conn.execute(sa.text("SELECT pg_advisory_xact_lock(7212024)"))
        done = set(conn.scalars(sa.select(schema.schema_migrations.c.version)))
        for version, name, apply in sorted(MIGRATIONS, key=lambda m: m[0]):
            if version in done:
                continue
            apply(conn)
            conn.execute(sa.insert(schema.schema_migrations).values(
                version=version, name=name, applied_at=int(time.time() * 1000)))
            applied_now.append(version)
            log.info("schema migration %d applied: %s", version, name)
    return applied_now
