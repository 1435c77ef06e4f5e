"""Wire contract cost: envelopes decoded per second on one core (the collector's hot path).

1. data: a typical 50-reading data envelope (lifts with 8 values, dust meters with 6,
   parking sensors with 3), decoded with `contract.decode`; envelopes/s and µs per envelope.
2. events: a 20-event envelope with evidence.
3. data, 5 bad: the same 50 readings with 5 of them refused (bad device id, NUL in a text
   value, a float in an integer quantity, 1e300, a negative time), the other 45 kept.
Median of RUNS runs of N envelopes each (environment: BENCH_RUNS, BENCH_N).
"""

from __future__ import annotations

import os
import time
from typing import Any

import orjson

from bench.common import report_runs
from devices import contract

RUNS = int(os.environ.get("BENCH_RUNS", "5"))
N = int(os.environ.get("BENCH_N", "2000"))
T0 = 1_763_690_000_000


def _reading(i: int) -> dict[str, Any]:
    ts = T0 + i * 1000
    if i % 3 == 0:
        return {"device": f"lift-{i:03d}", "ts": ts, "mono": 5_000_000 + i,
                "values": {"floor": i % 20, "door_closed": True, "door_zone": True,
                           "car_running": False, "direction": 0, "service_mode": 1,
                           "speed": 0.0, "trip_count": 100_000 + i}}
    if i % 3 == 1:
        return {"device": f"dust-{i:03d}", "ts": ts, "q": "good", "flag": "N",
                "values": {"pm10": 88.5, "pm2_5": 41.2, "tsp": 120.0, "noise_laeq": 61.3,
                           "temperature": 21.5, "humidity": 54.0}}
    return {"device": f"park-{i:05d}", "ts": ts,
            "values": {"occupied": bool(i % 2), "battery_mv": 3600, "rssi": -87}}


def _envelope(key: str, items: list[dict[str, Any]]) -> bytes:
    return orjson.dumps({"v": 1, "gateway": "gw-bench", "seq": 1042, "sent": T0 + 60_000,
                         "clock": {"synced": True, "boot": "8c1e", "mono": 5_100_000},
                         "replay": False, key: items})


def payloads() -> dict[str, tuple[str, bytes]]:
    """The benchmarked messages: name -> (topic, payload)."""
    readings = [_reading(i) for i in range(50)]
    bad = [dict(r) for r in readings]
    bad[3]["device"] = "-bad id"
    bad[13] = {**bad[13], "values": {"floor": "B\u00002"}}
    bad[23] = {**bad[23], "values": {"floor": 2.5}}
    bad[33] = {**bad[33], "values": {"pm10": 1e300}}
    bad[43] = {**bad[43], "ts": -1}
    events = [{"device": f"lift-{i:03d}", "ts": T0 + i, "kind": "gbt24476_2",
               "action": "raise", "severity": "major", "code": 2,
               "evidence": {"floor": 3, "door_closed": True, "fault_code": 2},
               "message": "fault 2"} for i in range(20)]
    data_topic = contract.topic("gw-bench", contract.DATA)
    return {
        "data_50": (data_topic, _envelope("readings", readings)),
        "events_20": (contract.topic("gw-bench", contract.EVENTS), _envelope("events", events)),
        "data_50_5bad": (data_topic, _envelope("readings", bad)),
    }


def rate(topic_name: str, payload: bytes, n: int) -> float:
    """Envelopes decoded per second (process CPU time); a refused envelope counts too."""
    t0 = time.process_time()
    for _ in range(n):
        try:
            contract.decode(topic_name, payload)
        except contract.ContractError:
            pass
    return n / (time.process_time() - t0)


def main() -> None:
    """Print decode rates, median of RUNS runs."""
    cases = payloads()
    for topic_name, payload in cases.values():
        rate(topic_name, payload, 50)  # warm-up: model import and build
    runs = []
    for _ in range(RUNS):
        run: dict[str, float] = {}
        for name, (topic_name, payload) in cases.items():
            r = rate(topic_name, payload, N)
            run[f"{name} envelopes/s"] = r
            run[f"{name} µs/envelope"] = 1e6 / r
        runs.append(run)
    report_runs(runs, f"contract.decode on one core, {N} envelopes per run", width=36)


if __name__ == "__main__":
    main()
