"""Device commands end to end: a real collector process, Mosquitto, a real gateway process
polling the Modbus TCP lift simulator (a separate process), the REST API and the CLI."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
import urllib.error
from pathlib import Path
from typing import Any

import orjson
import pytest

from citygate.rig import Broker, free_port, gateway_toml, http_json, tcp_bus, wait_for
from devices.commands import DeviceCommand
from hil_tests.conftest import TEST_TOKEN, Procs

pytestmark = pytest.mark.hil
GW = "gw-cmd"
HOME_FLOOR = 23  # holding register of home_floor in elevator-gbt24476
CONFIG = {"alarms": {
    "units": {"lifts-a": {"name": "Lift company A"}, "lifts-b": {"name": "Lift company B"}},
    "sites": {"tower-a": {"devices": ["lift-a1"], "unit": "lifts-a"},
              "tower-b": {"devices": ["lift-b1"], "unit": "lifts-b"}}}}


def read_register(port: int, unit: int, address: int) -> int:
    """What the lift controller holds, read by a client of our own (not through CityGate)."""
    from pymodbus.client import AsyncModbusTcpClient

    async def read() -> int:
        client = AsyncModbusTcpClient("127.0.0.1", port=port, timeout=2, retries=1)
        await client.connect()
        try:
            rr = await client.read_holding_registers(address, count=1, device_id=unit)
            return int(rr.registers[0])
        finally:
            client.close()

    return asyncio.run(read())


def lift_answers(port: int) -> bool:
    from pymodbus.exceptions import ModbusException

    try:
        return read_register(port, 1, HOME_FLOOR) == 1
    except (ModbusException, OSError, AttributeError):
        return False


def api(base: str, method: str, path: str, body: Any = None, token: str = TEST_TOKEN) -> Any:
    return http_json(base + path, method=method, body=body, token=token, timeout=40)


def status_of(base: str, method: str, path: str, body: Any = None,
              token: str = TEST_TOKEN) -> tuple[int, Any]:
    try:
        return 200, api(base, method, path, body, token)
    except urllib.error.HTTPError as exc:
        return exc.code, orjson.loads(exc.read())


def cli(base: str, token: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "citygate.cli", "command", *args,
                           "--collector", base, "--token", token],
                          check=False, capture_output=True, text=True, timeout=60,
                          env=dict(os.environ))


def start_rig(tmp_path: Path, broker: Broker, procs: Procs) -> tuple[str, int, Path]:
    modbus = free_port()
    procs.start("sim", "sim", "elevators", "--tcp", f"127.0.0.1:{modbus}", "--units", "1-2",
                "--static")
    wait_for(lambda: lift_answers(modbus), 15, "the lift simulator")
    _proc, base = procs.collector(broker, config=CONFIG)
    cfg = tmp_path / "gw.toml"
    cfg.write_text(gateway_toml(GW, tmp_path / "gw", broker.url, tcp_bus(modbus),
                                [("lift-a1", 1), ("lift-b1", 2)], poll="500ms"))
    procs.start(GW, "edge", "run", "--config", str(cfg))
    wait_for(lambda: {d["id"] for d in api(base, "GET", "/api/v1/devices")} >=
             {"lift-a1", "lift-b1"}, 30, "the lifts at the collector")
    return base, modbus, cfg


def token(base: str, name: str, unit: str) -> str:
    out = api(base, "POST", "/api/v1/tokens", {"name": name, "role": "crew", "unit": unit})
    return str(out["token"])


def test_writes_reach_the_lift_read_only_points_are_refused_and_companies_are_scoped(
        tmp_path: Path, broker: Broker, procs: Procs) -> None:
    base, modbus, _cfg = start_rig(tmp_path, broker, procs)

    done = cli(base, TEST_TOKEN, "send", "lift-a1", "home_floor", "7", "--wait", "30")
    assert done.returncode == 0 and "done" in done.stdout, (done.stdout, done.stderr,
                                                            procs.logs())
    assert "read back 7" in done.stdout
    assert read_register(modbus, 1, HOME_FLOOR) == 7
    ident = done.stdout.split()[0]
    shown = api(base, "GET", f"/api/v1/commands/{ident}")
    assert [a["what"] for a in shown["audit"]][:2] == ["issued", "sent"]
    assert shown["audit"][-1]["what"] == "done" and shown["audit"][-1]["who"] == GW

    code, refused = status_of(base, "POST", "/api/v1/devices/lift-a1/commands",
                              {"point": "safety_circuit", "value": False})
    assert code == 422 and refused["detail"]["reason"] == "not_writable"
    ro = cli(base, TEST_TOKEN, "send", "lift-a1", "door_lock", "false")
    assert ro.returncode == 2 and "not_writable" in ro.stderr

    company_b = token(base, "crew-b", "lifts-b")
    code, out = status_of(base, "POST", "/api/v1/devices/lift-a1/commands",
                          {"point": "home_floor", "value": 3, "wait_s": 5}, token=company_b)
    assert code == 403, out
    own = status_of(base, "POST", "/api/v1/devices/lift-b1/commands",
                    {"point": "home_floor", "value": 4, "wait_s": 30}, token=company_b)
    assert own[0] == 200 and own[1]["status"] == "done", own
    assert read_register(modbus, 1, HOME_FLOOR) == 7  # company B never reached lift A
    assert read_register(modbus, 2, HOME_FLOOR) == 4


def gateway_state(broker: Broker) -> str:
    """The gateway's retained birth/death state, read from the broker itself."""
    out = subprocess.run(["mosquitto_sub", "-p", str(broker.port), "-C", "1", "-W", "3",
                          "-t", f"citygate/v1/{GW}/state"], capture_output=True, text=True,
                         check=False, timeout=10)
    return str(orjson.loads(out.stdout)["state"]) if out.stdout.strip() else ""


