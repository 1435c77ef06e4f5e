"""Tables of device commands and their audit trail, with their versioned migrations (80–84).

One row per command (`cmd_commands`, the latest status) and one row per thing that happened to
it (`cmd_audit`: issued, confirmed, sent, each status a gateway reported, expired here), so the
audit answers who, when, what and with what result, and is never rewritten.
"""

from __future__ import annotations

import sqlalchemy as sa

from collector.migrations import MigrationSet, creates

metadata = sa.MetaData()

commands = sa.Table(
    "cmd_commands", metadata,
    sa.Column("id", sa.Text, primary_key=True),
    sa.Column("key", sa.Text, nullable=False, unique=True),  # issuer-scoped idempotency key
    sa.Column("device_id", sa.Text, nullable=False),
    sa.Column("gateway_id", sa.Text, nullable=False),
    sa.Column("op", sa.Text, nullable=False),
    sa.Column("args", sa.Text, nullable=False),  # JSON
    sa.Column("issuer", sa.Text, nullable=False),
    sa.Column("issuer_role", sa.Text, nullable=False),
    sa.Column("issued", sa.BigInteger, nullable=False),
    sa.Column("expires", sa.BigInteger, nullable=False),
    sa.Column("dangerous", sa.Boolean, nullable=False),
    sa.Column("confirmed_by", sa.Text),
    sa.Column("confirmed_at", sa.BigInteger),
    # awaiting_confirmation | queued | sent | accepted | done | failed | expired | cancelled
    sa.Column("status", sa.Text, nullable=False),
    sa.Column("value", sa.Text),  # JSON: the value read back
    sa.Column("reason", sa.Text, nullable=False, server_default=""),
    sa.Column("message", sa.Text, nullable=False, server_default=""),
    sa.Column("sent_at", sa.BigInteger),
    sa.Column("sends", sa.Integer, nullable=False, server_default="0"),
    sa.Column("updated", sa.BigInteger, nullable=False),
    sa.Index("cmd_commands_by_device", "device_id", "issued"),
    sa.Index("cmd_commands_by_status", "status"),
)

audit = sa.Table(
    "cmd_audit", metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("command_id", sa.Text, nullable=False),
    sa.Column("at", sa.BigInteger, nullable=False),
    sa.Column("who", sa.Text, nullable=False),  # a token name, a gateway id, or "collector"
    sa.Column("what", sa.Text, nullable=False),  # issued | confirmed | sent | <status>
    sa.Column("detail", sa.Text, nullable=False, server_default="{}"),  # JSON
    sa.Index("cmd_audit_by_command", "command_id", "at"),
)

# Versions 80–84 are reserved for device commands.
MIGRATIONS = MigrationSet("commands", [
    (80, "commands: device commands and their audit trail", creates(metadata, commands, audit)),
])
