"""The demo city: broker, simulators, four gateways, the collector and local push receivers.

Real processes (see citygate/rig.py), each logging to <data dir>/logs: lifts on Modbus TCP and
RTU with fault scenarios, a parking district (serial concentrator + CoAP nodes), dust and boiler
stations over HJ 212 (serial lines and TCP) with exceedances, and a collector whose incidents
are pushed to a webhook receiver and an SMTP server started here (citygate/receivers.py).
"""

from __future__ import annotations

import argparse
import logging
import secrets
import shutil
import signal
import socket
import sys
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from citygate import demo_city, rig
from citygate.reaper import Reaper
from citygate.receivers import Receivers
from citygate.rig import (
    Broker,
    Proc,
    citygate,
    collector_health,
    free_port,
    gateway_toml,
    http_json,
    port_open,
    rtu_bus,
    tcp_bus,
    toml_document,
    wait_for,
)

START_TIMEOUT_S = 30.0


@dataclass
class City:
    """The demo's processes, started in order and stopped in reverse.

    Each runs in its own session: Ctrl-C in the terminal reaches only the demo, which then sums
    up (asking the collector) and stops its children in order. A watchdog (citygate/reaper.py)
    stops them if the demo itself is killed.
    """

    data_dir: Path
    procs: list[Proc] = field(default_factory=list)
    broker: Broker | None = None
    receivers: Receivers | None = None
    reaper: Reaper | None = None

    def watch_children(self) -> None:
        """From now on, every process the rig starts dies with this one."""
        self.reaper = rig.REAPER = Reaper().start()

    def start(self, name: str, argv: list[str], env: dict[str, str] | None = None) -> Proc:
        """Start a process whose output goes to logs/<name>.log."""
        proc = Proc(name, argv, self.data_dir / "logs" / f"{name}.log", env=env,
                    new_session=True).start()
        self.procs.append(proc)
        return proc

    def check_alive(self) -> None:
        """Raise if a process died."""
        for proc in self.procs:
            if not proc.alive:
                raise RuntimeError(f"{proc.name} exited; last lines of {proc.log}:\n"
                                   f"{proc.tail(10)}")

    def stop(self) -> None:
        """Stop everything, newest first."""
        for proc in reversed(self.procs):
            proc.stop()
        if self.broker is not None:
            self.broker.stop()
        if self.receivers is not None:
            self.receivers.stop()
        if self.reaper is not None:
            self.reaper.close()
            self.reaper = rig.REAPER = None


def run_demo(args: argparse.Namespace) -> int:
    """Start the simulated city, print where to look, and stop cleanly."""
    data_dir = (args.data_dir or Path("var/demo")).resolve()
    if args.data_dir is None and data_dir.exists():
        shutil.rmtree(data_dir)  # the default place holds only the previous demo run
    data_dir.mkdir(parents=True, exist_ok=True)
    city = City(data_dir)
    try:
        city.watch_children()
        return _run(city, args)
    except (RuntimeError, TimeoutError, OSError) as exc:
        print(f"demo failed: {exc}", file=sys.stderr)
        return 1
    finally:
        city.stop()


def free_udp_port() -> int:
    """A UDP port nobody is bound to right now (for the gateway's CoAP endpoint)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class Layout:
    """Ports and serial lines of one demo run."""

    d: Path
    modbus_port: int = field(default_factory=free_port)
    hj212_port: int = field(default_factory=free_port)
    coap_port: int = field(default_factory=free_udp_port)

    @property
    def lifts_tty(self) -> Path:
        """The RTU lift bank's serial line."""
        return self.d / "ttyLIFTS"

    @property
    def parking_tty(self) -> Path:
        """The parking concentrator's serial line."""
        return self.d / "ttyPARK"

    @property
    def parking_cue(self) -> Path:
        """Created when the parking gateway listens: the parking simulator starts traffic."""
        return self.d / "parking-go"

    def station_tty(self, device: str) -> Path:
        """The serial line of a pty-attached environmental station."""
        return self.d / f"tty-{device}"


