"""The ``env_alarms`` table and its migrations (versions 20–29 are reserved for environment).

Self-contained on purpose: the general alarm engine (collector/alarms) can take these alarms
through EnvironmentMonitor's ``on_alarm`` callback.
"""

from __future__ import annotations

import sqlalchemy as sa

from collector.migrations import MigrationSet, creates

metadata = sa.MetaData()
BigId = sa.BigInteger().with_variant(sa.Integer(), "sqlite")

# One row per alarm episode: raised, then cleared. At most one active row per (site, rule).
env_alarms = sa.Table(
    "env_alarms", metadata,
    sa.Column("id", BigId, primary_key=True, autoincrement=True),
    sa.Column("site_id", sa.Text, nullable=False),
    sa.Column("rule", sa.Text, nullable=False),  # nox_limit | pm10_district
    sa.Column("quantity", sa.Text, nullable=False),
    sa.Column("active", sa.Boolean, nullable=False),
    sa.Column("raised_at", sa.BigInteger, nullable=False),  # observation time, epoch ms
    sa.Column("cleared_at", sa.BigInteger),
    sa.Column("value", sa.Float(precision=53)),  # the value that raised it
    sa.Column("threshold", sa.Float(precision=53)),
    sa.Column("message", sa.Text, nullable=False, server_default=""),
    sa.Column("updated", sa.BigInteger, nullable=False),  # collector wall clock
    sa.Index("env_alarms_by_site", "site_id", "active"),
)


MIGRATIONS = MigrationSet("environment", [
    (20, "environment: threshold alarms of sites (env_alarms)", creates(metadata, env_alarms)),
])
