"""Hardware in the loop: one RS-485 line, 8 lifts, one dead, one slow, one rejecting, babbling.

Real processes: the lift simulator on a pty null-modem (`citygate sim elevators --rtu`), the
gateway agent, a broker and the collector. The healthy units must keep their full poll rate
and correct values while the bad ones are reported offline or degraded.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest

from citygate.rig import Broker, gateway_toml, http_json, rtu_bus, wait_for
from devices.profiles import load_profile
from devices.sim.elevator import idle_values

pytestmark = [pytest.mark.hil, pytest.mark.timeout(90)]
PROFILE = load_profile("elevator-gbt24476")
UNITS = range(1, 9)
DEAD, SLOW, REJECTING = 3, 5, 6
REJECTED = {"running_hours", "speed", "power_supply"}  # registers 10-13
POLL = 1.0


def gateway_health(base: str) -> dict[str, Any] | None:
    """The last health message of gw-bus as stored at the collector."""
    gws = {g["id"]: g for g in http_json(f"{base}/api/v1/gateways")}
    gw = gws.get("gw-bus")
    return gw["health"] if gw and gw["health"] else None


def test_a_bad_line_does_not_slow_or_corrupt_the_healthy_lifts(tmp_path: Path, broker: Broker,
                                                               procs: Any) -> None:
    tty = tmp_path / "ttyLIFTS"
    procs.start("sim", "sim", "elevators", "--rtu", str(tty), "--units", "1-8", "--static",
                "--dead", str(DEAD), "--slow", f"{SLOW}:200ms", "--reject", f"{REJECTING}:10-13",
                "--babble", "2s", "--seed", "7")
    wait_for(tty.exists, 15, "the RTU simulator's line")
    _, base = procs.collector(broker)
    cfg = gateway_toml("gw-bus", tmp_path / "gw", broker.url, rtu_bus(tty),
                       [(f"lift{u}", u) for u in UNITS], poll="1s")
    cfg = cfg.replace('health_interval = "10s"', 'health_interval = "2s"')
    (tmp_path / "gw.toml").write_text(cfg)
    gw = procs.start("gw", "edge", "run", "--config", str(tmp_path / "gw.toml"))

    def offline_raised() -> bool:
        return any(e["action"] == "raise"
                   for e in http_json(f"{base}/api/v1/events?device=lift{DEAD}"
                                      "&kind=device_offline"))

    wait_for(offline_raised, 30, f"unit {DEAD} reported offline")
    first = wait_for(lambda: gateway_health(base), 10, "a health message")
    t0 = time.monotonic()
    wait_for(lambda: (h := gateway_health(base)) and h["sent"] - first["sent"] >= 12_000, 25,
             "health messages 12 s apart")
    last = gateway_health(base)
    assert last is not None and time.monotonic() - t0 < 25
    window = (last["sent"] - first["sent"]) / 1000
    expected = window / POLL
    for unit in UNITS:
        if unit == DEAD:
            continue
        a, b = first["devices"][f"lift{unit}"], last["devices"][f"lift{unit}"]
        rate = (b["ok"] - a["ok"]) / expected
        assert rate >= 0.9, (unit, b["ok"] - a["ok"], expected, b)
        assert b["online"] is True, (unit, b)

    dead = last["devices"][f"lift{DEAD}"]
    assert dead["online"] is False and dead["ok"] == 0, dead
    rejecting = last["devices"][f"lift{REJECTING}"]
    assert rejecting["degraded"] is True and set(rejecting["unavailable"].split(",")) == REJECTED
    for unit in UNITS:
        if unit == DEAD:
            continue
        latest = http_json(f"{base}/api/v1/devices/lift{unit}/latest")["quantities"]
        wanted = {p.quantity for p in PROFILE.points}
        if unit == REJECTING:
            wanted -= REJECTED
        assert set(latest) == wanted, (unit, set(latest) ^ wanted)
        expected_values = idle_values(unit)
        for q, v in latest.items():
            exp = expected_values[q]
            if isinstance(exp, float):
                assert abs(float(v["value"]) - exp) < 1e-6, (unit, q, v, exp)
            elif q in ("service_mode", "direction", "power_supply"):
                continue  # enums come back as labels
            else:
                assert v["value"] == exp, (unit, q, v, exp)
    offline = [e for e in http_json(f"{base}/api/v1/events?kind=device_offline")
               if e["action"] == "raise"]
    assert {e["device"] for e in offline} == {f"lift{DEAD}"}, offline
    assert last["counters"]["bus_splits"] >= 2
    assert gw.alive, gw.tail()
