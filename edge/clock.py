"""Is the gateway's wall clock trustworthy? Gateways without a real-time clock boot in 1970."""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import logging
import time

log = logging.getLogger(__name__)

# A gateway clock earlier than this cannot be right: this software did not exist before it.
EARLIEST_PLAUSIBLE_MS = 1_735_689_600_000  # 2025-01-01T00:00:00Z
_TIME_ERROR = 5  # adjtimex(2) return value when the kernel says the clock is not synchronised


class _Timex(ctypes.Structure):
    _fields_ = [("modes", ctypes.c_uint), ("_pad", ctypes.c_byte * 204)]


@functools.cache
def _libc() -> ctypes.CDLL | None:
    """The C library, looked up once: find_library runs `/sbin/ldconfig -p` on every call, and
    the agent asks about the clock every few seconds."""
    name = ctypes.util.find_library("c")
    if not name:
        return None
    try:
        return ctypes.CDLL(name, use_errno=True)
    except OSError:
        return None


def kernel_says_synced() -> bool | None:
    """Ask the kernel (adjtimex) whether NTP keeps the clock synchronised; None if unknown."""
    libc = _libc()
    if libc is None:
        return None
    try:
        tx = _Timex()
        state = libc.adjtimex(ctypes.byref(tx))
    except (OSError, AttributeError):
        return None
    if state < 0:
        return None
    return bool(state != _TIME_ERROR)


def now_ms() -> int:
    """Wall-clock time in epoch milliseconds."""
    return int(time.time() * 1000)


def mono_ms() -> int:
    """Monotonic time in milliseconds (comparable within one boot)."""
    return int(time.monotonic() * 1000)


def plausible(now_ms: int) -> bool:
    """A wall-clock time that can be true for a running CityGate gateway."""
    return now_ms >= EARLIEST_PLAUSIBLE_MS


def clock_synced(policy: str = "auto", now_ms: int | None = None) -> bool:
    """Decide whether readings taken now carry trustworthy wall-clock times.

    policy "auto": the time must be plausible and the kernel must not report it unsynchronised;
    "trust": always synchronised (a site with a known-good RTC and no NTP);
    "untrusted": never (the collector then places readings on its own clock).
    """
    if policy == "trust":
        return True
    if policy == "untrusted":
        return False
    now = int(time.time() * 1000) if now_ms is None else now_ms
    if not plausible(now):
        return False
    return kernel_says_synced() is not False
