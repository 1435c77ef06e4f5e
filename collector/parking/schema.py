"""Parking tables and their migrations (versions 30-39 belong to this module).

`parking_zones` and `parking_spots` hold the live state, written on transitions (not scanned to
answer queries: the API answers from the in-memory model); `parking_sensor_alerts` is the
maintenance unit's list of sensor health alerts, one row per raise, closed by its clear.
"""

from __future__ import annotations

import sqlalchemy as sa

from collector.migrations import MigrationSet, add_missing_columns, creates, migrate

metadata = sa.MetaData()
BigId = sa.BigInteger().with_variant(sa.Integer(), "sqlite")

parking_zones = sa.Table(
    "parking_zones", metadata,
    sa.Column("zone_id", sa.Text, primary_key=True),
    sa.Column("name", sa.Text, nullable=False, server_default=""),
    sa.Column("kind", sa.Text, nullable=False, server_default="onStreet"),
    sa.Column("lat", sa.Float(precision=53), nullable=False),
    sa.Column("lon", sa.Float(precision=53), nullable=False),
    sa.Column("total", sa.Integer, nullable=False),
    sa.Column("available", sa.Integer, nullable=False),
    sa.Column("occupied", sa.Integer, nullable=False),
    sa.Column("unknown", sa.Integer, nullable=False),
    sa.Column("closed", sa.Integer, nullable=False),
    sa.Column("updated", sa.BigInteger),
    sa.Column("district", sa.Text, nullable=False, server_default=""),
    sa.Column("outline", sa.Text, nullable=False, server_default=""),  # JSON [[lon, lat], ...]
)

# A zone's counts sampled every `history_every` (and on start): occupancy by hour and day.
parking_zone_samples = sa.Table(
    "parking_zone_samples", metadata,
    sa.Column("zone_id", sa.Text, primary_key=True),
    sa.Column("ts", sa.BigInteger, primary_key=True),
    sa.Column("total", sa.Integer, nullable=False),
    sa.Column("available", sa.Integer, nullable=False),
    sa.Column("occupied", sa.Integer, nullable=False),
    sa.Column("unknown", sa.Integer, nullable=False),
    sa.Column("closed", sa.Integer, nullable=False),
)

parking_spots = sa.Table(
    "parking_spots", metadata,
    sa.Column("spot_id", sa.Text, primary_key=True),  # the sensor's device id
    sa.Column("zone_id", sa.Text),  # NULL: a sensor reporting but mapped to no zone
    sa.Column("status", sa.Text, nullable=False),  # free, occupied, closed, unknown
    sa.Column("occupied", sa.Boolean),  # last reported occupancy, kept while silent
    sa.Column("since", sa.BigInteger),  # when the current status began
    sa.Column("last_ts", sa.BigInteger),  # observation time of the last report
    sa.Column("battery_mv", sa.Integer),
    sa.Column("rssi", sa.Integer),
    sa.Column("lat", sa.Float(precision=53)),  # the bay's own position, when configured
    sa.Column("lon", sa.Float(precision=53)),
    sa.Index("parking_spots_by_zone", "zone_id", "spot_id"),
)

parking_sensor_alerts = sa.Table(
    "parking_sensor_alerts", metadata,
    sa.Column("id", BigId, primary_key=True, autoincrement=True),
    sa.Column("spot_id", sa.Text, nullable=False),
    sa.Column("zone_id", sa.Text),
    sa.Column("kind", sa.Text, nullable=False),  # low_battery, silent, flapping, magnetic_jump
    sa.Column("severity", sa.Text, nullable=False),
    sa.Column("raised", sa.BigInteger, nullable=False),
    sa.Column("cleared", sa.BigInteger),  # NULL while active
    sa.Column("value", sa.Float(precision=53)),
    sa.Column("message", sa.Text, nullable=False, server_default=""),
    sa.Index("parking_alerts_active", "cleared", "kind"),
    sa.Index("parking_alerts_by_spot", "spot_id", "kind", "cleared"),
)

MIGRATIONS = MigrationSet("parking", [
    (30, "parking: zones, spots, sensor alerts",
     creates(metadata, parking_zones, parking_spots, parking_sensor_alerts)),
    (31, "parking: bay positions, zone district and outline",
     add_missing_columns(parking_spots, parking_zones)),
    (32, "parking: zone occupancy samples", creates(metadata, parking_zone_samples)),
])


def apply_migrations(engine: sa.Engine) -> list[tuple[str, int]]:
    """Apply the parking steps not yet applied (the collector's runner, for parking alone)."""
    return migrate(engine, [MIGRATIONS])
