"""The demo city: broker, simulators, two gateways and the collector as real processes."""

from __future__ import annotations

import argparse
import contextlib
import json
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from citygate.broker import mosquitto_binary, start_broker


def free_port() -> int:
    """A TCP port nobody listens on right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_for(condition: Callable[[], bool], timeout: float, what: str,
             interval: float = 0.1) -> None:
    """Poll `condition` until it holds, or raise TimeoutError naming `what`."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(interval)
    raise TimeoutError(f"timed out after {timeout:g}s waiting for {what}")


def port_open(port: int, host: str = "127.0.0.1") -> bool:
    """True when something accepts TCP connections on host:port."""
    with contextlib.suppress(OSError), socket.create_connection((host, port), timeout=0.5):
        return True
    return False


def http_json(url: str, timeout: float = 2.0) -> Any:
    """GET a JSON document."""
    with urllib.request.urlopen(url, timeout=timeout) as resp:  # noqa: S310 - local URL
        return json.loads(resp.read())


def gateway_toml(gateway: str, data_dir: Path, broker_port: int, bus: str,
                 devices: list[tuple[str, int]], poll: str = "1s") -> str:
    """A gateway config for the demo (also used by the HIL tests)."""
    lines = [
        "schema_version = 1",
        "[gateway]", f'id = "{gateway}"', 'site = "demo-district"', f'data_dir = "{data_dir}"',
        "[uplink]", f'brokers = ["mqtt://127.0.0.1:{broker_port}"]', 'health_interval = "10s"',
        'reconnect_min = "0.5s"', 'reconnect_max = "5s"',
        "[outbox]", 'durability_window = "200ms"',
        bus,
    ]
    for dev_id, unit in devices:
        lines += ["[[devices]]", f'id = "{dev_id}"', 'bus = "line1"',
                  'profile = "elevator-gbt24476"', f"unit = {unit}", f'poll = "{poll}"']
    return "\n".join(lines) + "\n"


@dataclass
class City:
    """The demo's processes, started in order and stopped in reverse."""

    data_dir: Path
    procs: list[tuple[str, subprocess.Popen[bytes]]] = field(default_factory=list)

    def start(self, name: str, argv: list[str]) -> subprocess.Popen[bytes]:
        """Start a process whose output goes to logs/<name>.log."""
        logs = self.data_dir / "logs"
        logs.mkdir(parents=True, exist_ok=True)
        out = open(logs / f"{name}.log", "ab")  # noqa: SIM115 - owned by the child
        proc = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT)
        self.procs.append((name, proc))
        return proc

    def check_alive(self) -> None:
        """Raise if a process died."""
        for name, proc in self.procs:
            if proc.poll() is not None:
                raise RuntimeError(f"{name} exited with code {proc.returncode}; see "
                                   f"{self.data_dir / 'logs' / (name + '.log')}")

    def stop(self) -> None:
        """SIGTERM everything, newest first, then SIGKILL what does not stop."""
        for _, proc in reversed(self.procs):
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for _, proc in reversed(self.procs):
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def citygate(*args: str) -> list[str]:
    """argv running a citygate subcommand with this interpreter."""
    return [sys.executable, "-m", "citygate.cli", *args]


def run_demo(args: argparse.Namespace) -> int:
    """Start the simulated city, print where to look, and stop cleanly."""
    tmp = None
    if args.data_dir is None:
        tmp = tempfile.TemporaryDirectory(prefix="citygate-demo-")
        data_dir = Path(tmp.name)
    else:
        data_dir = args.data_dir.resolve()
        data_dir.mkdir(parents=True, exist_ok=True)
    city = City(data_dir)
    try:
        return _run(city, args)
    except (RuntimeError, TimeoutError) as exc:
        print(f"demo failed: {exc}", file=sys.stderr)
        return 1
    finally:
        city.stop()
        if tmp is not None:
            tmp.cleanup()


def _run(city: City, args: argparse.Namespace) -> int:
    d = city.data_dir
    host, http_port = args.http
    n = args.elevators
    broker_port, modbus_port = free_port(), free_port()
    print(f"CityGate demo — state in {d}")
    broker = start_broker(broker_port, d / "broker", log_file=d / "broker.out")
    city.procs.append(("broker", broker))
    wait_for(lambda: port_open(broker_port), 15, f"the MQTT broker on {broker_port}")
    kind = "mosquitto" if mosquitto_binary() else "embedded amqtt"
    print(f"  broker      mqtt://127.0.0.1:{broker_port} ({kind})")

    city.start("sim-tcp", citygate("sim", "elevators", "--tcp", f"127.0.0.1:{modbus_port}",
                                   "--units", f"1-{n}"))
    tty = d / "ttyLIFTS"
    city.start("sim-rtu", citygate("sim", "elevators", "--rtu", str(tty), "--units", f"1-{n}",
                                   "--seed", "7"))
    wait_for(lambda: port_open(modbus_port), 15, "the Modbus TCP simulator")
    wait_for(tty.exists, 15, "the Modbus RTU simulator's serial line")

    db = f"sqlite:///{d / 'hub.sqlite'}"
    city.start("collector", citygate("collector", "run", "--db", db, "--broker",
                                     f"mqtt://127.0.0.1:{broker_port}", "--http",
                                     f"{host}:{http_port}"))
    base = f"http://{host}:{http_port}"
    wait_for(lambda: _healthy(base), 30, f"the collector at {base}")

    tcp_bus = f'[[buses]]\nname = "line1"\ntype = "modbus-tcp"\nhost = "127.0.0.1"\nport = {modbus_port}'
    rtu_bus = f'[[buses]]\nname = "line1"\ntype = "modbus-rtu"\nport = "{tty}"\nbaudrate = 9600'
    for gw, bus, prefix in (("gw-tcp-01", tcp_bus, "lift-t"), ("gw-rtu-01", rtu_bus, "lift-r")):
        cfg = d / f"{gw}.toml"
        cfg.write_text(gateway_toml(gw, d / gw, broker_port, bus,
                                    [(f"{prefix}{u:02d}", u) for u in range(1, n + 1)]))
        city.start(gw, citygate("edge", "run", "--config", str(cfg)))

    print(f"  simulators  modbus-tcp 127.0.0.1:{modbus_port} and modbus-rtu {tty}, "
          f"{n} lifts each")
    print("  gateways    gw-tcp-01 (Modbus TCP), gw-rtu-01 (Modbus RTU over a serial line)")
    print(f"  collector   {base}/   (live status)")
    print(f"              {base}/docs   (API)")
    print(f"              {base}/api/v1/devices")
    print(f"  logs        {d / 'logs'}")
    sys.stdout.flush()
    wait_for(lambda: _readings(base) > 0, 30, "the first readings at the hub")
    print("  data is flowing; stop with Ctrl-C" +
          (f" (or wait {args.duration:g}s)" if args.duration else ""))
    sys.stdout.flush()
    return _watch(city, base, args.duration)


def _healthy(base: str) -> bool:
    with contextlib.suppress(OSError, ValueError):
        return http_json(f"{base}/api/v1/health")["database"] == "ok"
    return False


def _readings(base: str) -> int:
    with contextlib.suppress(OSError, ValueError, KeyError):
        return int(http_json(f"{base}/api/v1/health")["counts"]["readings"])
    return 0


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
