"""What the demo city holds: lifts, environmental stations, a parking district, and the collector
config that routes their incidents to people (pure data and text; `citygate.demo` runs it).

Thresholds are shortened from field practice so that the demo shows each feature within a
minute: a trapped passenger is raised after 8 s instead of 60 s, NOx after 10 s instead of
10 min, and simulated hours last 5 s.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from citygate.receivers import Receivers
from collector.alarms import hash_token

# Installation facts of the simulated lifts (devices/sim/elevator.py): 18 floors at 1 m/s;
# the trapped-passenger delays are shortened for the demo.
LIFT_RULES = ('trapped_after = "8s", presence_debounce = "2s", presence_release = "5s", '
              "top_floor = 18, bottom_floor = 1, rated_speed = 1.0")
DEFAULT_LIFT_SCENARIOS = ("trapped_passenger@20:unit=2:for=90",)  # on gw-tcp-01: lift-t02
RTU_LIFT_SCENARIOS = ("controller_fault@40:unit=3:for=60",)  # on gw-rtu-01: lift-r03
LIFT_SITES = {"gw-tcp-01": ("jinshui-tower", "Jinshui Rd 12 tower", "lift-t"),
              "gw-rtu-01": ("erqi-plaza", "Erqi Plaza offices", "lift-r")}
# Where a crew goes for each lift site (shown on the crew card; coordinates are WGS-84).
LIFT_SITE_FACTS: dict[str, dict[str, Any]] = {
    "jinshui-tower": {"address": "12 Jinshui Road, Jinshui District, Zhengzhou",
                      "building": "Tower A", "entrance": "North lobby, lift bank 2",
                      "contact_name": "Property desk (Ms Zhang)",
                      "contact_phone": "0371-60000001", "lat": 34.7700, "lon": 113.6900,
                      "grid": "jinshui"},
    "erqi-plaza": {"address": "1 Erqi Square, Erqi District, Zhengzhou",
                   "building": "Office block B", "entrance": "East entrance, goods lift lobby",
                   "contact_name": "Building manager (Mr Liu)",
                   "contact_phone": "0371-60000002", "lat": 34.7530, "lon": 113.6603,
                   "grid": "erqi"},
}


@dataclass(frozen=True, slots=True)
class Station:
    """A simulated HJ 212 data logger and how the environment gateway reaches it."""

    device: str
    mn: str
    kind: str  # dust | boiler
    link: str  # "pty" (its own serial line) or "tcp" (a client of the gateway's listener)
    profile: str
    args: tuple[str, ...] = ()
    baud: int = 9600
    parity: str = "N"


STATIONS = (
    Station("dust-1", "DUST0000000000000000001A", "dust", "pty", "dust-hj212",
            ("--scenario", "dust_exceedance", "--ack")),
    Station("dust-2", "DUST0000000000000000002B", "dust", "tcp", "dust-hj212-mg",
            ("--unit", "mg", "--ack")),
    Station("dust-3", "DUST0000000000000000003C", "dust", "tcp", "dust-hj212"),
    Station("boiler-1", "BOIL0000000000000000001A", "boiler", "pty", "boiler-hj212",
            ("--scenario", "boiler_nox_exceedance", "--codes", "2005"), 19200, "E"),
    Station("boiler-2", "BOIL0000000000000000002B", "boiler", "tcp", "boiler-hj212", ("--ack",)),
)
STATION_TIMING = ("--interval", "1s", "--hour-every", "5s", "--seed", "7")

# The demo city's districts: four boxes tiling a Zhengzhou-like centre (lon 113.60-113.76,
# lat 34.70-34.86). The pages' offline base map draws the same boxes; every demo lift site,
# gateway, parking zone and monitoring site lies inside one of them.
DISTRICT_BOXES: dict[str, tuple[str, float, float, float, float]] = {
    # id: (name, min lon, min lat, max lon, max lat)
    "zhongyuan": ("Zhongyuan", 113.60, 34.757, 113.67, 34.86),
    "jinshui": ("Jinshui", 113.67, 34.757, 113.76, 34.86),
    "erqi": ("Erqi", 113.60, 34.70, 113.67, 34.757),
    "guancheng": ("Guancheng", 113.67, 34.70, 113.76, 34.757),
}


def _box(w: float, s: float, e: float, n: float) -> list[list[float]]:
    return [[w, s], [e, s], [e, n], [w, n]]


def _person(name: str, phone: str, unit: str) -> dict[str, str]:
    return {"name": name, "phone": phone, "unit": unit}


ENVIRONMENT: dict[str, Any] = {
    "defaults": {"nox_duration": "10s"},
    "districts": [{"id": d, "name": name, "outline": _box(w, s, e, n)}
                  for d, (name, w, s, e, n) in DISTRICT_BOXES.items()],
    "sites": [
        {"id": "metro-12-works", "name": "Metro line 12 works", "lat": 34.80, "lon": 113.68,
         "district": "jinshui", "kind": "dust", "devices": ["dust-1"],
         "responsible": _person("Zhang Wei", "13900000011", "Metro Line 12 Construction Co.")},
        {"id": "garden-rd-build", "name": "Garden Rd housing", "lat": 34.81, "lon": 113.70,
         "district": "jinshui", "kind": "dust", "devices": ["dust-2"],
         "responsible": _person("Chen Jie", "13900000012", "Garden Road Housing Ltd.")},
        {"id": "north-ring-works", "name": "North ring road works", "lat": 34.83,
         "lon": 113.72, "district": "jinshui", "kind": "dust", "devices": ["dust-3"],
         "responsible": _person("Liu Yang", "13900000013", "City Roads Bureau")},
        {"id": "heat-plant-a", "name": "District heating plant A", "lat": 34.77,
         "lon": 113.65, "district": "zhongyuan", "kind": "boiler", "devices": ["boiler-1"],
         "responsible": _person("Zhao Min", "13900000014", "Zhengzhou Heating Co.")},
        {"id": "hospital-boilers", "name": "Hospital boiler house", "lat": 34.78,
         "lon": 113.73, "district": "jinshui", "kind": "boiler", "devices": ["boiler-2"],
         "responsible": _person("Sun Li", "13900000015", "First People's Hospital")},
    ],
}

PARKING_SERIAL_SENSORS = "1001-1024"
PARKING_COAP_SENSORS = "2001-2012"
PARKING: dict[str, Any] = {
    "heartbeat": "30min",
    "history_every": "30s",  # a sample per simulated half hour: the history fills in minutes
    "zones": [
        {"id": "renmin-rd-n", "name": "Renmin Rd north side (concentrator)", "lat": 34.7466,
         "lon": 113.6253, "district": "erqi", "sensors": ["1001-1012"], "closed": ["pk-1012"],
         "kerb": [[113.6247, 34.74665], [113.6259, 34.74665]],
         "outline": _box(113.6246, 34.74660, 113.6260, 34.74672)},
        {"id": "renmin-rd-s", "name": "Renmin Rd south side (concentrator)", "lat": 34.7460,
         "lon": 113.6255, "district": "erqi", "sensors": ["1013-1024"],
         "kerb": [[113.6249, 34.74605], [113.6261, 34.74605]],
         "outline": _box(113.6248, 34.74598, 113.6262, 34.74610)},
        {"id": "erqi-square", "name": "Erqi Square lot (NB-IoT nodes)", "kind": "offStreet",
         "lat": 34.7538, "lon": 113.6650, "district": "erqi", "sensors": ["2001-2012"],
         "kerb": [[113.6645, 34.7538], [113.6655, 34.7538]],
         "outline": _box(113.6644, 34.7535, 113.6656, 34.7541)},
    ],
}
# Random traffic, an hour of the street every minute: arrivals, dwell times and heartbeats.
PARKING_TRAFFIC = ("--time-scale", "60", "--arrivals", "1.5", "--dwell", "20",
                   "--heartbeat", "900", "--garbage", "2", "--seed", "7")


@dataclass(frozen=True, slots=True)
class People:
    """The demo's logins: a lift crew member, an environment inspector and the ops room."""

    crew: str
    inspector: str
    ops: str


