"""The hub-feed worker: turns changes into durable work and delivers it, off the ingest thread.

Ingest's stored hook only appends (entity id, attributes) to an in-memory queue. The worker
coalesces them, builds the entities, and in one transaction writes (a) the context-broker
outbox (upsert per entity) and (b) webhook deliveries for matching subscriptions. Both queues
are then drained with retries and full-jitter backoff; a row is deleted only after the
receiver accepted it, so a broker or endpoint outage loses nothing already queued.

The in-memory hand-over is the one window a crash can lose (changes of the last ~second);
the next change of the same entity carries the current state again.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import hashlib
import hmac
import logging
import random
import threading
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import httpx
import orjson
import sqlalchemy as sa

from collector.clock import now_ms
from collector.ngsi import model
from collector.ngsi.egress import EgressPolicy, EgressRefused
from collector.ngsi.feeds import Change
from collector.ngsi.source import EntitySource, chunks
from collector.ngsi.tables import ngsi_deliveries, ngsi_outbox, ngsi_subscriptions

log = logging.getLogger(__name__)

SIGNATURE_HEADER = "X-CityGate-Signature"


@dataclass(frozen=True, slots=True)
class FeedTiming:
    """Named timing of the feed worker (seconds unless said)."""

    tick: float = 0.5
    request_timeout: float = 5.0
    backoff_base: float = 1.0
    backoff_cap: float = 300.0
    batch: int = 100  # entities per broker upsert and per webhook notification
    busy_s: float = 2.0  # a round keeps sending full batches this long before the next intake
    max_pending_changes: int = 100_000


def backoff_s(attempts: int, timing: FeedTiming, rnd: Callable[[], float] = random.random) -> \
        float:
    """Full-jitter exponential backoff before the next try after `attempts` failures."""
    return rnd() * min(timing.backoff_cap, timing.backoff_base * 2 ** max(0, attempts - 1))


def sign(secret: str, body: bytes) -> str:
    """The signature header value of a webhook body: sha256=<hex HMAC>."""
    return "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


def subscription_matches(sub: dict[str, Any], entity: dict[str, Any],
                         changed: frozenset[str]) -> bool:
    """Does a change of these attributes of this entity concern a subscription?"""
    infos = sub.get("entities") or []
    if infos and not any(i.get("type") == entity["type"] and
                         (not i.get("id") or i["id"] == entity["id"]) for i in infos):
        return False
    watched = set(sub.get("watchedAttributes") or [])
    if watched and not watched & changed:
        return False
    q = sub.get("q")
    return not q or model.matches_q(entity, model.parse_q(q))


def could_match(sub: dict[str, Any], entity_id: str, changed: frozenset[str]) -> bool:
    """Could a change of these attributes of the entity with this URN concern a subscription?

    The part of `subscription_matches` that needs no entity (type and id are in the URN, the
    watched attributes in the change): an entity failing it is never built for that
    subscription. Only `q` needs the built entity.
    """
    infos = sub.get("entities") or []
    if infos:
        parsed = model.split_urn(entity_id)
        etype = parsed[0] if parsed is not None else None
        if not any(i.get("type") == etype and (not i.get("id") or i["id"] == entity_id)
                   for i in infos):
            return False
    watched = sub.get("watchedAttributes") or []
    return not watched or not changed.isdisjoint(watched)


def notification(sub: dict[str, Any], entities: list[dict[str, Any]],
                 now: int) -> dict[str, Any]:
    """The NGSI-LD Notification of some entities for a subscription."""
    attrs = set((sub.get("notification") or {}).get("attributes") or [])
    key_values = (sub.get("notification") or {}).get("format") == "keyValues"
    data = []
    for entity in entities:
        e = model.project(entity, attrs or None)
        data.append(model.key_values(e) if key_values else e)
    return {"id": f"urn:ngsi-ld:Notification:{uuid.uuid4()}", "type": "Notification",
            "subscriptionId": sub["id"], "notifiedAt": model.iso(now), "data": data}


class HubFeedWorker:
    """Context-broker push and webhook delivery for one collector."""

    def __init__(self, source: EntitySource, broker_url: str | None = None, *,
                 timing: FeedTiming | None = None, clock: Callable[[], int] = now_ms,
                 egress: EgressPolicy | None = None) -> None:
        self.source = source
        self.egress = egress or EgressPolicy()
        self.engine = source.store.engine
        self.broker_url = broker_url.rstrip("/") if broker_url else None
        self.timing = timing or FeedTiming()
        self.clock = clock
        self.pending: collections.deque[Change] = collections.deque(
            maxlen=self.timing.max_pending_changes)
        self.stats = {"changes": 0, "upserted": 0, "broker_failures": 0, "delivered": 0,
                      "delivery_failures": 0, "dropped_changes": 0, "egress_refused": 0,
                      "skipped_builds": 0}
        self._lock = threading.Lock()
        self._stop = asyncio.Event()

    # --- ingest side -------------------------------------------------------------------------

    def offer(self, batch: list[Change]) -> None:
        """Queue changes from the stored hook; never blocks, never raises."""
        with self._lock:
            overflow = len(self.pending) + len(batch) - self.timing.max_pending_changes
            if overflow > 0:
                self.stats["dropped_changes"] += overflow
            self.pending.extend(batch)
            self.stats["changes"] += len(batch)

    # --- worker side -------------------------------------------------------------------------

    async def run(self) -> None:
        """Work until stop(): take changes, write durable queues, drain them."""
        async with httpx.AsyncClient(timeout=self.timing.request_timeout) as client:
            while not self._stop.is_set():
                try:
                    await self.step(client)
                except Exception:
                    log.exception("hub feed: worker step failed; retrying")
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._stop.wait(), self.timing.tick)

    def stop(self) -> None:
        """Ask run() to return."""
        self._stop.set()

    async def step(self, client: httpx.AsyncClient) -> None:
        """One round: enqueue what changed, then push due outbox rows and deliveries.

        While full batches are due (a backlog after an outage, a burst of changes) the round
        keeps sending, for at most `busy_s`, so throughput is not one batch per tick.
        """
        await asyncio.to_thread(self.enqueue_changes)
        deadline = asyncio.get_running_loop().time() + self.timing.busy_s
        while True:
            full = await self.push_broker(client) if self.broker_url else False
            full = await self.deliver(client) or full
            if not full or asyncio.get_running_loop().time() >= deadline:
                return

    def _take(self) -> dict[str, set[str]]:
        with self._lock:
            taken = list(self.pending)
            self.pending.clear()
        merged: dict[str, set[str]] = {}
        for entity_id, attrs in taken:
            merged.setdefault(entity_id, set()).update(attrs)
        return merged

    def enqueue_changes(self) -> int:
        """Build changed entities; write outbox rows and webhook deliveries in one commit."""
        merged = self._take()
        if not merged:
            return 0
        now = self.clock()
        with self.engine.connect() as conn:
            subs = [orjson.loads(r.body) for r in conn.execute(
                sa.select(ngsi_subscriptions.c.body).where(ngsi_subscriptions.c.active))]
        changes = {k: frozenset(v) for k, v in merged.items()}
        # The broker takes every changed entity; webhooks only those a subscription could
        # want. Nothing else is built (no broker, no subscription: no entity is read at all).
        wanted = list(changes) if self.broker_url else \
            [k for k, attrs in changes.items() if any(could_match(s, k, attrs) for s in subs)]
        self.stats["skipped_builds"] += len(changes) - len(wanted)
        entities = self.source.entities_by_id(wanted) if wanted else {}
        outbox: list[dict[str, Any]] = []
        matched: dict[str, list[dict[str, Any]]] = {sub["id"]: [] for sub in subs}
        for entity_id, entity in sorted(entities.items()):
            if self.broker_url:
                outbox.append({"entity_id": entity_id, "body": orjson.dumps(entity).decode(),
                               "enqueued": now, "attempts": 0, "next_try": now,
                               "last_error": ""})
            changed = changes[entity_id]
            for sub in subs:
                if subscription_matches(sub, entity, changed):
                    matched[sub["id"]].append(entity)
        deliveries = [  # one notification carries up to `batch` entities
            {"subscription_id": sub["id"], "created": now, "attempts": 0, "next_try": now,
             "body": orjson.dumps(notification(sub, group[i:i + self.timing.batch], now))
             .decode()}
            for sub in subs for group in [matched[sub["id"]]]
            for i in range(0, len(group), self.timing.batch)]
        with self.engine.begin() as conn:
            for ids in chunks([row["entity_id"] for row in outbox]):  # newest state replaces
                conn.execute(sa.delete(ngsi_outbox).where(  # an unsent one
                    ngsi_outbox.c.entity_id.in_(ids)))
            if outbox:
                conn.execute(sa.insert(ngsi_outbox), outbox)
            if deliveries:
                conn.execute(sa.insert(ngsi_deliveries), deliveries)
        return len(outbox) + len(deliveries)

    # --- context broker ---------------------------------------------------------------------

    def _due(self, table: sa.Table, order: sa.ColumnElement[Any]) -> list[Any]:
        with self.engine.connect() as conn:
            return list(conn.execute(sa.select(table).where(table.c.next_try <= self.clock())
                                     .order_by(order).limit(self.timing.batch)))

    async def push_broker(self, client: httpx.AsyncClient) -> bool:
        """POST due outbox rows as one batch upsert; keep what the broker did not take.

        True when a full batch went through (more may be due).
        """
        rows = await asyncio.to_thread(self._due, ngsi_outbox, ngsi_outbox.c.enqueued)
        if not rows:
            return False
        bodies = [orjson.loads(r.body) for r in rows]
        for b in bodies:
            b["@context"] = model.CONTEXT
        failed: dict[str, str] = {}
        try:
            resp = await client.post(
                f"{self.broker_url}/ngsi-ld/v1/entityOperations/upsert",
                content=orjson.dumps(bodies), headers={"Content-Type": "application/ld+json"})
            if resp.status_code == 207:
                failed = {e.get("entityId", ""): str(e.get("error", e))
                          for e in (resp.json().get("errors") or [])}
            elif resp.status_code >= 300:
                failed = {r.entity_id: f"HTTP {resp.status_code}" for r in rows}
        except httpx.HTTPError as exc:
            failed = {r.entity_id: f"{type(exc).__name__}: {exc}" for r in rows}
        await asyncio.to_thread(self._settle_outbox, rows, failed)
        return not failed and len(rows) == self.timing.batch

    def _settle_outbox(self, rows: list[Any], failed: dict[str, str]) -> None:
        now = self.clock()
        with self.engine.begin() as conn:
            for r in rows:
                same = (ngsi_outbox.c.entity_id == r.entity_id) & \
                       (ngsi_outbox.c.enqueued == r.enqueued)  # not a newer state
                if r.entity_id in failed:
                    n = r.attempts + 1
                    conn.execute(sa.update(ngsi_outbox).where(same).values(
                        attempts=n, last_error=failed[r.entity_id][:500],
                        next_try=now + int(backoff_s(n, self.timing) * 1000)))
                else:
                    conn.execute(sa.delete(ngsi_outbox).where(same))
        self.stats["upserted"] += len(rows) - len(failed)
        self.stats["broker_failures"] += len(failed)
        if failed:
            log.warning("hub feed: broker refused %d of %d entities (first: %s)",
                        len(failed), len(rows), next(iter(failed.values())))

    # --- webhooks ----------------------------------------------------------------------------

    async def deliver(self, client: httpx.AsyncClient) -> bool:
        """POST due notifications, signed; retry failures later.

        True when a full batch went through (more may be due).
        """
        rows = await asyncio.to_thread(self._due, ngsi_deliveries, ngsi_deliveries.c.id)
        if not rows:
            return False
        targets = await asyncio.to_thread(self._targets, {r.subscription_id for r in rows})
        results = await asyncio.gather(*(self._post(client, targets.get(r.subscription_id), r)
                                         for r in rows))
        await asyncio.to_thread(self._settle_deliveries, list(zip(rows, results, strict=True)))
        return all(e is None for e in results) and len(rows) == self.timing.batch

    def _targets(self, ids: set[str]) -> dict[str, tuple[str, str]]:
        t = ngsi_subscriptions
        with self.engine.connect() as conn:
            rows = conn.execute(sa.select(t.c.id, t.c.body, t.c.secret).where(
                t.c.id.in_(list(ids)), t.c.active))
            return {r.id: (orjson.loads(r.body)["notification"]["endpoint"]["uri"], r.secret)
                    for r in rows}

    async def _post(self, client: httpx.AsyncClient, target: tuple[str, str] | None,
                    row: Any) -> str | None:
        if target is None:
            return None  # subscription deleted: drop its deliveries
        uri, secret = target
        try:  # again at each delivery: a name may resolve elsewhere than when subscribed
            await asyncio.to_thread(self.egress.check, uri)
        except EgressRefused as exc:
            self.stats["egress_refused"] += 1
            return f"refused: {exc}"
        body = row.body.encode()
        try:
            resp = await client.post(uri, content=body, headers={
                "Content-Type": "application/json", SIGNATURE_HEADER: sign(secret, body),
                "Link": model.LINK_HEADER})
        except httpx.HTTPError as exc:
            return f"{type(exc).__name__}: {exc}"
        return None if resp.status_code < 300 else f"HTTP {resp.status_code}"

    def _settle_deliveries(self, results: list[tuple[Any, str | None]]) -> None:
        now = self.clock()
        with self.engine.begin() as conn:
            for row, error in results:
                if error is None:
                    conn.execute(sa.delete(ngsi_deliveries).where(ngsi_deliveries.c.id == row.id))
                    self.stats["delivered"] += 1
                    continue
                n = row.attempts + 1
                self.stats["delivery_failures"] += 1
                conn.execute(sa.update(ngsi_deliveries).where(ngsi_deliveries.c.id == row.id)
                             .values(attempts=n, last_error=error[:500],
                                     next_try=now + int(backoff_s(n, self.timing) * 1000)))

    def backlog(self) -> dict[str, int]:
        """Rows waiting in the durable queues."""
        with self.engine.connect() as conn:
            return {t.name: int(conn.scalar(sa.select(sa.func.count()).select_from(t)) or 0)
                    for t in (ngsi_outbox, ngsi_deliveries)}

