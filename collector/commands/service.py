"""Device commands at the collector: check, record, confirm, send, follow up, expire.

Every command is a row before it is sent (collector/commands/tables.py), so a restart loses
none: `sweep` (a background task) sends what is queued, re-sends what a gateway has not yet
accepted (the gateway's key book makes that harmless), and marks expired what its gateway never
took before the expiry. Replies update the row through `on_reply`.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import threading
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import orjson
import sqlalchemy as sa

from collector.auth import Principal, RateLimiter
from collector.clock import iso_seconds, now_ms
from collector.commands import policy, repo
from collector.commands.policy import (
    AWAITING,
    OPEN,
    QUEUED,
    SENT,
    TECHNICIAN,
    UNDELIVERED,
    Commissioning,
)
from collector.registry import tables as reg
from collector.registry.commands import CommandChannel
from collector.schema import devices as device_table
from collector.schema import gateways as gateway_table
from devices import contract
from devices.commands import (
    ACCEPTED,
    COMMAND_NAME,
    EXPIRED,
    MAX_TTL_MS,
    OPS,
    PARKING_NODE,
    ArgsRefused,
    DeviceCommand,
    check_args,
    parse_result,
)
from devices.contract import MAX_SHORT, ReplyMessage
from devices.modbus.writes import WriteRefused, plan_write
from devices.profiles import ProfileError, load_profile

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class CommandSettings:
    """The `[commands]` section of collector.toml."""

    rate_per_min: int = 30  # commands a token may issue a minute (bursts up to that many)
    confirm_within_s: float = 300.0  # a dangerous command not confirmed by then expires
    resend_after_s: float = 15.0  # a command sent but not accepted is sent again after this
    max_ttl_s: float = MAX_TTL_MS / 1000
    four_eyes: bool = True  # a dangerous command is confirmed by another token than its issuer's
    # a technician commands a gateway not yet commissioned up to this long after its claim or
    # its latest commissioning run
    technician_window_h: float = 24.0

    @classmethod
    def from_section(cls, section: dict[str, Any]) -> CommandSettings:
        """Read the section (ValueError names a bad key)."""
        unknown = set(section) - {"rate_per_min", "confirm_within_s", "resend_after_s",
                                  "four_eyes", "technician_window_h"}
        if unknown:
            raise ValueError(f"[commands]: unknown key(s) {sorted(unknown)}")
        four_eyes = section.get("four_eyes", True)
        if not isinstance(four_eyes, bool):
            raise ValueError("[commands] four_eyes: must be true or false")
        window_h = section.get("technician_window_h", 24.0)
        if type(window_h) not in (int, float) or not 0 < window_h <= 24 * 30:
            raise ValueError("[commands] technician_window_h: must be more than 0 and at most"
                             " 720 (30 days)")
        return cls(rate_per_min=int(section.get("rate_per_min", 30)),
                   confirm_within_s=float(section.get("confirm_within_s", 300.0)),
                   resend_after_s=float(section.get("resend_after_s", 15.0)),
                   four_eyes=four_eyes, technician_window_h=float(window_h))


class CommandError(Exception):
    """A command the API refuses: HTTP status, a stable reason and a message for people."""

    def __init__(self, status: int, reason: str, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.reason = reason


UnitOf = Callable[[str, str], str]  # (device, gateway) -> the responsible unit ("" if none)


class CommandService:
    """Device commands: the API's operations, replies from gateways and the sweeper."""

    def __init__(self, engine: sa.Engine, channel: CommandChannel, unit_of: UnitOf,
                 settings: CommandSettings | None = None,
                 clock: Callable[[], int] = now_ms) -> None:
        self.engine = engine
        self.channel = channel
        self.unit_of = unit_of
        self.settings = settings or CommandSettings()
        self.clock = clock
        self.limiter = RateLimiter()
        self.changed = threading.Condition()  # notified on every status change (waiters)
        self.counters = {"issued": 0, "refused": 0, "refused_clock_wrong": 0, "sent": 0,
                         "send_failures": 0, "replies": 0, "bad_replies": 0, "expired_here": 0}

    # --- issuing ---------------------------------------------------------------------------------

    def submit(self, who: Principal, device: str, point: str | None, value: object,
               ttl_s: float, key: str | None = None, *, op: str = "write",
               args: dict[str, Any] | None = None) -> dict[str, Any]:
        """Check and record a command (a write of `point`/`value`, or `op` with `args`); send
        it at once unless it needs a confirmation."""
        spec = OPS.get(op)
        if spec is not None and spec.kinds == {PARKING_NODE}:  # reports without a profile
            gateway, profile, kind = self._gateway(device), None, PARKING_NODE
        else:
            gateway, profile = self._device(device)
            kind = profile.kind
        self._check_scope(who, device, gateway)
        if not 1 <= ttl_s <= self.settings.max_ttl_s:
            raise self._refused(422, "bad_ttl", f"ttl_s must be 1..{self.settings.max_ttl_s:g}")
        point_def = None
        if op == "write":
            if args is not None:  # {"op": "write", "args": {"point", "value"}}
                point, value = args.get("point"), args.get("value")
            if not isinstance(point, str):
                raise self._refused(422, "bad_args", "a write needs a point and a value")
            assert profile is not None  # a write goes to a device with a profile
            point_def = next((p for p in profile.points if p.quantity == point), None)
            try:
                plan_write(point_def, point, value)
            except WriteRefused as exc:
                raise self._refused(422, exc.reason, exc.detail) from None
            canonical: dict[str, Any] = {"point": point, "value": value}
        else:
            if point is not None or value is not None:
                raise self._refused(422, "bad_args", f"{op} takes args, not a point and value")
            try:
                canonical = check_args(op, kind, args or {})
            except ArgsRefused as exc:
                raise self._refused(422, exc.reason, exc.message) from None
        dangerous = bool(point_def and point_def.write and point_def.write.dangerous)
        scoped_key = f"{who.name}:{key or uuid.uuid4().hex}"
        if len(scoped_key) > MAX_SHORT:  # the wire bounds a key; a digest keeps it unique
            scoped_key = hashlib.sha256(scoped_key.encode()).hexdigest()
        with self.engine.connect() as conn:
            known = repo.by_key(conn, scoped_key)
        if known is not None:  # the same request again (a retry): the same command
            return self._view(known)
        self._check_clock(gateway)
        wait = self.limiter.allow(f"commands:{who.name}", self.settings.rate_per_min)
        if wait > 0:
            raise self._refused(429, "rate_limited", f"{who.name!r} may issue "
                                f"{self.settings.rate_per_min} commands a minute; retry in "
                                f"{wait:.0f} s")
        now = self.clock()
        row: dict[str, Any] = {
               "id": f"c-{uuid.uuid4().hex[:20]}", "key": scoped_key, "device_id": device,
               "gateway_id": gateway, "op": op,
               "args": orjson.dumps(canonical).decode(),
               "issuer": who.name, "issuer_role": who.role.value, "issued": now,
               "expires": now + int(ttl_s * 1000), "dangerous": dangerous,
               "status": AWAITING if dangerous else QUEUED, "updated": now}
        with self.engine.begin() as conn:
            known = repo.by_key(conn, scoped_key)
            if known is not None:  # the same request again: the same command
                return self._view(known)
            repo.insert(conn, row, who.name, now)
        self.counters["issued"] += 1
        if not dangerous:
            self._send(row)
        return self.get(row["id"])

    def confirm(self, who: Principal, command_id: str) -> dict[str, Any]:
        """Second step of a dangerous command: send it (within `confirm_within_s`)."""
        row = self._row(command_id)
        self._check_scope(who, row["device_id"], row["gateway_id"])
        now = self.clock()
        if row["status"] != AWAITING:
            raise self._refused(409, "not_awaiting", f"command {command_id} is {row['status']}")
        if self.settings.four_eyes and who.name == row["issuer"]:
            raise self._refused(403, "same_person", f"{who.name!r} issued command {command_id};"
                                " a dangerous command is confirmed by another person's token")
        if now >= min(row["expires"], row["issued"] + self.settings.confirm_within_s * 1000):
            self._expire(row, now, "not confirmed in time")
            raise self._refused(409, "expired", f"command {command_id} was not confirmed in "
                                "time; issue it again")
        self._check_clock(row["gateway_id"])
        with self.engine.begin() as conn:
            if not repo.set_status(conn, command_id, QUEUED, now, frozenset({AWAITING}),
                                   confirmed_by=who.name, confirmed_at=now):
                raise self._refused(409, "not_awaiting", f"command {command_id} changed")
            repo.log(conn, command_id, now, who.name, "confirmed")
        self._send(self._row(command_id))
        return self.get(command_id)

    def _reported(self, device: str) -> tuple[str, str]:
        """(gateway, profile name, "" for none) of a device that has reported; 404 if none."""
        with self.engine.connect() as conn:
            row = conn.execute(sa.select(device_table.c.gateway_id, device_table.c.profile)
                               .where(device_table.c.device_id == device)).first()
        if row is None:
            raise self._refused(404, "unknown_device", f"no device {device!r} has reported")
        return str(row.gateway_id), row.profile or ""

    def _device(self, device: str) -> tuple[str, Any]:
        gateway, profile = self._reported(device)
        try:
            return gateway, load_profile(profile)
        except ProfileError:
            raise self._refused(422, "unknown_profile", f"{device}'s profile "
                                f"{profile!r} is not known here") from None

    def _gateway(self, device: str, node: bool = True) -> str:
        """The gateway of a device; with `node`, refused unless it is a parking node (one
        that reports without a profile)."""
        gateway, profile = self._reported(device)
        if node and profile:
            raise self._refused(422, "unsupported_operation", f"{device} is a "
                                f"{profile} device, not a parking node")
        return gateway

    def _check_scope(self, who: Principal, device: str, gateway: str) -> None:
        if who.role.value == TECHNICIAN:
            why = policy.technician_refusal(
                gateway, self._commissioning(gateway), who.unit, self.clock(),
                int(self.settings.technician_window_h * 3_600_000))
        else:
            why = policy.refusal(who.role.value, who.unit, self.unit_of(device, gateway))
        if why is not None:
            raise self._refused(403, "forbidden", why)

    def _commissioning(self, gateway: str) -> Commissioning | None:
        """What the registry knows of a gateway's commissioning (None: not registered)."""
        g, site, run = reg.gateways, reg.sites, reg.commissioning
        with self.engine.connect() as conn:
            row = conn.execute(
                sa.select(g.c.created, g.c.commissioned_at, g.c.revoked,
                          site.c.responsible_unit)
                .select_from(g.outerjoin(site, site.c.site_id == g.c.site_id))
                .where(g.c.gateway_id == gateway)).first()
            if row is None:
                return None
            last_run = conn.execute(sa.select(sa.func.max(run.c.received))
                                    .where(run.c.gateway_id == gateway)).scalar()
        return Commissioning(gateway, row.responsible_unit or "", row.created,
                             row.commissioned_at, last_run, bool(row.revoked))

    def _check_clock(self, gateway: str) -> None:
        """Refuse a command for a gateway whose clock the collector knows is wrong: the gateway
        judges the command's expiry on that clock."""
        with self.engine.connect() as conn:
            row = conn.execute(sa.select(gateway_table.c.clock_wrong,
                                         gateway_table.c.clock_offset_ms,
                                         gateway_table.c.clock_measured_at)
                               .where(gateway_table.c.gateway_id == gateway)).first()
        if row is None or not row.clock_wrong:
            return
        self.counters["refused_clock_wrong"] += 1
        off = "" if row.clock_offset_ms is None else \
            f" (off by {row.clock_offset_ms / 1000:+.0f} s"
        if off and row.clock_measured_at is not None:
            off += f", measured at {iso_seconds(row.clock_measured_at)}"
        off += ")" if off else ""
        raise self._refused(409, "gateway_clock_wrong", f"{gateway}'s clock is wrong{off}; it "
                            "judges a command's expiry on its own clock, so no command is "
                            "issued to it until its time is right again")

    def _refused(self, status: int, reason: str, message: str) -> CommandError:
        self.counters["refused"] += 1
        return CommandError(status, reason, message)

    # --- delivery --------------------------------------------------------------------------------

    def _send(self, row: dict[str, Any]) -> bool:
        cmd = DeviceCommand(row["id"], row["key"], row["device_id"], row["op"],
                            orjson.loads(row["args"]), row["issuer"], row["issued"],
                            row["expires"])
        now = self.clock()
        if cmd.expired(now):
            return False
        if not self.channel.send(row["gateway_id"], COMMAND_NAME, cmd.to_json()):
            self.counters["send_failures"] += 1
            return False
        self.counters["sent"] += 1
        with self.engine.begin() as conn:
            repo.set_status(conn, row["id"], SENT, now, frozenset({QUEUED, SENT}),
                            sent_at=now, sends=repo.t.c.sends + 1)
            repo.log(conn, row["id"], now, "collector", "sent", {"gateway": row["gateway_id"]})
        self._notify()
        return True

    def sweep(self) -> None:
        """Send what waits, re-send what was not taken, expire what can no longer run."""
        now = self.clock()
        with self.engine.connect() as conn:
            rows = repo.with_status(conn, frozenset({AWAITING, *UNDELIVERED}))
        for row in rows:
            confirm_by = row["issued"] + self.settings.confirm_within_s * 1000
            if now >= row["expires"] or (row["status"] == AWAITING and now >= confirm_by):
                self._expire(row, now, "not delivered to the gateway before the expiry"
                             if row["status"] != AWAITING else "not confirmed in time")
            elif row["status"] == QUEUED or (
                    row["status"] == SENT and now - (row["sent_at"] or 0)
                    >= self.settings.resend_after_s * 1000):
                self._send(row)

    def resend_to(self, gateway: str) -> None:
        """A gateway came online: send it what it has not taken yet (it keys out repeats)."""
        with self.engine.connect() as conn:
            rows = repo.with_status(conn, UNDELIVERED, gateway)
        for row in rows:
            self._send(row)

    def _expire(self, row: dict[str, Any], now: int, why: str) -> None:
        with self.engine.begin() as conn:
            if repo.set_status(conn, row["id"], EXPIRED, now,
                               frozenset({AWAITING, *UNDELIVERED}), message=why):
                repo.log(conn, row["id"], now, "collector", EXPIRED, {"message": why})
                self.counters["expired_here"] += 1
        self._notify()

    async def run(self, interval: float = 1.0) -> None:
        """Sweep until cancelled."""
        while True:
            try:
                await asyncio.to_thread(self.sweep)
            except sa.exc.SQLAlchemyError:
                log.exception("commands: a sweep failed; retrying")
            await asyncio.sleep(interval)

    # --- results ---------------------------------------------------------------------------------

    def on_reply(self, reply: ReplyMessage) -> None:
        """Record a gateway's status of a command (other replies are not ours)."""
        if reply.command != COMMAND_NAME:
            return
        self.counters["replies"] += 1
        try:
            result = parse_result(reply.detail)
        except contract.ContractError:
            self.counters["bad_replies"] += 1
            return
        now = self.clock()
        with self.engine.begin() as conn:
            row = repo.by_id(conn, reply.id)
            if row is None or row["gateway_id"] != reply.gateway:
                self.counters["bad_replies"] += 1
                return
            if not policy.may_follow(row["status"], result.status):
                return
            fields = {"reason": result.reason, "message": result.message}
            if result.value is not None:
                fields["value"] = orjson.dumps(result.value).decode()
            allowed = OPEN - {result.status} if result.status == ACCEPTED else OPEN
            if repo.set_status(conn, reply.id, result.status, now, frozenset(allowed),
                               **fields):
                repo.log(conn, reply.id, now, reply.gateway, result.status,
                         result.detail() | {"gateway_at": result.at})
        self._notify()

    # --- reading ---------------------------------------------------------------------------------

    def get(self, command_id: str, who: Principal | None = None) -> dict[str, Any]:
        """A command with its audit trail (404 when unknown or out of the caller's scope)."""
        with self.engine.connect() as conn:
            row = repo.by_id(conn, command_id)
            if row is None:
                raise CommandError(404, "unknown_command", f"no command {command_id!r}")
            if who is not None:
                try:
                    self._check_scope(who, row["device_id"], row["gateway_id"])
                except CommandError:
                    raise CommandError(404, "unknown_command",
                                       f"no command {command_id!r}") from None
            return self._view(row) | {"audit": repo.trail(conn, command_id)}

    def of_device(self, who: Principal, device: str, limit: int) -> list[dict[str, Any]]:
        """A device's commands, newest first (within the caller's scope)."""
        gateway = self._gateway(device, node=False)
        self._check_scope(who, device, gateway)
        with self.engine.connect() as conn:
            return [self._view(r) for r in repo.of_device(conn, device, limit)]

    def wait(self, command_id: str, timeout: float) -> dict[str, Any]:
        """Block until the command is final or `timeout` passes (from a worker thread)."""
        def final() -> bool:
            return self._row(command_id)["status"] not in OPEN

        with self.changed:
            self.changed.wait_for(final, timeout)
        return self.get(command_id)

    def _row(self, command_id: str) -> dict[str, Any]:
        with self.engine.connect() as conn:
            row = repo.by_id(conn, command_id)
        if row is None:
            raise CommandError(404, "unknown_command", f"no command {command_id!r}")
        return row

    def _notify(self) -> None:
        with self.changed:
            self.changed.notify_all()

    @staticmethod
    def _view(row: dict[str, Any]) -> dict[str, Any]:
        args = orjson.loads(row["args"])
        return {"id": row["id"], "device": row["device_id"], "gateway": row["gateway_id"],
                "op": row["op"], "args": args, "point": args.get("point"),
                "value_written": args.get("value"),
                "issuer": row["issuer"], "issued": row["issued"], "expires": row["expires"],
                "dangerous": row["dangerous"], "confirmed_by": row["confirmed_by"],
                "status": row["status"], "reason": row["reason"], "message": row["message"],
                "value_read_back": None if row["value"] is None else orjson.loads(row["value"]),
                "sends": row["sends"], "updated": row["updated"]}
