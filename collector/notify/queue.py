"""The durable notification queue: every push and every delivery attempt is a database row."""

from __future__ import annotations

import builtins
import logging
import threading
from collections.abc import Callable, Sequence
from dataclasses import asdict
from typing import TYPE_CHECKING, Any

import sqlalchemy as sa

from collector import schema
from collector.clock import now_ms
from collector.migrations import MigrationSet, creates
from collector.notify.model import Notice
from collector.notify.policy import DIGEST_KEY_PREFIX, Due, compose_digest
from collector.notify.redact import redact
from collector.notify.render import notice_from_json, notice_to_json

if TYPE_CHECKING:  # no runtime import: collector.migrations imports this module
    from collector.store import Store

log = logging.getLogger(__name__)

STATES = ("queued", "sent", "failed", "expired", "digested")

# Own MetaData: importing this module never changes what collector.schema.metadata creates.
metadata = sa.MetaData()

notifications = sa.Table(
    "notifications", metadata,
    sa.Column("id", schema.BigId, primary_key=True, autoincrement=True),
    sa.Column("channel", sa.Text, nullable=False),
    sa.Column("key", sa.Text, nullable=False),
    sa.Column("kind", sa.Text, nullable=False, server_default="notice"),  # notice | digest
    sa.Column("severity", sa.Text, nullable=False),  # copied from the payload, for ordering
    sa.Column("payload", sa.Text, nullable=False),  # the Notice as JSON
    sa.Column("state", sa.Text, nullable=False, server_default="queued"),
    sa.Column("attempts", sa.Integer, nullable=False, server_default="0"),
    sa.Column("next_attempt_at", sa.BigInteger, nullable=False),  # also the claim lease
    sa.Column("created", sa.BigInteger, nullable=False),
    sa.Column("sent_at", sa.BigInteger),
    sa.Column("expires_at", sa.BigInteger, nullable=False),
    sa.Column("last_error", sa.Text, nullable=False, server_default=""),  # redacted
    sa.Column("digest_id", sa.BigInteger),  # for state 'digested': the digest that carried it
    sa.Index("notifications_due", "state", "next_attempt_at"),
    sa.Index("notifications_by_channel", "channel", "state"),
    sa.Index("notifications_by_digest", "digest_id"),
)

notification_attempts = sa.Table(
    "notification_attempts", metadata,
    sa.Column("id", schema.BigId, primary_key=True, autoincrement=True),
    sa.Column("notification_id", sa.BigInteger, sa.ForeignKey("notifications.id"),
              nullable=False),
    sa.Column("at", sa.BigInteger, nullable=False),
    sa.Column("ok", sa.Boolean, nullable=False),
    sa.Column("status", sa.Integer),  # HTTP status, SMTP reply code or MQTT reason code
    sa.Column("error", sa.Text, nullable=False, server_default=""),  # redacted
    sa.Column("duration_ms", sa.Integer, nullable=False),
    sa.Index("notification_attempts_by_notification", "notification_id", "at"),
)


# Versions 10-14 belong to notifications; 11-14 are still free.
MIGRATIONS = MigrationSet("notify", [
    (10, "notify: notifications queue and delivery attempts",
     creates(metadata, notifications, notification_attempts)),
])


