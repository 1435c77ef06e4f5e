"""Pure bus policy: leftover-time probes, suspect retries, block splitting, sim behaviours."""

from __future__ import annotations

import asyncio

import pytest

from devices.modbus.codec import Table
from devices.modbus.planner import plan_reads, split_block
from devices.profiles import load_profile
from devices.sim.elevator import UnitBehaviour, control, make_bank
from edge.bus import next_slot, sub_blocks
from edge.health import probe_fits, suspect_retries

PROFILE = load_profile("elevator-gbt24476")


@pytest.mark.parametrize(("now", "next_due", "cost", "deferred", "fits"), [
    (0.0, None, 0.3, None, True),  # nothing online: probe at once
    (0.0, 0.5, 0.3, None, True),  # fits before the next online poll
    (0.0, 0.2, 0.3, None, False),  # would push an online device late
    (100.0, 100.2, 0.3, 30.0, True),  # put off for 70 s: runs anyway
    (100.0, 100.2, 0.3, 90.0, False),
])
def test_probes_run_only_in_leftover_time(now: float, next_due: float | None, cost: float,
                                          deferred: float | None, fits: bool) -> None:
    assert probe_fits(now, next_due, cost, deferred, 60.0) is fits


@pytest.mark.parametrize(("now", "slot", "late"), [
    (0.7, 1.0, ""),  # on time: one interval on
    (1.0, 1.0, ""),
    (1.2, 1.0, "late"),  # a probe held the line past the next slot: poll at once, keep the grid
    (1.4, 1.0, "late"),
    (1.9, 2.0, "skipped"),  # a whole interval behind: next slot on the grid, no burst
    (2.0, 2.5, "skipped"),
    (7.3, 7.5, "skipped"),
])
def test_a_late_poll_keeps_its_reading_and_a_stalled_bus_never_bursts(
        now: float, slot: float, late: str) -> None:
    nxt, kind = next_slot(0.5, 0.5, 0.5, now)
    assert (round(nxt, 6), kind) == (slot, late)


def test_a_device_that_failed_gets_no_retries() -> None:
    assert [suspect_retries(2, f) for f in (0, 1, 5)] == [2, 0, 0]


def test_rejected_block_splits_down_to_the_rejected_points() -> None:
    rejected = range(10, 14)
    barriers: frozenset[tuple[Table, int]] = frozenset()
    pending = plan_reads(PROFILE.points, max_gap=PROFILE.max_gap)
    unreadable: set[str] = set()
    while pending:
        block = pending.pop()
        if not set(range(block.start, block.start + block.count)) & set(rejected):
            continue
        barrier, ok = split_block(block)
        if not ok:
            unreadable |= {p.quantity for p in block.points}
            continue
        barriers |= barrier
        pending += sub_blocks(block, barriers, PROFILE.max_gap)
    assert unreadable == {"running_hours", "speed", "power_supply"}


def test_unit_behaviour_rejects_overlapping_reads_only() -> None:
    b = UnitBehaviour(reject=(10, 13))
    assert b.rejects(0, 23) and b.rejects(13, 1) and b.rejects(8, 3)
    assert not b.rejects(0, 10) and not b.rejects(14, 9)
    assert not UnitBehaviour().rejects(0, 23)


def test_control_channel_forces_and_clears_values() -> None:
    async def main() -> None:
        bank = make_bank([1], static=True)
        assert control([bank], "set 1 fault_code 2").startswith("ok ")
        assert bank.models[1].snapshot(0.0)["fault_code"] == 2
        assert control([bank], "clear 1 fault_code").startswith("ok ")
        assert bank.models[1].snapshot(0.0)["fault_code"] == 0
        assert control([bank], "set 9 fault_code 2").startswith("error")
        assert control([bank], "bogus").startswith("error")

    asyncio.run(main())
