"""The dispatcher: delivers queued notifications with retries, rate limits and digests.

All state lives in the database, so a restarted dispatcher carries on where the last one
stopped. Rows are leased before sending (next_attempt_at moved past the lease): a crash
mid-send leaves them due again when the lease ends; a clean stop gives them back at once.
Delivery is at-least-once: a send interrupted after the receiver got it is sent again.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from collections import defaultdict
from dataclasses import asdict, dataclass
from types import TracebackType
from typing import Any

import httpx

from collector.clock import now_ms
from collector.notify.config import Channel, NotifyConfig
from collector.notify.policy import Due, TokenBucket, backoff_s, plan_channel, restored_bucket
from collector.notify.queue import NotifyQueue
from collector.notify.redact import RedactingFilter, install_log_redaction
from collector.notify.transports import DeliveryError, Transports

log = logging.getLogger(__name__)


@dataclass
class DispatcherStats:
    """Counters since start (log once per state change, count the rest)."""

    attempts: int = 0
    sent: int = 0
    retried: int = 0
    failed: int = 0
    expired: int = 0
    digested: int = 0


class Dispatcher:
    """Background delivery of the notification queue: `async with Dispatcher(q, cfg):`."""

    def __init__(self, queue: NotifyQueue, config: NotifyConfig, *,
                 digest_link: str | None = None, http: httpx.AsyncClient | None = None,
                 lease_s: float = 60.0, batch: int = 200,
                 rng: random.Random | None = None) -> None:
        self.queue, self.config = queue, config
        self.digest_link = digest_link  # e.g. f"{public_url}/incidents"; default: top member's
        self.lease_s, self.batch = lease_s, batch
        self.stats = DispatcherStats()
        self._given_http = http
        self._http: httpx.AsyncClient | None = None
        self._rng = rng or random.Random()
        self._buckets: dict[str, TokenBucket] = {}
        self._busy: set[str] = set()
        self._claimed: set[int] = set()
        self._failing: set[str] = set()
        self._unknown: set[str] = set()
        self._task: asyncio.Task[None] | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._wakeup = asyncio.Event()
        self._filter: RedactingFilter | None = None
        self._transports: Transports | None = None

    # --- lifecycle --------------------------------------------------------------------------

    async def __aenter__(self) -> Dispatcher:
        await self.start()
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None,
                        exc: BaseException | None, tb: TracebackType | None) -> None:
        await self.stop()

    async def start(self) -> None:
        """Restore rate limits from the database and start the background task."""
        if self._task is not None:
            return
        self._loop = asyncio.get_running_loop()
        self._wakeup = asyncio.Event()
        self._filter = install_log_redaction(self.config.secrets())
        self._http = self._given_http or httpx.AsyncClient(follow_redirects=False)
        try:
            self._buckets = await asyncio.to_thread(self._restore_buckets)
        except BaseException:
            await self._close_http()
            raise
        self._transports = Transports(self._http, now_ms)
        self.queue.subscribe(self.wake)
        self._task = asyncio.create_task(self._run(), name="notify-dispatcher")
        log.info("notify: dispatcher started with channels %s", sorted(self.config.channels))

    async def stop(self) -> None:
        """Stop delivering and hand leased rows back to the queue (idempotent)."""
        task, self._task = self._task, None
        if task is None:
            return
        self.queue.unsubscribe(self.wake)
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        claimed, self._claimed = list(self._claimed), set()
        await asyncio.to_thread(self.queue.release, claimed)
        self._busy.clear()
        await self._close_http()
        log.info("notify: dispatcher stopped (%s)", asdict(self.stats))

    async def _close_http(self) -> None:
        if self._http is not None and self._given_http is None:
            await self._http.aclose()
        self._http = None

    def wake(self) -> None:
        """Look at the queue now (safe to call from any thread)."""
        loop = self._loop
        if loop is None or loop.is_closed():
            return
        with contextlib.suppress(RuntimeError):
            loop.call_soon_threadsafe(self._wakeup.set)

    def _restore_buckets(self) -> dict[str, TokenBucket]:
        """One bucket per rate-limited channel, charged with the last minute's sends."""
        now, mono = now_ms(), time.monotonic()
        buckets: dict[str, TokenBucket] = {}
        for name, cfg in self.config.channels.items():
            shape = cfg.bucket()
            if shape is None:
                continue
            sent = self.queue.recent_sends(name, now - 60_000)
            buckets[name] = restored_bucket(*shape, mono, [(now - t) / 1000 for t in sent])
        return buckets

    # --- scheduling -------------------------------------------------------------------------

    async def _run(self) -> None:
        async with asyncio.TaskGroup() as tg:
            while True:
                self._wakeup.clear()
                try:
                    delay = await self._tick(tg)
                except Exception:  # a database hiccup must not end delivery for good
                    log.exception("notify: dispatcher pass failed; retrying")
                    delay = max(self.config.poll, 1.0)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wakeup.wait(), delay)

    async def _tick(self, tg: asyncio.TaskGroup) -> float:
        """One pass: expire, then plan and start deliveries per channel; return the next wait."""
        now = now_ms()
        expired = await asyncio.to_thread(self.queue.expire, now)
        if expired:
            self.stats.expired += expired
            log.warning("notify: %d notification(s) expired undelivered", expired)
        rows = await asyncio.to_thread(self.queue.due, now, self.batch)
        by_channel: dict[str, list[tuple[Due, int]]] = defaultdict(list)
        for channel, due, seen in rows:
            by_channel[channel].append((due, seen))
        delay = self.config.poll
        for name, items in by_channel.items():
            cfg = self.config.channels.get(name)
            if name in self._busy or cfg is None:
                if cfg is None and name not in self._unknown:
                    self._unknown.add(name)
                    log.warning("notify: channel %r is not configured; its notifications "
                                "stay queued until they expire", name)
                continue
            waiting = await self._plan(tg, name, cfg, items, now)
            bucket = self._buckets.get(name)
            if waiting and bucket is not None:
                delay = min(delay, max(bucket.wait_s(time.monotonic()), 0.01))
        return delay

    async def _plan(self, tg: asyncio.TaskGroup, name: str, cfg: Channel,
                    items: list[tuple[Due, int]], now: int) -> bool:
        """Fold and start sending one channel's due rows; True if some are left waiting."""
        bucket = self._buckets.get(name)
        mono = time.monotonic()
        dues = [d for d, _ in items]
        plan = plan_channel(dues, bucket.available(mono) if bucket else None, digest=cfg.digest,
                            pending_digest=any(d.is_digest for d in dues))
        if plan.fold:
            digest_id = await asyncio.to_thread(
                self.queue.fold, name, plan.fold, now=now, max_items=cfg.digest_max_items,
                link=self.digest_link)
            if digest_id is not None:
                self.stats.digested += len(plan.fold)
                log.info("notify: %s rate limit reached; %d notice(s) folded into digest #%d",
                         name, len(plan.fold), digest_id)
        if plan.send:
            seen = {d.id: at for d, at in items}
            lease = now + int((self.lease_s + cfg.timeout * len(plan.send)) * 1000)
            won = await asyncio.to_thread(self.queue.claim,
                                          [(i, seen[i]) for i in plan.send], lease)
            for _ in won:
                if bucket is not None:
                    bucket.take(mono)
            if won:
                self._busy.add(name)
                self._claimed.update(won)
                tg.create_task(self._deliver(name, cfg, won), name=f"notify:{name}")
        return len(plan.send) < len(items)

    # --- delivery ---------------------------------------------------------------------------

    async def _deliver(self, name: str, cfg: Channel, ids: list[int]) -> None:
        """Send a channel's claimed rows one after another (keeps order and the rate)."""
        try:
            for nid in ids:
                try:
                    await self._deliver_one(name, cfg, nid)
                except Exception:  # the database failed: the lease brings the row back later
                    log.exception("notify: cannot record delivery of #%d on %s", nid, name)
                # Not in a `finally`: when cancelled, stop() hands the leased rows back.
                self._claimed.discard(nid)
        finally:
            self._busy.discard(name)
            self.wake()

    async def _deliver_one(self, name: str, cfg: Channel, nid: int) -> None:
        loaded = await asyncio.to_thread(self.queue.load, nid)
        if loaded is None:  # no longer queued (requeued/expired meanwhile)
            return
        notice, attempts, expires_at = loaded
        assert self._transports is not None
        at, t0 = now_ms(), time.monotonic()
        self.stats.attempts += 1
        try:
            status = await self._transports.send(name, cfg, notice, nid)
        except DeliveryError as exc:
            await self._failed(name, nid, exc, attempt=attempts + 1, expires_at=expires_at,
                               at=at, t0=t0)
            return
        except Exception as exc:  # a bug, not the receiver: keep the row and say so loudly
            log.exception("notify: internal error delivering #%d on %s", nid, name)
            error = DeliveryError(name, f"internal error {type(exc).__name__}: {exc}")
            await self._failed(name, nid, error, attempt=attempts + 1, expires_at=expires_at,
                               at=at, t0=t0)
            return
        await asyncio.to_thread(
            self.queue.record, nid, at=at, ok=True, status=status, error="",
            duration_ms=_ms_since(t0), state="sent", next_attempt_at=at)
        self.stats.sent += 1
        if name in self._failing:
            self._failing.discard(name)
            log.info("notify: channel %s delivers again", name)

    async def _failed(self, name: str, nid: int, exc: DeliveryError, *, attempt: int,
                      expires_at: int, at: int, t0: float) -> None:
        """Record a failed attempt and schedule the retry, or give up."""
        now = now_ms()
        bucket = self._buckets.get(name)
        if exc.throttled and bucket is not None:
            bucket.block(time.monotonic(), exc.retry_after or 60.0)
        if exc.retryable:
            delay = backoff_s(attempt, self.config.retry_base, self.config.retry_cap,
                              self._rng.random())
            delay = max(delay, exc.retry_after or 0.0)
            next_at = now + int(delay * 1000)
            state = "queued" if next_at < expires_at else "expired"
        else:
            next_at, state = now, "failed"
        await asyncio.to_thread(
            self.queue.record, nid, at=at, ok=False, status=exc.status, error=str(exc),
            duration_ms=_ms_since(t0), state=state, next_attempt_at=next_at)
        self._count_failure(name, nid, state, exc)

    def _count_failure(self, name: str, nid: int, state: str, exc: DeliveryError) -> None:
        if state == "queued":
            self.stats.retried += 1
        elif state == "expired":
            self.stats.expired += 1
        else:
            self.stats.failed += 1
        if state != "queued":
            log.warning("notify: notification #%d on %s is %s: %s", nid, name, state, exc)
        elif name not in self._failing:
            self._failing.add(name)
            log.warning("notify: channel %s failing, will retry: %s", name, exc)

    def snapshot(self) -> dict[str, Any]:
        """Counters and channel health for the API."""
        return {**asdict(self.stats), "failing": sorted(self._failing),
                "busy": sorted(self._busy), "unknown_channels": sorted(self._unknown)}


def _ms_since(t0: float) -> int:
    return int((time.monotonic() - t0) * 1000)
