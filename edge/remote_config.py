"""Remote configuration on the gateway: validate, write beside the current file, apply, and roll
back when the uplink does not return in time or devices that answered before go silent.

`RemoteConfig` knows nothing of the agent: it is given `apply(cfg)` (restart the agent's parts
with a config; the outbox file stays, so buffered data is kept), `uplink_ok()`,
`publish_reply(payload) -> bool` and `answering() -> set of device ids` (the polled devices
that answered since the running agent started), so its decisions can be tested with fakes and
wired into any agent. The command payload on `cmd/config` is {"id": str, "version": int,
"toml": str, "device_grace_s": float (optional)}; the answers are contract.ReplyMessages on the
gateway's `reply` channel, all with the command's id, detail.status one of:

- refused (detail.reason says why; nothing changed),
- applied (written and running, the uplink is back; the device watch starts),
- confirmed (after `applied`: every device that answered before the change and is still in
  the config answered again within the grace period),
- rolled_back (the previous config runs again; detail.reason is `uplink_lost` or
  `devices_silent`, with detail.devices the silent ones, and detail.message in words).
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson

from devices import contract
from edge.config import ConfigError, GatewayConfig, load_config, parse_config

log = logging.getLogger(__name__)

Apply = Callable[[GatewayConfig], Awaitable[None]]
MAX_CONFIG_BYTES = 256 * 1024  # a gateway config is a few kB; bigger is refused unread
MAX_ID = 64
GRACE_RANGE = (0.5, 3600.0)  # bounds of a device_grace_s given in a command


@dataclass(frozen=True, slots=True)
class Outcome:
    """The verdict on one config command."""

    id: str
    ok: bool
    status: str
    detail: dict[str, Any]


@dataclass(frozen=True, slots=True)
class Command:
    """A config command as received on `cmd/config`."""

    id: str
    version: int
    toml: str
    device_grace_s: float | None = None


def parse_command(payload: bytes) -> Command:
    """The config command in a payload, or ValueError saying what is wrong (bounded)."""
    if len(payload) > 2 * MAX_CONFIG_BYTES + 4096:  # JSON escaping may double the text
        raise ValueError(f"payload of {len(payload)} bytes: a config may have at most "
                         f"{MAX_CONFIG_BYTES} bytes")
    try:
        doc = orjson.loads(payload)
    except orjson.JSONDecodeError as exc:
        raise ValueError(f"payload is not JSON: {exc}") from None
    if not isinstance(doc, dict) or not isinstance(doc.get("toml"), str):
        raise ValueError("payload needs {'id': str, 'version': int, 'toml': str}")
    if len(doc["toml"].encode()) > MAX_CONFIG_BYTES:
        raise ValueError(f"config of {len(doc['toml'].encode())} bytes: at most "
                         f"{MAX_CONFIG_BYTES} bytes")
    version, grace = doc.get("version", 0), doc.get("device_grace_s")
    if not isinstance(version, int) or isinstance(version, bool) or not 0 <= version < 2**31:
        raise ValueError("version must be an integer from 0 to 2^31-1")
    if grace is not None and (not isinstance(grace, int | float) or isinstance(grace, bool)
                              or not GRACE_RANGE[0] <= grace <= GRACE_RANGE[1]):
        raise ValueError(f"device_grace_s must be a number from {GRACE_RANGE[0]:g} to "
                         f"{GRACE_RANGE[1]:g}")
    return Command(str(doc.get("id", ""))[:MAX_ID], version, doc["toml"],
                   float(grace) if grace is not None else None)


class RemoteConfig:
    """Handles `cmd/config` for one gateway whose config lives at `path`.

    `deadline`: seconds for the uplink to come back after a change; `device_grace`: seconds for
    the devices that answered before a change to answer again (a command may give its own).
    One change at a time: a command arriving during another's device watch waits for its end.
    """

    def __init__(self, path: Path, gateway: str, *, apply: Apply, uplink_ok: Callable[[], bool],
                 publish_reply: Callable[[bytes], bool], deadline: float = 60.0,
                 poll: float = 0.25, answering: Callable[[], set[str]] | None = None,
                 device_grace: float = 120.0) -> None:
        self.path = path
        self.previous = path.with_name(path.name + ".prev")
        self.gateway = gateway
        self.apply, self.uplink_ok, self.publish_reply = apply, uplink_ok, publish_reply
        self.answering = answering or set
        self.deadline, self.poll, self.device_grace = deadline, poll, device_grace
        self.counters = {"confirmed": 0, "refused": 0, "rolled_back": 0}  # final verdicts
        self._lock = asyncio.Lock()  # one config change at a time

    async def handle(self, payload: bytes) -> Outcome:
        """Validate, apply (or refuse, or roll back), reply, watch the devices and reply again;
        return the last outcome."""
        async with self._lock:
            outcome, change = await self._change(payload)
            await self._reply(outcome)
            if change is not None:
                outcome = await self._watch(*change)
                await self._reply(outcome)
        self.counters[outcome.status] = self.counters.get(outcome.status, 0) + 1
        return outcome

    def check(self, text: str, command_id: str) -> GatewayConfig:
        """The new config if it may be applied here; ValueError with the reason if not."""
        try:
            cfg = parse_config(text, f"cmd/config {command_id}")
        except ConfigError as exc:
            raise ValueError("; ".join(f"{k}: {m}" for k, m in exc.problems)) from None
        if cfg.gateway.id != self.gateway:
            raise ValueError(f"config is for gateway {cfg.gateway.id!r}, this is "
                             f"{self.gateway!r}")
        current = load_config(self.path)
        if cfg.outbox_path != current.outbox_path:
            raise ValueError("the outbox path may not change remotely: buffered data would be "
                             "left behind — change it on site")
        return cfg

    async def _change(self, payload: bytes) -> tuple[Outcome, _Watch | None]:
        try:
            cmd = parse_command(payload)
            cfg = self.check(cmd.toml, cmd.id)
        except (ValueError, ConfigError) as exc:
            ident = _id_of(payload)
            log.warning("config %s refused: %s", ident, exc)
            return Outcome(ident, False, "refused", {"status": "refused",
                                                     "reason": str(exc)[:2000]}), None
        before = set(self.answering())  # answered under the config running now
        old_text = self.path.read_text(encoding="utf-8")
        _write(self.previous, old_text)
        _write(self.path, cmd.toml)
        log.info("config %s (version %d) written; restarting", cmd.id, cmd.version)
        await self.apply(cfg)
        if not await self._uplink_back():
            log.warning("config %s: uplink not back within %gs; rolling back", cmd.id,
                        self.deadline)
            await self._restore(old_text)
            return Outcome(cmd.id, False, "rolled_back", {
                "status": "rolled_back", "version": cmd.version, "reason": "uplink_lost",
                "message": f"the uplink did not come back within {self.deadline:g}s with the "
                           "new config; the previous config is running again"}), None
        watched = sorted(before & {d.id for d in cfg.devices})
        grace = cmd.device_grace_s if cmd.device_grace_s is not None else self.device_grace
        return (Outcome(cmd.id, True, "applied", {"status": "applied", "version": cmd.version,
                                                  "watching": watched, "grace_s": grace}),
                (cmd, old_text, watched, grace))

    async def _watch(self, cmd: Command, old_text: str, watched: list[str],
                     grace: float) -> Outcome:
        """Confirm once every watched device answered again; roll back if some stay silent."""
        end = time.monotonic() + grace
        silent = [d for d in watched if d not in self.answering()]
        while silent and time.monotonic() < end:
            await asyncio.sleep(self.poll)
            silent = [d for d in watched if d not in self.answering()]
        if not silent:
            log.info("config %s confirmed: %d device(s) answering", cmd.id, len(watched))
            return Outcome(cmd.id, True, "confirmed", {"status": "confirmed",
                                                       "version": cmd.version,
                                                       "devices": watched})
        log.warning("config %s: %s silent for %gs after the change; rolling back", cmd.id,
                    ", ".join(silent), grace)
        await self._restore(old_text)
        return Outcome(cmd.id, False, "rolled_back", {
            "status": "rolled_back", "version": cmd.version, "reason": "devices_silent",
            "devices": silent,
            "message": f"{len(silent)} device(s) that answered before the change stayed silent "
                       f"for {grace:g}s ({', '.join(silent)}); the previous config is running "
                       "again"})

    async def _restore(self, old_text: str) -> None:
        _write(self.path, old_text)
        await self.apply(parse_config(old_text, str(self.path)))

    async def _uplink_back(self) -> bool:
        end = time.monotonic() + self.deadline
        while time.monotonic() < end:
            if self.uplink_ok():
                return True
            await asyncio.sleep(self.poll)
        return self.uplink_ok()

    async def _reply(self, outcome: Outcome) -> None:
        payload = reply_payload(self.gateway, "config", outcome.id, outcome.ok, outcome.detail)
        end = time.monotonic() + self.deadline
        while not self.publish_reply(payload):
            if time.monotonic() > end:
                log.warning("config %s: could not send the reply", outcome.id)
                return
            await asyncio.sleep(self.poll)


_Watch = tuple[Command, str, list[str], float]


def reply_payload(gateway: str, command: str, command_id: str, ok: bool,
                  detail: dict[str, Any]) -> bytes:
    """A contract v1 reply message (the fields of contract.ReplyMessage, in its order).

    Built as a plain dict: the pydantic contract models are the collector's, and importing them
    on the gateway for a reply would keep them in its memory for good.
    """
    if not contract.GATEWAY_ID_RE.fullmatch(gateway):
        raise contract.ContractError("bad_gateway_id", f"{gateway!r} is not a valid gateway id")
    return orjson.dumps({"v": contract.VERSION, "gateway": gateway, "command": str(command),
                         "id": str(command_id), "ok": bool(ok), "detail": dict(detail)})


def _id_of(payload: bytes) -> str:
    try:
        doc = orjson.loads(payload)
        return str(doc.get("id", "")) if isinstance(doc, dict) else ""
    except orjson.JSONDecodeError:
        return ""


def _write(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
