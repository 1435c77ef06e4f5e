"""Tables of alarms, incidents, their history and silences, and their versioned migrations (15–18).

Times are epoch milliseconds like the rest of the collector schema.
"""

from __future__ import annotations

from collections.abc import Callable

import sqlalchemy as sa

metadata = sa.MetaData()
BigId = sa.BigInteger().with_variant(sa.Integer(), "sqlite")

# One row per alarm episode. At most one live (closed = false) row per dedup key: a flapping
# fault increments `occurrences` on that row instead of adding rows.
alarms = sa.Table(
    "alarms", metadata,
    sa.Column("id", BigId, primary_key=True, autoincrement=True),
    sa.Column("site", sa.Text, nullable=False),
    sa.Column("device_id", sa.Text, nullable=False),
    sa.Column("kind", sa.Text, nullable=False),
    sa.Column("gateway_id", sa.Text, nullable=False, server_default=""),
    sa.Column("source", sa.Text, nullable=False),  # event | threshold | group
    sa.Column("severity", sa.Text, nullable=False),
    sa.Column("active", sa.Boolean, nullable=False),
    sa.Column("closed", sa.Boolean, nullable=False, server_default=sa.false()),
    sa.Column("first_seen", sa.BigInteger, nullable=False),
    sa.Column("last_seen", sa.BigInteger, nullable=False),
    sa.Column("cleared_at", sa.BigInteger),
    sa.Column("occurrences", sa.Integer, nullable=False, server_default="1"),
    sa.Column("incident_id", sa.BigInteger),
    sa.Column("held", sa.Text, nullable=False, server_default=""),  # why no incident (yet)
    sa.Column("message", sa.Text, nullable=False, server_default=""),
    sa.Column("evidence", sa.Text, nullable=False, server_default="{}"),
    sa.Index("alarms_live_key", "site", "device_id", "kind", unique=True,
             sqlite_where=sa.text("closed = 0"), postgresql_where=sa.text("closed = false")),
    sa.Index("alarms_by_active", "active", "last_seen"),
    sa.Index("alarms_by_incident", "incident_id"),
)

incidents = sa.Table(
    "incidents", metadata,
    sa.Column("id", BigId, primary_key=True, autoincrement=True),
    sa.Column("alarm_id", sa.BigInteger, nullable=False),
    sa.Column("unit", sa.Text, nullable=False),
    sa.Column("site", sa.Text, nullable=False),
    sa.Column("grid", sa.Text, nullable=False, server_default=""),
    sa.Column("kind", sa.Text, nullable=False),
    sa.Column("device_id", sa.Text, nullable=False),
    sa.Column("gateway_id", sa.Text, nullable=False, server_default=""),
    sa.Column("severity", sa.Text, nullable=False),
    sa.Column("title", sa.Text, nullable=False),
    sa.Column("state", sa.Text, nullable=False),
    sa.Column("occurrences", sa.Integer, nullable=False, server_default="1"),
    sa.Column("opened_at", sa.BigInteger, nullable=False),
    sa.Column("acked_at", sa.BigInteger),
    sa.Column("acked_by", sa.Text),
    sa.Column("arrived_at", sa.BigInteger),
    sa.Column("arrived_by", sa.Text),
    sa.Column("resolved_at", sa.BigInteger),
    sa.Column("resolved_by", sa.Text),
    sa.Column("closed_at", sa.BigInteger),
    sa.Column("closed_by", sa.Text),
    sa.Column("reopen_state", sa.Text),  # state before resolving, restored if the fault recurs
    sa.Column("stages_sent", sa.Integer, nullable=False, server_default="0"),
    sa.Column("updated_at", sa.BigInteger, nullable=False),
    sa.Index("incidents_by_state_unit", "state", "unit"),
    sa.Index("incidents_by_unit_opened", "unit", "opened_at"),
    sa.Index("incidents_by_opened", "opened_at"),
)

incident_history = sa.Table(
    "incident_history", metadata,
    sa.Column("id", BigId, primary_key=True, autoincrement=True),
    sa.Column("incident_id", sa.BigInteger, nullable=False),
    sa.Column("ts", sa.BigInteger, nullable=False),
    sa.Column("from_state", sa.Text),
    sa.Column("to_state", sa.Text, nullable=False),
    sa.Column("who", sa.Text, nullable=False),
    sa.Column("note", sa.Text, nullable=False, server_default=""),
    sa.Index("incident_history_by_incident", "incident_id", "id"),
)

silences = sa.Table(
    "silences", metadata,
    sa.Column("id", BigId, primary_key=True, autoincrement=True),
    sa.Column("site", sa.Text),  # NULL matches any
    sa.Column("device_id", sa.Text),
    sa.Column("kind", sa.Text),
    sa.Column("starts_at", sa.BigInteger, nullable=False),
    sa.Column("ends_at", sa.BigInteger, nullable=False),
    sa.Column("created_by", sa.Text, nullable=False),
    sa.Column("reason", sa.Text, nullable=False, server_default=""),
    sa.Column("created_at", sa.BigInteger, nullable=False),
    sa.Column("deleted_at", sa.BigInteger),  # kept for the audit trail, never matched
    sa.Column("deleted_by", sa.Text),
    sa.Index("silences_by_end", "ends_at"),
)


def _create(*tables: sa.Table) -> Callable[[sa.Connection], None]:
    def apply(conn: sa.Connection) -> None:
        metadata.create_all(conn, tables=list(tables))
    return apply


# Versions 15–19 are reserved for alarms and incidents; 19 is still free.
MIGRATIONS: list[tuple[int, str, Callable[[sa.Connection], None]]] = [
    (15, "alarms: alarm episodes with dedup key and occurrence count", _create(alarms)),
    (16, "alarms: incidents", _create(incidents)),
    (17, "alarms: incident history (who, when, notes)", _create(incident_history)),
    (18, "alarms: silences for maintenance windows", _create(silences)),
]
