"""Tables of the gateway registry and API tokens, and their versioned migrations (50–59).

Credentials are never stored in clear: MQTT passwords as mosquitto PBKDF2-SHA512 (`$7$`) hashes,
so the broker's password file can be rebuilt from the database; API and provisioning tokens as
SHA-256 hex digests of random 32-byte tokens.
"""

from __future__ import annotations

from collections.abc import Callable

import sqlalchemy as sa

metadata = sa.MetaData()
BigId = sa.BigInteger().with_variant(sa.Integer(), "sqlite")

sites = sa.Table(
    "reg_sites", metadata,
    sa.Column("site_id", sa.Text, primary_key=True),
    sa.Column("name", sa.Text, nullable=False, server_default=""),
    sa.Column("lat", sa.Float),
    sa.Column("lon", sa.Float),
    sa.Column("district", sa.Text, nullable=False, server_default=""),  # grid / district
    sa.Column("responsible_unit", sa.Text, nullable=False, server_default=""),
    sa.Column("created", sa.BigInteger, nullable=False),
)

gateways = sa.Table(
    "reg_gateways", metadata,
    sa.Column("gateway_id", sa.Text, primary_key=True),
    sa.Column("site_id", sa.Text, nullable=False),
    sa.Column("mqtt_hash", sa.Text, nullable=False),  # mosquitto $7$ PBKDF2-SHA512
    sa.Column("created", sa.BigInteger, nullable=False),
    sa.Column("created_by", sa.Text, nullable=False, server_default=""),
    sa.Column("revoked", sa.Boolean, nullable=False, server_default=sa.false()),
    sa.Column("config_version", sa.Integer, nullable=False, server_default="0"),
    sa.Column("config_toml", sa.Text, nullable=False, server_default=""),
    sa.Column("commissioned_at", sa.BigInteger),
    sa.Column("commissioning", sa.Text, nullable=False, server_default="{}"),  # last results
    sa.Index("reg_gateways_by_site", "site_id"),
)

devices = sa.Table(
    "reg_devices", metadata,
    sa.Column("gateway_id", sa.Text, primary_key=True),
    sa.Column("device_id", sa.Text, primary_key=True),
    sa.Column("bus", sa.Text, nullable=False, server_default=""),
    sa.Column("profile", sa.Text, nullable=False, server_default=""),
    sa.Column("unit", sa.Integer),
)

provision_tokens = sa.Table(
    "reg_provision_tokens", metadata,
    sa.Column("token_hash", sa.Text, primary_key=True),
    sa.Column("site_id", sa.Text, nullable=False),
    sa.Column("created", sa.BigInteger, nullable=False),
    sa.Column("created_by", sa.Text, nullable=False, server_default=""),
    sa.Column("expires", sa.BigInteger, nullable=False),
    sa.Column("used_at", sa.BigInteger),
    sa.Column("gateway_id", sa.Text),  # the gateway it was exchanged for
)

commissioning = sa.Table(
    "reg_commissioning", metadata,
    sa.Column("id", BigId, primary_key=True, autoincrement=True),
    sa.Column("gateway_id", sa.Text, nullable=False),
    sa.Column("ts", sa.BigInteger, nullable=False),  # when the checks ran (technician's clock)
    sa.Column("received", sa.BigInteger, nullable=False),
    sa.Column("technician", sa.Text, nullable=False, server_default=""),
    sa.Column("passed", sa.Boolean, nullable=False),
    sa.Column("results", sa.Text, nullable=False),  # JSON list of checks
    sa.Column("run_id", sa.Text, nullable=False),  # idempotent re-upload from the offline queue
    sa.UniqueConstraint("gateway_id", "run_id", name="reg_commissioning_run"),
)

config_pushes = sa.Table(
    "reg_config_pushes", metadata,
    sa.Column("push_id", sa.Text, primary_key=True),
    sa.Column("gateway_id", sa.Text, nullable=False),
    sa.Column("version", sa.Integer, nullable=False),
    sa.Column("sent", sa.BigInteger, nullable=False),
    sa.Column("status", sa.Text, nullable=False),  # sent | applied | refused | rolled_back
    sa.Column("detail", sa.Text, nullable=False, server_default="{}"),
    sa.Column("config_toml", sa.Text, nullable=False),
)

api_tokens = sa.Table(
    "api_tokens", metadata,
    sa.Column("name", sa.Text, primary_key=True),
    sa.Column("role", sa.Text, nullable=False),
    sa.Column("token_hash", sa.Text, nullable=False, unique=True),
    sa.Column("created", sa.BigInteger, nullable=False),
    sa.Column("revoked", sa.Boolean, nullable=False, server_default=sa.false()),
    sa.Column("rate_per_min", sa.Integer),  # None: no limit
    sa.Column("unit", sa.Text),  # role crew: the unit whose incidents it sees
    sa.Column("member", sa.Text),  # role crew: the member's name (history, assignment)
)

# One-time crew sign-in links: the code is shown once (URL and QR) and stored as its SHA-256.
signin_codes = sa.Table(
    "signin_codes", metadata,
    sa.Column("code_hash", sa.Text, primary_key=True),
    sa.Column("unit", sa.Text, nullable=False),
    sa.Column("member", sa.Text, nullable=False),
    sa.Column("token_name", sa.Text, nullable=False),
    sa.Column("created", sa.BigInteger, nullable=False),
    sa.Column("created_by", sa.Text, nullable=False, server_default=""),
    sa.Column("expires", sa.BigInteger, nullable=False),
    sa.Column("used_at", sa.BigInteger),
)


def _create(*tables: sa.Table) -> Callable[[sa.Connection], None]:
    def apply(conn: sa.Connection) -> None:
        metadata.create_all(conn, tables=list(tables))
    return apply


def _add_columns(table: sa.Table, *names: str) -> Callable[[sa.Connection], None]:
    """Add columns an older version of `table` lacks (a fresh database already has them)."""
    def apply(conn: sa.Connection) -> None:
        have = {c["name"] for c in sa.inspect(conn).get_columns(table.name)}
        for name in names:
            if name not in have:
                col = table.c[name]
                ddl = col.type.compile(dialect=conn.dialect)
                conn.execute(sa.text(f"ALTER TABLE {table.name} ADD COLUMN {name} {ddl}"))
    return apply


def _crew_tokens(conn: sa.Connection) -> None:
    _add_columns(api_tokens, "unit", "member")(conn)
    metadata.create_all(conn, tables=[signin_codes])


# Versions 50–59 are reserved for the registry and API security; 54–59 are still free.
MIGRATIONS: list[tuple[int, str, Callable[[sa.Connection], None]]] = [
    (50, "registry: sites, gateways, their devices, provisioning tokens",
     _create(sites, gateways, devices, provision_tokens)),
    (51, "registry: commissioning results and remote config pushes",
     _create(commissioning, config_pushes)),
    (52, "security: API tokens with roles", _create(api_tokens)),
    (53, "security: crew tokens scoped to a unit and member, one-time sign-in links",
     _crew_tokens),
]
