"""Persistence of device commands: rows, status changes and the audit trail."""

from __future__ import annotations

from typing import Any

import orjson
import sqlalchemy as sa

from collector.commands.tables import audit, commands

t = commands


def insert(conn: sa.Connection, row: dict[str, Any], who: str, at: int) -> None:
    """Store a new command and its `issued` audit entry."""
    conn.execute(sa.insert(t).values(**row))
    log(conn, row["id"], at, who, "issued", {"device": row["device_id"], "op": row["op"],
                                            "args": orjson.loads(row["args"]),
                                            "expires": row["expires"]})


def log(conn: sa.Connection, command_id: str, at: int, who: str, what: str,
        detail: dict[str, Any] | None = None) -> None:
    """Append one audit entry."""
    conn.execute(sa.insert(audit).values(command_id=command_id, at=at, who=who, what=what,
                                         detail=orjson.dumps(detail or {}).decode()))


def by_id(conn: sa.Connection, command_id: str) -> dict[str, Any] | None:
    """One command."""
    row = conn.execute(sa.select(t).where(t.c.id == command_id)).first()
    return None if row is None else dict(row._mapping)


def by_key(conn: sa.Connection, key: str) -> dict[str, Any] | None:
    """The command of an idempotency key."""
    row = conn.execute(sa.select(t).where(t.c.key == key)).first()
    return None if row is None else dict(row._mapping)


def of_device(conn: sa.Connection, device: str, limit: int) -> list[dict[str, Any]]:
    """A device's commands, newest first."""
    rows = conn.execute(sa.select(t).where(t.c.device_id == device)
                        .order_by(t.c.issued.desc()).limit(limit))
    return [dict(r._mapping) for r in rows]


def with_status(conn: sa.Connection, statuses: frozenset[str],
                gateway: str | None = None) -> list[dict[str, Any]]:
    """Commands in any of `statuses` (of one gateway), oldest first."""
    q = sa.select(t).where(t.c.status.in_(sorted(statuses)))
    if gateway is not None:
        q = q.where(t.c.gateway_id == gateway)
    return [dict(r._mapping) for r in conn.execute(q.order_by(t.c.issued))]


def set_status(conn: sa.Connection, command_id: str, status: str, at: int,
               only_if: frozenset[str], **fields: Any) -> bool:
    """Change a command's status if it is still in one of `only_if`; True when it changed."""
    n = conn.execute(sa.update(t).where(t.c.id == command_id, t.c.status.in_(sorted(only_if)))
                     .values(status=status, updated=at, **fields)).rowcount
    return bool(n)


def trail(conn: sa.Connection, command_id: str) -> list[dict[str, Any]]:
    """The audit entries of a command, in order."""
    rows = conn.execute(sa.select(audit.c.at, audit.c.who, audit.c.what, audit.c.detail)
                        .where(audit.c.command_id == command_id)
                        .order_by(audit.c.at, audit.c.id))
    return [{**dict(r._mapping), "detail": orjson.loads(r.detail)} for r in rows]
