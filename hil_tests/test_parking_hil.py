"""End to end: concentrator sim over a pty + CoAP node sim over UDP → gateway process → Mosquitto
→ collector process → zone availability."""

from __future__ import annotations

import socket
import sys
import urllib.error
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from citygate.rig import Broker, Proc, http_json, wait_for

pytestmark = pytest.mark.hil

PARKING = {
    "heartbeat": "30min",
    "zones": [
        {"id": "renmin-n", "name": "Renmin Rd north (concentrator)", "lat": 34.7466,
         "lon": 113.6253, "sensors": ["1001-1006"], "closed": ["pk-1006"]},
        {"id": "erqi-sq", "name": "Erqi Square (NB-IoT)", "lat": 34.7538, "lon": 113.6650,
         "sensors": ["2001-2004"]},
    ],
}
SCRIPT = """
# seconds sensor action
0.0 1001 startup
0.0 1002 startup
0.0 1003 startup
0.0 1004 startup
0.0 1005 startup
0.0 1006 startup
0.0 2001 startup
0.0 2002 startup
0.0 2003 startup
0.0 2004 startup
0.6 1001 arrive
0.6 2001 arrive
1.0 1002 arrive
1.2 0 garbage
1.4 1003 arrive
1.8 1001 depart
2.0 1004 arrive
2.2 2002 arrive
2.6 1004 swap
3.0 2003 arrive
3.4 2001 depart
3.6 0 garbage
3.8 1005 arrive
4.2 1005 depart
"""


def free_udp_port() -> int:
    """A UDP port nobody is bound to right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class Collector:
    """The collector process, configured with the parking zones, and its base URL."""

    proc: Any
    base: str


@pytest.fixture
def collector(broker: Broker, procs: Any) -> Collector:
    """A real `citygate collector run` with the zones of this district."""
    proc, base = procs.collector(broker, config={"parking": PARKING})
    return Collector(proc, base)


def gateway_config(tmp_path: Path, broker: Broker, tty: Path, coap_port: int) -> Path:
    """A gateway with a concentrator line and a CoAP endpoint."""
    path = tmp_path / "gw-park.toml"
    path.write_text(f"""schema_version = 1
[gateway]
id = "gw-park"
data_dir = "{tmp_path / 'gw-park'}"
[uplink]
brokers = ["{broker.url}"]
health_interval = "1s"
reconnect_min = "0.5s"
reconnect_max = "5s"
[outbox]
durability_window = "100ms"
[[buses]]
name = "conc1"
type = "parking-serial"
port = "{tty}"
baudrate = 9600
[[buses]]
name = "nb"
type = "coap"
host = "127.0.0.1"
port = {coap_port}
heartbeat = "10min"
""")
    return path


def zone(base: str, zone_id: str) -> tuple[int, int, int, int, int]:
    """(total, available, occupied, unknown, closed) served for a zone."""
    z = http_json(f"{base}/api/v1/parking/zones/{zone_id}")
    return z["total"], z["available"], z["occupied"], z["unknown"], z["closed"]


def test_scripted_arrivals_and_departures_reach_zone_availability(
        tmp_path: Path, broker: Broker, procs: Any, collector: Collector) -> None:
    tty, go = tmp_path / "ttyPARK", tmp_path / "go"
    coap_port = free_udp_port()
    script = tmp_path / "script.txt"
    script.write_text(SCRIPT)
    sim = Proc("sim-parking", [sys.executable, "-m", "devices.sim.parking", "--serial", str(tty),
                               "--sensors", "1001-1006", "--coap", f"127.0.0.1:{coap_port}",
                               "--coap-sensors", "2001-2004", "--script", str(script),
                               "--start-when", str(go), "--seed", "7"],
               tmp_path / "logs" / "sim-parking.log").start()
    procs.all.append(sim)
    wait_for(tty.exists, 15, "the concentrator's serial line")
    gw = procs.start("gw-park", "edge", "run", "--config",
                     str(gateway_config(tmp_path, broker, tty, coap_port)))
    wait_for(lambda: ("open at 9600" in gw.log.read_text() and "CoAP endpoint" in
                      gw.log.read_text()) or not gw.alive, 20,
             "the gateway's serial line and endpoint")
    assert gw.alive, gw.tail()
    assert zone(collector.base, "renmin-n") == (6, 0, 0, 5, 1)  # nothing heard yet: unknown
    go.touch()

    def occupancy(device: str) -> list[bool]:
        url = f"{collector.base}/api/v1/devices/{device}/readings?quantity=occupied"
        try:
            return [r["value"] for r in http_json(url)["readings"]]
        except urllib.error.HTTPError:  # 404 until the device's first reading is stored
            return []

    # The last step of each path is in: the concentrator's pk-1005 and the CoAP node pk-2001.
    wait_for(lambda: len(occupancy("pk-1005")) == 3 and len(occupancy("pk-2001")) == 3, 60,
             "the end of the script at the collector")
    expected = {"renmin-n": (6, 2, 3, 0, 1), "erqi-sq": (4, 2, 2, 0, 0)}
    assert {z: zone(collector.base, z) for z in expected} == expected

    spots = {s["id"]: s["status"] for s in
             http_json(f"{collector.base}/api/v1/parking/spots?zone=renmin-n")}
    assert spots == {"pk-1001": "free", "pk-1002": "occupied", "pk-1003": "occupied",
                     "pk-1004": "occupied", "pk-1005": "free", "pk-1006": "closed"}
    near = http_json(f"{collector.base}/api/v1/parking/zones?near=34.7540,113.6640&radius=8000")
    assert [z["id"] for z in near] == ["erqi-sq", "renmin-n"]
    hist = http_json(f"{collector.base}/api/v1/devices/pk-1004/readings?quantity=park_counter")
    # The swap's second car. The gateway reports by exception: the report that left
    # park_counter at 1 did not send it again.
    assert [r["value"] for r in hist["readings"]] == [0, 1, 2]
    assert occupancy("pk-1004") == [False, True, False, True]
    assert http_json(f"{collector.base}/api/v1/health")["ingest"]["dropped_values"] == {}

    def line_health() -> dict[str, Any] | None:
        gws = {g["id"]: g for g in http_json(f"{collector.base}/api/v1/gateways")}
        health = (gws.get("gw-park") or {}).get("health") or {}
        counters = health.get("counters", {})
        return counters if counters.get("bus_readings", 0) >= 23 else None

    counters = wait_for(line_health, 20, "the gateway's health counters")
    assert counters["bus_readings"] == 23 and counters["bus_duplicates"] == 0
    assert sum(v for k, v in counters.items() if k.startswith("bus_err_")) >= 1  # the garbage
    assert counters["bus_rejected"] == 0
