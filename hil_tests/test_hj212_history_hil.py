"""A station's minute data with a gap, filled by a history request issued through REST: the
station simulator (a separate process, over TCP), a real gateway process, Mosquitto and a
real collector process."""

from __future__ import annotations

import subprocess
import sys
import urllib.error
from datetime import datetime
from pathlib import Path
from typing import Any

import orjson
import pytest

from citygate.rig import Broker, Proc, free_port, http_json, wait_for
from hil_tests.conftest import TEST_TOKEN, Procs

pytestmark = pytest.mark.hil
MN = "DUST0000000000000000009Z"
MINUTES, OUTAGE = 12, (4, 7)  # minute uploads; the line is cut for uploads 4..7
QUANTITIES = 9  # values of one dust minute upload (docs/hj212.md)


def api(base: str, method: str, path: str, body: Any = None) -> Any:
    return http_json(base + path, method=method, body=body, token=TEST_TOKEN, timeout=40)


def refused(base: str, body: dict[str, Any]) -> tuple[int, Any]:
    try:
        return 200, api(base, "POST", "/api/v1/devices/dust-9/commands", body)
    except urllib.error.HTTPError as exc:
        return exc.code, orjson.loads(exc.read())


def minutes(base: str) -> list[tuple[str, int]]:
    """(quantity, ts) of every stored minute reading of the station."""
    try:
        rows = api(base, "GET", "/api/v1/devices/dust-9:min/readings?limit=10000")["readings"]
    except urllib.error.HTTPError:
        return []
    return [(r["quantity"], int(datetime.fromisoformat(r["observed_at"]).timestamp() * 1000))
            for r in rows]


def gateway_config(tmp: Path, broker: Broker, port: int) -> Path:
    lines = ["schema_version = 1", "[gateway]", 'id = "gw-hist"', f'data_dir = "{tmp / "gw"}"',
             'clock = "trust"', "[uplink]", f'brokers = ["{broker.url}"]',
             'health_interval = "1s"', 'reconnect_min = "0.5s"', "[outbox]",
             'durability_window = "100ms"', "[[buses]]", 'name = "tcp"', 'type = "hj212-tcp"',
             'host = "127.0.0.1"', f"port = {port}", "[[devices]]", 'id = "dust-9"',
             'bus = "tcp"', 'profile = "dust-hj212"', f'mn = "{MN}"', 'response_timeout = "5s"']
    path = tmp / "gw-hist.toml"
    path.write_text("\n".join(lines) + "\n")
    return path


def test_a_history_request_through_rest_fills_the_gap_an_outage_left(
        tmp_path: Path, broker: Broker, procs: Procs) -> None:
    _proc, base = procs.collector(broker)
    port = free_port()
    procs.start("gateway", "edge", "run", "--config", str(gateway_config(tmp_path, broker,
                                                                             port)))
    sim = Proc("sim-dust-9", [sys.executable, "-m", "devices.sim.environment", "--kind", "dust",
                              "--mn", MN, "--tcp", f"127.0.0.1:{port}", "--interval", "10s",
                              "--minute-every", "300ms", "--minutes-from", "2h",
                              "--minute-count", str(MINUTES),
                              "--outage", f"{OUTAGE[0]}-{OUTAGE[1]}", "--seed", "3"],
               tmp_path / "logs" / "sim-dust-9.log")
    procs.all.append(sim.start())
    sent = MINUTES - (OUTAGE[1] - OUTAGE[0] + 1)
    wait_for(lambda: len(minutes(base)) == sent * QUANTITIES, 40,
             f"{sent} minute uploads at the collector")
    before = minutes(base)
    stamps = sorted({ts for _, ts in before})
    first, last = stamps[0], stamps[-1]
    assert last - first == (MINUTES - 1) * 60_000
    gap = [first + m * 60_000 for m in range(OUTAGE[0] - 1, OUTAGE[1])]
    assert not set(gap) & set(stamps), "the outage left no gap"

    code, out = refused(base, {"op": "request_history", "args": {
        "cn": "2051", "begin": first, "end": first + 8 * 86_400_000}})
    assert code == 422 and out["detail"]["reason"] == "bad_args", out
    code, out = refused(base, {"op": "request_history", "args": {
        "cn": "2011", "begin": first, "end": last}})
    assert code == 422 and "cn must be one of" in out["detail"]["message"], out

    # The whole range, stored minutes included: only the missing ones are added.
    done = api(base, "POST", "/api/v1/devices/dust-9/commands", {
        "op": "request_history", "args": {"cn": "2051", "begin": first, "end": last},
        "ttl_s": 60, "wait_s": 30})
    assert done["status"] == "done", (done, procs.logs())
    assert done["value_read_back"] == {"frames": MINUTES, "exe_rtn": 1, "cn": "2051"}
    wait_for(lambda: len(minutes(base)) >= MINUTES * QUANTITIES, 30, "the gap to be filled")
    after = minutes(base)
    assert len(after) == MINUTES * QUANTITIES
    assert len(set(after)) == len(after), "a minute reading is stored twice"
    assert sorted({ts for _, ts in after}) == [first + m * 60_000 for m in range(MINUTES)]
    assert set(before) <= set(after)

    again = api(base, "POST", "/api/v1/devices/dust-9/commands", {
        "op": "request_history", "args": {"cn": "2051", "begin": gap[0], "end": gap[-1]},
        "ttl_s": 60, "wait_s": 30})
    assert again["status"] == "done" and again["value_read_back"]["frames"] == len(gap)
    shown = api(base, "GET", f"/api/v1/commands/{again['id']}")
    assert [a["what"] for a in shown["audit"]] == ["issued", "sent", "accepted", "done"]
    # Every frame the station sent again was taken as a copy (the gateway's recent-frame
    # window; the collector keeps one value per period beyond it): 8 + 4 copies.
    wait_for(lambda: duplicates(base) == sent + len(gap), 15, "the copies to be counted")
    assert len(minutes(base)) == MINUTES * QUANTITIES  # asked again: still no duplicates

    read = subprocess.run([sys.executable, "-m", "citygate.cli", "command", "run", "dust-9",
                           "read_params", "--arg", "params=rtd_interval", "--wait", "30",
                           "--collector", base, "--token", TEST_TOKEN], check=False,
                          capture_output=True, text=True, timeout=60)
    assert read.returncode == 0, (read.stdout, read.stderr)
    assert 'read_params(params=rtd_interval)  done  (answered {"rtd_interval": 10})' \
        in read.stdout


def duplicates(base: str) -> int:
    health = api(base, "GET", "/api/v1/gateways/gw-hist").get("health") or {}
    return int(health.get("devices", {}).get("dust-9", {}).get("duplicates", -1))
