"""What the raw store costs per parking-sensor report: `Store.ingest` alone, in one process.

`python -m bench parking_city` measures the whole path (broker, ingest, parking hook, API) and
shares the machine with its load generator. This one isolates the part that bounds it: the
ingest transaction writing a report's readings rows and `latest` rows (11 of each for a full
report; by exception, those of the values that moved: bench_parking_city.Sensors), its claim
and its device update. No MQTT, no hook, no other process.

  1. start-up burst: every space reports once, 500 consecutive spaces per envelope;
  2. steady state: reports of randomly chosen spaces (heartbeats land all over the tables),
     5 per envelope, 2,250 per transaction, as the 10x compressed city sends them; by
     exception with every value once an hour of city time (`--full 0`: every value of every
     report).

Prints µs of wall time per report (median over the steady transactions after the first two)
and the reports/s one writer doing nothing else could store.

Run: `python -m bench parking_store --backends sqlite,postgresql --spaces 300000 --batches 12
--full 3600,0`.
"""

from __future__ import annotations

import argparse
import random
import statistics
import time

from bench.bench_parking_city import CHANGES_PER_DAY, FIRST_ID, HEARTBEAT_S, PER_GATEWAY, Sensors
from bench.common import database
from collector.features import open_store
from collector.store import Accepted, Store
from devices import contract
from devices.model import Reading

PER_ENVELOPE_BURST, PER_ENVELOPE_STEADY, PER_TX_STEADY = 500, 5, 2250


class Gateways:
    """Envelopes of the gateways, decoded as the collector decodes them."""

    def __init__(self) -> None:
        self.seq: dict[str, int] = {}

    def accepted(self, gateway: str, readings: list[Reading], now: int) -> Accepted:
        seq = self.seq[gateway] = self.seq.get(gateway, 0) + 1
        topic = contract.topic(gateway, contract.DATA)
        payload = contract.envelope(gateway, contract.DATA, seq, now,
                                    contract.encode_batch(readings))
        decoded = contract.decode(topic, payload)
        assert isinstance(decoded.message, contract.DataEnvelope), decoded
        return Accepted(gateway, decoded.message, now)


def run(store: Store, spaces: int, batches: int,
        full_s: float) -> tuple[float, list[float], float]:
    """Burst reports/s, the steady state's µs per report of each transaction and its values
    per report."""
    rng, gws, sensors = random.Random(1), Gateways(), Sensors(random.Random(2), full_s)
    city_rate = spaces * (1 / HEARTBEAT_S + CHANGES_PER_DAY / 86400)  # reports/s of city time
    p_change = (CHANGES_PER_DAY / 86400) / (1 / HEARTBEAT_S + CHANGES_PER_DAY / 86400)
    now = int(time.time() * 1000)
    state = {FIRST_ID + i: rng.random() < 0.6 for i in range(spaces)}
    counters = dict.fromkeys(state, 1)
    t0 = time.perf_counter()
    for lo in range(FIRST_ID, FIRST_ID + spaces, PER_ENVELOPE_BURST):
        rs = [sensors.reading(sid, now, state[sid], 3, 1, 0.0)
              for sid in range(lo, min(lo + PER_ENVELOPE_BURST, FIRST_ID + spaces))]
        store.ingest([gws.accepted(f"gw{(lo - FIRST_ID) // PER_GATEWAY:04d}", rs, now)])
    burst = spaces / (time.perf_counter() - t0)
    steady = []
    city = HEARTBEAT_S  # the first heartbeats after start-up
    r0, v0 = sensors.reports, sensors.values
    for _ in range(batches):
        now += 1000
        by_gw: dict[int, list[Reading]] = {}
        for _ in range(PER_TX_STEADY):
            sid = FIRST_ID + rng.randrange(spaces)
            city += 1 / city_rate
            kind = 2
            if rng.random() < p_change:
                state[sid], kind = not state[sid], 1
            counters[sid] += 1
            by_gw.setdefault((sid - FIRST_ID) // PER_GATEWAY, []).append(
                sensors.reading(sid, now, state[sid], kind, counters[sid], city))
        batch = [gws.accepted(f"gw{g:04d}", rs[i:i + PER_ENVELOPE_STEADY], now)
                 for g, rs in by_gw.items() for i in range(0, len(rs), PER_ENVELOPE_STEADY)]
        t0 = time.perf_counter()
        result = store.ingest(batch)
        steady.append((time.perf_counter() - t0) / PER_TX_STEADY * 1e6)
        assert result.messages == len(batch), result
    return burst, steady, (sensors.values - v0) / (sensors.reports - r0)


def main(argv: list[str] | None = None) -> None:
    """Measure each backend and print the figures."""
    p = argparse.ArgumentParser(prog="bench parking_store")
    p.add_argument("--backends", default="sqlite,postgresql")
    p.add_argument("--spaces", type=int, default=300_000)
    p.add_argument("--batches", type=int, default=12)
    p.add_argument("--full", default="3600",
                   help="seconds of city time between full reports, a list; 0: every value")
    args = p.parse_args(argv or [])
    print(f"Store.ingest per parking report: {args.spaces:,} spaces; steady state "
          f"{PER_TX_STEADY:,} random reports per transaction, {PER_ENVELOPE_STEADY} per "
          "envelope", flush=True)
    for backend in args.backends.split(","):
        for full_s in (float(f) for f in args.full.split(",")):
            with database(backend, "bench_parking_store") as url:
                store = open_store(url)
                try:
                    burst, steady, per = run(store, args.spaces, args.batches, full_s)
                finally:
                    store.close()
            us = statistics.median(steady[2:] or steady)
            how = f"full every {full_s:g} s" if full_s > 0 else "every value"
            print(f"  {backend:10s} {how:18s} burst {burst:,.0f} reports/s; steady {per:.2f} "
                  f"values/report, {us:.0f} µs/report ({us / per:.1f} µs/value) -> one writer "
                  f"~{1e6 / us:,.0f} reports/s; transactions "
                  f"{', '.join(f'{t:.0f}' for t in steady)} µs/report", flush=True)


if __name__ == "__main__":
    main()
