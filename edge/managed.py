"""A supervised gateway agent that answers `cmd/config` and `cmd/echo` and restarts itself on a
new config, keeping its outbox file (and so every buffered reading).

Run with `python -m edge.managed --config PATH` until `citygate edge run` uses `run_managed`.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import signal
import sys
from collections.abc import Coroutine
from pathlib import Path
from typing import Any

import orjson

from devices import contract
from edge.agent import Agent
from edge.config import GatewayConfig, load_config
from edge.remote_config import RemoteConfig, reply_payload

log = logging.getLogger(__name__)


class ManagedAgent(Agent):
    """An Agent whose commands are handled by its supervisor."""

    def __init__(self, cfg: GatewayConfig, supervisor: Supervisor) -> None:
        self.supervisor = supervisor
        super().__init__(cfg)

    def _on_command(self, name: str, payload: bytes) -> None:
        self.supervisor.command(name, payload)


class Supervisor:
    """Runs one agent at a time; a config change stops it and starts the next."""

    def __init__(self, path: Path, *, rollback_after: float = 60.0) -> None:
        self.path = path
        self.cfg = load_config(path)
        self.agent: ManagedAgent | None = None
        self._restart: asyncio.Event = asyncio.Event()
        self._running: asyncio.Event = asyncio.Event()
        self._tasks: set[asyncio.Task[object]] = set()
        self.remote = RemoteConfig(path, self.cfg.gateway.id, apply=self.apply,
                                   uplink_ok=self.uplink_ok, publish_reply=self.publish_reply,
                                   deadline=rollback_after)

    def uplink_ok(self) -> bool:
        """True while the running agent is connected to a broker."""
        return self.agent is not None and self.agent.uplink.connected.is_set()

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
        elif name == "echo":
            ident = _id(payload)
            self.publish_reply(reply_payload(self.cfg.gateway.id, "echo", ident, True, {}))
        else:
            log.info("command %r received (%d bytes); no handler", name, len(payload))

    def _spawn(self, coro: Coroutine[Any, Any, object], name: str) -> None:
        task = asyncio.create_task(coro, name=name)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def run(self, stop: asyncio.Event) -> None:
        """Run agents until `stop` is set."""
        try:
            while not stop.is_set():
                self._restart.clear()
                agent_stop = asyncio.Event()
                self.agent = ManagedAgent(self.cfg, self)
                run = asyncio.create_task(self.agent.run(agent_stop), name="agent")
                await self.agent.started.wait()
                self._running.set()
                waits = [asyncio.create_task(stop.wait()), asyncio.create_task(
                    self._restart.wait()), run]
                await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
                agent_stop.set()
                await run  # the outbox is committed and closed before the next agent opens it
                for w in waits:
                    w.cancel()
        finally:
            for t in list(self._tasks):
                t.cancel()


def _id(payload: bytes) -> str:
    with contextlib.suppress(orjson.JSONDecodeError, AttributeError):
        return str(orjson.loads(payload).get("id", ""))
    return ""


async def run_managed(path: Path, stop: asyncio.Event, rollback_after: float = 60.0) -> None:
    """Run the gateway at `path` with remote configuration until `stop` is set."""
    await Supervisor(path, rollback_after=rollback_after).run(stop)


def main(argv: list[str] | None = None) -> int:
    """`python -m edge.managed --config PATH [--rollback-after SECONDS]`."""
    p = argparse.ArgumentParser(prog="edge.managed")
    p.add_argument("--config", type=Path, required=True)
    p.add_argument("--rollback-after", type=float, default=60.0)
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, stream=sys.stderr,
                        format="%(asctime)s %(levelname)-7s %(name)s: %(message)s")

    async def runner() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        await run_managed(args.config, stop, args.rollback_after)

    asyncio.run(runner())
    return 0


if __name__ == "__main__":
    sys.exit(main())
