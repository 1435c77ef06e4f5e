"""Read planner: coalescing points into Modbus reads, limits, tables, barriers and splits."""

from __future__ import annotations

import itertools

import pytest
from hypothesis import given
from hypothesis import strategies as st

from devices.modbus.codec import DataType, Point, Table, decode, encode
from devices.modbus.planner import MAX_BITS, MAX_REGISTERS, ReadBlock, plan_reads, split_block
from devices.profiles import load_profile


def u16(address: int, table: Table = Table.HOLDING, quantity: str = "floor") -> Point:
    return Point(quantity, address, table=table)


def spans(blocks: list[ReadBlock]) -> list[tuple[Table, int, int]]:
    return [(b.table, b.start, b.count) for b in blocks]


def test_no_points_no_blocks() -> None:
    assert plan_reads([]) == []


def test_contiguous_profile_is_one_block() -> None:
    points = [u16(a) for a in range(10)] + [Point("trip_count", 10, type=DataType.U32)]
    blocks = plan_reads(points)
    assert spans(blocks) == [(Table.HOLDING, 0, 12)]
    assert blocks[0].points == tuple(points)


def test_unsorted_input_is_sorted_by_address() -> None:
    points = [u16(5), u16(1), u16(3)]
    (block,) = plan_reads(points)
    assert [p.address for p in block.points] == [1, 3, 5]
    assert (block.start, block.count) == (1, 5)


@pytest.mark.parametrize("gap", [0, 1, 7, 8])
def test_gap_up_to_max_gap_is_bridged(gap: int) -> None:
    # A gap of `gap` unused registers between the two points.
    blocks = plan_reads([u16(0), u16(1 + gap)], max_gap=8)
    assert spans(blocks) == [(Table.HOLDING, 0, 2 + gap)]


@pytest.mark.parametrize("gap", [9, 10, 100])
def test_gap_above_max_gap_splits(gap: int) -> None:
    blocks = plan_reads([u16(0), u16(1 + gap)], max_gap=8)
    assert spans(blocks) == [(Table.HOLDING, 0, 1), (Table.HOLDING, 1 + gap, 1)]


def test_max_gap_zero_only_joins_adjacent() -> None:
    blocks = plan_reads([u16(0), u16(1), u16(3)], max_gap=0)
    assert spans(blocks) == [(Table.HOLDING, 0, 2), (Table.HOLDING, 3, 1)]


def test_register_limit_is_125() -> None:
    assert MAX_REGISTERS == 125
    blocks = plan_reads([u16(a) for a in range(300)], max_count=1000)
    assert spans(blocks) == [
        (Table.HOLDING, 0, 125), (Table.HOLDING, 125, 125), (Table.HOLDING, 250, 50)]


def test_multi_register_point_is_not_torn_at_the_limit() -> None:
    points = [u16(a) for a in range(123)] + [Point("trip_count", 123, type=DataType.U64)]
    blocks = plan_reads(points)
    assert spans(blocks) == [(Table.HOLDING, 0, 123), (Table.HOLDING, 123, 4)]


def test_bit_tables_allow_2000_bits() -> None:
    assert MAX_BITS == 2000
    coils = [Point("alarm_button", a, table=Table.COIL, type=DataType.BOOL) for a in range(2500)]
    blocks = plan_reads(coils, max_count=5000)
    assert spans(blocks) == [(Table.COIL, 0, 2000), (Table.COIL, 2000, 500)]
    # The default max_count (125) applies to bit tables too.
    assert [b.count for b in plan_reads(coils)] == [125] * 20


def test_tables_are_never_mixed() -> None:
    points = [u16(0), u16(1, Table.INPUT), u16(2), u16(0, Table.COIL), u16(1, Table.DISCRETE)]
    blocks = plan_reads(points)
    assert sorted(spans(blocks)) == sorted([
        (Table.HOLDING, 0, 3), (Table.INPUT, 1, 1), (Table.COIL, 0, 1), (Table.DISCRETE, 1, 1),
    ])
    for b in blocks:
        assert all(p.table is b.table for p in b.points)


def test_barrier_forces_a_split() -> None:
    points = [u16(a) for a in range(10)]
    blocks = plan_reads(points, barriers=frozenset({(Table.HOLDING, 4)}))
    assert spans(blocks) == [(Table.HOLDING, 0, 4), (Table.HOLDING, 4, 6)]


