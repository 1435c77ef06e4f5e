"""Tables of agent updates and their versioned migrations (60–64).

Bundles are stored whole (a few MB at most: wheels of the agent, or of the agent and its
dependencies); download tokens only as SHA-256 digests.
"""

from __future__ import annotations

import sqlalchemy as sa

from collector.migrations import MigrationSet, creates

metadata = sa.MetaData()

bundles = sa.Table(
    "upd_bundles", metadata,
    sa.Column("version", sa.Text, primary_key=True),
    sa.Column("manifest", sa.Text, nullable=False),  # JSON, as signed (not verified here)
    sa.Column("sha256", sa.Text, nullable=False),  # of the whole bundle
    sa.Column("size", sa.Integer, nullable=False),
    sa.Column("body", sa.LargeBinary, nullable=False),
    sa.Column("uploaded", sa.BigInteger, nullable=False),
    sa.Column("uploaded_by", sa.Text, nullable=False, server_default=""),
)

rollouts = sa.Table(
    "upd_rollouts", metadata,
    sa.Column("rollout_id", sa.Text, primary_key=True),
    sa.Column("version", sa.Text, nullable=False),
    sa.Column("created", sa.BigInteger, nullable=False),
    sa.Column("created_by", sa.Text, nullable=False, server_default=""),
    sa.Column("canaries", sa.Integer, nullable=False),
    sa.Column("deadline_s", sa.Float, nullable=False),  # per gateway, from command to verdict
    sa.Column("state", sa.Text, nullable=False),  # canary | rolling | done | halted
)

targets = sa.Table(
    "upd_targets", metadata,
    sa.Column("rollout_id", sa.Text, primary_key=True),
    sa.Column("gateway_id", sa.Text, primary_key=True),
    sa.Column("wave", sa.Integer, nullable=False),  # 0 = canary, 1 = the rest
    sa.Column("status", sa.Text, nullable=False),  # pending|sent|applied|refused|failed|
    #                                                rolled_back|timeout|skipped
    sa.Column("token_hash", sa.Text, nullable=False, server_default=""),
    sa.Column("sent", sa.BigInteger),
    sa.Column("finished", sa.BigInteger),
    sa.Column("detail", sa.Text, nullable=False, server_default="{}"),
    sa.Index("upd_targets_by_gateway", "gateway_id"),
)


# Versions 60–64 are reserved for agent updates; 61–64 are still free.
MIGRATIONS = MigrationSet("updates", [
    (60, "updates: signed agent bundles, staged rollouts and per-gateway results",
     creates(metadata, bundles, rollouts, targets)),
])
