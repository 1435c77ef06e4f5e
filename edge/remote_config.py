"""Remote configuration on the gateway: validate, write beside the current file, apply, and roll
back when the uplink does not return in time.

`RemoteConfig` knows nothing of the agent: it is given `apply(cfg)` (restart the agent's parts
with a config; the outbox file stays, so buffered data is kept), `uplink_ok()` and
`publish_reply(payload) -> bool`, so its decisions can be tested with fakes and wired into any
agent. The command payload on `cmd/config` is {"id": str, "version": int, "toml": str}; the
answer is a contract.ReplyMessage on the gateway's `reply` channel with detail.status one of
applied, refused, rolled_back.
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


@dataclass(frozen=True, slots=True)
class Outcome:
    """The verdict on one config command."""

    id: str
    ok: bool
    status: str
    detail: dict[str, Any]


def parse_command(payload: bytes) -> tuple[str, int, str]:
    """(id, version, toml) of a config command, or ValueError saying what is wrong."""
    try:
        doc = orjson.loads(payload)
    except orjson.JSONDecodeError as exc:
        raise ValueError(f"payload is not JSON: {exc}") from None
    if not isinstance(doc, dict) or not isinstance(doc.get("toml"), str):
        raise ValueError("payload needs {'id': str, 'version': int, 'toml': str}")
    return str(doc.get("id", "")), int(doc.get("version", 0)), doc["toml"]


class RemoteConfig:
    """Handles `cmd/config` for one gateway whose config lives at `path`."""

    def __init__(self, path: Path, gateway: str, *, apply: Apply, uplink_ok: Callable[[], bool],
                 publish_reply: Callable[[bytes], bool], deadline: float = 60.0,
                 poll: float = 0.25) -> None:
        self.path = path
        self.previous = path.with_name(path.name + ".prev")
        self.gateway = gateway
        self.apply, self.uplink_ok, self.publish_reply = apply, uplink_ok, publish_reply
        self.deadline, self.poll = deadline, poll
        self._lock = asyncio.Lock()  # one config change at a time

    async def handle(self, payload: bytes) -> Outcome:
        """Validate, apply (or refuse, or roll back) and reply; return the outcome."""
        async with self._lock:
            outcome = await self._change(payload)
        await self._reply(outcome)
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

    async def _change(self, payload: bytes) -> Outcome:
        try:
            command_id, version, text = parse_command(payload)
            cfg = self.check(text, command_id)
        except (ValueError, ConfigError) as exc:
            ident = _id_of(payload)
            log.warning("config %s refused: %s", ident, exc)
            return Outcome(ident, False, "refused", {"status": "refused", "reason": str(exc)})
        old_text = self.path.read_text(encoding="utf-8")
        _write(self.previous, old_text)
        _write(self.path, text)
        log.info("config %s (version %d) written; restarting", command_id, version)
        await self.apply(cfg)
        if await self._uplink_back():
            return Outcome(command_id, True, "applied", {"status": "applied",
                                                         "version": version})
        log.warning("config %s: uplink not back within %gs; rolling back", command_id,
                    self.deadline)
        _write(self.path, old_text)
        await self.apply(parse_config(old_text, str(self.path)))
        return Outcome(command_id, False, "rolled_back", {
            "status": "rolled_back", "version": version,
            "reason": f"the uplink did not come back within {self.deadline:g}s with the new "
                      "config; the previous config is running again"})

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
