"""The data hub schema (one definition for SQLite and PostgreSQL), as SQLAlchemy Core tables.

Times are epoch milliseconds (BIGINT) everywhere: portable, compact and fast to compare.
"""

from __future__ import annotations

import sqlalchemy as sa

metadata = sa.MetaData()

# An auto-incrementing 64-bit key that is also SQLite's rowid.
BigId = sa.BigInteger().with_variant(sa.Integer(), "sqlite")

# What the migration runner (collector.migrations) has applied, per owner of tables.
feature_migrations = sa.Table(
    "feature_migrations", metadata,
    sa.Column("feature", sa.Text, primary_key=True),
    sa.Column("version", sa.Integer, primary_key=True),
    sa.Column("name", sa.Text, nullable=False),
    sa.Column("applied_at", sa.BigInteger, nullable=False),
)

# Older collectors' record: one global version range (read once, to adopt its rows).
schema_migrations = sa.Table(
    "schema_migrations", metadata,
    sa.Column("version", sa.Integer, primary_key=True),
    sa.Column("name", sa.Text, nullable=False),
    sa.Column("applied_at", sa.BigInteger, nullable=False),
)

gateways = sa.Table(
    "gateways", metadata,
    sa.Column("gateway_id", sa.Text, primary_key=True),
    sa.Column("state", sa.Text, nullable=False, server_default="unknown"),
    sa.Column("state_reason", sa.Text, nullable=False, server_default=""),
    sa.Column("state_ts", sa.BigInteger),
    sa.Column("last_seen", sa.BigInteger),
    sa.Column("version", sa.Text, nullable=False, server_default=""),
    sa.Column("boot", sa.Text, nullable=False, server_default=""),
    sa.Column("last_seq", sa.BigInteger),
    sa.Column("health", sa.Text),  # the last health message, JSON
    sa.Column("health_ts", sa.BigInteger),
    # The gateway's clock as measured by the collector (collector.placement; migration 3)
    sa.Column("clock_offset_ms", sa.BigInteger),
    sa.Column("clock_measured_at", sa.BigInteger),
    sa.Column("clock_source", sa.Text, nullable=False, server_default=""),
    sa.Column("clock_wrong", sa.Boolean, nullable=False, server_default=sa.false()),
)

# `gateway_id` is the device's owner: only that gateway's readings, events and inventory
# entries for it are stored (registry assignment, else first claim; see Store.ingest).
devices = sa.Table(
    "devices", metadata,
    sa.Column("device_id", sa.Text, primary_key=True),
    sa.Column("gateway_id", sa.Text, nullable=False),
    sa.Column("kind", sa.Text, nullable=False, server_default="unknown"),
    sa.Column("profile", sa.Text, nullable=False, server_default=""),
    sa.Column("first_seen", sa.BigInteger),
    sa.Column("last_seen", sa.BigInteger),
    # a gateway's devices: counted against its limit when it reports new ones
    sa.Index("devices_by_gateway", "gateway_id"),
)

# One row per accepted MQTT message: the (gateway, seq) key makes re-delivery harmless.
batches = sa.Table(
    "batches", metadata,
    sa.Column("gateway_id", sa.Text, primary_key=True),
    sa.Column("seq", sa.BigInteger, primary_key=True),
    sa.Column("channel", sa.Text, nullable=False),
    sa.Column("sent", sa.BigInteger, nullable=False),
    sa.Column("received", sa.BigInteger, nullable=False),
    sa.Column("n", sa.Integer, nullable=False),
    sa.Column("replay", sa.Boolean, nullable=False),
)

readings = sa.Table(
    "readings", metadata,
    sa.Column("device_id", sa.Text, nullable=False),
    sa.Column("quantity", sa.Text, nullable=False),
    sa.Column("ts", sa.BigInteger, nullable=False),
    sa.Column("value", sa.Float(precision=53)),
    sa.Column("vtext", sa.Text),
    sa.Column("quality", sa.Text, nullable=False),
    sa.Column("gateway_id", sa.Text, nullable=False),
    sa.Column("seq", sa.BigInteger, nullable=False),
    sa.Column("replay", sa.Boolean, nullable=False),
    sa.Index("readings_by_device", "device_id", "quantity", "ts"),
)

latest = sa.Table(
    "latest", metadata,
    sa.Column("device_id", sa.Text, primary_key=True),
    sa.Column("quantity", sa.Text, primary_key=True),
    sa.Column("ts", sa.BigInteger, nullable=False),
    sa.Column("value", sa.Float(precision=53)),
    sa.Column("vtext", sa.Text),
    sa.Column("quality", sa.Text, nullable=False),
    sa.Column("gateway_id", sa.Text, nullable=False),
)

events = sa.Table(
    "events", metadata,
    sa.Column("id", BigId, primary_key=True, autoincrement=True),
    sa.Column("device_id", sa.Text, nullable=False),
    sa.Column("gateway_id", sa.Text, nullable=False),
    sa.Column("seq", sa.BigInteger, nullable=False),
    sa.Column("ts", sa.BigInteger, nullable=False),
    sa.Column("kind", sa.Text, nullable=False),
    sa.Column("action", sa.Text, nullable=False),
    sa.Column("severity", sa.Text, nullable=False),
    sa.Column("code", sa.Integer),
    sa.Column("evidence", sa.Text, nullable=False, server_default="{}"),
    sa.Column("message", sa.Text, nullable=False, server_default=""),
    sa.Column("received", sa.BigInteger, nullable=False),
    sa.Index("events_by_device", "device_id", "ts"),
    sa.Index("events_by_kind", "kind", "ts"),
)

# Faults currently raised, per device and kind (the raise/clear pairs folded).
active_faults = sa.Table(
    "active_faults", metadata,
    sa.Column("device_id", sa.Text, primary_key=True),
    sa.Column("kind", sa.Text, primary_key=True),
    sa.Column("since", sa.BigInteger, nullable=False),
    sa.Column("severity", sa.Text, nullable=False),
    sa.Column("code", sa.Integer),
    sa.Column("evidence", sa.Text, nullable=False, server_default="{}"),
)

# Messages the store refused on their values (a poison message): kept as received, never
# retried, so that one bad envelope cannot stall every gateway's data.
quarantine = sa.Table(
    "quarantine", metadata,
    sa.Column("id", BigId, primary_key=True, autoincrement=True),
    sa.Column("gateway_id", sa.Text, nullable=False),
    sa.Column("channel", sa.Text, nullable=False),
    sa.Column("topic", sa.Text, nullable=False, server_default=""),
    sa.Column("seq", sa.Text),  # as text: what the store refused may not fit a BIGINT
    sa.Column("payload", sa.LargeBinary, nullable=False),  # the message as received
    sa.Column("error", sa.Text, nullable=False),
    sa.Column("received", sa.BigInteger, nullable=False),
    sa.Column("quarantined_at", sa.BigInteger, nullable=False),
    sa.Index("quarantine_by_time", "quarantined_at"),
)
