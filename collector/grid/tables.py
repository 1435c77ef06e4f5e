"""Tables of grid outlines, rosters and reported events; migrations 70–79.

Times are epoch milliseconds like the rest of the collector schema.
"""

from __future__ import annotations

import sqlalchemy as sa

from collector.alarms.tables import incidents
from collector.migrations import MigrationSet, add_missing_columns, creates

metadata = sa.MetaData()
BigId = sa.BigInteger().with_variant(sa.Integer(), "sqlite")

# One row per district, area or grid; `geometry` is the GeoJSON geometry as imported.
outlines = sa.Table(
    "grid_outlines", metadata,
    sa.Column("outline_id", sa.Text, primary_key=True),
    sa.Column("level", sa.Text, nullable=False),  # district | area | grid
    sa.Column("parent", sa.Text, nullable=False, server_default=""),
    sa.Column("name", sa.Text, nullable=False, server_default=""),
    sa.Column("departments", sa.Text, nullable=False, server_default="{}"),  # kind -> unit
    sa.Column("geometry", sa.Text, nullable=False),
    sa.Column("updated_at", sa.BigInteger, nullable=False),
    sa.Column("updated_by", sa.Text, nullable=False, server_default=""),
)

# Units defined through the API (over those of collector.toml): the unit as JSON, in the
# shape of an `[alarms.units.<id>]` table (members, escalation).
roster_units = sa.Table(
    "roster_units", metadata,
    sa.Column("unit_id", sa.Text, primary_key=True),
    sa.Column("body", sa.Text, nullable=False),
    sa.Column("updated_at", sa.BigInteger, nullable=False),
    sa.Column("updated_by", sa.Text, nullable=False, server_default=""),
)

# A named person on call for a unit from `starts_at` until `ends_at`; the latest started of
# the shifts covering a moment wins (a hand-over is a shift that starts now).
roster_shifts = sa.Table(
    "roster_shifts", metadata,
    sa.Column("id", BigId, primary_key=True, autoincrement=True),
    sa.Column("unit_id", sa.Text, nullable=False),
    sa.Column("member", sa.Text, nullable=False),
    sa.Column("starts_at", sa.BigInteger, nullable=False),
    sa.Column("ends_at", sa.BigInteger, nullable=False),
    sa.Column("note", sa.Text, nullable=False, server_default=""),
    sa.Column("handover_from", sa.Text),  # the member who handed over, for a hand-over
    sa.Column("created_at", sa.BigInteger, nullable=False),
    sa.Column("created_by", sa.Text, nullable=False, server_default=""),
    sa.Index("roster_shifts_by_unit_end", "unit_id", "ends_at"),
)

# A rotation: members take turns of `period_ms` each, starting with the first at `starts_at`.
roster_rotations = sa.Table(
    "roster_rotations", metadata,
    sa.Column("unit_id", sa.Text, primary_key=True),
    sa.Column("members", sa.Text, nullable=False),  # JSON list of member names
    sa.Column("starts_at", sa.BigInteger, nullable=False),
    sa.Column("period_ms", sa.BigInteger, nullable=False),
    sa.Column("updated_at", sa.BigInteger, nullable=False),
    sa.Column("updated_by", sa.Text, nullable=False, server_default=""),
)

# An event a person reported: where, what, the photo (type sniffed from its bytes), where it
# was placed and the incident it became.
reports = sa.Table(
    "grid_reports", metadata,
    sa.Column("id", BigId, primary_key=True, autoincrement=True),
    sa.Column("found_by", sa.Text, nullable=False),  # patrol | citizen
    sa.Column("reporter", sa.Text, nullable=False, server_default=""),
    sa.Column("contact", sa.Text, nullable=False, server_default=""),
    sa.Column("kind", sa.Text, nullable=False),
    sa.Column("severity", sa.Text, nullable=False),
    sa.Column("lat", sa.Float, nullable=False),
    sa.Column("lon", sa.Float, nullable=False),
    sa.Column("text", sa.Text, nullable=False, server_default=""),
    sa.Column("site", sa.Text, nullable=False, server_default=""),
    sa.Column("grid", sa.Text, nullable=False, server_default=""),
    sa.Column("area", sa.Text, nullable=False, server_default=""),
    sa.Column("district", sa.Text, nullable=False, server_default=""),
    sa.Column("photo_type", sa.Text),
    sa.Column("photo", sa.LargeBinary),
    sa.Column("incident_id", sa.BigInteger),
    sa.Column("created_at", sa.BigInteger, nullable=False),
    sa.Index("grid_reports_by_created", "created_at"),
)


MIGRATIONS = MigrationSet("grid", [
    (70, "grid: district, area and grid outlines with line departments",
     creates(metadata, outlines)),
    (71, "grid: incidents record who found them and why they went to their unit",
     add_missing_columns(incidents)),
    (72, "grid: units, shifts and on-call rotations by API",
     creates(metadata, roster_units, roster_shifts, roster_rotations)),
    (73, "grid: events reported by patrols and citizens, with photos",
     creates(metadata, reports)),
])
