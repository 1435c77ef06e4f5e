"""Remote configuration through the collector API, a secured Mosquitto and a real gateway
process (edge.managed): applied, refused with the reason, and rolled back."""

from __future__ import annotations

import sys
import time
import urllib.error
from pathlib import Path
from typing import Any

import pytest

from citygate.rig import Proc, free_port, wait_for
from edge.config import load_config
from hil_tests.secure_rig import HubServer, SecureBroker
from provisioning.bundle import apply_bundle, write_bundle

pytestmark = pytest.mark.hil


def push(server: HubServer, gw: str, toml: str, wait_s: float = 30) -> dict[str, Any]:
    out: dict[str, Any] = server.call("POST", f"/api/v1/gateways/{gw}/config",
                                      {"config_toml": toml, "wait_s": wait_s})
    return out


def push_state(server: HubServer, gw: str, push_id: str) -> dict[str, Any]:
    out: dict[str, Any] = server.call("GET", f"/api/v1/gateways/{gw}/config/{push_id}")
    return out


def echo_ok(server: HubServer, gw: str) -> bool:
    try:
        return bool(server.call("POST", f"/api/v1/gateways/{gw}/echo?wait_s=2")["ok"])
    except urllib.error.HTTPError:
        return False


def test_config_push_applies_refuses_and_rolls_back(tmp_path: Path) -> None:
    broker = SecureBroker(tmp_path / "broker").start()
    etc = tmp_path / "etc"
    server = HubServer(tmp_path / "hub", broker, etc).start()
    agent: Proc | None = None
    try:
        server.call("PUT", "/api/v1/sites/s1", {"name": "s1"})
        issued = server.call("POST", "/api/v1/gateways", {"site": "s1", "id": "gw-rc"})
        apply_bundle(write_bundle(tmp_path / "bundle", issued), etc)
        conf = etc / "gateway.toml"
        outbox = load_config(conf).outbox_path
        agent = Proc("gw", [sys.executable, "-m", "edge.managed", "--config", str(conf),
                            "--rollback-after", "4"], tmp_path / "gw.log").start()
        wait_for(lambda: echo_ok(server, "gw-rc"), 30, "the gateway to answer an echo")
        original = conf.read_text()

        changed = original.replace("[uplink]", '[uplink]\nhealth_interval = "7s"')
        done = push(server, "gw-rc", changed)
        assert done["status"] in ("applied", "confirmed"), (done, agent.tail())
        assert load_config(conf).uplink.health_interval == 7.0
        assert (etc / "gateway.toml.prev").read_text() == original
        # no device answered before: nothing to watch, confirmed at once, and then registered
        wait_for(lambda: server.call("GET", "/api/v1/gateways/gw-rc/registration")[
            "config_version"] == done["version"], 10, "the registry to take the config")
        assert push_state(server, "gw-rc", done["push_id"])["status"] == "confirmed"

        refused = push(server, "gw-rc", changed.replace("[uplink]", "[uplink]\nbogus = 1"))
        assert refused["status"] == "refused"
        assert "bogus" in refused["detail"]["reason"]
        assert load_config(conf).uplink.health_interval == 7.0

        dead = changed.replace(broker.tls_url, f"mqtts://127.0.0.1:{free_port()}")
        t0 = time.monotonic()
        rolled = push(server, "gw-rc", dead, wait_s=40)
        assert rolled["status"] == "rolled_back", (rolled, agent.tail())
        assert rolled["detail"]["reason"] == "uplink_lost"
        assert time.monotonic() - t0 >= 4
        assert conf.read_text() == changed
        assert load_config(conf).outbox_path == outbox and outbox.exists()
        assert echo_ok(server, "gw-rc"), agent.tail()
        assert agent.alive
    finally:
        if agent is not None:
            agent.stop()
        server.stop()
        broker.stop()
