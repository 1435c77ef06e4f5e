"""Parking node commands end to end: the REST API and the CLI of a real collector process,
Mosquitto, a real gateway process with a CoAP endpoint, and the node simulator (a separate
process) reporting over real UDP CoAP, taking the command from the reply to its next report
and acknowledging it in the report after."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import urllib.error
from pathlib import Path
from typing import Any

import orjson
import pytest

from citygate.rig import Broker, Proc, http_json, wait_for
from hil_tests.conftest import TEST_TOKEN, Procs

pytestmark = pytest.mark.hil
NODE = "pk-3001"


def free_udp_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def api(base: str, method: str, path: str, body: Any = None) -> Any:
    return http_json(base + path, method=method, body=body, token=TEST_TOKEN, timeout=40)


def cli(base: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "citygate.cli", "command", *args,
                           "--collector", base, "--token", TEST_TOKEN],
                          check=False, capture_output=True, text=True, timeout=60,
                          env=dict(os.environ))


def test_a_command_issued_over_rest_reaches_the_node_in_a_coap_reply_and_comes_back_done(
        tmp_path: Path, broker: Broker, procs: Procs) -> None:
    _proc, base = procs.collector(broker)
    port = free_udp_port()
    cfg = tmp_path / "gw.toml"
    cfg.write_text(f"""schema_version = 1
[gateway]
id = "gw-nb"
data_dir = "{tmp_path / 'gw-nb'}"
[uplink]
brokers = ["{broker.url}"]
health_interval = "1s"
reconnect_min = "0.5s"
reconnect_max = "5s"
[outbox]
durability_window = "100ms"
[[buses]]
name = "nb"
type = "coap"
host = "127.0.0.1"
port = {port}
heartbeat = "10min"
""")
    gw = procs.start("gw-nb", "edge", "run", "--config", str(cfg))
    wait_for(lambda: "CoAP endpoint" in gw.log.read_text() or not gw.alive, 20,
             "the gateway's CoAP endpoint")
    assert gw.alive, gw.tail()
    script = tmp_path / "script.txt"  # the node reports every 0.3 s for a minute
    script.write_text("0 3001 startup\n" + "".join(f"{0.3 * i:.1f} 3001 heartbeat\n"
                                                   for i in range(1, 200)))
    procs.all.append(Proc("sim-parking", [
        sys.executable, "-m", "devices.sim.parking", "--coap", f"127.0.0.1:{port}",
        "--coap-sensors", "3001", "--script", str(script), "--seed", "3"],
        tmp_path / "logs" / "sim-parking.log").start())

    wait_for(lambda: NODE in {d["id"] for d in api(base, "GET", "/api/v1/devices")}, 30,
             "the node's first report at the collector")

    done = cli(base, "run", NODE, "configure", "--arg", "heartbeat_s=900", "--arg",
               "enter_mg=80", "--wait", "30")
    assert done.returncode == 0 and " done " in done.stdout, (done.stdout, done.stderr,
                                                            procs.logs())
    ident = done.stdout.split()[0]
    shown = api(base, "GET", f"/api/v1/commands/{ident}")
    assert shown["op"] == "configure" and shown["args"] == {"heartbeat_s": 900, "enter_mg": 80}
    settings = shown["value_read_back"]["settings"]
    assert (settings["heartbeat_s"], settings["enter_mg"], settings["leave_mg"]) == (900, 80, 35)
    assert [a["what"] for a in shown["audit"]] == ["issued", "sent", "accepted", "done"]
    assert shown["audit"][-1]["who"] == "gw-nb"

    recal = api(base, "POST", f"/api/v1/devices/{NODE}/commands",
                {"op": "recalibrate", "wait_s": 30})
    assert recal["status"] == "done", recal
    assert len(recal["value_read_back"]["baseline"]) == 3

    hostile = cli(base, "run", NODE, "configure", "--arg", "heartbeat_s=5")
    assert hostile.returncode == 2 and "out_of_range" in hostile.stderr, hostile
    with pytest.raises(urllib.error.HTTPError) as refused:
        api(base, "POST", f"/api/v1/devices/{NODE}/commands",
            {"op": "configure", "args": {"enter_mg": 40, "leave_mg": 45}})
    assert refused.value.code == 422
    assert orjson.loads(refused.value.read())["detail"]["reason"] == "inconsistent"
    counters = api(base, "GET", "/api/v1/commands/stats")["counters"]
    assert counters["refused"] == 2 and counters["issued"] == 2

    def gateway_counters() -> dict[str, Any] | None:
        gws = {g["id"]: g for g in api(base, "GET", "/api/v1/gateways")}
        found = ((gws.get("gw-nb") or {}).get("health") or {}).get("counters", {})
        return found if found.get("bus_commands_acked", 0) >= 2 else None

    counters = wait_for(gateway_counters, 20, "the gateway's command counters")
    assert counters["bus_commands_delivered"] == 2 and counters["bus_rejected"] == 0
