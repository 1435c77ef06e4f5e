"""Pacing policy for the uplink (pure): the backlog drains at a rate while live data goes first."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class TokenBucket:
    """Allows `rate` units per second with bursts up to `burst` units."""

    rate: float
    burst: float
    tokens: float = 0.0
    stamp: float | None = None

    def take(self, n: float, now: float) -> bool:
        """Spend `n` units if available at `now` (seconds); return whether it was allowed."""
        if self.stamp is None:
            self.stamp, self.tokens = now, self.burst
        self.tokens = min(self.burst, self.tokens + (now - self.stamp) * self.rate)
        self.stamp = now
        if self.tokens >= n or self.tokens >= self.burst:
            self.tokens -= n
            return True
        return False

    def wait_time(self, n: float) -> float:
        """Seconds until `n` units (capped at the burst) will be available."""
        need = min(n, self.burst) - self.tokens
        return max(0.0, need / self.rate)