def _run(city: City, args: argparse.Namespace) -> int:
    d = city.data_dir
    host, http_port = args.http
    if port_open(http_port, host):
        raise RuntimeError(f"{host}:{http_port} is taken; pick another with --http HOST:PORT")
    began = time.monotonic()
    at = Layout(d)
    base = f"http://{host}:{http_port}"
    print(f"CityGate demo — state in {d}")
    city.receivers = rx = _start_receivers(d)
    city.broker = broker = Broker(d / "broker").start()
    _start_simulators(city, at, args)
    people = demo_city.People(*(secrets.token_urlsafe(18) for _ in range(3)))
    admin = "cg_" + secrets.token_urlsafe(32)
    rig.DEFAULT_TOKEN = admin  # this process's own API calls
    config = demo_city.collector_config(base, rx, people, args.notify_webhook)
    (d / "collector.toml").write_text(toml_document(config))
    city.start("collector", citygate("collector", "run", "--db", f"sqlite:///{d / 'hub.sqlite'}",
                                     "--broker", broker.url, "--http", f"{host}:{http_port}",
                                     "--config", str(d / "collector.toml")),
               env={"CITYGATE_ADMIN_TOKEN": admin})
    _wait_started(city, lambda: collector_health(base) is not None, f"the collector at {base}")
    _start_gateways(city, at, broker, args.elevators)
    reader = http_json(f"{base}/api/v1/tokens", method="POST",
                       body={"name": "demo-viewer", "role": "reader"})["token"]
    _write_tokens(d, reader, people)
    _print_where(city, at, base, reader, people, args)
    _wait_started(city, lambda: _readings(base) > 0, "the first readings at the hub")
    print(f"  data is flowing after {time.monotonic() - began:.0f}s; stop with Ctrl-C" +
          (f" (or wait {args.duration:g}s)" if args.duration else ""), flush=True)
    return _watch(city, base, people, args.duration)


def _start_receivers(d: Path) -> Receivers:
    (d / "logs").mkdir(parents=True, exist_ok=True)
    handler = logging.FileHandler(d / "logs" / "receivers.log")
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)-7s %(message)s"))
    logger = logging.getLogger("citygate.receivers")
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    logger.propagate = False  # pushes go to their log and page, not over the demo's output
    logging.getLogger("mail.log").setLevel(logging.WARNING)  # aiosmtpd logs every SMTP command
    return Receivers(secret="whsec-" + secrets.token_urlsafe(16), directory=d / "pushes").start()


def _start_simulators(city: City, at: Layout, args: argparse.Namespace) -> None:
    """Lifts (TCP and RTU), the parking district and the serial-line stations."""
    n = args.elevators
    tcp_faults = args.scenario or list(demo_city.DEFAULT_LIFT_SCENARIOS)
    city.start("sim-lifts-tcp", citygate("sim", "elevators", "--tcp",
                                         f"127.0.0.1:{at.modbus_port}", "--units", f"1-{n}",
                                         *_scenarios(tcp_faults)))
    city.start("sim-lifts-rtu", citygate("sim", "elevators", "--rtu", str(at.lifts_tty),
                                         "--units", f"1-{n}", "--seed", "7",
                                         *_scenarios(demo_city.RTU_LIFT_SCENARIOS)))
    city.start("sim-parking", demo_city.parking_argv(at.parking_tty, at.coap_port,
                                                     at.parking_cue))
    for st in demo_city.STATIONS:
        if st.link == "pty":
            city.start(f"sim-{st.device}", demo_city.station_argv(
                st, at.station_tty(st.device), at.hj212_port))


def _scenarios(specs: Any) -> list[str]:
    return [a for s in specs for a in ("--scenario", s)]


def _wait_started(city: City, condition: Any, what: str) -> None:
    """Wait for a start-up condition, failing at once if a process died meanwhile."""
    def ready() -> bool:
        city.check_alive()
        return bool(condition())

    wait_for(ready, START_TIMEOUT_S, what, interval=0.2)


def _start_gateways(city: City, at: Layout, broker: Broker, n: int) -> None:
    """Four gateways: lifts over TCP and RTU, parking, environment; then the TCP stations."""
    d = city.data_dir
    serial = [at.lifts_tty, at.parking_tty,
              *(at.station_tty(s.device) for s in demo_city.STATIONS if s.link == "pty")]
    _wait_started(city, lambda: port_open(at.modbus_port) and all(p.exists() for p in serial),
                  "the simulators' Modbus port and serial lines")
    for gw, bus in (("gw-tcp-01", tcp_bus(at.modbus_port)), ("gw-rtu-01", rtu_bus(at.lifts_tty))):
        prefix = demo_city.LIFT_SITES[gw][2]
        _gateway(city, gw, gateway_toml(gw, d / gw, broker.url, bus,
                                        [(f"{prefix}{u:02d}", u) for u in range(1, n + 1)],
                                        device_rules=demo_city.LIFT_RULES))
    park = _gateway(city, "gw-park-01", demo_city.parking_gateway(
        d / "gw-park-01", broker.url, at.parking_tty, at.coap_port))
    ttys = {s.device: at.station_tty(s.device) for s in demo_city.STATIONS}
    _gateway(city, "gw-env-01", demo_city.environment_gateway(d / "gw-env-01", broker.url,
                                                             ttys, at.hj212_port))
    _wait_started(city, lambda: "CoAP endpoint" in park.tail(200) and
                  port_open(at.hj212_port), "the parking CoAP endpoint and the HJ 212 listener")
    at.parking_cue.touch()
    for st in demo_city.STATIONS:
        if st.link == "tcp":
            city.start(f"sim-{st.device}", demo_city.station_argv(st, Path(), at.hj212_port))


