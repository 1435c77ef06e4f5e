"""End to end: HJ 212 dust and fume simulators → gateway process → Mosquitto → collector process;
the registry imported with the CLI; an exceedance attributed to the upwind construction site,
pushed to its owner's webhook, acknowledged, reported and closed when the air recovers; a
kitchen whose fan runs while its purifier is off raises an alarm."""

from __future__ import annotations

import sys
import urllib.request
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest

from citygate.receivers import Push, Receivers
from citygate.rig import Broker, Proc, free_port, http_json, wait_for
from hil_tests.conftest import TEST_TOKEN

pytestmark = pytest.mark.hil
HOOK_SECRET = "owner-hook-secret"
MN = {"dust-1": "DUST0000000000000000001A", "dust-2": "DUST0000000000000000002B",
      "fume-1": "FUME0000000000000000001A"}
P = (34.8000, 113.7000)  # the dust station that will exceed
DLAT_600M = 600 / 111_195
SITES: dict[str, Any] = {
    "districts": [{"id": "d1", "outline": [[113.6, 34.7], [113.8, 34.7], [113.8, 34.9]]}],
    "sites": [
        {"id": "station-1", "lat": P[0], "lon": P[1], "district": "d1", "kind": "dust",
         "devices": ["dust-1"]},
        {"id": "station-2", "lat": 34.83, "lon": 113.75, "district": "d1", "kind": "dust",
         "devices": ["dust-2"]},
        {"id": "noodle-house", "lat": 34.79, "lon": 113.69, "district": "d1",
         "kind": "restaurant", "devices": ["fume-1"],
         "limits": {"unpurified_hold": "2s", "fume_duration": "1h"}},
    ],
}
# Wind from the north: the site 600 m north is upwind of the station, the factory 600 m south
# downwind. Same distance, and the factory's id sorts first: only the wind can put the site
# first.
REGISTRY = (
    "id,name,kind,district,lat,lon,company,contact_name,contact_phone,channel,devices\n"
    f"factory-s,South plant,industrial,d1,{P[0] - DLAT_600M:.6f},{P[1]},Plant Co,Zhou,"
    "13900000002,factory-owner,\n"
    f"site-n,Metro line works,construction_site,d1,{P[0] + DLAT_600M:.6f},{P[1]},Build Co,"
    "Wang,13900000001,site-owner,\n"
    "noodle-house,Noodle house,restaurant,d1,34.79,113.69,Noodle Ltd,Li,,,fume-1\n")


@pytest.fixture
def receivers(tmp_path: Path) -> Any:
    """The owners' webhook endpoints."""
    with Receivers(secret=HOOK_SECRET, directory=tmp_path / "pushes") as rx:
        yield rx


def collector_config(rx: Receivers) -> dict[str, Any]:
    hook = {"type": "webhook", "secret": HOOK_SECRET, "timeout": "2s"}
    return {
        "public_url": "https://citygate.test",
        "sites": SITES,
        "notify": {"retry_base": "1s", "retry_cap": "2s", "channels": {
            "site-owner": {**hook, "url": rx.webhook_url("site-owner")},
            "factory-owner": {**hook, "url": rx.webhook_url("factory-owner")}}},
        "sources": {"top": 1, "radius_m": 2000, "wind_window": "2h"},
    }


def gateway_config(tmp: Path, broker: Broker, tcp_port: int) -> Path:
    lines = ["schema_version = 1", "[gateway]", 'id = "gw-env"', f'data_dir = "{tmp / "gw"}"',
             "[uplink]", f'brokers = ["{broker.url}"]', 'health_interval = "1s"',
             "[outbox]", 'durability_window = "100ms"',
             "[[buses]]", 'name = "tcp"', 'type = "hj212-tcp"', 'host = "127.0.0.1"',
             f"port = {tcp_port}"]
    profiles = {"dust-1": "dust-hj212", "dust-2": "dust-hj212", "fume-1": "fume-hj212"}
    for dev, profile in profiles.items():
        lines += ["[[devices]]", f'id = "{dev}"', 'bus = "tcp"', f'profile = "{profile}"',
                  f'mn = "{MN[dev]}"']
    path = tmp / "gw-env.toml"
    path.write_text("\n".join(lines) + "\n")
    return path


def station(tmp: Path, dev: str, tcp_port: int, *args: str) -> Proc:
    """A simulated logger connecting to the gateway's HJ 212 listener."""
    return Proc(f"sim-{dev}-{args[1]}", [
        sys.executable, "-m", "devices.sim.environment", "--mn", MN[dev], "--tcp",
        f"127.0.0.1:{tcp_port}", "--interval", "300ms", "--hour-every", "1s", "--seed", "3",
        *args], tmp / "logs" / f"sim-{dev}-{args[1]}.log").start()


def call(url: str, *, method: str = "POST", body: bytes | None = None,
         content_type: str = "application/json") -> tuple[int, bytes]:
    """An HTTP call as the owner's phone makes it (no bearer token, the link's key)."""
    req = urllib.request.Request(url, data=body, method=method)
    if body is not None:
        req.add_header("Content-Type", content_type)
    with urllib.request.urlopen(req, timeout=5) as resp:
        return resp.status, resp.read()


