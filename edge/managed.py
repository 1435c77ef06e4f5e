"""A supervised gateway agent that answers `cmd/config`, `cmd/update` and `cmd/echo`, and
restarts itself on a new config or into a new version, keeping its outbox file (and so every
buffered reading).

`cmd/update` payload: {"id", "version", "url", "token"}: the bundle is downloaded from `url`
with `Authorization: Bearer <token>` (a one-time token for this gateway and version, delivered
over the broker's authenticated command topic), verified, installed and switched to
(edge/update.py). Replies (command "update"): refused, failed, applied or rolled_back.

Run with `python -m edge.managed --config PATH` until `citygate edge run` uses `run_managed`.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import signal
import sys
import time
import urllib.request
from collections.abc import Coroutine
from pathlib import Path
from typing import Any

import orjson

from devices import contract
from devices.commands import COMMAND_NAME
from edge.agent import VERSION, Agent
from edge.config import GatewayConfig, load_config
from edge.heap import tune_malloc
from edge.outbox import OutboxError
from edge.remote_config import RemoteConfig, reply_payload
from edge.update import (
    STATE_FILE,
    UpdateRefused,
    UpdateState,
    current_process,
    healthy,
    install,
    load_public_key,
    new_version_argv,
    point_current,
    reexec,
    verify_bundle,
)

log = logging.getLogger(__name__)


class ManagedAgent(Agent):
    """An Agent whose commands are handled by its supervisor."""

    def __init__(self, cfg: GatewayConfig, supervisor: Supervisor) -> None:
        self.supervisor = supervisor
        super().__init__(cfg)

    def health(self) -> dict[str, object]:
        """The agent's health message, with the supervisor's config verdicts counted."""
        message = super().health()
        counters = message["counters"]
        if isinstance(counters, dict):
            counters.update({f"config_{k}": v for k, v in self.supervisor.remote.counters.items()})
        return message

    def _on_command(self, name: str, payload: bytes) -> None:
        if name == COMMAND_NAME:  # device commands belong to the running agent
            super()._on_command(name, payload)
            return
        self.supervisor.command(name, payload)


class Supervisor:
    """Runs one agent at a time; a config change stops it and starts the next."""

    def __init__(self, path: Path, *, rollback_after: float = 60.0,
                 device_grace: float = 120.0) -> None:
        self.path = path
        self.cfg = load_config(path)
        self.agent: ManagedAgent | None = None
        self._restart: asyncio.Event = asyncio.Event()
        self._running: asyncio.Event = asyncio.Event()
        self._tasks: set[asyncio.Task[object]] = set()
        self.remote = RemoteConfig(path, self.cfg.gateway.id, apply=self.apply,
                                   uplink_ok=self.uplink_ok, publish_reply=self.publish_reply,
                                   deadline=rollback_after, answering=self.answering,
                                   device_grace=device_grace)
        self.exec_request: tuple[str, list[str]] | None = None  # re-exec once the agent stopped
        self._update_lock = asyncio.Lock()

    @property
    def update_state_path(self) -> Path:
        """Where the update in progress is recorded (beside the outbox both versions share)."""
        return self.cfg.outbox_path.parent / STATE_FILE

    def uplink_ok(self) -> bool:
        """True while the running agent is connected to a broker."""
        return self.agent is not None and self.agent.uplink.connected.is_set()

    def answering(self) -> set[str]:
        """Polled devices that answered since the running agent started and are online."""
        if self.agent is None:
            return set()
        return answering_devices(self.agent)

    def publish_reply(self, payload: bytes) -> bool:
        """Publish on the reply channel through the running agent's uplink."""
        if self.agent is None:
            return False
        topic = contract.topic(self.cfg.gateway.id, contract.REPLY)
        return self.agent.uplink.publish(topic, payload) is not None

    async def apply(self, cfg: GatewayConfig) -> None:
        """Stop the running agent and start one with `cfg`; return when it has started."""
        self.cfg = cfg
        self._running.clear()
        self._restart.set()
        await self._running.wait()

    def command(self, name: str, payload: bytes) -> None:
        """Dispatch a command received by the agent (called on the event loop)."""
        if name == "config":
            self._spawn(self.remote.handle(payload), "remote-config")
        elif name == "update":
            self._spawn(self.update(payload), "update")
        elif name == "echo":
            ident = _id(payload)
            self.publish_reply(reply_payload(self.cfg.gateway.id, "echo", ident, True, {}))
        else:
            log.info("command %r received (%d bytes); no handler", name, len(payload))

    def _spawn(self, coro: Coroutine[Any, Any, object], name: str) -> None:
        task = asyncio.create_task(coro, name=name)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    # --- signed updates -------------------------------------------------------------------------

    async def update(self, payload: bytes) -> None:
        """Handle `cmd/update`: download, verify, install beside, then switch (re-exec)."""
        ident = _id(payload)
        async with self._update_lock:
            try:
                doc = orjson.loads(payload)
                version, url, token = str(doc["version"]), str(doc["url"]), str(doc["token"])
            except (orjson.JSONDecodeError, KeyError, TypeError):
                self._reply_update(ident, "refused", version="", reason="payload needs "
                                   "{'id', 'version', 'url', 'token'}")
                return
            ucfg = self.cfg.update
            try:
                if not ucfg.public_key:
                    raise UpdateRefused("updates are off here: no [update] public_key")
                key = load_public_key(ucfg.public_key)
                data = await asyncio.to_thread(_download, url, token, ucfg.download_timeout)
                manifest, files = verify_bundle(data, key)
                if manifest.version != version:
                    raise UpdateRefused(f"bundle is version {manifest.version}, not {version}")
                if version == VERSION:
                    self._reply_update(ident, "applied", version, reason="already running")
                    return
                log.info("update %s: version %s verified; installing", ident, version)
                target = await asyncio.to_thread(install, manifest, files, ucfg.root)
            except (UpdateRefused, ValueError) as exc:
                log.warning("update %s refused: %s", ident, exc)
                self._reply_update(ident, "refused", version, reason=str(exc))
                return
            except OSError as exc:
                log.warning("update %s failed: %s", ident, exc)
                self._reply_update(ident, "failed", version, reason=f"download: {exc}")
                return
            UpdateState(ident, version, "switching", current_process(),
                        ucfg.health_deadline).save(self.update_state_path)
            point_current(ucfg.root, target)
            log.info("update %s: switching to %s", ident, version)
            self._switch(str(target / "bin" / "python"), new_version_argv(target, self.path))

    def _switch(self, python: str, argv: list[str]) -> None:
        self.exec_request = (python, argv)
        self._running.clear()
        self._restart.set()

    def _reply_update(self, ident: str, status: str, version: str, reason: str = "",
                      **extra: Any) -> bool:
        detail = {"status": status, "version": version, "running": VERSION, **extra}
        if reason:
            detail["reason"] = reason
        return self.publish_reply(reply_payload(self.cfg.gateway.id, "update", ident,
                                                status == "applied", detail))

    async def resume_update(self) -> None:
        """After a start: judge a version just switched to, or report a rollback."""
        path = self.update_state_path
        state = UpdateState.load(path)
        if state is None:
            return
        if state.status == "switching":
            if state.version != VERSION:  # the new version never ran as itself
                state.status, state.reason = "rolled_back", "the new version did not start"
            else:
                ok, why = await self._health_check(state.deadline_s)
                if not ok:
                    self._roll_back(state, why)
                    return
                state.status = "applied"
            state.save(path)
        if not state.replied:
            extra = {"previous": state.previous.version} if state.status == "applied" else {}
            await self._send_until(lambda: self._reply_update(
                state.id, state.status, state.version, state.reason, **extra))
            state.replied = True
            state.save(path)

    def _roll_back(self, state: UpdateState, why: str) -> None:
        log.error("update %s: version %s is not healthy (%s); rolling back to %s", state.id,
                  state.version, why, state.previous.version)
        state.status, state.reason = "rolled_back", f"health check failed: {why}"
        state.save(self.update_state_path)
        if state.previous.venv and Path(state.previous.venv).is_relative_to(self.cfg.update.root):
            point_current(self.cfg.update.root, Path(state.previous.venv))
        self._switch(state.previous.python, state.previous.argv)

    async def _health_check(self, deadline: float) -> tuple[bool, str]:
        end = time.monotonic() + deadline
        t0, why = time.monotonic(), "not checked"
        while time.monotonic() < end:
            agent = self.agent
            if agent is not None and agent.started.is_set():  # its outbox is open
                started = all(s.progress > t0 for s in agent.loop_states() if not s.idle
                              and s.name.startswith("bus-"))
                ok, why = healthy(stalled=agent.stalls.current,
                                  uplink_up=agent.uplink.connected.is_set(),
                                  outbox_readings=agent.outbox.stats()["readings"],
                                  acked_since_start=agent.outbox.counters["acked_messages"])
                if ok and started:
                    return True, why
                why = why if not ok else "the poll loops have not run yet"
            await asyncio.sleep(0.5)
        return False, why

    def _reexec(self, python: str, argv: list[str]) -> None:
        try:
            reexec(python, argv)  # does not return
        except OSError as exc:  # keep running this version and say so
            log.error("cannot execute %s: %s; staying on %s", python, exc, VERSION)
            self.exec_request = None
            state = UpdateState.load(self.update_state_path)
            if state is not None and state.status == "switching":
                state.status, state.reason = "rolled_back", f"cannot execute {python}: {exc}"
                state.save(self.update_state_path)
            self._spawn(self.resume_update(), "update-check")

    async def _send_until(self, send: Any, patience: float = 600.0) -> None:
        end = time.monotonic() + patience
        while time.monotonic() < end:
            if send():
                return
            await asyncio.sleep(0.5)

    # --- running ---------------------------------------------------------------------------------

    async def run(self, stop: asyncio.Event) -> None:
        """Run agents until `stop` is set (or re-execute into another version)."""
        self._spawn(self.resume_update(), "update-check")
        try:
            while not stop.is_set():
                self._restart.clear()
                agent_stop = asyncio.Event()
                self.agent = ManagedAgent(self.cfg, self)
                run = asyncio.create_task(self.agent.run(agent_stop), name="agent")
                started = asyncio.create_task(self.agent.started.wait())
                await asyncio.wait([started, run], return_when=asyncio.FIRST_COMPLETED)
                if not started.done():  # the agent ended before it started: never wait on
                    started.cancel()
                    await run  # raises why (logged by the agent)
                    raise RuntimeError(f"gateway {self.cfg.gateway.id} stopped while starting")
                self._running.set()
                waits = [asyncio.create_task(stop.wait()), asyncio.create_task(
                    self._restart.wait()), run]
                await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
                agent_stop.set()
                await run  # the outbox is committed and closed before the next agent opens it
                for w in waits:
                    w.cancel()
                if self.exec_request is not None:
                    self._reexec(*self.exec_request)
        finally:
            for t in list(self._tasks):
                t.cancel()