def collector_config(public_url: str, rx: Receivers, people: People,
                     extra_webhook: str | None = None) -> dict[str, Any]:
    """collector.toml: sites, zones, alarms routed to units, escalation and push channels."""
    hook: dict[str, Any] = {"type": "webhook", "timeout": "5s"}
    if rx.secret:
        hook["secret"] = rx.secret
    channels: dict[str, Any] = {
        "lift-crew-webhook": {**hook, "url": rx.webhook_url("lift-crew")},
        "supervisor-webhook": {**hook, "url": rx.webhook_url("supervisor")},
        "environment-webhook": {**hook, "url": rx.webhook_url("environment")},
        "ops-webhook": {**hook, "url": rx.webhook_url("ops")},
        "crew-email": {"type": "email", "host": rx.host, "port": rx.smtp_port,
                       "starttls": False, "from": "CityGate demo <citygate@demo.local>",
                       "to": ["duty@demo.local"]},
    }
    extra: list[str] = []
    if extra_webhook:
        channels["extra-webhook"] = {"type": "webhook", "url": extra_webhook, "timeout": "5s"}
        extra = ["extra-webhook"]
    units = {
        "lift-maintenance": {
            "name": "Lift maintenance (Jinshui)",
            "members": [{"name": "Wang Wei", "phone": "13800000001",
                         "email": "wang.wei@demo.local", "token_hash": hash_token(people.crew)}],
            "escalation": [{"after": "0s", "channels": ["lift-crew-webhook", "crew-email",
                                                        *extra], "to": "lift crew"},
                           {"after": "2min", "channels": ["supervisor-webhook"],
                            "to": "supervisor"},
                           {"when": "not_arrived", "channels": ["supervisor-webhook"],
                            "to": "supervisor"}]},
        "env-inspection": {
            "name": "Environmental inspection",
            "members": [{"name": "Li Na", "email": "li.na@demo.local",
                         "token_hash": hash_token(people.inspector)}],
            "escalation": [{"after": "0s", "channels": ["environment-webhook", "crew-email",
                                                        *extra]}]},
        "city-ops": {"name": "City operations desk",
                     "escalation": [{"after": "0s", "channels": ["ops-webhook", *extra]}]},
    }
    return {
        "public_url": public_url,
        "notify": {"retry_base": "2s", "retry_cap": "30s", "channels": channels},
        "alarms": {
            "group_wait": "5s",
            "sites": {site: {"name": name, "gateways": [gw], "unit": "lift-maintenance",
                             **LIFT_SITE_FACTS[site]}
                      for gw, (site, name, _) in LIFT_SITES.items()},
            "units": units,
            "routes": [{"kinds": ["nox_limit", "pm10_district"], "unit": "env-inspection"}],
            "default_unit": "city-ops",
            "ops": [{"name": "ops-room", "token_hash": hash_token(people.ops)}]},
        "sites": ENVIRONMENT,
        "parking": PARKING,
    }


