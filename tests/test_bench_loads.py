"""The benchmarks' synthetic loads are data the contract takes whole: a load the collector
partly refuses would measure less work than its figures claim."""

from __future__ import annotations

import random

import pytest

from bench.bench_city_hour import MIX, values_of
from devices import contract


@pytest.mark.parametrize("kind", [k for k, _, _ in MIX])
def test_every_kind_of_the_busiest_hour_load_is_accepted_whole(kind: str) -> None:
    rng, now = random.Random(7), 1_780_000_000_000
    values = 0
    for seq in range(1, 201):
        readings = values_of(kind, "lg00001", rng, now)
        payload = contract.envelope("lg00001", contract.DATA, seq, now,
                                    contract.encode_batch(readings))
        received = contract.decode(contract.topic("lg00001", contract.DATA), payload)
        assert not received.refused, received.refused[:3]
        values += sum(len(r.values) for r in readings)
    share = {k: per for k, _, per in MIX}[kind]  # values per envelope, as docs/deployment.md
    assert values / 200 == pytest.approx(share, rel=0.25)