def pushes(rx: Receivers, channel: str) -> list[Push]:
    return [p for p in rx.pushes(f"webhook:{channel}") if p.key.startswith("source-task-")]


def test_exceedance_is_attributed_pushed_to_the_owner_and_closed(
        tmp_path: Path, broker: Broker, procs: Any, receivers: Receivers) -> None:
    _, base = procs.collector(broker, config=collector_config(receivers))
    registry = tmp_path / "sources.csv"
    registry.write_text(REGISTRY)
    imported = procs.start("import", "sources", "import", str(registry), "--collector", base,
                           "--token", TEST_TOKEN)
    wait_for(lambda: not imported.alive, 30, "the registry import")
    assert imported.popen is not None and imported.popen.returncode == 0, imported.tail()
    assert {s["id"] for s in http_json(f"{base}/api/v1/sources", token=TEST_TOKEN)} == {
        "factory-s", "site-n", "noodle-house"}

    tcp_port = free_port()
    wind = ["--wind-from", "0", "--wind-speed", "3"]
    sims = {"dust-1": station(tmp_path, "dust-1", tcp_port, "--scenario", "dust_exceedance",
                              "--kind", "dust", *wind),
            "dust-2": station(tmp_path, "dust-2", tcp_port, "--scenario", "normal",
                              "--kind", "dust", *wind),
            "fume-1": station(tmp_path, "fume-1", tcp_port, "--scenario", "purifier_off",
                              "--kind", "fume")}
    procs.all.extend(sims.values())
    procs.start("gateway", "edge", "run", "--config",
                str(gateway_config(tmp_path, broker, tcp_port)))

    # The kitchen: fan on, purifier off, for longer than the hold: an alarm.
    def alarms() -> set[tuple[str, str]]:
        return {(a["site"], a["rule"]) for a in http_json(
            f"{base}/api/v1/environment/alarms?active=true", token=TEST_TOKEN)}

    wait_for(lambda: ("noodle-house", "fan_without_purifier") in alarms(), 60,
             "the fan-without-purifier alarm")
    kitchen = http_json(f"{base}/api/v1/environment/sites?kind=restaurant", token=TEST_TOKEN)
    assert [(s["id"], s["status"]) for s in kitchen] == [("noodle-house", "exceeded")]
    assert kitchen[0]["latest"]["fan_state"]["value"] == 1
    assert kitchen[0]["latest"]["purifier_state"]["value"] == 0

    # The dust exceedance is attributed and pushed to the construction site's owner only.
    owner = wait_for(lambda: pushes(receivers, "site-owner"), 60, "the push to the site owner")
    assert owner[0].delivered and owner[0].verified
    exceedances = http_json(f"{base}/api/v1/sources/exceedances", token=TEST_TOKEN)
    ex = http_json(f"{base}/api/v1/sources/exceedances/{exceedances[0]['id']}",
                   token=TEST_TOKEN)
    ranked = {c["source"]: c for c in ex["candidates"]}
    assert ex["candidates"][0]["source"] == "site-n"
    assert ranked["site-n"]["reasons"][1].startswith("upwind: wind from 0° (N)")
    assert ranked["factory-s"]["reasons"][1].startswith("downwind")
    assert ranked["factory-s"]["score"] < ranked["site-n"]["score"] / 5
    assert [(t["source_id"], t["state"]) for t in ex["tasks"]] == [("site-n", "pushed")]
    assert pushes(receivers, "factory-owner") == []

    # The owner follows the link: acknowledges, sends a photo and reports the action.
    link = urlsplit(owner[0].link)
    key = parse_qs(link.query)["key"][0]
    task_url = f"{base}{link.path}"
    assert call(f"{task_url}/ack?key={key}")[0] == 200
    jpeg = b"\xff\xd8\xff\xe0" + bytes(2000)
    assert call(f"{task_url}/photo?key={key}", method="PUT", body=jpeg,
                content_type="image/jpeg")[0] == 204
    assert call(f"{task_url}/report?key={key}",
                body=b'{"text": "Watered the haul road, covered the spoil"}')[0] == 200
    task = http_json(f"{task_url}?key={key}", token="")
    assert task["state"] == "reported" and task["has_photo"]

    # The air recovers (the site's dust is under control): the task closes.
    sims["dust-1"].stop()
    procs.all.append(station(tmp_path, "dust-1", tcp_port, "--scenario", "normal",
                             "--kind", "dust", *wind))
    closed = wait_for(lambda: (t := http_json(f"{task_url}?key={key}", token=""))["state"]
                      == "closed" and t, 60, "the task to close on recovery")
    assert closed["closed_reason"] == "recovered"
    figures = http_json(f"{base}/api/v1/sources/figures?by=district", token=TEST_TOKEN)
    assert [(f["district"], f["exceedances"], f["tasks_pushed"], f["handled"], f["closed"])
            for f in figures] == [("d1", 1, 1, 1, 1)]
