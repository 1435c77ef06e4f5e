"""Delivery policy as pure functions: backoff, token bucket, what to send or fold, digests."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from collector.notify.model import Notice
from collector.notify.render import SEVERITY_RANK

DIGEST_KEY_PREFIX = "digest:"


def backoff_s(attempt: int, base: float, cap: float, rand: float) -> float:
    """Delay before retry number `attempt` (1-based): capped doubling with equal jitter.

    `rand` is uniform in [0, 1); the delay lies in [d/2, d) so a failed receiver is never
    hammered the way full jitter's near-zero delays would.
    """
    ceiling = min(cap, base * 2.0 ** max(0, attempt - 1))
    return ceiling * (0.5 + rand / 2)


@dataclass
class TokenBucket:
    """A token bucket on a monotonic clock, plus an optional provider-imposed block."""

    capacity: int
    per_s: float  # tokens added per second
    tokens: float = field(default=-1.0)
    updated: float = 0.0
    blocked_until: float = 0.0

    def __post_init__(self) -> None:
        if self.tokens < 0:
            self.tokens = float(self.capacity)

    def _refill(self, now: float) -> None:
        if now > self.updated:
            self.tokens = min(self.capacity, self.tokens + (now - self.updated) * self.per_s)
            self.updated = now

    def available(self, now: float) -> int:
        """Whole tokens that may be spent now (0 while blocked)."""
        self._refill(now)
        return 0 if now < self.blocked_until else int(self.tokens + 1e-9)

    def take(self, now: float) -> bool:
        """Spend one token if there is one."""
        if self.available(now) < 1:
            return False
        self.tokens -= 1
        return True

    def wait_s(self, now: float) -> float:
        """Seconds until a token is available (0 when one is)."""
        self._refill(now)
        refill = max(0.0, (1 - self.tokens) / self.per_s) if self.per_s > 0 else float("inf")
        return max(refill, self.blocked_until - now, 0.0)

    def block(self, now: float, seconds: float) -> None:
        """The provider throttled us: spend everything and wait `seconds`."""
        self._refill(now)
        self.tokens = 0.0
        self.blocked_until = max(self.blocked_until, now + seconds)


def restored_bucket(capacity: int, per_s: float, now: float,
                    sent_ago_s: Sequence[float]) -> TokenBucket:
    """A bucket at start-up that remembers sends of the last minute (read from the DB)."""
    recent = sum(1 for ago in sent_ago_s if 0 <= ago < 60.0)
    return TokenBucket(capacity, per_s, tokens=float(max(0, capacity - recent)), updated=now)


@dataclass(frozen=True, slots=True)
class Due:
    """A queued notification that is due, as the planner sees it."""

    id: int
    severity: str
    is_digest: bool = False


@dataclass(frozen=True, slots=True)
class Plan:
    """What to do with one channel's due notifications now; the rest keep waiting."""

    send: tuple[int, ...] = ()
    fold: tuple[int, ...] = ()


def delivery_order(due: Sequence[Due]) -> list[Due]:
    """Pending digests first, then by severity, then oldest first."""
    return sorted(due, key=lambda d: (not d.is_digest, SEVERITY_RANK.get(d.severity, 9), d.id))


def plan_channel(due: Sequence[Due], tokens: int | None, *, digest: bool,
                 pending_digest: bool) -> Plan:
    """Send what the bucket allows; fold the rest into a digest when there is more than one.

    `tokens` None means the channel is not rate limited. A lone held-back notice just
    waits for the next token rather than becoming a digest of one.
    """
    ordered = delivery_order(due)
    if tokens is None:
        return Plan(send=tuple(d.id for d in ordered))
    send, rest = ordered[:tokens], ordered[tokens:]
    foldable = [d.id for d in rest if not d.is_digest]
    if digest and foldable and (len(foldable) >= 2 or pending_digest):
        return Plan(send=tuple(d.id for d in send), fold=tuple(foldable))
    return Plan(send=tuple(d.id for d in send))


def compose_digest(members: Sequence[Notice], *, key: str, created_ms: int,
                   max_items: int = 20, link: str | None = None) -> Notice:
    """One notice that lists `members` (held back by a rate limit) with their links."""
    if not members:
        raise ValueError("a digest needs at least one member")
    ordered = sorted(members, key=lambda n: (SEVERITY_RANK.get(n.severity, 9), n.created_ms))
    n = len(ordered)
    critical = sum(1 for m in ordered if m.severity == "critical")
    noun = "incident" if n == 1 else "incidents"
    extra = f" ({critical} critical)" if critical else ""
    lines = [f"- **[{m.severity.upper()}]** {m.title} — [open]({m.link})"
             for m in ordered[:max_items]]
    if n > max_items:
        lines.append(f"- … and {n - max_items} more in CityGate")
    return Notice(
        key=key,
        title=f"{n} more {noun}{extra}: {ordered[0].title}",
        text="Held back by the channel's rate limit:\n\n" + "\n".join(lines),
        severity=ordered[0].severity,
        link=link or ordered[0].link,
        created_ms=created_ms,
        mention_phones=tuple(dict.fromkeys(p for m in ordered for p in m.mention_phones)),
        emails=tuple(dict.fromkeys(e for m in ordered for e in m.emails)),
    )
