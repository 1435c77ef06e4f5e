"""Tables of the gateway registry and their versioned migrations (50–51, 54).

Credentials are never stored in clear: MQTT passwords as mosquitto PBKDF2-SHA512 (`$7$`) hashes,
so the broker's password file can be rebuilt from the database; API and provisioning tokens as
SHA-256 hex digests of random 32-byte tokens.
"""

from __future__ import annotations

import sqlalchemy as sa

from collector.migrations import MigrationSet, creates

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

config_rollouts = sa.Table(
    "reg_config_rollouts", metadata,
    sa.Column("rollout_id", sa.Text, primary_key=True),
    sa.Column("created", sa.BigInteger, nullable=False),
    sa.Column("created_by", sa.Text, nullable=False, server_default=""),
    sa.Column("kind", sa.Text, nullable=False),  # push | revert
    sa.Column("reverts", sa.Text),  # the rollout a revert undoes
    sa.Column("selector", sa.Text, nullable=False),  # JSON: gateways | group | site | all
    sa.Column("mode", sa.Text, nullable=False),  # config (whole file) | patch (merged)
    sa.Column("body", sa.Text, nullable=False),  # the config or patch as given
    sa.Column("canaries", sa.Integer, nullable=False),
    sa.Column("batch", sa.Integer, nullable=False),  # rest-wave gateways in flight at once
    sa.Column("max_failures", sa.Integer, nullable=False),  # in the rest wave, before a halt
    sa.Column("deadline_s", sa.Float, nullable=False),  # per gateway, command to confirmed
    sa.Column("device_grace_s", sa.Float),  # None: the gateway's own
    sa.Column("state", sa.Text, nullable=False),  # canary | rolling | done | halted
)

config_targets = sa.Table(
    "reg_config_targets", metadata,
    sa.Column("rollout_id", sa.Text, primary_key=True),
    sa.Column("gateway_id", sa.Text, primary_key=True),
    sa.Column("wave", sa.Integer, nullable=False),  # 0 = canary, 1 = the rest
    sa.Column("status", sa.Text, nullable=False),  # pending|sent|applied|confirmed|refused|
    #                                                rolled_back|failed|timeout|skipped
    sa.Column("push_id", sa.Text, nullable=False, server_default=""),
    sa.Column("version", sa.Integer),
    sa.Column("config_toml", sa.Text, nullable=False),  # what this gateway is sent
    sa.Column("previous_toml", sa.Text, nullable=False, server_default=""),  # when sent
    sa.Column("previous_version", sa.Integer),
    sa.Column("sent", sa.BigInteger),
    sa.Column("finished", sa.BigInteger),
    sa.Column("detail", sa.Text, nullable=False, server_default="{}"),
    sa.Index("reg_config_targets_by_push", "push_id"),
)

# Versions 50–51 and 65 belong to the registry (52–53, the API tokens, to
# collector.auth_tables). Steps added after the global runner's range (1–64) take versions
# above it, so a legacy database's versions are never mistaken for them.
MIGRATIONS = MigrationSet("registry", [
    (50, "registry: sites, gateways, their devices, provisioning tokens",
     creates(metadata, sites, gateways, devices, provision_tokens)),
    (51, "registry: commissioning results and remote config pushes",
     creates(metadata, commissioning, config_pushes)),
    (65, "registry: staged config rollouts and their per-gateway results",
     creates(metadata, config_rollouts, config_targets)),
])