def _gateway(city: City, name: str, config: str) -> Proc:
    path = city.data_dir / f"{name}.toml"
    path.write_text(config)
    return city.start(name, citygate("edge", "run", "--config", str(path)))


def _write_tokens(d: Path, reader: str, people: demo_city.People) -> None:
    path = d / "tokens.txt"
    path.write_text(f"viewer (reader) {reader}\ncrew (Wang Wei, lift maintenance) {people.crew}\n"
                    f"inspector (Li Na, environment) {people.inspector}\n"
                    f"ops (ops room) {people.ops}\n")
    path.chmod(0o600)


def _print_where(city: City, at: Layout, base: str, reader: str, people: demo_city.People,
                 args: argparse.Namespace) -> None:
    d, n, rx = city.data_dir, args.elevators, city.receivers
    assert rx is not None and city.broker is not None
    stations = ", ".join(f"{s.device} ({'serial' if s.link == 'pty' else 'TCP'})"
                         for s in demo_city.STATIONS)
    print(f"  broker      {city.broker.url} ({city.broker.kind})")
    print(f"  lifts       gw-tcp-01: {n} on Modbus TCP 127.0.0.1:{at.modbus_port}; gw-rtu-01: "
          f"{n} on Modbus RTU {at.lifts_tty}")
    print(f"  parking     gw-park-01: 24 sensors behind a serial concentrator, 12 CoAP nodes on "
          f"udp 127.0.0.1:{at.coap_port} (an hour of traffic per minute)")
    print(f"  environment gw-env-01: HJ 212 stations {stations}")
    print(f"  status      {base}/?token={reader}")
    print(f"  crew        {base}/crew?token={people.crew}   (Wang Wei, lift maintenance)")
    print(f"  ops         {base}/ops?token={people.ops}")
    print(f"  parking     {base}/parking?token={reader}")
    print(f"  environment {base}/environment?token={reader}")
    print(f"  pushes      {rx.base}/   (webhooks and e-mails received; files in {d / 'pushes'})")
    print(f"  API docs    {base}/docs   (send 'Authorization: Bearer <token>')")
    print(f"  tokens      {d / 'tokens.txt'}; logs {d / 'logs'}")
    print(f"  faults      lifts: {', '.join(args.scenario or demo_city.DEFAULT_LIFT_SCENARIOS)}"
          f" (gw-tcp-01), {', '.join(demo_city.RTU_LIFT_SCENARIOS)} (gw-rtu-01); dust and "
          "NOx exceedances at metro-12-works and heat-plant-a", flush=True)


def _readings(base: str) -> int:
    health = collector_health(base)
    return int(health["counts"].get("readings", 0)) if health else 0


def _watch(city: City, base: str, people: demo_city.People, duration: float | None) -> int:
    end = time.monotonic() + duration if duration else None
    stop = threading.Event()
    previous = {sig: signal.signal(sig, lambda *_: stop.set())
                for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        while not stop.wait(0.5) and (end is None or time.monotonic() < end):
            city.check_alive()
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    for line in summary(city, base, people):
        print(line)
    return 0


def summary(city: City, base: str, people: demo_city.People) -> list[str]:
    """What the run produced: gateways, devices, readings, incidents and pushes."""
    try:
        lines = _hub_summary(base, people)
    except OSError as exc:  # Ctrl-C in a terminal reaches the collector too
        lines = [f"summary: the collector no longer answers ({exc}); see {city.data_dir}/logs"]
    rx = city.receivers
    counts: Counter[str] = Counter(rx.counts() if rx else {})
    lines.append(f"  pushes delivered: {sum(counts.values())}" + (
        " (" + ", ".join(f"{ch} {k}" for ch, k in sorted(counts.items())) + ")"
        if counts else ""))
    return lines


def _hub_summary(base: str, people: demo_city.People) -> list[str]:
    gws = http_json(f"{base}/api/v1/gateways")
    devs = http_json(f"{base}/api/v1/devices")
    online = sum(1 for g in gws if g["state"] == "online")
    incidents = http_json(f"{base}/api/v1/incidents", token=people.ops)
    return [f"summary: {online}/{len(gws)} gateways online, {len(devs)} devices, "
            f"{_readings(base)} readings stored",
            f"  incidents: {len(incidents)}" + "".join(
                f"\n    #{i['id']} {i['kind']} {i['device']} ({i['state']}, unit {i['unit']})"
                for i in sorted(incidents, key=lambda i: i["id"]))]
