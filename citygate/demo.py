"""The demo city: broker, simulators, two gateways and the collector as real processes."""

from __future__ import annotations

import argparse
import secrets
import shutil
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from citygate import rig
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
    wait_for,
)

# Installation facts of the simulated lifts (devices/sim/elevator.py): 18 floors at 1 m/s.
LIFT_RULES = "top_floor = 18, bottom_floor = 1, rated_speed = 1.0"


@dataclass
class City:
    """The demo's processes, started in order and stopped in reverse."""

    data_dir: Path
    procs: list[Proc] = field(default_factory=list)
    broker: Broker | None = None

    def start(self, name: str, argv: list[str], env: dict[str, str] | None = None) -> Proc:
        """Start a process whose output goes to logs/<name>.log."""
        proc = Proc(name, argv, self.data_dir / "logs" / f"{name}.log", env=env).start()
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


def run_demo(args: argparse.Namespace) -> int:
    """Start the simulated city, print where to look, and stop cleanly."""
    data_dir = (args.data_dir or Path("var/demo")).resolve()
    if args.data_dir is None and data_dir.exists():
        shutil.rmtree(data_dir)  # the default place holds only the previous demo run
    data_dir.mkdir(parents=True, exist_ok=True)
    city = City(data_dir)
    try:
        return _run(city, args)
    except (RuntimeError, TimeoutError) as exc:
        print(f"demo failed: {exc}", file=sys.stderr)
        return 1
    finally:
        city.stop()


def _run(city: City, args: argparse.Namespace) -> int:
    d = city.data_dir
    host, http_port = args.http
    if port_open(http_port, host):
        raise RuntimeError(f"{host}:{http_port} is taken; pick another with --http HOST:PORT")
    n = args.elevators
    print(f"CityGate demo — state in {d}")
    city.broker = broker = Broker(d / "broker").start()
    print(f"  broker      {broker.url} ({broker.kind})")

    modbus_port = free_port()
    scenarios = [a for s in args.scenario or [] for a in ("--scenario", s)]
    city.start("sim-tcp", citygate("sim", "elevators", "--tcp", f"127.0.0.1:{modbus_port}",
                                   "--units", f"1-{n}", *scenarios))
    tty = d / "ttyLIFTS"
    city.start("sim-rtu", citygate("sim", "elevators", "--rtu", str(tty), "--units", f"1-{n}",
                                   "--seed", "7"))
    wait_for(lambda: port_open(modbus_port), 15, "the Modbus TCP simulator")
    wait_for(tty.exists, 15, "the Modbus RTU simulator's serial line")

    base = f"http://{host}:{http_port}"
    admin = "cg_" + secrets.token_urlsafe(32)
    rig.DEFAULT_TOKEN = admin  # this process's own API calls
    city.start("collector", citygate("collector", "run", "--db", f"sqlite:///{d / 'hub.sqlite'}",
                                     "--broker", broker.url, "--http", f"{host}:{http_port}"),
               env={"CITYGATE_ADMIN_TOKEN": admin})
    wait_for(lambda: collector_health(base), 30, f"the collector at {base}")
    reader = http_json(f"{base}/api/v1/tokens", method="POST",
                       body={"name": "demo-viewer", "role": "reader"})["token"]
    (d / "viewer-token").write_text(reader + "\n")

    for gw, bus, prefix in (("gw-tcp-01", tcp_bus(modbus_port), "lift-t"),
                            ("gw-rtu-01", rtu_bus(tty), "lift-r")):
        cfg = d / f"{gw}.toml"
        cfg.write_text(gateway_toml(gw, d / gw, broker.url, bus,
                                    [(f"{prefix}{u:02d}", u) for u in range(1, n + 1)],
                                    device_rules=LIFT_RULES))
        city.start(gw, citygate("edge", "run", "--config", str(cfg)))

    print(f"  simulators  modbus-tcp 127.0.0.1:{modbus_port} and modbus-rtu {tty}, "
          f"{n} lifts each")
    print("  gateways    gw-tcp-01 (Modbus TCP), gw-rtu-01 (Modbus RTU over a serial line)")
    print(f"  collector   {base}/?token={reader}   (live status)")
    print(f"              {base}/docs   (API; send 'Authorization: Bearer <token>')")
    print(f"              curl -H 'Authorization: Bearer {reader}' {base}/api/v1/devices")
    print(f"  tokens      viewer (reader): {d / 'viewer-token'}; admin: only in this run")
    print(f"  logs        {d / 'logs'}")
    sys.stdout.flush()
    wait_for(lambda: _readings(base) > 0, 30, "the first readings at the hub")
    print("  data is flowing; stop with Ctrl-C" +
          (f" (or wait {args.duration:g}s)" if args.duration else ""))
    sys.stdout.flush()
    return _watch(city, base, args.duration)


def _readings(base: str) -> int:
    health = collector_health(base)
    return int(health["counts"].get("readings", 0)) if health else 0


def _watch(city: City, base: str, duration: float | None) -> int:
    end = time.monotonic() + duration if duration else None
    try:
        while end is None or time.monotonic() < end:
            city.check_alive()
            time.sleep(0.5)
    except KeyboardInterrupt:
        pass
    gws = http_json(f"{base}/api/v1/gateways")
    devs = http_json(f"{base}/api/v1/devices")
    online = sum(1 for g in gws if g["state"] == "online")
    print(f"summary: {online}/{len(gws)} gateways online, {len(devs)} devices, "
          f"{_readings(base)} readings stored")
    return 0
