"""Tables of pollution sources, truck fixes, exceedances and owner tasks; migrations 70–79.

Times are epoch milliseconds like the rest of the collector schema.
"""

from __future__ import annotations

import sqlalchemy as sa

from collector.migrations import MigrationSet, creates

metadata = sa.MetaData()
BigId = sa.BigInteger().with_variant(sa.Integer(), "sqlite")
Double = sa.Float(precision=53)

# The registry: one row per source. `outline` is a JSON list of [lon, lat] (empty: a point);
# `devices` a JSON list of the monitor device ids installed there (a truck: its tracker).
pollution_sources = sa.Table(
    "pollution_sources", metadata,
    sa.Column("id", sa.Text, primary_key=True),
    sa.Column("name", sa.Text, nullable=False, server_default=""),
    sa.Column("kind", sa.Text, nullable=False),
    sa.Column("district", sa.Text, nullable=False, server_default=""),
    sa.Column("lat", Double, nullable=False),
    sa.Column("lon", Double, nullable=False),
    sa.Column("outline", sa.Text, nullable=False, server_default="[]"),
    sa.Column("company", sa.Text, nullable=False, server_default=""),
    sa.Column("contact_name", sa.Text, nullable=False, server_default=""),
    sa.Column("contact_phone", sa.Text, nullable=False, server_default=""),
    sa.Column("contact_email", sa.Text, nullable=False, server_default=""),
    sa.Column("channel", sa.Text, nullable=False, server_default=""),
    sa.Column("devices", sa.Text, nullable=False, server_default="[]"),
    sa.Column("plate", sa.Text, nullable=False, server_default=""),
    sa.Column("updated", sa.BigInteger, nullable=False),
    sa.Index("pollution_sources_by_kind", "kind", "district"),
)

# Positions of moving sources (muck trucks), kept `truck_retention` long.
truck_fixes = sa.Table(
    "truck_fixes", metadata,
    sa.Column("device_id", sa.Text, nullable=False),
    sa.Column("ts", sa.BigInteger, nullable=False),
    sa.Column("lat", Double, nullable=False),
    sa.Column("lon", Double, nullable=False),
    sa.Column("speed", Double),
    sa.PrimaryKeyConstraint("device_id", "ts"),
    sa.Index("truck_fixes_by_ts", "ts"),
)

# An air-quality exceedance at a point and the ranked candidates (JSON, with reasons).
exceedances = sa.Table(
    "source_exceedances", metadata,
    sa.Column("id", BigId, primary_key=True, autoincrement=True),
    sa.Column("origin", sa.Text, nullable=False),  # "alarm:<site>:<rule>" | "manual:<who>"
    sa.Column("site_id", sa.Text, nullable=False, server_default=""),
    sa.Column("district", sa.Text, nullable=False, server_default=""),
    sa.Column("lat", Double, nullable=False),
    sa.Column("lon", Double, nullable=False),
    sa.Column("ts", sa.BigInteger, nullable=False),  # observation time of the exceedance
    sa.Column("quantity", sa.Text, nullable=False, server_default=""),
    sa.Column("value", Double),
    sa.Column("wind", sa.Text, nullable=False, server_default="{}"),
    sa.Column("candidates", sa.Text, nullable=False, server_default="[]"),
    sa.Column("recovered_at", sa.BigInteger),
    sa.Column("created", sa.BigInteger, nullable=False),
    sa.Index("source_exceedances_by_site", "site_id", "recovered_at"),
)

# A task for one source's responsible person: pushed → acknowledged → reported → closed.
source_tasks = sa.Table(
    "source_tasks", metadata,
    sa.Column("id", BigId, primary_key=True, autoincrement=True),
    sa.Column("exceedance_id", sa.BigInteger, nullable=False),
    sa.Column("source_id", sa.Text, nullable=False),
    sa.Column("company", sa.Text, nullable=False, server_default=""),
    sa.Column("district", sa.Text, nullable=False, server_default=""),
    sa.Column("rank", sa.Integer, nullable=False),
    sa.Column("score", Double, nullable=False),
    sa.Column("state", sa.Text, nullable=False),
    sa.Column("key_hash", sa.Text, nullable=False),  # sha256 of the owner's link key
    sa.Column("pushed_at", sa.BigInteger, nullable=False),
    sa.Column("acked_at", sa.BigInteger),
    sa.Column("reported_at", sa.BigInteger),
    sa.Column("closed_at", sa.BigInteger),
    sa.Column("closed_reason", sa.Text, nullable=False, server_default=""),
    sa.Column("report_text", sa.Text, nullable=False, server_default=""),
    sa.Column("photo_type", sa.Text, nullable=False, server_default=""),
    sa.Column("photo", sa.LargeBinary),
    sa.Column("verified_by", sa.Text, nullable=False, server_default=""),
    sa.Column("escalations", sa.Text, nullable=False, server_default="[]"),  # fired stages
    sa.Index("source_tasks_by_state", "state"),
    sa.Index("source_tasks_by_exceedance", "exceedance_id"),
)


# Versions 70–79 are reserved for pollution sources; 71–79 are still free.
MIGRATIONS = MigrationSet("sources", [
    (70, "sources: registry, truck fixes, exceedances and owner tasks",
     creates(metadata, pollution_sources, truck_fixes, exceedances, source_tasks)),
])