def test_a_command_that_expires_while_the_gateway_is_offline_never_runs_late(
        tmp_path: Path, broker: Broker, procs: Procs) -> None:
    base, modbus, cfg = start_rig(tmp_path, broker, procs)
    next(p for p in procs.all if p.name == GW).stop()
    wait_for(lambda: gateway_state(broker) == "offline", 15, "the gateway to be offline")
    out = api(base, "POST", "/api/v1/devices/lift-a1/commands",
              {"point": "home_floor", "value": 9, "ttl_s": 2})
    wait_for(lambda: api(base, "GET", f"/api/v1/commands/{out['id']}")["status"] == "expired",
             15, "the command to expire")
    replies = subprocess.Popen(["mosquitto_sub", "-p", str(broker.port), "-q", "1", "-W", "40",
                                "-t", f"citygate/v1/{GW}/reply"], stdout=subprocess.PIPE,
                               text=True)
    try:
        procs.start(f"{GW}-again", "edge", "run", "--config", str(cfg))
        wait_for(lambda: gateway_state(broker) == "online", 30, "the gateway to be back")
        # A copy delivered late (as a broker that kept it would): the gateway must refuse it.
        now = int(time.time() * 1000)
        late = DeviceCommand("c-late", "late-key", "lift-a1", "write",
                             {"point": "home_floor", "value": 11}, "ops", now - 5000, now - 1)
        subprocess.run(["mosquitto_pub", "-p", str(broker.port), "-q", "1", "-t",
                        f"citygate/v1/{GW}/cmd/device", "-m", late.to_json().decode()],
                       check=True, timeout=10)
        assert replies.stdout is not None
        answer = next(orjson.loads(line) for line in replies.stdout if "c-late" in line)
    finally:
        replies.kill()
        replies.wait()
    assert answer["detail"]["status"] == "expired" and answer["ok"] is False
    end = time.monotonic() + 1.5  # three poll cycles of the bus: a write would have run
    while time.monotonic() < end:
        assert read_register(modbus, 1, HOME_FLOOR) == 1, "a command ran after its expiry"
        time.sleep(0.1)
    shown = api(base, "GET", f"/api/v1/commands/{out['id']}")
    assert shown["status"] == "expired" and shown["audit"][-1]["what"] == "expired"