def answering_devices(agent: Agent) -> set[str]:
    """Devices of `agent` that answered at least once and are online now.

    Polled Modbus devices count good polls (`ok`), HJ 212 stations received frames; parking
    sensors report when they like (no online state) and are never counted.
    """
    out = set()
    for bus in agent.buses:
        health = bus.device_health() if hasattr(bus, "device_health") else {}
        for device, h in health.items():
            answered = _count(h.get("ok")) + _count(h.get("frames"))
            if h.get("online") is True and answered > 0:
                out.add(device)
    return out


def _count(value: object) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) else 0


def _download(url: str, token: str, timeout: float) -> bytes:
    """GET the bundle with the one-time download token (runs in a worker thread)."""
    req = urllib.request.Request(url, headers={"Authorization": f"Bearer {token}"})
    with urllib.request.urlopen(req, timeout=timeout) as r:
        data: bytes = r.read()
    return data


def _id(payload: bytes) -> str:
    with contextlib.suppress(orjson.JSONDecodeError, AttributeError):
        return str(orjson.loads(payload).get("id", ""))
    return ""


async def run_managed(path: Path, stop: asyncio.Event, rollback_after: float = 60.0,
                      device_grace: float = 120.0) -> None:
    """Run the gateway at `path` with remote configuration until `stop` is set."""
    tune_malloc()  # before any socket is read (edge/heap.py)
    await Supervisor(path, rollback_after=rollback_after, device_grace=device_grace).run(stop)


def main(argv: list[str] | None = None) -> int:
    """`python -m edge.managed --config PATH [--rollback-after S] [--device-grace S]`."""
    p = argparse.ArgumentParser(prog="edge.managed")
    p.add_argument("--config", type=Path, required=True)
    p.add_argument("--rollback-after", type=float, default=60.0,
                   help="seconds for the uplink to come back after a config change")
    p.add_argument("--device-grace", type=float, default=120.0,
                   help="seconds for devices that answered before a config change to answer "
                        "again (a push may give its own)")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, stream=sys.stderr,
                        format="%(asctime)s %(levelname)-7s %(name)s: %(message)s")

    async def runner() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        await run_managed(args.config, stop, args.rollback_after, args.device_grace)

    try:
        asyncio.run(runner())
    except OutboxError:  # logged as the reason; a non-zero exit lets systemd restart us
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
