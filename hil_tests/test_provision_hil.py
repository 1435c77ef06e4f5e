"""The technician's tool end to end: real CLI processes, a real secured Mosquitto, the registry
API, a simulated lift on Modbus TCP. Covers gateway new → bundle → apply → device add →
commission (PASS, FAIL with hint when the device is unplugged, PASS again), offline queue and
sync, and the zero-touch claim."""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from citygate.rig import Proc, citygate, free_port, port_open, wait_for
from hil_tests.secure_rig import HubServer, SecureBroker, client

pytestmark = pytest.mark.hil


@pytest.fixture
def hub(tmp_path: Path) -> Iterator[tuple[SecureBroker, HubServer]]:
    broker = SecureBroker(tmp_path / "broker").start()
    server = HubServer(tmp_path / "hub", broker, tmp_path / "etc").start()
    try:
        yield broker, server
    finally:
        server.stop()
        broker.stop()


class Tool:
    """Runs `citygate provision ...` as a technician would, with its own config home."""

    def __init__(self, home: Path) -> None:
        self.env = {**os.environ, "CITYGATE_PROVISION_HOME": str(home), "COLUMNS": "200"}
        self.home = home

    def __call__(self, *args: str | Path, code: int = 0) -> str:
        r = subprocess.run(citygate("provision", *map(str, args)), env=self.env, text=True,
                           capture_output=True, timeout=120, check=False)
        out = r.stdout + r.stderr
        assert r.returncode == code, f"exit {r.returncode}, wanted {code}:\n{out}"
        return out


def start_sim(tmp_path: Path, port: int) -> Proc:
    proc = Proc("sim", citygate("sim", "elevators", "--tcp", f"127.0.0.1:{port}", "--units", "3",
                                "--static"), tmp_path / "sim.log").start()
    wait_for(lambda: port_open(port) or not proc.alive, 15, "the lift simulator")
    return proc


def lines(out: str, status: str) -> list[str]:
    return [x for x in out.splitlines() if x.startswith(status)]


def test_new_gateway_bundle_apply_and_commission(
        tmp_path: Path, hub: tuple[SecureBroker, HubServer]) -> None:
    broker, server = hub
    server.call("PUT", "/api/v1/sites/erqi", {"name": "Erqi lifts", "district": "Erqi"})
    tech = server.call("POST", "/api/v1/tokens", {"name": "tech-li", "role": "technician"})
    tool = Tool(tmp_path / "home")
    tool("login", "--collector", server.url, "--token", tech["token"])
    assert (tmp_path / "home" / "login.json").stat().st_mode & 0o077 == 0

    out = tool("gateway", "new", "--site", "erqi", "--id", "gw-hil", "--out",
               tmp_path / "bundle")
    assert "gw-hil" in out and (tmp_path / "bundle" / "label.svg").exists()
    etc = tmp_path / "etc"
    tool("apply", tmp_path / "bundle", "--to", etc)
    conf = etc / "gateway.toml"
    modbus = free_port()
    tool("device", "add", "--config", conf, "--id", "lift-3", "--profile", "elevator-gbt24476",
         "--bus", "line1", "--bus-type", "modbus-tcp", "--host", "127.0.0.1", "--port",
         str(modbus), "--unit", "3")

    sim = start_sim(tmp_path, modbus)
    try:
        out = tool("commission", "--config", conf)
        assert lines(out, "FAIL") == [], out
        for check in ("config valid", "port line1", "device lift-3", f"broker {broker.tls_url}",
                      "end-to-end via collector", "clock", "disk space"):
            assert any(check in x for x in lines(out, "PASS")), (check, out)
        sim.stop()
        out = tool("commission", "--config", conf, code=1)
        failed = "\n".join(lines(out, "FAIL"))
        assert "device lift-3: no response from unit 3" in failed, out
        assert f"citygate provision scan --host 127.0.0.1 --port {modbus}" in out
        assert any(f"broker {broker.tls_url}" in x for x in lines(out, "PASS"))
        sim.start()
        wait_for(lambda: port_open(modbus), 15, "the simulator again")
        out = tool("commission", "--config", conf)
        assert any("device lift-3" in x for x in lines(out, "PASS")), out
    finally:
        sim.stop()

    runs = server.call("GET", "/api/v1/gateways/gw-hil/commissioning")
    assert [r["passed"] for r in runs] == [True, False, True]
    assert runs[1]["technician"] == "tech-li"
    reg = server.call("GET", "/api/v1/gateways/gw-hil/registration")
    assert [d["device_id"] for d in reg["devices"]] == ["lift-3"]

    # Offline: the run is kept and queued, then uploaded by `sync` when the link is back.
    login = json.loads((tmp_path / "home" / "login.json").read_text())
    dead = {**login, "collector": f"http://127.0.0.1:{free_port()}"}
    (tmp_path / "home" / "login.json").write_text(json.dumps(dead))
    out = tool("commission", "--config", conf, code=1)  # no device, no collector
    assert "still queued" in out
    (tmp_path / "home" / "login.json").write_text(json.dumps(login))
    assert "uploaded 1 run(s), 0 still queued" in tool("sync")
    assert len(server.call("GET", "/api/v1/gateways/gw-hil/commissioning")) == 4
    log = json.loads((tmp_path / "home" / "installs.json").read_text())
    assert len(log["runs"]) == 4 and all(r["uploaded"] for r in log["runs"].values())


def test_zero_touch_claim_gives_working_broker_credentials(
        tmp_path: Path, hub: tuple[SecureBroker, HubServer]) -> None:
    broker, server = hub
    server.call("PUT", "/api/v1/sites/zz", {"name": "Zhengdong"})
    tech = server.call("POST", "/api/v1/tokens", {"name": "tech-wang", "role": "technician"})
    tool = Tool(tmp_path / "home")
    tool("login", "--collector", server.url, "--token", tech["token"])
    token = tool("token", "--site", "zz").strip().splitlines()[-1]
    gateway_side = Tool(tmp_path / "gw-home")  # the gateway itself: no technician login
    out = gateway_side("claim", "--collector", server.url, "--token", token, "--out",
                       tmp_path / "claimed", "--to", tmp_path / "etc2")
    manifest = json.loads((tmp_path / "claimed" / "bundle.json").read_text())
    gid = manifest["gateway_id"]
    assert gid.startswith("zz-") and gid in out
    password = (tmp_path / "etc2" / "mqtt-password").read_text().strip()
    c = wait_for(lambda: _connects(gid, password, broker), 10, "the claimed credentials")
    c.loop_stop()
    c.disconnect()
    again = gateway_side("claim", "--collector", server.url, "--token", token, code=2)
    assert "used or expired" in again


def _connects(user: str, password: str, broker: SecureBroker) -> object:
    try:
        return client(user, password, broker.tls_port, tls=True, ca=broker.ca.cert)
    except ConnectionError:
        return None
