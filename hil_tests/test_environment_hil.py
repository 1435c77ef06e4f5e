"""End to end: dust and boiler station simulators over ptys and TCP → gateway process → Mosquitto
→ collector process → REST: values, units, flags, threshold alarms, and incidents for people."""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from citygate.rig import Broker, Proc, free_port, http_json, wait_for
from collector.alarms import hash_token

pytestmark = pytest.mark.hil
MN = {"dust-1": "DUST0000000000000000001A", "dust-2": "DUST0000000000000000002B",
      "dust-3": "DUST0000000000000000003C", "boiler-1": "BOIL0000000000000000001A",
      "boiler-2": "BOIL0000000000000000002B"}
SITES: dict[str, Any] = {
    "defaults": {"nox_duration": "3s"},
    "districts": [{"id": "d1", "name": "North", "outline": [[113.6, 34.7], [113.8, 34.7],
                                                             [113.8, 34.9]]}],
    "sites": [
        {"id": "site-1", "lat": 34.80, "lon": 113.70, "district": "d1", "kind": "dust",
         "devices": ["dust-1"]},
        {"id": "site-2", "lat": 34.81, "lon": 113.72, "district": "d1", "kind": "dust",
         "devices": ["dust-2"]},
        {"id": "site-3", "lat": 34.82, "lon": 113.74, "district": "d1", "kind": "dust",
         "devices": ["dust-3"]},
        {"id": "boiler-a", "lat": 34.75, "lon": 113.65, "district": "d1", "kind": "boiler",
         "devices": ["boiler-1"]},
        {"id": "boiler-b", "lat": 34.76, "lon": 113.66, "district": "d1", "kind": "boiler",
         "devices": ["boiler-2"]},
    ],
}


OPS_TOKEN = "ops-room-token-for-the-test"


@dataclass
class Collector:
    """The collector process, configured with the sites, and its base URL."""

    proc: Any
    base: str


@pytest.fixture
def collector(broker: Broker, procs: Any) -> Collector:
    """A real `citygate collector run` with the environment sites and an ops token."""
    config = {
        "sites": SITES,
        "alarms": {"ops": [{"name": "ops-room", "token_hash": hash_token(OPS_TOKEN)}],
                   "group_wait": "0s",
                   "units": {"env-north": {"members": []}},
                   "routes": [{"kinds": ["nox_limit", "pm10_district"], "unit": "env-north"}]},
    }
    proc, base = procs.collector(broker, config=config)
    return Collector(proc, base)


def gateway_config(tmp: Path, broker: Broker, tcp_port: int) -> Path:
    """Two HJ 212 serial lines (one logger each) and a TCP listener for three loggers."""
    on_bus = {"dust-1": ("ser-dust", "dust-hj212"), "boiler-1": ("ser-boiler", "boiler-hj212"),
              "dust-2": ("tcp", "dust-hj212-mg"), "dust-3": ("tcp", "dust-hj212"),
              "boiler-2": ("tcp", "boiler-hj212")}
    lines = ["schema_version = 1", "[gateway]", 'id = "gw-env"', f'data_dir = "{tmp / "gw"}"',
             "[uplink]", f'brokers = ["{broker.url}"]', 'health_interval = "1s"',
             'reconnect_min = "0.5s"', "[outbox]", 'durability_window = "100ms"',
             "[[buses]]", 'name = "ser-dust"', 'type = "hj212-serial"',
             f'port = "{tmp / "ttyDUST"}"', "baudrate = 9600",
             "[[buses]]", 'name = "ser-boiler"', 'type = "hj212-serial"',
             f'port = "{tmp / "ttyBOILER"}"', "baudrate = 19200", 'parity = "E"',
             "[[buses]]", 'name = "tcp"', 'type = "hj212-tcp"', 'host = "127.0.0.1"',
             f"port = {tcp_port}"]
    for dev, (bus, profile) in on_bus.items():
        lines += ["[[devices]]", f'id = "{dev}"', f'bus = "{bus}"', f'profile = "{profile}"',
                  f'mn = "{MN[dev]}"']
    path = tmp / "gw-env.toml"
    path.write_text("\n".join(lines) + "\n")
    return path


