"""Tables of alarms, incidents, their history, escalations and silences; migrations 15–19.

Times are epoch milliseconds like the rest of the collector schema.
"""

from __future__ import annotations

import sqlalchemy as sa

from collector.migrations import MigrationSet, add_missing_columns, creates

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
    # Added in 19: the named person, since when the unit has it (its escalation clock), when
    # the device said the condition cleared, and how many steps were forced over a condition.
    sa.Column("assignee", sa.Text),
    sa.Column("assigned_at", sa.BigInteger),
    sa.Column("unit_since", sa.BigInteger),
    sa.Column("device_cleared_at", sa.BigInteger),
    sa.Column("overrides", sa.Integer, nullable=False, server_default="0"),
    # Added by the grid migrations (71): how the incident was found (device, patrol,
    # citizen), why it went to its unit, and the area and district it lies in.
    sa.Column("found_by", sa.Text, nullable=False, server_default="device"),
    sa.Column("route_reason", sa.Text, nullable=False, server_default=""),
    sa.Column("area", sa.Text, nullable=False, server_default=""),
    sa.Column("district", sa.Text, nullable=False, server_default=""),
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
    # Added in 19: what happened (opened, transition, assigned, escalation, ...) and, for a step
    # forced while the device still reported the condition, why and over what.
    sa.Column("event", sa.Text, nullable=False, server_default=""),
    sa.Column("override_reason", sa.Text),
    sa.Column("conditions", sa.Text),  # JSON list, with override_reason
    sa.Index("incident_history_by_incident", "incident_id", "id"),
)

# One row per escalation stage fired, per unit (a re-assigned incident runs the new unit's
# chain): the dedup of stages and what the crew card shows as "escalation fired".
incident_escalations = sa.Table(
    "incident_escalations", metadata,
    sa.Column("id", BigId, primary_key=True, autoincrement=True),
    sa.Column("incident_id", sa.BigInteger, nullable=False),
    sa.Column("unit", sa.Text, nullable=False),
    sa.Column("stage", sa.Integer, nullable=False),
    sa.Column("condition", sa.Text, nullable=False),
    sa.Column("audience", sa.Text, nullable=False),
    sa.Column("channels", sa.Text, nullable=False),  # JSON list
    sa.Column("fired_at", sa.BigInteger, nullable=False),
    sa.UniqueConstraint("incident_id", "unit", "stage", name="incident_escalations_once"),
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
    # Added in 19: the creator's role and unit scope, and whether it may hold life-safety kinds.
    sa.Column("role", sa.Text, nullable=False, server_default="ops"),
    sa.Column("unit", sa.Text, nullable=False, server_default=""),
    sa.Column("life_safety", sa.Boolean, nullable=False, server_default=sa.false()),
    sa.Index("silences_by_end", "ends_at"),
)


def _v19(conn: sa.Connection) -> None:
    add_missing_columns(incidents, incident_history, silences)(conn)
    metadata.create_all(conn, tables=[incident_escalations])


# Versions 15–19 are reserved for alarms and incidents; all are taken now.
MIGRATIONS = MigrationSet("alarms", [
    (15, "alarms: alarm episodes with dedup key and occurrence count", creates(metadata, alarms)),
    (16, "alarms: incidents", creates(metadata, incidents)),
    (17, "alarms: incident history (who, when, notes)", creates(metadata, incident_history)),
    (18, "alarms: silences for maintenance windows", creates(metadata, silences)),
    (19, "alarms: assignee, device-cleared flag, overrides, escalations fired, scoped silences",
     _v19),
])
