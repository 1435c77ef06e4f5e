"""systemd readiness and watchdog: the sd_notify datagram protocol, and which loops are hung.

The protocol is tiny (sd_notify(3)): newline-separated `KEY=VALUE` assignments in one datagram
to the AF_UNIX socket named by `$NOTIFY_SOCKET`; a name starting with '@' is in the abstract
namespace (the '@' becomes a NUL byte). `$WATCHDOG_USEC` is the service's WatchdogSec; pinging
at half of it is what systemd recommends.

Policy is pure: `stalled(loops, now)` says which loops have not made progress within their
limit. The agent pings WATCHDOG=1 only while that list is empty, so a hung poll loop, outbox
writer or forwarder makes systemd restart the service (and a blocked event loop stops the
pings by itself).
"""

from __future__ import annotations

import logging
import os
import socket
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

log = logging.getLogger(__name__)

DEFAULT_TICK = 5.0  # seconds between checks when systemd asks for no watchdog


def notify_address(value: str) -> str:
    """The socket address for a $NOTIFY_SOCKET value ('@name' is abstract: '\\0name')."""
    if value.startswith("@"):
        return "\0" + value[1:]
    return value


def watchdog_period(env: Mapping[str, str] | None = None, pid: int | None = None) -> float | None:
    """Seconds between WATCHDOG=1 pings (half of $WATCHDOG_USEC), or None if not asked for."""
    env = os.environ if env is None else env
    usec = env.get("WATCHDOG_USEC", "")
    if not usec.isdigit() or int(usec) == 0:
        return None
    owner = env.get("WATCHDOG_PID", "")
    if owner.isdigit() and int(owner) != (os.getpid() if pid is None else pid):
        return None  # the watchdog is meant for another process
    return int(usec) / 2e6


class Notifier:
    """Sends sd_notify messages; a no-op when the process was not started by systemd."""

    def __init__(self, address: str | None) -> None:
        self.address = address
        self.sent = 0
        self.dropped = 0
        self._sock: socket.socket | None = None
        self._warned = False

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Notifier:
        """A notifier for $NOTIFY_SOCKET (inactive when unset)."""
        value = (os.environ if env is None else env).get("NOTIFY_SOCKET", "")
        return cls(notify_address(value) if value else None)

    @property
    def active(self) -> bool:
        """True when there is a socket to notify."""
        return self.address is not None

    def notify(self, **fields: str | int) -> bool:
        """Send one datagram `KEY=VALUE\\n...`; False if it could not be sent (never raises)."""
        if self.address is None:
            return False
        data = "\n".join(f"{k}={v}" for k, v in fields.items()).encode()
        try:
            if self._sock is None:
                # Non-blocking: a full receive queue must never stall the event loop.
                self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC
                                           | socket.SOCK_NONBLOCK)
            self._sock.sendto(data, self.address)
        except BlockingIOError:
            self.dropped += 1  # the receiver is behind; the next ping will do
            return False
        except OSError as exc:
            if not self._warned:
                log.warning("sd_notify to %r failed: %s", self.address, exc)
                self._warned = True
            self.close()
            return False
        self.sent += 1
        return True

    def close(self) -> None:
        """Close the socket (idempotent; the next notify reopens it)."""
        sock, self._sock = self._sock, None
        if sock is not None:
            sock.close()


@dataclass(frozen=True, slots=True)
class LoopState:
    """One loop's last progress (monotonic seconds) and how stale it may get; idle = exempt."""

    name: str
    progress: float
    limit: float
    idle: bool = False


def stalled(loops: Iterable[LoopState], now: float) -> list[str]:
    """Names of the loops that made no progress within their limit."""
    return [s.name for s in loops if not s.idle and now - s.progress > s.limit]


def source_limit(source: Any, bus_type: str, stall_after: float) -> float | None:
    """How long a source may go without progress, or None when it has no loop to watch.

    A poller's period is its slowest device's current interval (offline devices are probed
    less often) plus the time one full poll may take; a listener (HJ 212 over TCP) has no loop
    of its own: its connections are callbacks of the event loop, whose liveness the watchdog
    task itself proves.
    """
    override = getattr(source, "stall_limit", None)
    if isinstance(override, int | float):
        return float(override)
    if bus_type == "hj212-tcp":
        return None
    link = getattr(source, "link", None)
    if link is not None and not getattr(link, "connected", True):
        return None  # reopening its port or endpoint (with backoff) is waiting, not hanging
    devices = getattr(source, "devices", None)
    if isinstance(devices, list) and devices and hasattr(devices[0], "blocks"):
        interval = max(d.health.next_interval() for d in devices)  # current, online or not
        poll_time = max(d.timeout * (d.retries + 1) * max(1, len(d.blocks)) for d in devices)
        return interval + poll_time + stall_after
    if isinstance(devices, list) and not devices and bus_type in ("modbus-tcp", "modbus-rtu"):
        return None  # nothing to poll: the bus returns at once
    return stall_after


class StallTracker:
    """Logs once when loops hang and once when they recover; counts the rest."""

    def __init__(self) -> None:
        self.current: list[str] = []
        self.counters = {"stalls": 0, "pings": 0, "withheld": 0}

    def update(self, names: list[str]) -> bool:
        """Record the stalled loops of one check; True when all loops are healthy."""
        if names and not self.current:
            self.counters["stalls"] += 1
            log.error("watchdog: no progress in %s; withholding WATCHDOG=1 so systemd restarts "
                      "the agent", ", ".join(names))
        elif not names and self.current:
            log.info("watchdog: every loop makes progress again")
        self.current = names
        self.counters["withheld" if names else "pings"] += 1
        return not names