def test_barrier_only_applies_to_its_table() -> None:
    points = [u16(a) for a in range(4)] + [u16(a, Table.INPUT) for a in range(4)]
    blocks = plan_reads(points, barriers=frozenset({(Table.INPUT, 2)}))
    assert sorted(spans(blocks)) == sorted(
        [(Table.HOLDING, 0, 4), (Table.INPUT, 0, 2), (Table.INPUT, 2, 2)])


def test_barrier_at_a_gap_address_has_no_effect() -> None:
    blocks = plan_reads([u16(0), u16(5)], barriers=frozenset({(Table.HOLDING, 3)}))
    assert spans(blocks) == [(Table.HOLDING, 0, 6)]


def test_split_block_halves() -> None:
    (block,) = plan_reads([u16(a) for a in range(10)])
    barriers, ok = split_block(block)
    assert ok
    assert barriers == frozenset({(Table.HOLDING, 5)})
    halves = plan_reads(block.points, barriers=barriers)
    assert spans(halves) == [(Table.HOLDING, 0, 5), (Table.HOLDING, 5, 5)]


def test_split_block_of_two_points() -> None:
    (block,) = plan_reads([u16(0, Table.INPUT), u16(7, Table.INPUT)])
    barriers, ok = split_block(block)
    assert (barriers, ok) == (frozenset({(Table.INPUT, 7)}), True)


def test_repeated_splits_end_in_single_point_blocks() -> None:
    """A bus that keeps splitting rejected blocks ends with one read per point, and stops."""
    points = [u16(a) for a in range(7)]
    barriers: frozenset[tuple[Table, int]] = frozenset()
    for _ in range(20):
        blocks = plan_reads(points, barriers=barriers)
        splittable = [b for b in blocks if split_block(b)[1]]
        if not splittable:
            break
        barriers |= split_block(splittable[0])[0]
    assert spans(plan_reads(points, barriers=barriers)) == [
        (Table.HOLDING, a, 1) for a in range(7)]


def test_single_point_block_cannot_split() -> None:
    (block,) = plan_reads([Point("trip_count", 40, type=DataType.U64)])
    assert split_block(block) == (frozenset(), False)


def test_block_of_points_sharing_one_register_cannot_split() -> None:
    shared = [Point("door_closed", 5, bits=(0, 1)), Point("door_zone", 5, bits=(1, 1))]
    (block,) = plan_reads(shared)
    assert (block.start, block.count) == (5, 1)
    assert split_block(block) == (frozenset(), False)


def test_barrier_inside_shared_register_does_not_read_it_twice() -> None:
    points = [u16(4), Point("door_closed", 5, bits=(0, 1)), Point("door_zone", 5, bits=(1, 1))]
    (block,) = plan_reads(points)
    barriers, ok = split_block(block)
    assert ok
    assert barriers == frozenset({(Table.HOLDING, 5)})
    assert spans(plan_reads(points, barriers=barriers)) == [
        (Table.HOLDING, 4, 1), (Table.HOLDING, 5, 1)]


def test_slice_for_returns_the_points_registers() -> None:
    points = [
        u16(10, quantity="floor"),
        Point("trip_count", 11, type=DataType.U32),
        Point("speed", 16, scale=0.01),  # after a gap of 3
        Point("running_hours", 17, type=DataType.F64),
    ]
    (block,) = plan_reads(points)
    assert (block.start, block.count) == (10, 11)
    data = list(range(1000, 1011))
    assert block.slice_for(points[0], data) == [1000]
    assert block.slice_for(points[1], data) == [1001, 1002]
    assert block.slice_for(points[2], data) == [1006]
    assert block.slice_for(points[3], data) == [1007, 1008, 1009, 1010]


def test_slice_for_decodes_values_end_to_end() -> None:
    points = [Point("floor", 3, type=DataType.I16), Point("trip_count", 8, type=DataType.U32)]
    (block,) = plan_reads(points)
    data = [0] * block.count
    for p, v in zip(points, (-2, 123456), strict=True):
        regs = encode(p, v)
        data[p.address - block.start : p.end - block.start] = regs
    assert [decode(p, block.slice_for(p, data)) for p in points] == [-2, 123456]


