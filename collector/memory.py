"""Give the heap memory a collector freed back to the operating system.

A burst of ingest (a district's gateways replaying their outboxes, every parking sensor's
start-up report) decodes and stores large batches; glibc's allocator keeps the memory those
freed for reuse, so a process that once held a burst keeps its RSS. `malloc_trim(0)` returns
the free pages of every arena. It walks the heap (15-35 ms with a 450 MB heap), so an ingest
writer calls it at most once per interval, after a batch is stored, on its own thread, never
on an event loop. Elsewhere than glibc it does nothing.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import gc
import logging
import time
from collections.abc import Callable

log = logging.getLogger(__name__)

TRIM_INTERVAL_S = 30.0
# The cyclic garbage collector's thresholds once a collector has started (Python's: 700, 10,
# 10). At 700 allocations a young collection runs every few envelopes, and the objects of a
# batch still being stored survive it into the oldest generation, whose full collections then
# walk the whole heap: 6 of them took 0.73 s of the 6.5 s of CPU a collector spent storing
# 60,000 lift-change envelopes (`python -m bench ingest`, timed with gc.callbacks); settled
# (below), 0.02-0.04 s.
GC_THRESHOLDS = (50_000, 20, 10)


_frozen = 0  # objects settle_heap froze


def settle_heap() -> None:
    """Once a collector process has started (modules, schema, features, models loaded):
    collect once, move what survives out of the collector's sight for good (`gc.freeze`,
    nothing of it is cyclic garbage later), and collect young objects less often."""
    global _frozen
    gc.collect()
    gc.freeze()
    gc.set_threshold(*GC_THRESHOLDS)
    _frozen = gc.get_freeze_count()


def frozen() -> int:
    """Objects settle_heap froze. Counted once: `gc.get_freeze_count()` walks them all,
    holding the interpreter lock, and the health endpoint, which shows the figure, held it
    2.3 % of the time the ingest writers needed at 13,000 envelopes/s with a poll a second
    (py-spy --gil, `python -m bench city_hour --workers 1 --rate 13000`)."""
    return _frozen


def _malloc_trim() -> Callable[[int], int] | None:
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        trim: Callable[[int], int] = libc.malloc_trim
    except (OSError, AttributeError):  # not glibc (musl, macOS)
        return None
    return trim


class MemoryTrimmer:
    """Calls malloc_trim at most every `interval` seconds (of `clock`)."""

    def __init__(self, interval: float = TRIM_INTERVAL_S,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.interval, self.clock = interval, clock
        self._trim = _malloc_trim()
        self._last = clock()
        self.trims = 0

    @property
    def available(self) -> bool:
        """Whether this C library can trim (glibc)."""
        return self._trim is not None

    def due(self) -> bool:
        """Whether `maybe` would trim now."""
        return self._trim is not None and self.clock() - self._last >= self.interval

    def maybe(self) -> bool:
        """Trim if the interval has passed since the last trim; whether it trimmed."""
        trim = self._trim
        if trim is None or not self.due():
            return False
        self._last = self.clock()
        try:
            trim(0)
        except Exception:  # never let housekeeping stop ingest
            log.exception("collector: malloc_trim failed; not trying again")
            self._trim = None
            return False
        self.trims += 1
        return True
