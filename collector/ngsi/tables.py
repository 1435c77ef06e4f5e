"""Hub-feed tables and their migrations (versions 40-49 belong to collector.ngsi).

- `ngsi_outbox`: entities waiting for the external context broker, one row per entity (a newer
  state replaces an unsent older one: the broker only keeps current state anyway).
- `ngsi_subscriptions` / `ngsi_deliveries`: webhook subscriptions and their durable queue.
- `history_1m` / `history_1h`: min/avg/max/count per device, quantity and bucket. On PostgreSQL
  `history_1m` is partitioned by day (RANGE on the bucket start), so retention drops partitions.
- `history_rollup`: up to which hour `history_1h` is complete (collector.ngsi.history).
"""

from __future__ import annotations

import sqlalchemy as sa

from collector.clock import now_ms
from collector.migrations import MigrationSet, creates

metadata = sa.MetaData()
BigId = sa.BigInteger().with_variant(sa.Integer(), "sqlite")
DAY_MS = 86_400_000
HOUR_MS = 3_600_000

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

# How far history_1h is complete (collector.ngsi.history): every hour before `done_until` is
# in history_1h, and later hours only in history_1m until they are rolled up. One row.
history_rollup = sa.Table(
    "history_rollup", metadata,
    sa.Column("name", sa.Text, primary_key=True),
    sa.Column("done_until", sa.BigInteger, nullable=False),  # an hour start, epoch ms
)
ROLLUP_NAME = "history_1h"
# SQLite keeps history_1h inside every ingest transaction (one writer, no roll-up): all
# hours are "done", whenever they are.
ROLLUP_NEVER = 2**62

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


def _create_rollup(conn: sa.Connection) -> None:
    """The roll-up mark, and on PostgreSQL the index the roll-up reads an hour's minutes by.

    On PostgreSQL hours from the current one on are rolled up from history_1m after they end;
    every hour before it is complete in history_1h already (the ingest kept both before).
    """
    metadata.create_all(conn, tables=[history_rollup])
    if conn.dialect.name == "postgresql":
        conn.execute(sa.text("CREATE INDEX IF NOT EXISTS history_1m_by_bucket"
                             " ON history_1m (bucket)"))
        now = now_ms()
        done = now - now % HOUR_MS
    else:
        done = ROLLUP_NEVER
    conn.execute(sa.insert(history_rollup).values(name=ROLLUP_NAME, done_until=done))


MIGRATIONS = MigrationSet("hub_feeds", [
    (40, "hub feeds: context-broker outbox", creates(metadata, ngsi_outbox)),
    (41, "hub feeds: webhook subscriptions and deliveries",
     creates(metadata, ngsi_subscriptions, ngsi_deliveries)),
    (42, "hub feeds: 1-minute (day-partitioned on PostgreSQL) and 1-hour aggregates",
     _create_history),
    (43, "hub feeds: history_1h rolled up from history_1m after each hour on PostgreSQL",
     _create_rollup),
])
