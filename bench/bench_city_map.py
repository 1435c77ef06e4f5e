"""The control room's map layers and the overview: answer time against the size of the city.

A hub on SQLite with N lifts (one gateway per 6, one alarm site each), N/10 parking zones of 12
placed bays, N/50 dust sites, each lift with a trip counter and one fault in the last 30 days;
then the median over RUNS of GET /api/v1/map/layers (every layer), /api/v1/overview and
/api/v1/overview/lift-risk (per 1000 trips, which reads every lift's trips). Sizes via
BENCH_LIFTS (comma list, default "120,600"), runs via BENCH_RUNS (default 5).
"""

from __future__ import annotations

import asyncio
import os
import tempfile
import time
from pathlib import Path
from typing import Any

from fastapi.testclient import TestClient

from bench.common import median
from citygate.rig import free_port
from collector.alarms import hash_token
from collector.config import CollectorConfig
from collector.features import build_hub, open_store
from collector.hub import BrokerLink
from collector.store import Accepted, Store, now_ms
from devices.contract import DataEnvelope, EventsEnvelope

SIZES = [int(n) for n in os.environ.get("BENCH_LIFTS", "120,600").split(",")]
RUNS = int(os.environ.get("BENCH_RUNS", "5"))
ROUTES = ("/api/v1/map/layers", "/api/v1/overview",
          "/api/v1/overview/lift-risk?rank_by=per_1000_trips")


def city_config(lifts: int) -> CollectorConfig:
    """Alarm sites for the lift gateways, parking zones and dust sites on a grid."""
    gws = (lifts + 5) // 6
    sites = {f"b{g}": {"gateways": [f"gw-{g}"], "grid": "d1", "lat": 34.70 + g * 1e-4,
                       "lon": 113.60 + g * 1e-4} for g in range(gws)}
    zones = [{"id": f"z{z}", "lat": 34.75, "lon": 113.62 + z * 1e-4, "district": "d1",
              "sensors": [f"{10_000 + z * 12}-{10_000 + z * 12 + 11}"],
              "kerb": [[113.62 + z * 1e-4, 34.75], [113.62 + z * 1e-4 + 5e-5, 34.75]]}
             for z in range(max(1, lifts // 10))]
    env = [{"id": f"s{i}", "lat": 34.80, "lon": 113.68 + i * 1e-4, "kind": "dust",
            "devices": [f"dust-{i}"]} for i in range(max(1, lifts // 50))]
    return CollectorConfig.model_validate({
        "alarms": {"sites": sites, "units": {"ops": {"escalation": []}}, "default_unit": "ops",
                   "ops": [{"name": "ops", "token_hash": hash_token("tok-ops")}]},
        "sites": {"sites": env}, "parking": {"zones": zones}})


def fill(store: Store, hub: Any, lifts: int) -> None:
    """Gateways with their lifts, trip counters, one fault each, dust and parking readings."""
    now = now_ms()
    items = []
    for g in range((lifts + 5) // 6):
        devs = {f"lift-{g}-{i}": {"kind": "elevator", "profile": ""} for i in range(6)}
        store.record_state(f"gw-{g}", "online", now, "", "1", "b", devs)
        items.append(Accepted(f"gw-{g}", DataEnvelope.model_validate({
            "v": 1, "gateway": f"gw-{g}", "seq": 1, "sent": now,
            "readings": [{"device": d, "ts": now - 1000 * k, "values": {"trip_count": 5000 - k}}
                         for d in devs for k in (0, 1)]}), now))
        items.append(Accepted(f"gw-{g}", EventsEnvelope.model_validate({
            "v": 1, "gateway": f"gw-{g}", "seq": 2, "sent": now,
            "events": [{"device": d, "ts": now - 3600_000, "kind": "run_timeout",
                        "action": "raise", "severity": "minor"} for d in devs]}), now))
    store.ingest(items)
    hub.on_stored(items)


def measure(lifts: int) -> dict[str, float]:
    """Median ms per route for one city size."""
    with tempfile.TemporaryDirectory() as tmp:
        store = open_store(f"sqlite:///{Path(tmp) / 'hub.sqlite'}")
        hub = build_hub(store, city_config(lifts), ingest_stats=dict,
                        broker=BrokerLink(f"mqtt://127.0.0.1:{free_port()}"),
                        admin_token_file=Path(tmp) / "admin-token")
        try:
            fill(store, hub, lifts)
            out = {}
            with TestClient(hub.app, headers={"Authorization": "Bearer tok-ops"}) as client:
                for route in ROUTES:
                    times = []
                    for _ in range(RUNS):
                        t0 = time.perf_counter()
                        assert client.get(route).status_code == 200, route
                        times.append((time.perf_counter() - t0) * 1000)
                    out[route] = median(times)
            return out
        finally:
            asyncio.run(hub.close())
            store.close()


def main() -> None:
    """Print the median answer time of each route per city size."""
    print(f"median of {RUNS} runs, SQLite, one process (ms)")
    for lifts in SIZES:
        figures = measure(lifts)
        print(f"{lifts:>6} lifts, {lifts // 10} zones ({lifts // 10 * 12} bays), "
              f"{lifts // 50} dust sites:")
        for route, ms in figures.items():
            print(f"    {route:<52} {ms:8.1f}")


if __name__ == "__main__":
    main()
