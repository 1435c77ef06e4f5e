"""Whole-city parking load: N spaces' sensor readings over MQTT into one collector.

For N = 30,000 and 300,000 spaces (1,000 per gateway identity), a load generator publishes v1
data envelopes to a private Mosquitto, as the gateways would after decoding the sensors:
  1. start-up burst: every space reports once, as fast as the generator can publish;
  2. steady state: a heartbeat per space every 10 minutes plus turnover of 12 occupancy changes
     per space per day, with time compressed by COMPRESS (default 10x: one real second carries
     ten seconds of city traffic).
Each report's values carry the field's jitter (magnetometer axes ±3 mG, RSSI ±4 dB, battery
±5 mV, temperature ±0.2 °C), and the load generator forwards them as a gateway does: by
exception, every value once per BENCH_PARKING_FULL seconds of city time (the policy and
deadbands of edge.parking_source.SensorRegistry); 0 sends every value of every report.
The collector (store + ingest + parking hook + API) runs as its own process so its CPU and RSS
are measured alone. Prints ingest rate, end-to-end lag (a probe spot flipped every 2 s until the
zone API shows it), availability-query latency p50/p99, collector CPU and peak RSS.

Run: `python -m bench parking_city` (BENCH_PARKING_SPACES=30000,300000 BENCH_PARKING_COMPRESS=10
BENCH_PARKING_STEADY=60 BENCH_PARKING_DB=sqlite,postgresql BENCH_PARKING_FULL=3600).
BENCH_PARKING_DB picks the hub database: SQLite (the default) in a temporary file, or a new
PostgreSQL database at CITYGATE_TEST_PG's server, dropped afterwards. BENCH_BASELINE=PATH runs
the collector of another checkout too (PYTHONPATH=PATH), right after this one at each size, for
figures side by side.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import random
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt

from bench.common import database, percentile, sample
from citygate.rig import Broker, Proc, free_port, http_json, wait_for
from collector.features import open_store
from devices import contract
from devices.model import Reading
from edge.config import PARKING_DEADBANDS
from edge.report import ChangeFilter

SPACES = [int(n) for n in os.environ.get("BENCH_PARKING_SPACES", "30000,300000").split(",")]
COMPRESS = float(os.environ.get("BENCH_PARKING_COMPRESS", "10"))
STEADY_S = float(os.environ.get("BENCH_PARKING_STEADY", "60"))
BACKENDS = os.environ.get("BENCH_PARKING_DB", "sqlite").split(",")
FULL_S = float(os.environ.get("BENCH_PARKING_FULL", "3600"))
PER_GATEWAY, PER_ZONE, CONNECTIONS = 1000, 100, 4
HEARTBEAT_S, CHANGES_PER_DAY = 600.0, 12.0
FIRST_ID = 100_000


def city_config(spaces: int) -> dict[str, Any]:
    """Zones of 100 spaces on a grid around Zhengzhou, plus a one-spot probe zone."""
    rng = random.Random(1)
    zones = [{"id": "probe", "lat": 34.70, "lon": 113.60, "spots": ["pk-probe"]}]
    for z in range(spaces // PER_ZONE):
        lo = FIRST_ID + z * PER_ZONE
        zones.append({"id": f"z{z:05d}", "lat": 34.70 + rng.uniform(0, 0.15),
                      "lon": 113.55 + rng.uniform(0, 0.2), "sensors": [f"{lo}-{lo + 99}"]})
    return {"heartbeat": "10min", "zones": zones}


def values(occupied: bool, kind: int, counter: int, rng: random.Random) -> dict[str, Any]:
    """The values of one sensor report (edge.parking_source.report_values), with jitter."""
    return {"occupied": occupied, "report_type": kind, "mag_x": 210 + rng.randint(-3, 3),
            "mag_y": -150 + rng.randint(-3, 3),
            "mag_z": 410 + (310 if occupied else 0) + rng.randint(-3, 3),
            "send_counter": counter, "park_counter": 0, "reset_cause": 4,
            "battery_mv": 3600 + rng.randint(-5, 5), "rssi": -90 + rng.randint(-4, 4),
            "temperature": 18.5 + rng.randint(-2, 2) / 10}


class Sensors:
    """The city's sensors as their gateways forward them: by exception (the gateway's
    ChangeFilter and deadbands), every value once per `full_s` seconds of city time, each
    sensor's full reports at its own phase (0: every value of every report)."""

    def __init__(self, rng: random.Random, full_s: float = FULL_S,
                 compress: float = COMPRESS) -> None:
        self.rng, self.full_s, self.compress = rng, full_s, compress
        self.filters: dict[int, ChangeFilter] = {}
        self.next_full: dict[int, float] = {}
        self.reports = self.values = 0

    def reading(self, sid: int, now_ms: int, occupied: bool, kind: int, counter: int,
                city_s: float | None = None) -> Reading:
        """Sensor `sid`'s report as its gateway sends it at `now_ms` (city time `city_s`;
        default: the monotonic clock, compressed)."""
        vals = values(occupied, kind, counter, self.rng)
        if self.full_s > 0:
            at = time.monotonic() * self.compress if city_s is None else city_s
            f = self.filters.get(sid)
            if f is None:  # the first report carries every value
                f = self.filters[sid] = ChangeFilter(math.inf, PARKING_DEADBANDS)
                self.next_full[sid] = at + self.rng.uniform(0, self.full_s)
            elif at >= self.next_full[sid]:
                f.forget()
                self.next_full[sid] += self.full_s
            vals = f.select(vals, at)
        self.reports += 1
        self.values += len(vals)
        return Reading(f"pk-{sid}", now_ms, vals)


