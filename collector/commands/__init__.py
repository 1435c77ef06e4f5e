"""Device commands: audited writes to field devices, with expiry, idempotency and results."""

from __future__ import annotations

from collector.commands.tables import MIGRATIONS

__all__ = ["MIGRATIONS"]
