"""An averaged HJ 212 series keeps one value per period: a history answer that repeats stored
minutes adds only the missing ones (both backends)."""

from __future__ import annotations

import orjson

from collector.store import Accepted, Store
from devices import contract
from devices.model import Reading

T = 1_764_000_000_000
MIN = 60_000


def ingest(store: Store, seq: int, readings: list[Reading]) -> int:
    body = contract.envelope("gw1", contract.DATA, seq, T + 10 * MIN,
                             contract.encode_batch(readings))
    env = contract.DataEnvelope.model_validate(orjson.loads(body))
    result = store.ingest([Accepted("gw1", env, T + 10 * MIN)])
    return result.dropped_values.get("already_stored", 0)


def minute(device: str, ts: int, pm10: float) -> Reading:
    return Reading(device, ts, {"pm10": pm10, "temperature": 20.0}, station_time=True)


def test_a_history_answer_fills_only_the_missing_minutes(store: Store) -> None:
    assert ingest(store, 1, [minute("dust-1:min", T, 50), minute("dust-1:min", T + MIN, 51),
                             minute("dust-1", T, 60)]) == 0
    history = [minute("dust-1:min", T + i * MIN, 50 + i) for i in range(4)]
    again = [minute("dust-1:min", T + 3 * MIN, 53)]  # one period twice in one batch
    assert ingest(store, 2, [*history, *again, minute("dust-1", T, 60)]) == 2 * 2 + 2
    stored = store.readings("dust-1:min", "pm10", None, None, 100)
    assert [(r["ts"], r["value"]) for r in stored] == [(T + i * MIN, 50.0 + i) for i in range(4)]
    assert len(store.readings("dust-1:min", None, None, None, 100)) == 8
    # Real-time series are not averages: each upload is stored as it comes.
    assert len(store.readings("dust-1", "pm10", None, None, 100)) == 2


def test_a_different_value_for_a_stored_period_is_kept_and_becomes_the_latest(
        store: Store) -> None:
    # A station recomputing an hour (or a time-compressed simulator re-sending the same hour
    # with the air recovered) sends another value for a period already stored: a correction,
    # not a copy.
    assert ingest(store, 1, [minute("dust-1:hour", T, 400)]) == 0
    assert ingest(store, 2, [minute("dust-1:hour", T, 400)]) == 2  # the same: a copy
    assert ingest(store, 3, [minute("dust-1:hour", T, 90)]) == 1  # temperature is the same
    stored = store.readings("dust-1:hour", "pm10", None, None, 100)
    assert sorted(r["value"] for r in stored) == [90.0, 400.0]
    latest = {r["quantity"]: r for r in store.latest("dust-1:hour")}
    assert latest["pm10"]["value"] == 90.0