class Publisher:
    """Gateway identities multiplexed over a few MQTT connections (QoS 1)."""

    def __init__(self, broker: Broker) -> None:
        self.clients = []
        for i in range(CONNECTIONS):
            c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=f"bench-gw-{i}")
            c.max_inflight_messages_set(1000)
            c.connect("127.0.0.1", broker.port)
            c.loop_start()
            self.clients.append(c)
        self.seq: dict[str, int] = {}
        self.readings = self.messages = 0

    def send(self, gateway: str, readings: list[Reading]) -> None:
        """Publish one data envelope of a gateway."""
        seq = self.seq[gateway] = self.seq.get(gateway, 0) + 1
        payload = contract.envelope(gateway, contract.DATA, seq, int(time.time() * 1000),
                                    contract.encode_batch(readings))
        client = self.clients[hash(gateway) % CONNECTIONS]
        client.publish(contract.topic(gateway, contract.DATA), payload, qos=1)
        self.readings += len(readings)
        self.messages += 1

    def close(self) -> None:
        """Disconnect every connection."""
        for c in self.clients:
            c.loop_stop()
            c.disconnect()


def stats(base: str) -> dict[str, Any]:
    """The collector's parking and ingest counters."""
    result: dict[str, Any] = http_json(f"{base}/bench/stats")
    return result


