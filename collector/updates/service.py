"""Staged rollouts of signed agent bundles: canaries first, the rest only if they all succeed.

The collector is a courier, not a signer: it stores what a release manager uploads, offers it
over `cmd/update` with a one-time download token per gateway, and records each gateway's
verdict. Only the gateway verifies the release signature (edge/update.py), so a compromised
collector cannot get code run on a gateway.
"""

from __future__ import annotations

import asyncio
import hashlib
import io
import json
import logging
import secrets
import tarfile
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, Protocol

import orjson
import sqlalchemy as sa

from collector.updates import tables as t
from devices.contract import ReplyMessage

log = logging.getLogger(__name__)

FAILED = frozenset({"refused", "failed", "rolled_back", "timeout"})
FINAL = FAILED | {"applied", "skipped"}


class UpdateError(Exception):
    """A request the update service cannot honour; `status` is the HTTP status to answer."""

    def __init__(self, status: int, detail: str) -> None:
        super().__init__(detail)
        self.status, self.detail = status, detail


class CommandSender(Protocol):
    """What the service needs of the command channel."""

    def send(self, gateway: str, name: str, payload: bytes) -> bool:
        """Publish `cmd/<name>` to a gateway; False when the broker link is down."""


@dataclass(frozen=True, slots=True)
class Target:
    """One gateway of a rollout."""

    gateway: str
    wave: int
    status: str


def next_step(targets: Iterable[Target], *, succeeded: Iterable[str] = ("applied",),
              max_failures: int | None = None) -> tuple[list[str], str]:
    """(gateways to offer the change now, rollout state): canaries first, halt on a failure.

    A target is done when its status is in `succeeded` (or FAILED, or skipped); the rest wave
    starts only when every canary succeeded. With `max_failures`, more failures than that
    among all targets also halt the rest wave (None: only canaries halt a rollout). Shared by
    agent updates and config rollouts (collector/registry/rollouts.py).
    """
    targets = list(targets)
    final = FAILED | {"skipped", *succeeded}
    canaries = [x for x in targets if x.wave == 0]
    rest = [x for x in targets if x.wave != 0]
    if any(x.status in FAILED for x in canaries):
        return [], "halted"
    if any(x.status not in final for x in canaries):
        return [x.gateway for x in canaries if x.status == "pending"], "canary"
    if max_failures is not None and sum(x.status in FAILED for x in rest) > max_failures:
        return [], "halted"
    if any(x.status not in final for x in rest):
        return [x.gateway for x in rest if x.status == "pending"], "rolling"
    return [], "done"


def hash_token(token: str) -> str:
    """SHA-256 hex of a download token."""
    return hashlib.sha256(token.encode()).hexdigest()


def read_manifest(bundle: bytes) -> dict[str, Any]:
    """The (unverified) manifest of a bundle, for bookkeeping; UpdateError if there is none."""
    try:
        with tarfile.open(fileobj=io.BytesIO(bundle), mode="r:*") as tar:
            f = tar.extractfile("manifest.json")
            doc = json.loads(f.read()) if f is not None else None
    except (tarfile.TarError, KeyError, ValueError, OSError, EOFError) as exc:
        raise UpdateError(422, f"not a bundle (tar with manifest.json): {exc}") from None
    if not isinstance(doc, dict) or not isinstance(doc.get("version"), str):
        raise UpdateError(422, "manifest.json has no version")
    return doc


