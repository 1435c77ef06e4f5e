"""One leader among the hub processes sharing a PostgreSQL database, by a session advisory lock.

What must run once for the whole collector — the features' hooks fed from the ingest feed,
escalations, the push dispatcher, update rollouts, retention, the NGSI push workers — runs
only in the process holding the lock. The lock belongs to a database session: when the leader
dies, or its connection does, PostgreSQL releases it and a standby takes it at its next try.
A leader that cannot reach the database any more stops its duties at once, since a standby may
already hold the lock.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Coroutine
from typing import Any

import sqlalchemy as sa

log = logging.getLogger(__name__)

LEADER_LOCK = 0x4347484C  # "CGHL"
CHECK_EVERY_S = 2.0


def dsn_of(engine: sa.Engine) -> str:
    """A libpq connection string for the engine's database."""
    url = engine.url.set(drivername="postgresql")
    return url.render_as_string(hide_password=False)


class LeaderLock:
    """The leader lock, held on a connection of its own (blocking calls: run them in a thread)."""

    def __init__(self, dsn: str, key: int = LEADER_LOCK) -> None:
        self.dsn, self.key = dsn, key
        self._conn: Any = None

    def try_acquire(self) -> bool:
        """Take the lock if nobody holds it; False if another session does or the database is
        unreachable."""
        import psycopg

        self.release()
        try:
            conn = psycopg.connect(self.dsn, autocommit=True, connect_timeout=5)
        except psycopg.Error:
            return False
        row = conn.execute("SELECT pg_try_advisory_lock(%s)", (self.key,)).fetchone()
        if row and row[0]:
            self._conn = conn
            return True
        conn.close()
        return False

    def held(self) -> bool:
        """Is the lock's session still alive (and so the lock still ours)?"""
        if self._conn is None:
            return False
        try:
            self._conn.execute("SELECT 1")
            return True
        except Exception:
            self.release()
            return False

    def release(self) -> None:
        """Give the lock up by closing its session (idempotent)."""
        conn, self._conn = self._conn, None
        if conn is not None:
            with contextlib.suppress(Exception):
                conn.close()


async def lead(lock: LeaderLock, duties: Callable[[], Coroutine[Any, Any, None]], *,
               check_every: float = CHECK_EVERY_S) -> None:
    """Forever: wait for the lock, run `duties` while it is held, stop them when it is lost."""
    announced = False
    while True:
        if not await asyncio.to_thread(lock.try_acquire):
            if not announced:
                log.info("collector: another process leads; standing by for the leader lock")
                announced = True
            await asyncio.sleep(check_every)
            continue
        announced = False
        log.info("collector: this process leads: feature hooks and background tasks run here")
        task = asyncio.create_task(duties(), name="leader-duties")
        try:
            while not task.done():
                await asyncio.wait({task}, timeout=check_every)
                if not task.done() and not await asyncio.to_thread(lock.held):
                    log.error("collector: lost the leader lock (database session gone); "
                              "stopping the leader's duties")
                    break
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
            lock.release()
        if task.done() and not task.cancelled() and task.exception() is not None:
            raise task.exception()  # type: ignore[misc]
