"""Tables of grid outlines, rosters and reported events; migrations 70–79.

Times are epoch milliseconds like the rest of the collector schema.
"""

from __future__ import annotations

from collections.abc import Callable

import sqlalchemy as sa

from collector.alarms.tables import incidents

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


def _create(*tables: sa.Table) -> Callable[[sa.Connection], None]:
    def apply(conn: sa.Connection) -> None:
        metadata.create_all(conn, tables=list(tables))
    return apply


def _add_columns(table: sa.Table, names: tuple[str, ...]) -> Callable[[sa.Connection], None]:
    """Add columns a table of another feature gained (a fresh database has them all)."""
    def apply(conn: sa.Connection) -> None:
        have = {c["name"] for c in sa.inspect(conn).get_columns(table.name)}
        for name in names:
            if name not in have:
                ddl = sa.schema.CreateColumn(table.c[name]).compile(dialect=conn.dialect)
                conn.execute(sa.text(f"ALTER TABLE {table.name} ADD COLUMN {ddl}"))
    return apply


MIGRATIONS: list[tuple[int, str, Callable[[sa.Connection], None]]] = [
    (70, "grid: district, area and grid outlines with line departments", _create(outlines)),
    (71, "grid: incidents record who found them and why they went to their unit",
     _add_columns(incidents, ("found_by", "route_reason", "area", "district"))),
]
