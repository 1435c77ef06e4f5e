"""The one schema migration runner, for the core and every feature, on SQLite and PostgreSQL.

Each owner of tables (the core, each feature) declares a `MigrationSet`: its name and its
ordered steps `(version, name, apply)`. A step is appended, never edited once released; its
version is forever, and counts within its owner only. `migrate(engine, sets)` applies, in one
transaction, every step not yet recorded in `feature_migrations` (primary key: feature,
version), in the order the sets are given and by version within each set.

Two collectors starting together on PostgreSQL take turns: the transaction begins with
`pg_advisory_xact_lock(MIGRATION_LOCK)`, before anything is read or created, so the second
one waits, then finds everything applied (PostgreSQL DDL is transactional). A collector on
SQLite is alone on its file.

Databases made before per-feature versions recorded one global `schema_migrations` table
(versions 1-64, a range per owner). The first run of this runner adopts those rows: each legacy
version becomes (owner, version) of the set that declares it, and is not applied again. The
legacy table is left as it was.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import sqlalchemy as sa

from collector import schema
from collector.clock import now_ms

log = logging.getLogger(__name__)

Step = tuple[int, str, Callable[[sa.Connection], None]]

MIGRATION_LOCK = 7212024  # the advisory lock key every collector of a database shares


@dataclass(frozen=True, slots=True)
class MigrationSet:
    """The ordered schema steps of one owner of tables (the core or a feature)."""

    feature: str
    steps: Sequence[Step]

    def __post_init__(self) -> None:
        versions = [v for v, _, _ in self.steps]
        if versions != sorted(set(versions)):
            raise ValueError(f"{self.feature}: migration versions must be unique and "
                             f"ascending, not {versions}")


def creates(metadata: sa.MetaData, *tables: sa.Table) -> Callable[[sa.Connection], None]:
    """A step that creates `tables` as `metadata` defines them (if not there yet)."""
    def apply(conn: sa.Connection) -> None:
        metadata.create_all(conn, tables=list(tables))
    return apply


def add_missing_columns(*tables: sa.Table) -> Callable[[sa.Connection], None]:
    """A step that adds the columns an older version of each table lacks (a fresh database,
    whose tables were created from the current definitions, already has them all)."""
    def apply(conn: sa.Connection) -> None:
        for table in tables:
            have = {c["name"] for c in sa.inspect(conn).get_columns(table.name)}
            for col in table.columns:
                if col.name not in have:
                    ddl = sa.schema.CreateColumn(col).compile(dialect=conn.dialect)
                    conn.execute(sa.text(f"ALTER TABLE {table.name} ADD COLUMN {ddl}"))
    return apply


def migrate(engine: sa.Engine, sets: Sequence[MigrationSet]) -> list[tuple[str, int]]:
    """Apply every step of `sets` not yet applied; return the (feature, version) applied now."""
    _check_unique(sets)
    applied: list[tuple[str, int]] = []
    with engine.begin() as conn:
        if conn.dialect.name == "postgresql":  # one migrator at a time, before any read
            conn.execute(sa.text("SELECT pg_advisory_xact_lock(:k)"), {"k": MIGRATION_LOCK})
        done = _recorded(conn, sets)
        for mset in sets:
            for version, name, apply in mset.steps:
                if (mset.feature, version) in done:
                    continue
                apply(conn)
                _record(conn, mset.feature, version, name, now_ms())
                applied.append((mset.feature, version))
                log.info("schema migration %s %d applied: %s", mset.feature, version, name)
    return applied


def applied_versions(engine: sa.Engine) -> set[tuple[str, int]]:
    """Every (feature, version) recorded as applied."""
    t = schema.feature_migrations
    with engine.connect() as conn:
        if not sa.inspect(conn).has_table(t.name):
            return set()
        return {(f, v) for f, v in conn.execute(sa.select(t.c.feature, t.c.version))}


def _check_unique(sets: Sequence[MigrationSet]) -> None:
    names = [s.feature for s in sets]
    if len(names) != len(set(names)):
        raise ValueError(f"two migration sets share a name: {names}")


def _recorded(conn: sa.Connection, sets: Sequence[MigrationSet]) -> set[tuple[str, int]]:
    """What is applied, creating the versions table (and adopting legacy rows) on first run."""
    t = schema.feature_migrations
    if not sa.inspect(conn).has_table(t.name):
        schema.metadata.create_all(conn, tables=[t])
        _adopt_legacy(conn, sets)
    return {(f, v) for f, v in conn.execute(sa.select(t.c.feature, t.c.version))}


def _adopt_legacy(conn: sa.Connection, sets: Sequence[MigrationSet]) -> None:
    """Record the steps a `schema_migrations` table (one global version range) says are done."""
    legacy = schema.schema_migrations
    if not sa.inspect(conn).has_table(legacy.name):
        return
    rows = conn.execute(sa.select(legacy.c.version, legacy.c.name, legacy.c.applied_at))
    for version, legacy_name, applied_at in rows:
        owners = [(s.feature, name) for s in sets for v, name, _ in s.steps if v == version]
        if len(owners) > 1:  # versions count per owner now: the recorded name decides
            owners = [o for o in owners if o[1] == legacy_name]
        if len(owners) == 1:
            _record(conn, owners[0][0], version, owners[0][1], applied_at)
        else:
            log.warning("schema migration %d (%s) of an older collector is known to no feature",
                        version, legacy_name)


def _record(conn: sa.Connection, feature: str, version: int, name: str, at: int) -> None:
    conn.execute(sa.insert(schema.feature_migrations).values(
        feature=feature, version=version, name=name, applied_at=at))