def burst(pub: Publisher, sensors: Sensors, spaces: int,
          rng: random.Random) -> dict[int, bool]:
    """Every space reports start-up once; returns the occupancy of each space."""
    state = {}
    now = int(time.time() * 1000)
    for g in range(spaces // PER_GATEWAY):
        batch = []
        for sid in range(FIRST_ID + g * PER_GATEWAY, FIRST_ID + (g + 1) * PER_GATEWAY):
            state[sid] = rng.random() < 0.6
            batch.append(sensors.reading(sid, now, state[sid], 3, 1))
        for i in range(0, len(batch), 500):
            pub.send(f"gw{g:04d}", batch[i:i + 500])
    return state


class Probe(threading.Thread):
    """Flips the probe spot every 2 s and times how long until the zone API shows it."""

    def __init__(self, pub: Publisher, base: str) -> None:
        super().__init__(name="probe", daemon=True)
        self.pub, self.base = pub, base
        self.lags: list[float] = []
        self.stop = threading.Event()

    def run(self) -> None:
        rng, occupied, counter = random.Random(2), False, 1
        while not self.stop.wait(2.0):
            occupied, counter = not occupied, counter + 1
            t0 = time.monotonic()
            self.pub.send("gw-probe", [Reading("pk-probe", int(time.time() * 1000),
                                               values(occupied, 1, counter, rng))])
            want = 0 if occupied else 1
            while time.monotonic() - t0 < 60 and not self.stop.is_set():
                z = http_json(f"{self.base}/api/v1/parking/zones/probe")
                if z["available"] == want:
                    self.lags.append(time.monotonic() - t0)
                    break
                time.sleep(0.02)


class Querier(threading.Thread):
    """Availability queries in a loop: one zone by id, and nearest zones with free spaces."""

    @staticmethod
    def _timed(url: str) -> float:
        t0 = time.perf_counter()
        with urllib.request.urlopen(url) as resp:
            resp.read()
        return time.perf_counter() - t0

    def __init__(self, base: str, zones: int) -> None:
        super().__init__(name="querier", daemon=True)
        self.base, self.zones = base, zones
        self.by_id: list[float] = []
        self.near: list[float] = []
        self.stop = threading.Event()

    def run(self) -> None:
        rng = random.Random(3)
        while not self.stop.is_set():
            zone = f"z{rng.randrange(self.zones):05d}"
            self.by_id.append(self._timed(f"{self.base}/api/v1/parking/zones/{zone}"))
            lat, lon = 34.70 + rng.uniform(0, 0.15), 113.55 + rng.uniform(0, 0.2)
            near = f"{self.base}/api/v1/parking/zones?near={lat},{lon}&radius=800"
            self.near.append(self._timed(near))
            time.sleep(0.05)


def steady(pub: Publisher, sensors: Sensors, state: dict[int, bool], seconds: float,
           rng: random.Random) -> float:
    """Compressed heartbeats + turnover for `seconds`; returns the offered readings/s."""
    ids = sorted(state)
    counters = dict.fromkeys(ids, 1)
    rate = len(ids) * (1 / HEARTBEAT_S + CHANGES_PER_DAY / 86400) * COMPRESS
    p_change = (CHANGES_PER_DAY / 86400) / (1 / HEARTBEAT_S + CHANGES_PER_DAY / 86400)
    start, sent, tick = time.monotonic(), 0, 0.25
    while (elapsed := time.monotonic() - start) < seconds:
        due = int(rate * elapsed) - sent
        by_gw: dict[int, list[Reading]] = {}
        now = int(time.time() * 1000)
        for _ in range(max(0, due)):
            sid = rng.choice(ids)
            kind = 2
            if rng.random() < p_change:
                state[sid], kind = not state[sid], 1
            counters[sid] += 1
            by_gw.setdefault((sid - FIRST_ID) // PER_GATEWAY, []).append(
                sensors.reading(sid, now, state[sid], kind, counters[sid]))
        for g, batch in by_gw.items():
            pub.send(f"gw{g:04d}", batch)
        sent += max(0, due)
        time.sleep(tick)
    return sent / seconds


def run_city(spaces: int, root: Path, db: str, checkout: str | None = None) -> None:
    """One measured run for `spaces` spaces on database `db` (the collector from `checkout`
    if given)."""
    broker = Broker(root / "broker").start()
    cfg = root / "parking.json"
    cfg.write_text(json.dumps(city_config(spaces)))
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    coll = Proc("collector", [sys.executable, "-m", "bench.bench_parking_city", "--serve",
                              "--db", db, "--broker", broker.url,
                              "--port", str(port), "--parking", str(cfg)],
                root / "collector.log",  # PYTHONSAFEPATH: no working directory before PYTHONPATH
                env={"PYTHONPATH": checkout, "PYTHONSAFEPATH": "1"} if checkout else None).start()
    pub = None
    try:
        wait_for(lambda: _answers(base) or not coll.alive, 120, "the bench collector")
        assert coll.popen is not None and coll.alive, coll.tail()
        pid = coll.popen.pid
        pub = Publisher(broker)
        rng = random.Random(4)
        sensors = Sensors(random.Random(5))
        s0, t0 = sample(pid), time.monotonic()
        state = burst(pub, sensors, spaces, rng)
        t_pub = time.monotonic() - t0
        wait_for(lambda: stats(base)["parking"]["readings"] >= spaces, 600,
                 "the start-up burst at the collector", interval=0.2)
        t_burst = time.monotonic() - t0
        s1 = sample(pid)
        print(f"  start-up burst: {spaces:,} readings published in {t_pub:.1f} s, stored and "
              f"applied in {t_burst:.1f} s = {spaces / t_burst:,.0f} readings/s "
              f"({spaces * 11 / t_burst:,.0f} values/s); collector CPU "
              f"{(s1.cpu_s - s0.cpu_s) / t_burst * 100:.0f} %; RSS {s0.rss_kb / 1024:.0f} MiB "
              f"before it, {s1.rss_kb / 1024:.0f} MiB after", flush=True)
        probe, querier = Probe(pub, base), Querier(base, spaces // PER_ZONE)
        probe.start()
        querier.start()
        before = stats(base)["parking"]["readings"]
        s2, t2 = sample(pid), time.monotonic()
        r0, v0 = sensors.reports, sensors.values
        offered = steady(pub, sensors, state, STEADY_S, rng)
        s3, t3 = sample(pid), time.monotonic()
        done = stats(base)["parking"]["readings"] - before
        probe.stop.set()
        querier.stop.set()
        probe.join(5)
        querier.join(5)
        backlog = pub.readings - stats(base)["parking"]["readings"]
        print(f"  steady state ({COMPRESS:g}x compressed, {STEADY_S:g} s): offered "
              f"{offered:,.0f} readings/s, applied {done / (t3 - t2):,.0f} readings/s, backlog at "
              f"end {max(0, backlog):,} readings; "
              f"{(sensors.values - v0) / max(1, sensors.reports - r0):.2f} values per reading",
              flush=True)
        print(f"  end-to-end lag (probe flip -> zone API): p50 {percentile(probe.lags, 50):.3f} s,"
              f" p99 {percentile(probe.lags, 99):.3f} s, max {max(probe.lags or [0]):.3f} s "
              f"({len(probe.lags)} probes)")
        print(f"  query latency GET zones/{{id}}: p50 {percentile(querier.by_id, 50) * 1000:.1f}"
              f" ms, p99 {percentile(querier.by_id, 99) * 1000:.1f} ms; GET zones?near= (radius "
              f"800 m): p50 {percentile(querier.near, 50) * 1000:.1f} ms, p99 "
              f"{percentile(querier.near, 99) * 1000:.1f} ms ({len(querier.by_id)} each)")
        print(f"  collector CPU in steady state {(s3.cpu_s - s2.cpu_s) / (t3 - t2) * 100:.0f} % "
              f"of one core; RSS {s3.rss_kb / 1024:.0f} MiB, peak {s3.rss_peak_kb / 1024:.0f} "
              f"MiB; {pub.messages:,} MQTT messages in all", flush=True)
        park = stats(base)["parking"]
        if "spot_writes" in park:
            print(f"  spot rows written {park['spot_writes']:,}, heartbeats "
                  f"{park['heartbeats']:,} (of {park['readings']:,} reports)", flush=True)
    finally:
        if pub is not None:
            pub.close()
        coll.stop()
        broker.stop()


def _answers(base: str) -> bool:
    try:
        stats(base)
    except OSError:
        return False
    return True


def serve(args: argparse.Namespace) -> None:
    """The collector under test: store, ingest with the parking hook, API (this process)."""
    import uvicorn

    from collector.api import create_app
    from collector.ingest import Ingest
    from collector.parking import ParkingService, load_parking_config, router

    store = open_store(args.db)
    parking = ParkingService(store, load_parking_config(json.loads(Path(args.parking)
                                                                   .read_text()))).open()
    ingest = Ingest(store, args.broker, client_id="bench-parking", on_stored=parking.on_stored)
    app = create_app(store, ingest_stats=ingest.stats.as_dict)
    app.state.parking = parking
    app.include_router(router)
    app.get("/bench/stats")(lambda: {"parking": parking.stats,
                                     "ingest": ingest.stats.as_dict()})
    parking.start()
    ingest.start()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=args.port,
                                           log_level="warning", access_log=False))
    try:
        asyncio.run(server.serve())
    finally:
        ingest.stop()
        parking.close()
        store.close()


