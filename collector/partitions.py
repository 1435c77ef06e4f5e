"""Day partitions of the big time-series tables on PostgreSQL.

`readings` (by `ts`) and `history_1m` (by `bucket`) are `PARTITION BY RANGE` on epoch
milliseconds, one partition per UTC day named `<table>_d<epoch day>`, plus a DEFAULT partition
for rows outside the days that exist. Partitions are created ahead of time by a maintenance
step (never inside an ingest transaction, where the lock it takes could deadlock two writers),
and retention drops whole partitions instead of deleting rows.

A day whose rows already sit in the DEFAULT partition keeps them there (PostgreSQL refuses a
partition that overlaps rows of the default); retention deletes those in chunks. SQLite has no
partitions: every function here is a no-op there.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterable

import sqlalchemy as sa

log = logging.getLogger(__name__)

DAY_MS = 86_400_000
DAYS_BEHIND, DAYS_AHEAD = 7, 3  # the days kept ready around now (see make_days)
_BOUND = re.compile(r"FROM \('?(-?\d+)'?\) TO \('?(-?\d+)'?\)")


def day_of(ms: int) -> int:
    """Start (epoch ms) of the UTC day holding this instant."""
    return ms - ms % DAY_MS


def partition_name(table: str, day_start_ms: int) -> str:
    """Name of the partition of `table` holding the day that starts at this epoch ms."""
    return f"{table}_d{day_start_ms // DAY_MS}"


def is_partitioned(conn: sa.Connection, table: str) -> bool:
    """Whether `table` is a partitioned table (always False on SQLite)."""
    if conn.dialect.name != "postgresql":
        return False
    return conn.execute(sa.text(
        "SELECT 1 FROM pg_partitioned_table p JOIN pg_class c ON c.oid = p.partrelid "
        "WHERE c.relname = :t AND pg_table_is_visible(c.oid)"), {"t": table}).first() is not None


def partitions(conn: sa.Connection, table: str) -> list[tuple[str, int, int]]:
    """The range partitions of `table` as (name, from, to), oldest first; DEFAULT excluded."""
    if conn.dialect.name != "postgresql":
        return []
    rows = conn.execute(sa.text(
        "SELECT c.relname, pg_get_expr(c.relpartbound, c.oid) FROM pg_inherits i "
        "JOIN pg_class c ON c.oid = i.inhrelid JOIN pg_class p ON p.oid = i.inhparent "
        "WHERE p.relname = :t AND pg_table_is_visible(p.oid)"), {"t": table}).all()
    out = []
    for name, bound in rows:
        m = _BOUND.search(bound or "")
        if m:
            out.append((name, int(m.group(1)), int(m.group(2))))
    return sorted(out, key=lambda p: p[1])


def ensure_days(conn: sa.Connection, table: str, column: str, days: Iterable[int]) -> list[str]:
    """Create the day partitions of `table` that are missing; the names created.

    A day that overlaps an existing partition or has rows in the DEFAULT partition is skipped.
    """
    if conn.dialect.name != "postgresql":
        return []
    existing = partitions(conn, table)
    created = []
    for day in sorted({day_of(d) for d in days}):
        if any(lo < day + DAY_MS and day < hi for _, lo, hi in existing):
            continue
        clash = conn.execute(sa.text(
            f"SELECT 1 FROM {table}_default WHERE {column} >= :a AND {column} < :b LIMIT 1"),
            {"a": day, "b": day + DAY_MS}).first()
        if clash is not None:
            continue
        name = partition_name(table, day)
        conn.execute(sa.text(f"CREATE TABLE IF NOT EXISTS {name} PARTITION OF {table} "
                             f"FOR VALUES FROM ({day}) TO ({day + DAY_MS})"))
        existing.append((name, day, day + DAY_MS))
        created.append(name)
    if created:
        log.info("partitions: created %s", ", ".join(created))
    return created


def make_days(conn: sa.Connection, table: str, column: str, now: int,
              not_before: int | None = None) -> list[str]:
    """Create the day partitions of `table` around `now`; the names created.

    From `DAYS_BEHIND` days ago (a replayed backlog lands in its own day), but none wholly
    before `not_before` (a retention cutoff: it would be dropped at once), to `DAYS_AHEAD`
    days ahead. Rows outside these days go to the DEFAULT partition.
    """
    first = now - DAYS_BEHIND * DAY_MS
    if not_before is not None:
        first = max(first, day_of(not_before))
    return ensure_days(conn, table, column,
                       range(first, now + (DAYS_AHEAD + 1) * DAY_MS, DAY_MS))


def drop_before(conn: sa.Connection, table: str, cutoff: int) -> list[str]:
    """Drop every partition of `table` whose whole range lies before `cutoff`; their names."""
    dropped = []
    for name, _lo, hi in partitions(conn, table):
        if hi <= cutoff:
            conn.execute(sa.text(f"DROP TABLE {name}"))
            dropped.append(name)
    if dropped:
        log.info("partitions: dropped %s", ", ".join(dropped))
    return dropped
