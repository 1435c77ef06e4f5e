"""Hardware in the loop: every lift fault scenario, from simulator registers to the collector.

Each scenario plays on a static simulated lift over Modbus TCP; the gateway runs its edge rules
with short thresholds (per-device `rules`), and the collector must store the right kind and
code raised, then cleared once the scenario stops.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from citygate.rig import Broker, free_port, gateway_toml, http_json, port_open, tcp_bus, wait_for
from devices.sim.scenarios import SCENARIOS

pytestmark = [pytest.mark.hil, pytest.mark.timeout(90)]

RULES = ", ".join([
    'trapped_after = "1s"', 'presence_debounce = "1s"', 'presence_release = "2s"',
    'stopped_outside_zone_after = "1s"', 'door_open_running_after = "1s"',
    'moving_with_door_open_after = "1s"', 'run_timeout = "2s"', 'overspeed_after = "0.5s"',
    'overtravel_after = "0.5s"', "door_cycling_count = 2", 'door_cycling_window = "8s"',
    'power_loss_after = "0.5s"', 'clear_after = "1s"', "rated_speed = 1.0", "top_floor = 18",
    "bottom_floor = 1",
])
# Event codes that go with a kind (GB/T 24476 codes; None: a detected condition has none).
KIND_CODES = {"stopped_outside_door_zone": 4, "run_timeout": 6, "power_loss": 41,
              "alarm_button": 90}
REPRESENTATIVE = {"trapped_passenger", "controller_fault"}  # the rest: `make chaos`
PLAYED = sorted(name for name, s in SCENARIOS.items() if s.expects)


def expected_code(scenario: str, kind: str) -> int | None:
    """The code the collector must store for `kind` raised by `scenario`."""
    if kind == "gbt24476_fault":
        return 2 if scenario == "controller_fault" else int(scenario.rsplit("_", 1)[1])
    return KIND_CODES.get(kind)


def duration(scenario: str) -> int:
    """How long a scenario runs: long enough for its slowest detection."""
    return 14 if scenario == "door_cycling" else 6


@pytest.mark.parametrize("name", [
    pytest.param(n, marks=() if n in REPRESENTATIVE else pytest.mark.slow) for n in PLAYED])
def test_scenario_is_raised_and_cleared_at_the_collector(name: str, tmp_path: Path,
                                                         broker: Broker, procs: Any) -> None:
    port = free_port()
    procs.start("sim", "sim", "elevators", "--tcp", f"127.0.0.1:{port}", "--units", "1",
                "--static", "--scenario", f"{name}@2:unit=1:for={duration(name)}")
    wait_for(lambda: port_open(port), 15, "the simulator")
    _, base = procs.collector(broker)
    cfg = tmp_path / "gw.toml"
    cfg.write_text(gateway_toml("gw-s", tmp_path / "gw", broker.url, tcp_bus(port),
                                [("lift1", 1)], poll="500ms", device_rules=RULES))
    procs.start("gw", "edge", "run", "--config", str(cfg))

    def seen() -> dict[tuple[str, str], list[dict[str, Any]]]:
        out: dict[tuple[str, str], list[dict[str, Any]]] = {}
        for e in http_json(f"{base}/api/v1/events?device=lift1"):
            out.setdefault((e["kind"], e["action"]), []).append(e)
        return out

    expects = SCENARIOS[name].expects
    wanted = [(kind, action) for kind in expects for action in ("raise", "clear")]
    events = wait_for(lambda: (s := seen()) and all(k in s for k in wanted) and s,
                      40, f"{name}: {wanted} at the collector")
    for kind in expects:
        raised, cleared = events[(kind, "raise")], events[(kind, "clear")]
        assert len(raised) == len(cleared) == 1, (kind, raised, cleared)
        if kind != "device_offline":
            assert raised[0]["code"] == expected_code(name, kind), raised
        assert raised[0]["observed_at"] <= cleared[0]["observed_at"]
    active = http_json(f"{base}/api/v1/devices/lift1/faults")
    assert not [f for f in active if f["kind"] in expects], active
