"""Hub-feed tables and their migrations (versions 40-49 belong to collector.ngsi).

- `ngsi_outbox`: entities waiting for the external context broker, one row per entity (a newer
  state replaces an unsent older one: the broker only keeps current state anyway).
- `ngsi_subscriptions` / `ngsi_deliveries`: webhook subscriptions and their durable queue.
- `history_1m` / `history_1h`: min/avg/max/count per device, quantity and bucket. On PostgreSQL
  `history_1m` is partitioned by day (RANGE on the bucket start), so retention drops partitions.
"""

from __future__ import annotations

import sqlalchemy as sa

from collector.migrations import MigrationSet, creates

metadata = sa.MetaData()
BigId = sa.BigInteger().with_variant(sa.Integer(), "sqlite")
DAY_MS = 86_400_000

ngsi_outbox = sa.Table(
    "ngsi_outbox", metadata,
    sa.Column("entity_id", sa.Text, primary_key=True),
    sa.Column("body", sa.Text, nullable=False),  # normalized entity, JSON
    sa.Column("enqueued", sa.BigInteger, nullable=False),
    sa.Column("attempts", sa.Integer, nullable=False, server_default="0"),
    sa.Column("next_try", sa.BigInteger, nullable=False),
    sa.Column("last_error", sa.Text, nullable=False, server_default=""),
    sa.Index("ngsi_outbox_due", "next_try"),
)

ngsi_subscriptions = sa.Table(
    "ngsi_subscriptions", metadata,
    sa.Column("id", sa.Text, primary_key=True),
    sa.Column("body", sa.Text, nullable=False),  # the NGSI-LD Subscription as registered
    sa.Column("secret", sa.Text, nullable=False),  # HMAC key, shown once at creation
    sa.Column("owner", sa.Text, nullable=False, server_default=""),
    sa.Column("created", sa.BigInteger, nullable=False),
    sa.Column("active", sa.Boolean, nullable=False, server_default=sa.true()),
)

ngsi_deliveries = sa.Table(
    "ngsi_deliveries", metadata,
    sa.Column("id", BigId, primary_key=True, autoincrement=True),
    sa.Column("subscription_id", sa.Text, nullable=False),
    sa.Column("body", sa.Text, nullable=False),  # the Notification, JSON
    sa.Column("created", sa.BigInteger, nullable=False),
    sa.Column("attempts", sa.Integer, nullable=False, server_default="0"),
    sa.Column("next_try", sa.BigInteger, nullable=False),
    sa.Column("last_error", sa.Text, nullable=False, server_default=""),
    sa.Index("ngsi_deliveries_due", "next_try"),
)


def _aggregate(name: str) -> sa.Table:
    return sa.Table(
        name, metadata,
        sa.Column("device_id", sa.Text, primary_key=True),
        sa.Column("quantity", sa.Text, primary_key=True),
        sa.Column("bucket", sa.BigInteger, primary_key=True),  # bucket start, epoch ms
        sa.Column("n", sa.BigInteger, nullable=False),
        sa.Column("vsum", sa.Float(precision=53), nullable=False),
        sa.Column("vmin", sa.Float(precision=53), nullable=False),
        sa.Column("vmax", sa.Float(precision=53), nullable=False),
    )


history_1m = _aggregate("history_1m")
history_1h = _aggregate("history_1h")

_PG_1M = """
CREATE TABLE history_1m (
    device_id TEXT NOT NULL, quantity TEXT NOT NULL, bucket BIGINT NOT NULL,
    n BIGINT NOT NULL, vsum DOUBLE PRECISION NOT NULL, vmin DOUBLE PRECISION NOT NULL,
    vmax DOUBLE PRECISION NOT NULL,
    PRIMARY KEY (device_id, quantity, bucket)
) PARTITION BY RANGE (bucket)
"""


def _create_history(conn: sa.Connection) -> None:
    if conn.dialect.name == "postgresql":
        conn.execute(sa.text(_PG_1M))
        conn.execute(sa.text("CREATE TABLE history_1m_default PARTITION OF history_1m DEFAULT"))
        metadata.create_all(conn, tables=[history_1h])
    else:
        metadata.create_all(conn, tables=[history_1m, history_1h])


MIGRATIONS = MigrationSet("hub_feeds", [
    (40, "hub feeds: context-broker outbox", creates(metadata, ngsi_outbox)),
    (41, "hub feeds: webhook subscriptions and deliveries",
     creates(metadata, ngsi_subscriptions, ngsi_deliveries)),
    (42, "hub feeds: 1-minute (day-partitioned on PostgreSQL) and 1-hour aggregates",
     _create_history),
])