class UpdateService:
    """Bundles, rollouts and per-gateway results in the collector's database."""

    def __init__(self, engine: sa.Engine, channel: CommandSender, public_url: str, *,
                 clock: Any = None) -> None:
        from collector.clock import now_ms

        self.engine, self.channel = engine, channel
        self.public_url = public_url.rstrip("/")
        self.now_ms = clock or now_ms

    # --- bundles -------------------------------------------------------------------------------

    def add_bundle(self, body: bytes, by: str = "") -> dict[str, Any]:
        """Store an uploaded bundle; the same version may not be uploaded with other bytes."""
        manifest = read_manifest(body)
        version, digest = manifest["version"], hashlib.sha256(body).hexdigest()
        with self.engine.begin() as conn:
            known = conn.execute(sa.select(t.bundles.c.sha256)
                                 .where(t.bundles.c.version == version)).scalar()
            if known is not None and known != digest:
                raise UpdateError(409, f"version {version} exists with other contents — "
                                       "release a new version number")
            if known is None:
                conn.execute(sa.insert(t.bundles).values(
                    version=version, manifest=json.dumps(manifest), sha256=digest,
                    size=len(body), body=body, uploaded=self.now_ms(), uploaded_by=by))
        return {"version": version, "sha256": digest, "size": len(body)}

    def download(self, version: str, token: str) -> bytes:
        """The bundle, for a gateway presenting a token it was offered for this version."""
        with self.engine.connect() as conn:
            offered = conn.execute(
                sa.select(t.targets.c.gateway_id).select_from(
                    t.targets.join(t.rollouts, t.targets.c.rollout_id == t.rollouts.c.rollout_id))
                .where(t.targets.c.token_hash == hash_token(token),
                       t.rollouts.c.version == version)).first()
            body = conn.execute(sa.select(t.bundles.c.body)
                                .where(t.bundles.c.version == version)).scalar()
        if offered is None or not token:
            raise UpdateError(401, "unknown download token for this version")
        if body is None:
            raise UpdateError(404, f"no bundle {version}")
        return bytes(body)

    # --- rollouts ------------------------------------------------------------------------------

    def start_rollout(self, version: str, gateways: list[str], *, canaries: int = 1,
                      deadline_s: float = 600.0, by: str = "") -> str:
        """Create a rollout: the first `canaries` gateways, then the rest."""
        gateways = list(dict.fromkeys(gateways))
        if not gateways:
            raise UpdateError(422, "no gateways to update")
        with self.engine.begin() as conn:
            if conn.execute(sa.select(t.bundles.c.version)
                            .where(t.bundles.c.version == version)).first() is None:
                raise UpdateError(404, f"no bundle {version}: upload it first")
            rollout = f"upd-{secrets.token_hex(6)}"
            conn.execute(sa.insert(t.rollouts).values(
                rollout_id=rollout, version=version, created=self.now_ms(), created_by=by,
                canaries=max(1, canaries), deadline_s=deadline_s, state="canary"))
            conn.execute(sa.insert(t.targets), [
                {"rollout_id": rollout, "gateway_id": g, "wave": 0 if i < canaries else 1,
                 "status": "pending"} for i, g in enumerate(gateways)])
        log.info("rollout %s of %s to %d gateway(s), %d canary", rollout, version,
                 len(gateways), max(1, canaries))
        self.step()
        return rollout

    def step(self) -> None:
        """Advance every active rollout: time out silent gateways, offer the next wave."""
        with self.engine.connect() as conn:
            active = conn.execute(sa.select(t.rollouts).where(
                t.rollouts.c.state.in_(["canary", "rolling"]))).all()
        for r in active:
            self._time_out(r.rollout_id, r.deadline_s)
            with self.engine.connect() as conn:
                rows = conn.execute(sa.select(t.targets).where(
                    t.targets.c.rollout_id == r.rollout_id)).all()
            send, state = next_step(Target(x.gateway_id, x.wave, x.status) for x in rows)
            for gateway in send:
                self._offer(r.rollout_id, r.version, gateway)
            if state != r.state:
                log.info("rollout %s: %s", r.rollout_id, state)
                with self.engine.begin() as conn:
                    conn.execute(sa.update(t.rollouts).where(
                        t.rollouts.c.rollout_id == r.rollout_id).values(state=state))
                if state == "halted":
                    self._skip_rest(r.rollout_id)

    def _offer(self, rollout: str, version: str, gateway: str) -> None:
        token = secrets.token_urlsafe(32)
        command_id = f"{rollout}:{gateway}"
        payload = orjson.dumps({"id": command_id, "version": version, "token": token,
                                "url": f"{self.public_url}/api/v1/updates/bundles/{version}"
                                       "/download"})
        if not self.channel.send(gateway, "update", payload):
            return  # the broker link is down: offered again at the next step
        with self.engine.begin() as conn:
            conn.execute(sa.update(t.targets).where(
                t.targets.c.rollout_id == rollout, t.targets.c.gateway_id == gateway).values(
                status="sent", sent=self.now_ms(), token_hash=hash_token(token)))

    def _time_out(self, rollout: str, deadline_s: float) -> None:
        limit = self.now_ms() - int(deadline_s * 1000)
        with self.engine.begin() as conn:
            conn.execute(sa.update(t.targets).where(
                t.targets.c.rollout_id == rollout, t.targets.c.status == "sent",
                t.targets.c.sent < limit).values(
                status="timeout", finished=self.now_ms(),
                detail=orjson.dumps({"reason": f"no answer within {deadline_s:g}s"}).decode()))

    def _skip_rest(self, rollout: str) -> None:
        with self.engine.begin() as conn:
            conn.execute(sa.update(t.targets).where(
                t.targets.c.rollout_id == rollout, t.targets.c.status == "pending").values(
                status="skipped", finished=self.now_ms(),
                detail=orjson.dumps({"reason": "a canary failed: rollout halted"}).decode()))

    def on_reply(self, reply: ReplyMessage) -> None:
        """Record a gateway's verdict on an update (other replies are ignored)."""
        if reply.command != "update" or ":" not in reply.id:
            return
        rollout, _, gateway = reply.id.partition(":")
        if gateway != reply.gateway:
            return
        status = "applied" if reply.ok else str(reply.detail.get("status", "failed"))
        with self.engine.begin() as conn:
            conn.execute(sa.update(t.targets).where(
                t.targets.c.rollout_id == rollout, t.targets.c.gateway_id == gateway,
                t.targets.c.status.in_(["sent", "timeout"])).values(
                status=status, finished=self.now_ms(),
                detail=orjson.dumps(reply.detail).decode()))
        log.info("update %s on %s: %s", rollout, gateway, status)

    async def run(self, interval: float = 1.0) -> None:
        """Advance rollouts until cancelled."""
        while True:
            try:
                await asyncio.to_thread(self.step)
            except sa.exc.SQLAlchemyError:
                log.exception("updates: a rollout step failed; retrying")
            await asyncio.sleep(interval)

    # --- what people see -------------------------------------------------------------------------

    def overview(self) -> dict[str, Any]:
        """Bundles, rollouts with their targets, and each gateway's latest update result."""
        with self.engine.connect() as conn:
            bundles = [dict(r._mapping) for r in conn.execute(sa.select(
                t.bundles.c.version, t.bundles.c.sha256, t.bundles.c.size,
                t.bundles.c.uploaded, t.bundles.c.uploaded_by).order_by(t.bundles.c.uploaded))]
            rollouts = [dict(r._mapping) for r in conn.execute(
                sa.select(t.rollouts).order_by(t.rollouts.c.created))]
            rows = conn.execute(sa.select(t.targets, t.rollouts.c.version, t.rollouts.c.created)
                                .select_from(t.targets.join(
                                    t.rollouts,
                                    t.targets.c.rollout_id == t.rollouts.c.rollout_id))
                                .order_by(t.rollouts.c.created)).all()
        targets = [_target(r) for r in rows]
        for r in rollouts:
            r["targets"] = [x for x in targets if x["rollout_id"] == r["rollout_id"]]
        latest: dict[str, dict[str, Any]] = {}
        for x in targets:
            latest[x["gateway_id"]] = x
        return {"bundles": bundles, "rollouts": rollouts, "gateways": latest}

    def gateway(self, gateway: str) -> list[dict[str, Any]]:
        """Every update offered to one gateway, oldest first."""
        return [x for r in self.overview()["rollouts"] for x in r["targets"]
                if x["gateway_id"] == gateway]


def _target(row: Any) -> dict[str, Any]:
    d = dict(row._mapping)
    d.pop("token_hash", None)
    d.pop("created", None)
    d["detail"] = orjson.loads(d["detail"])
    return d
