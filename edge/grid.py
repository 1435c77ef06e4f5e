"""Commit ticks on the poll grid: absolute deadlines, so the group commit never drifts.

A writer that sleeps one window after each commit runs late by the commit's own duration every
time: against a 1 Hz poll its tick slides round the poll cycle (a full turn in ~15 minutes at a
millisecond a commit), and whatever waits for the commit sees its latency cycle with it. Ticks
taken from a fixed origin stay where they were put: half a poll period after the polls start,
in the quiet part of the cycle, when the poll's messages have been sent and acknowledged.
"""

from __future__ import annotations

import math


def next_tick(anchor: float, period: float, after: float) -> float:
    """The first tick `anchor + k * period` (k an integer) strictly after `after`."""
    return anchor + (math.floor((after - anchor) / period) + 1) * period


def grid_anchor(origin: float, poll: float | None) -> float:
    """Where the commit ticks are anchored: half the shortest poll period past the poll grid's
    origin (the origin itself when nothing polls on a grid)."""
    return origin + poll / 2 if poll else origin