def test_shipped_elevator_profile_plans_into_one_block() -> None:
    profile = load_profile("elevator-gbt24476")
    blocks = plan_reads(profile.points, max_gap=profile.max_gap)
    assert len(blocks) == 1
    (block,) = blocks
    assert (block.table, block.start, block.count) == (Table.HOLDING, 0, 24)
    assert [p.quantity for p in block.points] == [p.quantity for p in profile.points]


# --- properties over random point sets -----------------------------------------------------------

TYPES = [DataType.U16, DataType.I16, DataType.U32, DataType.F32, DataType.U64, DataType.F64]
points_st = st.lists(
    st.builds(
        lambda table, address, dtype: Point("floor", address, table=table, type=dtype),
        st.sampled_from(list(Table)),
        st.integers(0, 600),
        st.sampled_from(TYPES),
    ),
    max_size=80,
)


@st.composite
def non_overlapping_points(draw: st.DrawFn) -> list[Point]:
    """Points laid out as in a real register map: each register belongs to one point."""
    out: list[Point] = []
    for table in Table:
        address = draw(st.integers(0, 20))
        for _ in range(draw(st.integers(0, 40))):
            dtype = draw(st.sampled_from(TYPES))
            p = Point("floor", address, table=table, type=dtype)
            out.append(p)
            address = p.end + draw(st.integers(0, 15))
    return draw(st.permutations(out))


def _check_plan(points: list[Point], blocks: list[ReadBlock], max_count: int) -> None:
    # Every point is covered exactly once (by identity of its position in the input).
    covered = [id(p) for b in blocks for p in b.points]
    assert sorted(covered) == sorted(id(p) for p in points)
    for b in blocks:
        limit = min(max_count, MAX_BITS if b.table.is_bits else MAX_REGISTERS)
        assert 1 <= b.count <= limit
        for p in b.points:
            assert p.table is b.table
            assert b.start <= p.address
            assert p.end <= b.start + b.count
        # The block is tight: it starts at its first point and ends at its last register.
        assert b.start == min(p.address for p in b.points)
        assert b.start + b.count == max(p.end for p in b.points)


@given(points=points_st, max_count=st.integers(4, 300), max_gap=st.integers(0, 30))
def test_random_point_sets_are_covered_within_limits(
    points: list[Point], max_count: int, max_gap: int
) -> None:
    blocks = plan_reads(points, max_count=max_count, max_gap=max_gap)
    _check_plan(points, blocks, max_count)


@given(points=non_overlapping_points(), max_count=st.integers(4, 300),
       max_gap=st.integers(0, 30), data=st.data())
def test_blocks_never_overlap(
    points: list[Point], max_count: int, max_gap: int, data: st.DataObject
) -> None:
    barriers = frozenset(data.draw(st.lists(
        st.tuples(st.sampled_from(list(Table)), st.integers(0, 700)), max_size=10)))
    blocks = plan_reads(points, max_count=max_count, max_gap=max_gap, barriers=barriers)
    _check_plan(points, blocks, max_count)
    for table in Table:
        mine = sorted((b for b in blocks if b.table is table), key=lambda b: b.start)
        for before, after in itertools.pairwise(mine):
            assert before.start + before.count <= after.start
            # Blocks were split for a reason: too far apart, too long, or a barrier.
            gap = after.start - (before.start + before.count)
            limit = min(max_count, MAX_BITS if table.is_bits else MAX_REGISTERS)
            too_long = after.points[0].end - before.start > limit
            assert gap > max_gap or too_long or (table, after.start) in barriers
    # No block reads across a barrier: a barrier address can only be where a block starts.
    for b in blocks:
        for p in b.points:
            if p.address != b.start:
                assert (b.table, p.address) not in barriers


@given(points=non_overlapping_points())
def test_split_block_barrier_splits_exactly_that_block(points: list[Point]) -> None:
    for block in plan_reads(points):
        barriers, ok = split_block(block)
        assert ok == (len({p.address for p in block.points}) > 1)
        if not ok:
            continue
        ((table, address),) = barriers
        assert table is block.table
        assert block.start < address < block.start + block.count
        halves = plan_reads(block.points, barriers=barriers)
        assert len(halves) == 2
        assert halves[1].start == address
        assert sum(len(h.points) for h in halves) == len(block.points)
