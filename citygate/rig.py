"""The city rig: real processes (broker, simulators, gateways, collector) on one machine.

Used by `citygate demo`, the hardware-in-the-loop tests and the benchmarks, so all three run
the same processes the same way.
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from citygate.broker import mosquitto_binary, mosquitto_config
from citygate.reaper import Reaper

DEFAULT_TOKEN: str | None = os.environ.get("CITYGATE_TOKEN")  # sent by http_json if none given
# When set, every Proc started is stopped by this watchdog if this process dies (even SIGKILL).
REAPER: Reaper | None = None


_GIVEN: set[int] = set()  # ports handed out by this process, never handed out twice


def _ephemeral_low() -> int:
    try:
        return int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 32768


def free_port() -> int:
    """A TCP port nobody listens on right now, below the kernel's ephemeral range.

    A port the kernel hands out for port 0 comes from the range it also uses as the source port
    of outgoing connections, so between this call and the server's bind a client connection
    (a cluster node dialling its routes, say) can take it: "address already in use". Ports below
    that range are never picked as source ports.
    """
    low = _ephemeral_low()
    for _ in range(200):
        port = random.randrange(max(1024, low - 12000), low)
        if port in _GIVEN:
            continue
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
        _GIVEN.add(port)
        return port
    with socket.socket() as s:  # a crowded range: let the kernel choose
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_for(condition: Callable[[], Any], timeout: float, what: str,
             interval: float = 0.1) -> Any:
    """Poll `condition` until it returns something truthy (returned), or raise TimeoutError."""
    deadline = time.monotonic() + timeout
    while True:
        result = condition()
        if result:
            return result
        if time.monotonic() >= deadline:
            raise TimeoutError(f"timed out after {timeout:g}s waiting for {what}")
        time.sleep(interval)


def port_open(port: int, host: str = "127.0.0.1") -> bool:
    """True when something accepts TCP connections on host:port."""
    with contextlib.suppress(OSError), socket.create_connection((host, port), timeout=0.5):
        return True
    return False


def http_json(url: str, timeout: float = 5.0, *, method: str = "GET", body: Any = None,
              token: str | None = None) -> Any:
    """Call a JSON endpoint and return the decoded answer."""
    token = token or DEFAULT_TOKEN
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(url, data=data, method=method)
    if data is not None:
        req.add_header("Content-Type", "application/json")
    if token:
        req.add_header("Authorization", f"Bearer {token}")
    with urllib.request.urlopen(req, timeout=timeout) as resp:
        return json.loads(resp.read() or b"null")


def toml_value(value: Any) -> str:
    """A Python value as a TOML value (tables inline), for configs written by rigs."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, str):
        return json.dumps(value, ensure_ascii=False)
    if isinstance(value, list | tuple):
        return "[" + ", ".join(toml_value(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{json.dumps(str(k))} = {toml_value(v)}"
                               for k, v in value.items()) + "}"
    raise TypeError(f"cannot write {type(value).__name__} as TOML")


def toml_document(sections: dict[str, Any]) -> str:
    """Top-level keys as `key = <inline value>` lines (a valid TOML document)."""
    return "".join(f"{k} = {toml_value(v)}\n" for k, v in sections.items())


@contextlib.contextmanager
def served(app: Any, timeout: float = 10.0) -> Iterator[str]:
    """Serve an ASGI app with uvicorn in a thread on a free port; yield its base URL.

    A short graceful-shutdown timeout keeps open event streams from holding the server up.
    """
    import threading

    import uvicorn

    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning",
                                           timeout_graceful_shutdown=1))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True,
                              name="uvicorn")
    thread.start()
    try:
        wait_for(lambda: server.started, timeout, "uvicorn to start")
        yield f"http://127.0.0.1:{sock.getsockname()[1]}"
    finally:
        server.should_exit = True
        thread.join(timeout=10)
        sock.close()


def citygate(*args: str) -> list[str]:
    """argv running a citygate subcommand with this interpreter."""
    return [sys.executable, "-m", "citygate.cli", *args]


@dataclass
class Proc:
    """A child process whose output goes to a log file."""

    name: str
    argv: list[str]
    log: Path
    popen: subprocess.Popen[bytes] | None = None
    env: dict[str, str] | None = None
    new_session: bool = False  # a session of its own: the terminal's Ctrl-C does not reach it

    def start(self) -> Proc:
        """Start (or restart) the process (watched by REAPER when one runs)."""
        self.log.parent.mkdir(parents=True, exist_ok=True)
        with open(self.log, "ab") as out:
            self.popen = subprocess.Popen(self.argv, stdout=out, stderr=subprocess.STDOUT,
                                          env={**os.environ, **(self.env or {})},
                                          start_new_session=self.new_session)
        if REAPER is not None:
            REAPER.watch(self.popen.pid)
        return self

    @property
    def alive(self) -> bool:
        """True while the process runs."""
        return self.popen is not None and self.popen.poll() is None

    def stop(self, timeout: float = 10.0) -> int | None:
        """SIGTERM, then SIGKILL after `timeout`; return the exit code."""
        if self.popen is None:
            return None
        if self.popen.poll() is None:
            self.popen.send_signal(signal.SIGTERM)
            try:
                self.popen.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait()
        return self.popen.returncode

    def kill9(self) -> None:
        """SIGKILL at once, as a power cut or the OOM killer would."""
        if self.popen is not None and self.popen.poll() is None:
            self.popen.kill()
            self.popen.wait()

    def tail(self, lines: int = 30) -> str:
        """The last lines of the process log (for failure messages)."""
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""