def test_stations_reach_the_map_with_units_flags_and_alarms(
        tmp_path: Path, broker: Broker, procs: Any, collector: Collector) -> None:
    tcp_port = free_port()
    fast = ["--interval", "300ms", "--hour-every", "1s", "--seed", "7"]
    sims = {
        "dust-1": ["--kind", "dust", "--scenario", "dust_exceedance", "--ack",
                   "--pty", str(tmp_path / "ttyDUST")],
        "boiler-1": ["--kind", "boiler", "--scenario", "boiler_nox_exceedance", "--codes",
                     "2005", "--pty", str(tmp_path / "ttyBOILER"), "--baud", "19200"],
        "dust-2": ["--kind", "dust", "--unit", "mg", "--ack", "--max-segment", "200",
                   "--tcp", f"127.0.0.1:{tcp_port}"],
        "dust-3": ["--kind", "dust", "--scenario", "instrument_fault",
                   "--tcp", f"127.0.0.1:{tcp_port}"],
        "boiler-2": ["--kind", "boiler", "--scenario", "calibration", "--ack",
                     "--tcp", f"127.0.0.1:{tcp_port}"],
    }
    for dev, args in sims.items():
        proc = Proc(f"sim-{dev}", [sys.executable, "-m", "devices.sim.environment", "--mn",
                                   MN[dev], *args, *fast], tmp_path / "logs" / f"sim-{dev}.log")
        procs.all.append(proc.start())
    wait_for(lambda: (tmp_path / "ttyDUST").exists() and (tmp_path / "ttyBOILER").exists(),
             15, "the simulators' serial lines")
    procs.start("gateway", "edge", "run", "--config",
                str(gateway_config(tmp_path, broker, tcp_port)))

    def alarmed() -> bool:
        raised = http_json(f"{collector.base}/api/v1/environment/alarms")
        return {(a["site"], a["rule"]) for a in raised} >= {
            ("site-1", "pm10_district"), ("boiler-a", "nox_limit")}

    wait_for(alarmed, 60, "the PM10 district and NOx alarms")
    sites = {s["id"]: s for s in http_json(f"{collector.base}/api/v1/environment/sites")}
    assert sites["site-1"]["status"] == "exceeded"
    assert sites["boiler-a"]["status"] == "exceeded"
    assert {a["rule"] for a in sites["site-1"]["alarms"]} == {"pm10_district"}

    # Units: the mg/m³ monitor arrives in µg/m³; the 2005-coded boiler in canonical names.
    pm10 = sites["site-2"]["latest"]["pm10"]
    assert pm10["unit"] == "µg/m³" and 20 < pm10["value"] < 150, pm10
    assert sites["site-2"]["status"] == "ok"
    boiler = sites["boiler-a"]["latest"]
    assert boiler["nox_converted"]["value"] > 30 and boiler["nox_converted"]["unit"] == "mg/m³"
    assert 7000 < boiler["flue_flow"]["value"] < 11000  # 2.5 m³/s as m³/h
    assert boiler["o2"]["unit"] == "%"
    # Flags: D is BAD (site in fault), C is UNCERTAIN and never raises an alarm.
    assert sites["site-3"]["status"] == "fault"
    assert sites["site-3"]["latest"]["pm10"]["quality"] == "bad"
    assert sites["site-3"]["latest"]["tsp"]["quality"] == "good"
    assert sites["boiler-b"]["latest"]["nox_converted"]["quality"] == "uncertain"
    assert sites["boiler-b"]["status"] == "ok"
    # Hourly data is its own series, with the canonical name.
    assert sites["site-1"]["hourly"]["pm10"]["device"] == "dust-1:hour"
    assert sites["site-1"]["hourly"]["pm10"]["value"] > 300
    hist = http_json(f"{collector.base}/api/v1/environment/sites/site-1/history"
                     "?quantity=pm10&interval=hour")
    assert hist["points"] and all(p["device"] == "dust-1:hour" for p in hist["points"])

    # The gateway answered 9014 and counted the instrument fault as an event.
    def gateway_counters() -> dict[str, Any] | None:
        gws = http_json(f"{collector.base}/api/v1/gateways")
        health = gws[0]["health"] if gws else None
        return health["counters"] if health else None

    counters = wait_for(lambda: (c := gateway_counters()) and c.get("bus_answers") and c, 20,
                        "gateway health with answers")
    assert counters["bus_unknown_mn"] == 0
    assert counters["bus_frames"] > 10
    stored = http_json(f"{collector.base}/api/v1/devices/dust-3/readings?quantity=pm10")
    assert {r["quality"] for r in stored["readings"]} == {"bad"}

    # The exceedances became incidents routed to the environment unit.
    def incidents() -> set[tuple[str, str]]:
        got = http_json(f"{collector.base}/api/v1/incidents?unit=env-north", token=OPS_TOKEN)
        return {(i["kind"], i["site"]) for i in got}

    # Each is an incident of its site (the environmental sites are alarm sites too).
    assert wait_for(lambda: incidents() >= {("nox_limit", "boiler-a"),
                                            ("pm10_district", "site-1")}, 20,
                    "incidents for the exceedances")
