"""A config rollout to a group of two real gateway processes (edge.managed) reading a Modbus TCP
lift simulator, through the collector API, the `citygate provision config` CLI and a secured
Mosquitto: a patch pointing the bus at a wrong port makes the canary's lift silent, so the
canary rolls back by itself and the rollout halts before the second gateway; a harmless patch
goes through both, and a revert brings the previous configs back."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
import tomllib
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from citygate.rig import Proc, free_port, wait_for
from hil_tests.secure_rig import HubServer, SecureBroker
from provisioning.bundle import apply_bundle, write_bundle

pytestmark = pytest.mark.hil

DEVICE = """
[metrics]
listen = "127.0.0.1:{metrics}"

[[buses]]
name = "lifts"
type = "modbus-tcp"
host = "127.0.0.1"
port = {port}

[[devices]]
id = "lift-{name}"
bus = "lifts"
profile = "elevator-gbt24476"
unit = {unit}
poll = "200ms"
"""


def metric(metrics_port: int, pattern: str) -> int:
    """A figure of the running agent's metrics (0 while they do not answer or lack it)."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=2) as r:
            text = r.read().decode()
    except (OSError, urllib.error.URLError):
        return 0
    m = re.search(pattern + r" (\d+)", text)
    return int(m.group(1)) if m else 0


def lift_ok(metrics_port: int, device: str) -> int:
    """Good polls of a device by the running agent."""
    return metric(metrics_port, rf'citygate_device_ok_total{{[^}}]*device="{device}"}}')


def cli(home: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "CITYGATE_PROVISION_HOME": str(home), "COLUMNS": "200"}
    return subprocess.run([sys.executable, "-m", "citygate.cli", "provision", *args],
                          check=False, env=env, capture_output=True, text=True, timeout=60)


def test_group_rollout_halts_on_a_silent_canary_then_succeeds_and_reverts(
        tmp_path: Path) -> None:
    broker = SecureBroker(tmp_path / "broker").start()
    server = HubServer(tmp_path / "hub", broker, tmp_path / "etc").start()
    sim_port = free_port()
    procs: list[Proc] = [Proc("sim", [sys.executable, "-m", "citygate.cli", "sim", "elevators",
                                      "--tcp", f"127.0.0.1:{sim_port}", "--units", "1-2",
                                      "--static"], tmp_path / "sim.log").start()]
    home = tmp_path / "tool"
    try:
        server.call("PUT", "/api/v1/sites/s1", {"name": "s1", "district": "north"})
        gws: dict[str, dict[str, Any]] = {}
        for name, unit in (("a", 1), ("b", 2)):
            gw = f"gw-{name}"
            issued = server.call("POST", "/api/v1/gateways", {"site": "s1", "id": gw})
            etc = tmp_path / f"etc-{name}"
            apply_bundle(write_bundle(tmp_path / f"bundle-{name}", issued), etc)
            conf = etc / "gateway.toml"
            metrics = free_port()
            text = conf.read_text().replace(
                str(tmp_path / "hub" / "gateway-data"), str(tmp_path / f"data-{name}"))
            text += DEVICE.format(metrics=metrics, port=sim_port, name=name, unit=unit)
            conf.write_text(text)
            # the technician's commissioning upload tells the registry what the gateway runs
            server.call("POST", f"/api/v1/gateways/{gw}/commissioning", {
                "run_id": f"run-{gw}-1", "ts": int(time.time() * 1000), "results": [],
                "config_toml": text})
            procs.append(Proc(gw, [sys.executable, "-m", "edge.managed", "--config", str(conf),
                                   "--rollback-after", "8", "--device-grace", "3"],
                              tmp_path / f"{gw}.log").start())
            gws[gw] = {"conf": conf, "metrics": metrics, "device": f"lift-{name}",
                       "original": text}

        def lifts_answer() -> bool:
            return all(lift_ok(g["metrics"], g["device"]) > 0 for g in gws.values())

        wait_for(lifts_answer, 20, "both gateways to read their lift")
        login = cli(home, "login", "--collector", server.url, "--token", server.admin)
        assert login.returncode == 0, login.stdout + login.stderr

        # 1. the bus on a port nothing listens on: the canary's lift goes silent
        wrong = tmp_path / "wrong-port.toml"
        wrong.write_text('[[buses]]\nname = "lifts"\ntype = "modbus-tcp"\n'
                         f'host = "127.0.0.1"\nport = {free_port()}\n')
        t0 = time.monotonic()
        out = cli(home, "config", "push", "--group", "north", "--patch", str(wrong),
                  "--canaries", "1", "--wait", "40s")
        assert out.returncode == 1, out.stdout + out.stderr + procs[1].tail()
        assert "halted" in out.stdout and "devices_silent: lift-a" in out.stdout, out.stdout
        assert time.monotonic() - t0 >= 3  # the grace period was given
        listed = server.call("GET", "/api/v1/config/rollouts")["rollouts"]
        failed = server.call("GET", f"/api/v1/config/rollouts/{listed[0]['rollout_id']}")
        states = {g["gateway_id"]: g for g in failed["gateways"]}
        assert failed["stage"] == "halted"
        assert states["gw-a"]["status"] == "rolled_back" and states["gw-a"]["stage"] == "canary"
        assert states["gw-a"]["detail"]["reason"] == "devices_silent"
        assert states["gw-a"]["detail"]["devices"] == ["lift-a"]
        assert states["gw-b"]["status"] == "skipped"
        for g in gws.values():  # gw-a restored its file, gw-b was never touched
            assert g["conf"].read_text() == g["original"]
        wait_for(lambda: lift_ok(gws["gw-a"]["metrics"], "lift-a") > 0, 15,
                 "gw-a to read its lift again after the rollback")
        wait_for(lambda: metric(gws["gw-a"]["metrics"], "citygate_config_rolled_back_total{[^}]*}")
                 == 1, 10, "gw-a to count its rollback")

        # 2. a harmless change goes through the canary, then the rest
        good = tmp_path / "interval.toml"
        good.write_text('[uplink]\nhealth_interval = "7s"\n')
        out = cli(home, "config", "push", "--group", "north", "--patch", str(good),
                  "--wait", "40s")
        assert out.returncode == 0, out.stdout + out.stderr + procs[1].tail() + procs[2].tail()
        rid = re.search(r"rollout (cfg-[0-9a-f]+)", out.stdout)
        assert rid is not None, out.stdout
        done = server.call("GET", f"/api/v1/config/rollouts/{rid.group(1)}")
        assert done["stage"] == "done" and done["summary"] == {"confirmed": 2}, done
        for gw, g in gws.items():
            cfg = tomllib.loads(g["conf"].read_text())
            assert cfg["uplink"]["health_interval"] == "7s" and cfg["gateway"]["id"] == gw
            assert cfg["devices"][0]["id"] == g["device"]

        # 3. the operator takes it back
        out = cli(home, "config", "revert", "--rollout", rid.group(1), "--wait", "40s")
        assert out.returncode == 0, out.stdout + out.stderr
        for g in gws.values():
            assert g["conf"].read_text() == g["original"]
        assert all(p.alive for p in procs)
    finally:
        for p in reversed(procs):
            p.stop()
        server.stop()
        broker.stop()