class NotifyQueue:
    """Enqueue notices for channels and inspect what happened to them."""

    def __init__(self, store: Store) -> None:
        self.store = store
        self._listeners: builtins.list[Callable[[], None]] = []
        self._lock = threading.Lock()

    # --- producers and API ----------------------------------------------------------------

    def enqueue(self, channel: str, notice: Notice, *, ttl_s: float = 86400.0) -> int:
        """Persist a notice for `channel` (committed on return) and return its id."""
        now = now_ms()
        with self.store.engine.begin() as conn:
            nid = int(conn.execute(sa.insert(notifications).values(
                channel=channel, key=notice.key, kind="notice", severity=notice.severity,
                payload=notice_to_json(notice), state="queued", attempts=0,
                next_attempt_at=now, created=now, expires_at=now + int(ttl_s * 1000),
                last_error="").returning(notifications.c.id)).scalar_one())
        self._notify()
        return nid

    def list(self, state: str | None = None, limit: int = 100, *,
             channel: str | None = None) -> builtins.list[dict[str, Any]]:
        """Notifications, newest first, optionally by state and channel."""
        t = notifications
        stmt = sa.select(t).order_by(t.c.id.desc()).limit(limit)
        if state is not None:
            stmt = stmt.where(t.c.state == state)
        if channel is not None:
            stmt = stmt.where(t.c.channel == channel)
        with self.store.engine.connect() as conn:
            return [_public(dict(r)) for r in conn.execute(stmt).mappings()]

    def get(self, notification_id: int) -> dict[str, Any] | None:
        """One notification, or None."""
        t = notifications
        with self.store.engine.connect() as conn:
            row = conn.execute(sa.select(t).where(t.c.id == notification_id)).mappings().first()
        return _public(dict(row)) if row else None

    def attempts(self, notification_id: int) -> builtins.list[dict[str, Any]]:
        """Every delivery attempt of a notification, oldest first."""
        a = notification_attempts
        stmt = (sa.select(a.c.at, a.c.ok, a.c.status, a.c.error, a.c.duration_ms)
                .where(a.c.notification_id == notification_id).order_by(a.c.id))
        with self.store.engine.connect() as conn:
            return [dict(r) for r in conn.execute(stmt).mappings()]

    def counts(self) -> dict[str, int]:
        """Number of notifications per state."""
        t = notifications
        with self.store.engine.connect() as conn:
            rows = conn.execute(sa.select(t.c.state, sa.func.count()).group_by(t.c.state)).all()
        return dict.fromkeys(STATES, 0) | {str(s): int(n) for s, n in rows}

    def requeue(self, notification_id: int, *, ttl_s: float = 86400.0) -> bool:
        """Put a failed or expired notification back in the queue (e.g. after fixing config)."""
        now = now_ms()
        t = notifications
        with self.store.engine.begin() as conn:
            n = conn.execute(sa.update(t).where(t.c.id == notification_id,
                                                t.c.state.in_(("failed", "expired")))
                             .values(state="queued", next_attempt_at=now,
                                     expires_at=now + int(ttl_s * 1000))).rowcount
        if n:
            self._notify()
        return bool(n)

    def subscribe(self, callback: Callable[[], None]) -> None:
        """Call `callback` (from the enqueuing thread) after each enqueue."""
        with self._lock:
            self._listeners.append(callback)

    def unsubscribe(self, callback: Callable[[], None]) -> None:
        """Stop calling `callback`."""
        with self._lock:
            if callback in self._listeners:
                self._listeners.remove(callback)

    def _notify(self) -> None:
        with self._lock:
            listeners = builtins.list(self._listeners)
        for cb in listeners:
            cb()

    # --- dispatcher side ------------------------------------------------------------------

    def due(self, now: int, limit: int = 500) -> builtins.list[tuple[str, Due, int]]:
        """Queued rows whose time has come: (channel, Due, next_attempt_at)."""
        t = notifications
        stmt = (sa.select(t.c.id, t.c.channel, t.c.severity, t.c.kind, t.c.next_attempt_at)
                .where(t.c.state == "queued", t.c.next_attempt_at <= now,
                       t.c.expires_at > now)
                .order_by(t.c.next_attempt_at, t.c.id).limit(limit))
        with self.store.engine.connect() as conn:
            return [(r.channel, Due(int(r.id), r.severity, r.kind == "digest"),
                     int(r.next_attempt_at)) for r in conn.execute(stmt)]

    def claim(self, ids: Sequence[tuple[int, int]], lease_until: int) -> builtins.list[int]:
        """Lease (id, seen next_attempt_at) rows to this dispatcher; return the ids won."""
        t = notifications
        won: builtins.list[int] = []
        with self.store.engine.begin() as conn:
            for nid, seen in ids:
                n = conn.execute(sa.update(t).where(
                    t.c.id == nid, t.c.state == "queued", t.c.next_attempt_at == seen)
                    .values(next_attempt_at=lease_until)).rowcount
                if n:
                    won.append(nid)
        return won

    def release(self, ids: Sequence[int]) -> None:
        """Give leased rows back (clean stop): they are due again at once."""
        if not ids:
            return
        t = notifications
        with self.store.engine.begin() as conn:
            conn.execute(sa.update(t).where(t.c.id.in_(ids), t.c.state == "queued")
                         .values(next_attempt_at=now_ms()))

    def load(self, notification_id: int) -> tuple[Notice, int, int] | None:
        """(notice, attempts so far, expires_at) of a queued row, or None."""
        t = notifications
        with self.store.engine.connect() as conn:
            row = conn.execute(sa.select(t.c.payload, t.c.attempts, t.c.expires_at).where(
                t.c.id == notification_id, t.c.state == "queued")).first()
        if row is None:
            return None
        return notice_from_json(row.payload), int(row.attempts), int(row.expires_at)

    def record(self, notification_id: int, *, at: int, ok: bool, status: int | None,
               error: str, duration_ms: int, state: str, next_attempt_at: int) -> None:
        """Store one attempt and the row's resulting state in one transaction."""
        t, a = notifications, notification_attempts
        error = redact(error)
        with self.store.engine.begin() as conn:
            conn.execute(sa.insert(a).values(notification_id=notification_id, at=at, ok=ok,
                                             status=status, error=error,
                                             duration_ms=duration_ms))
            conn.execute(sa.update(t).where(t.c.id == notification_id).values(
                state=state, attempts=t.c.attempts + 1, next_attempt_at=next_attempt_at,
                sent_at=at if ok else None, last_error=error))

    def fold(self, channel: str, ids: Sequence[int], *, now: int, max_items: int,
             link: str | None = None) -> int | None:
        """Fold due rows into the channel's pending digest (created if needed); return its id.

        None when every row was taken meanwhile (another dispatcher claimed them).
        """
        t = notifications
        with self.store.engine.begin() as conn:
            # Only a digest that is due may grow: a leased one is being sent right now. The
            # row lock makes a concurrent claim wait until the merged payload is committed.
            digest_id = conn.scalar(sa.select(t.c.id).where(
                t.c.channel == channel, t.c.kind == "digest", t.c.state == "queued",
                t.c.next_attempt_at <= now).order_by(t.c.id).limit(1).with_for_update())
            if digest_id is None:
                digest_id = conn.execute(sa.insert(t).values(
                    channel=channel, key=f"{DIGEST_KEY_PREFIX}{channel}:{now}", kind="digest",
                    severity="info", payload="{}", state="queued", attempts=0,
                    next_attempt_at=now, created=now, expires_at=now,
                    last_error="").returning(t.c.id)).scalar_one()
            conn.execute(sa.update(t).where(
                t.c.id.in_(ids), t.c.state == "queued", t.c.kind == "notice",
                t.c.next_attempt_at <= now)
                .values(state="digested", digest_id=digest_id,
                        last_error=f"folded into digest #{digest_id} by the rate limit"))
            members = conn.execute(sa.select(t.c.payload, t.c.expires_at)
                                   .where(t.c.digest_id == digest_id).order_by(t.c.id)).all()
            if not members:
                conn.execute(sa.delete(t).where(t.c.id == digest_id))
                return None
            key = conn.scalar(sa.select(t.c.key).where(t.c.id == digest_id))
            digest = compose_digest([notice_from_json(m.payload) for m in members],
                                    key=str(key), created_ms=now, max_items=max_items,
                                    link=link)
            conn.execute(sa.update(t).where(t.c.id == digest_id).values(
                payload=notice_to_json(digest), severity=digest.severity,
                expires_at=max(int(m.expires_at) for m in members)))
        return int(digest_id)

    def expire(self, now: int) -> int:
        """Mark queued rows past their expiry as expired; return how many."""
        t = notifications
        with self.store.engine.begin() as conn:
            return int(conn.execute(sa.update(t).where(t.c.state == "queued",
                                                       t.c.expires_at <= now)
                                    .values(state="expired", last_error=sa.case(
                                        (t.c.last_error == "", "expired before delivery"),
                                        else_=t.c.last_error))).rowcount)

    def recent_sends(self, channel: str, since: int) -> builtins.list[int]:
        """Times of successful attempts on `channel` since `since` (to restore rate limits)."""
        t, a = notifications, notification_attempts
        stmt = (sa.select(a.c.at).join(t, t.c.id == a.c.notification_id)
                .where(t.c.channel == channel, a.c.ok.is_(True), a.c.at >= since))
        with self.store.engine.connect() as conn:
            return [int(x) for x in conn.scalars(stmt)]


def _public(row: dict[str, Any]) -> dict[str, Any]:
    """A notification row for API output: the payload decoded."""
    payload = row.pop("payload")
    row["notice"] = asdict(notice_from_json(payload)) if payload != "{}" else None
    return row
