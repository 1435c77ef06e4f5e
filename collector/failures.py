"""What a failed store transaction means for the message it held: retry now, wait, or quarantine.

- `RETRY_NOW`: the database chose this transaction as a deadlock or serialization victim;
  running it again at once succeeds (PostgreSQL SQLSTATE class 40).
- `DATA`: the database (or building the rows) refused a value of the message itself: a number
  that does not fit, a NUL in a text, a constraint. The same message will fail forever, so the
  batch is split until the bad message is isolated and quarantined (collector.ingest).
- `OPERATIONAL`: everything else — connection refused, database restarting, disk full, a bug.
  The message is kept unacknowledged and retried after a pause; nothing is quarantined on a
  failure that is not the message's fault.
"""

from __future__ import annotations

import enum
import sqlite3

import sqlalchemy as sa


class Failure(enum.Enum):
    """How to go on after a store transaction failed."""

    RETRY_NOW = "retry_now"
    DATA = "data"
    OPERATIONAL = "operational"


# PostgreSQL SQLSTATE classes: 22 data exception, 23 integrity constraint violation,
# 54 program limit exceeded (a value too large for an index or a row), 40 transaction rollback.
_PG_DATA_CLASSES = ("22", "23", "54")
_PG_RETRY_CLASSES = ("40",)


def classify(exc: BaseException) -> Failure:
    """Tell a failure caused by the message's values from a deadlock and from an outage."""
    if isinstance(exc, sa.exc.DBAPIError) and exc.orig is not None:
        exc = exc.orig
    state = getattr(exc, "sqlstate", None)
    if isinstance(state, str):
        if state[:2] in _PG_RETRY_CLASSES:
            return Failure.RETRY_NOW
        if state[:2] in _PG_DATA_CLASSES:
            return Failure.DATA
    try:
        import psycopg
    except ImportError:  # pragma: no cover - psycopg is a dependency
        psycopg = None  # type: ignore[assignment]
    if psycopg is not None:
        if isinstance(exc, psycopg.errors.SerializationFailure | psycopg.errors.DeadlockDetected):
            return Failure.RETRY_NOW
        # psycopg raises a bare DataError, without SQLSTATE, for a NUL in a text it adapts.
        if isinstance(exc, psycopg.DataError | psycopg.IntegrityError):
            return Failure.DATA
    if isinstance(exc, sqlite3.IntegrityError | sqlite3.DataError | sqlite3.InterfaceError):
        return Failure.DATA
    # Building rows or binding parameters: int too large for SQLite, a value of the wrong type.
    if isinstance(exc, ValueError | OverflowError | TypeError | UnicodeError):
        return Failure.DATA
    return Failure.OPERATIONAL