def main() -> None:
    """Run the city at each size and print the figures."""
    print(f"parking city: {', '.join(f'{n:,}' for n in SPACES)} spaces, {PER_GATEWAY} per "
          f"gateway id over {CONNECTIONS} MQTT connections, {PER_ZONE} per zone; heartbeat "
          f"{HEARTBEAT_S / 60:g} min + {CHANGES_PER_DAY:g} changes/space/day, "
          f"time compressed {COMPRESS:g}x; "
          + (f"by exception, every value every {FULL_S:g} s of city time; " if FULL_S > 0 else
             "every value of every report; ")
          + f"{os.cpu_count()} CPUs shared by generator, broker, collector (and PostgreSQL)",
          flush=True)
    codes: list[tuple[str, str | None]] = [("this code", None)]
    if os.environ.get("BENCH_BASELINE"):
        codes.append((f"baseline {os.environ['BENCH_BASELINE']}", os.environ["BENCH_BASELINE"]))
    for backend in BACKENDS:
        for spaces in SPACES:
            print(f"\n{spaces:,} spaces ({spaces // PER_GATEWAY} gateways, {spaces // PER_ZONE} "
                  f"zones), {backend}:", flush=True)
            for name, checkout in codes:
                print(f" {name}:", flush=True)
                with tempfile.TemporaryDirectory(prefix="bench-parking-") as tmp, \
                        database(backend, "bench_parking") as url:
                    run_city(spaces, Path(tmp), url, checkout)


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--serve", action="store_true")
    parser.add_argument("--db")
    parser.add_argument("--broker")
    parser.add_argument("--port", type=int)
    parser.add_argument("--parking")
    ns = parser.parse_args()
    if ns.serve:
        serve(ns)
    else:
        main()