def _gateway_head(gateway: str, data_dir: Path, broker_url: str) -> list[str]:
    return ["schema_version = 1", "[gateway]", f'id = "{gateway}"', 'site = "demo-district"',
            f'data_dir = "{data_dir}"', "[uplink]", f'brokers = ["{broker_url}"]',
            'health_interval = "10s"', 'reconnect_min = "0.5s"', 'reconnect_max = "5s"',
            "[outbox]", 'durability_window = "200ms"']


def environment_gateway(data_dir: Path, broker_url: str, ttys: dict[str, Path],
                        tcp_port: int) -> str:
    """gw-env-01: one HJ 212 serial line per pty station and a TCP listener for the rest."""
    lines = _gateway_head("gw-env-01", data_dir, broker_url)
    for st in STATIONS:
        if st.link == "pty":
            lines += ["[[buses]]", f'name = "ser-{st.device}"', 'type = "hj212-serial"',
                      f'port = "{ttys[st.device]}"', f"baudrate = {st.baud}",
                      f'parity = "{st.parity}"']
    lines += ["[[buses]]", 'name = "tcp"', 'type = "hj212-tcp"', 'host = "127.0.0.1"',
              f"port = {tcp_port}"]
    for st in STATIONS:
        bus = f"ser-{st.device}" if st.link == "pty" else "tcp"
        lines += ["[[devices]]", f'id = "{st.device}"', f'bus = "{bus}"',
                  f'profile = "{st.profile}"', f'mn = "{st.mn}"']
    return "\n".join(lines) + "\n"


def station_argv(st: Station, tty: Path, tcp_port: int) -> list[str]:
    """argv of a station simulator."""
    where = (["--pty", str(tty), "--baud", str(st.baud)] if st.link == "pty"
             else ["--tcp", f"127.0.0.1:{tcp_port}"])
    return [sys.executable, "-m", "devices.sim.environment", "--kind", st.kind, "--mn", st.mn,
            *st.args, *where, *STATION_TIMING]


def parking_gateway(data_dir: Path, broker_url: str, tty: Path, coap_port: int) -> str:
    """gw-park-01: the concentrator's serial line and a CoAP endpoint for NB-IoT nodes."""
    lines = _gateway_head("gw-park-01", data_dir, broker_url)
    lines += ["[[buses]]", 'name = "conc1"', 'type = "parking-serial"', f'port = "{tty}"',
              "baudrate = 9600", "[[buses]]", 'name = "nb"', 'type = "coap"',
              'host = "127.0.0.1"', f"port = {coap_port}", 'heartbeat = "30min"']
    return "\n".join(lines) + "\n"


def parking_argv(tty: Path, coap_port: int, cue: Path) -> list[str]:
    """argv of the parking simulator: concentrator + CoAP nodes, traffic once `cue` exists."""
    return [sys.executable, "-m", "devices.sim.parking", "--serial", str(tty),
            "--sensors", PARKING_SERIAL_SENSORS, "--coap", f"127.0.0.1:{coap_port}",
            "--coap-sensors", PARKING_COAP_SENSORS, "--start-when", str(cue), *PARKING_TRAFFIC]
