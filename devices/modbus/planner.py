"""Read planner: coalesce a device's points into the fewest Modbus read requests."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from devices.modbus.codec import Point, Table

MAX_REGISTERS = 125  # Modbus limit for function 3/4 reads
MAX_BITS = 2000  # Modbus limit for function 1/2 reads


@dataclass(frozen=True, slots=True)
class ReadBlock:
    """One read request: a table, a start address, a count, and the points it serves."""

    table: Table
    start: int
    count: int
    points: tuple[Point, ...]

    def slice_for(self, point: Point, data: Sequence[int]) -> Sequence[int]:
        """Return the registers/bits of `point` out of this block's response data."""
        first = point.address - self.start
        return data[first : first + point.count]


def plan_reads(
    points: Iterable[Point],
    *,
    max_count: int = MAX_REGISTERS,
    max_gap: int = 8,
    barriers: frozenset[tuple[Table, int]] = frozenset(),
) -> list[ReadBlock]:
    """Group points into blocks of at most `max_count` registers, bridging gaps of `max_gap`.

    A barrier (table, address) forces a new block to start at that address; the bus learns
    barriers when a device rejects part of a coalesced block with exception 2.
    """
    by_table: dict[Table, list[Point]] = {}
    for p in points:
        by_table.setdefault(p.table, []).append(p)
    blocks: list[ReadBlock] = []
    for table in Table:
        pts = sorted(by_table.get(table, ()), key=lambda p: (p.address, p.count))
        limit = min(max_count, MAX_BITS) if table.is_bits else min(max_count, MAX_REGISTERS)
        blocks.extend(_plan_table(table, pts, limit, max_gap, barriers))
    return blocks


def _plan_table(
    table: Table,
    pts: list[Point],
    limit: int,
    max_gap: int,
    barriers: frozenset[tuple[Table, int]],
) -> list[ReadBlock]:
    blocks: list[ReadBlock] = []
    current: list[Point] = []
    start = end = 0
    for p in pts:
        if current:
            fits = max(end, p.end) - start <= limit
            near = p.address - end <= max_gap
            # A barrier starts a new block, unless the point shares registers already read.
            barrier = (table, p.address) in barriers and p.address >= end
            if fits and near and not barrier:
                current.append(p)
                end = max(end, p.end)
                continue
            blocks.append(ReadBlock(table, start, end - start, tuple(current)))
        current, start, end = [p], p.address, p.end
    if current:
        blocks.append(ReadBlock(table, start, end - start, tuple(current)))
    return blocks


def split_block(block: ReadBlock) -> tuple[frozenset[tuple[Table, int]], bool]:
    """Return the barrier that halves a rejected block, and whether the block could be split.

    A block of one point cannot be split: the point itself is unreadable.
    """
    later = [p.address for p in block.points if p.address > block.start]
    if not later:  # one point, or several sharing the first register (bit fields)
        return frozenset(), False
    middle = max(block.points[len(block.points) // 2].address, later[0])
    return frozenset({(block.table, middle)}), True