@dataclass
class Broker:
    """A private MQTT broker on a free port: Mosquitto when installed, else embedded amqtt."""

    data_dir: Path
    port: int = field(default_factory=free_port)
    extra_config: str = ""
    proc: Proc | None = None

    @property
    def url(self) -> str:
        """mqtt://127.0.0.1:PORT"""
        return f"mqtt://127.0.0.1:{self.port}"

    @property
    def kind(self) -> str:
        """Which broker runs."""
        return "mosquitto" if mosquitto_binary() else "embedded amqtt"

    def start(self, timeout: float = 15.0) -> Broker:
        """Start the broker and wait until it accepts connections."""
        binary = mosquitto_binary()
        if binary:
            conf = mosquitto_config(self.port, self.data_dir, extra=self.extra_config)
            argv = [binary, "-c", str(conf)]
        else:
            argv = [sys.executable, "-m", "citygate.embedded_broker", str(self.port)]
        self.proc = Proc("broker", argv, self.data_dir / "broker.log").start()
        wait_for(lambda: port_open(self.port) or not self.proc or not self.proc.alive, timeout,
                 f"the MQTT broker on port {self.port}")
        if not self.proc.alive:
            raise RuntimeError(f"broker exited:\n{self.proc.tail()}")
        return self

    def stop(self) -> None:
        """Stop the broker (its persistence file is kept for a restart)."""
        if self.proc is not None:
            self.proc.stop()
            wait_for(lambda: not port_open(self.port), 10, "the broker port to close")

    def restart(self) -> None:
        """Stop and start again on the same port."""
        self.stop()
        self.start()


PG_ADMIN = os.environ.get("CITYGATE_TEST_PG", "postgresql://postgres@127.0.0.1:5432/postgres")


def pg_admin() -> Any:
    """An autocommit connection to the PostgreSQL server's admin database."""
    import psycopg

    return psycopg.connect(PG_ADMIN.replace("postgresql+psycopg", "postgresql"),
                           autocommit=True, connect_timeout=3)


def pg_problem() -> str | None:
    """Why no PostgreSQL server answers at PG_ADMIN (None when one does)."""
    try:
        with pg_admin():
            return None
    except Exception as exc:  # any failure to connect means: no server for the tests
        return f"PostgreSQL not reachable at {PG_ADMIN}: {exc}"


@contextlib.contextmanager
def pg_database(prefix: str) -> Iterator[str]:
    """A new, empty PostgreSQL database named `<prefix>_<random>`, dropped afterwards."""
    import uuid

    name = f"{prefix}_{uuid.uuid4().hex[:12]}"
    with pg_admin() as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    try:
        yield f"{PG_ADMIN.rsplit('/', 1)[0]}/{name}"
    finally:
        with pg_admin() as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def mqtt_remaining_length(n: int) -> bytes:
    """MQTT's variable-length "remaining length" of a packet body of n bytes."""
    out = bytearray()
    while True:
        byte, n = n % 128, n // 128
        out.append(byte | (0x80 if n else 0))
        if not n:
            return bytes(out)


def gateway_toml(gateway: str, data_dir: Path, broker_url: str, bus: str,
                 devices: list[tuple[str, int]], *, poll: str = "1s",
                 profile: str = "elevator-gbt24476", extra: str = "", uplink: str = "",
                 outbox: str = 'durability_window = "200ms"', gateway_keys: str = "",
                 device_rules: str = "") -> str:
    """A gateway config with one bus named line1 holding `devices` as (id, unit) pairs.

    `uplink`, `outbox` and `gateway_keys` are extra lines for those tables; `extra` is
    placed before the bus (whole tables).
    """
    lines = [
        "schema_version = 1",
        "[gateway]", f'id = "{gateway}"', 'site = "demo-district"', f'data_dir = "{data_dir}"',
        gateway_keys,
        "[uplink]", f'brokers = ["{broker_url}"]', 'health_interval = "10s"',
        'reconnect_min = "0.5s"', 'reconnect_max = "5s"', uplink,
        "[outbox]", outbox,
        extra,
        bus,
    ]
    for dev_id, unit in devices:
        lines += ["[[devices]]", f'id = "{dev_id}"', 'bus = "line1"', f'profile = "{profile}"',
                  f"unit = {unit}", f'poll = "{poll}"']
        if device_rules:
            lines.append(f"rules = {{ {device_rules} }}")
    return "\n".join(lines) + "\n"


def tcp_bus(port: int, host: str = "127.0.0.1") -> str:
    """A [[buses]] table for Modbus TCP."""
    return f'[[buses]]\nname = "line1"\ntype = "modbus-tcp"\nhost = "{host}"\nport = {port}'


def rtu_bus(path: Path | str, baudrate: int = 9600) -> str:
    """A [[buses]] table for Modbus RTU on a serial port."""
    return f'[[buses]]\nname = "line1"\ntype = "modbus-rtu"\nport = "{path}"\nbaudrate = {baudrate}'


def collector_health(base: str) -> dict[str, Any] | None:
    """The collector's health document, or None while it is not answering."""
    with contextlib.suppress(OSError, ValueError, urllib.error.URLError):
        health: dict[str, Any] = http_json(f"{base}/api/v1/health", timeout=2)
        return health
    return None
