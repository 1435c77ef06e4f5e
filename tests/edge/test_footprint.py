"""The agent's memory footprint: `citygate edge run` imports only what its config needs.

Each case runs the real command line in a fresh interpreter for a few seconds (no broker, the
field devices unreachable: the agent starts its loops and retries), stops it with SIGTERM as
systemd does, and reads the modules it had loaded. pydantic and the collector's contract models,
the update machinery and the sources of bus types the config does not use must not be among
them: on a gateway they would cost megabytes of its 40 MB budget (bench/bench_idle.py).
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from citygate.rig import free_port

RUN = """
import json, os, signal, sys, threading
threading.Timer(float(sys.argv[2]), os.kill, (os.getpid(), signal.SIGTERM)).start()
from citygate.cli import main
code = main(["edge", "run", "--config", sys.argv[1]])
print(json.dumps({"code": code, "modules": sorted(sys.modules)}))
"""

# Never needed by a running agent, whatever its buses (update bundles import theirs on demand;
# the config schema is msgspec, pydantic is the collector's).
NEVER = {"devices.contract_models", "pydantic", "cryptography", "tarfile", "venv", "difflib",
         "aiocoap"}


def loaded_modules(tmp_path: Path, buses_and_devices: str, seconds: float = 3.0) -> set[str]:
    config = tmp_path / "gateway.toml"
    config.write_text(f"""
[gateway]
id = "gw-footprint"
data_dir = "{tmp_path / 'data'}"
clock = "trust"

[uplink]
brokers = ["mqtt://127.0.0.1:{free_port()}"]
connect_timeout = "1s"
{buses_and_devices}
""", encoding="utf-8")
    done = subprocess.run([sys.executable, "-c", RUN, str(config), str(seconds)],
                          capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 0, done.stderr[-2000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result["code"] == 0
    return set(result["modules"])


def top_level(modules: set[str]) -> set[str]:
    return modules | {m.split(".")[0] for m in modules}


def test_modbus_tcp_gateway_loads_modbus_and_nothing_else(tmp_path: Path) -> None:
    modules = top_level(loaded_modules(tmp_path, f"""
[[buses]]
name = "tcp0"
type = "modbus-tcp"
host = "127.0.0.1"
port = {free_port()}

[[devices]]
id = "lift-001"
bus = "tcp0"
profile = "elevator-gbt24476"
poll = "60s"
"""))
    assert {"edge.bus", "pymodbus", "paho"} <= modules  # it did start its bus and uplink
    assert modules & NEVER == set()
    assert modules & {"edge.hj212_source", "devices.hj212", "edge.parking_source",
                      "devices.parking"} == set()


HJ212_TCP = """
[[buses]]
name = "loggers"
type = "hj212-tcp"
host = "127.0.0.1"
port = {port}

[[devices]]
id = "dust-1"
bus = "loggers"
profile = "dust-hj212"
mn = "88888880000001"
"""

COAP = """
[[buses]]
name = "nb"
type = "coap"
host = "127.0.0.1"
port = {port}
"""


@pytest.mark.parametrize("buses", [HJ212_TCP, COAP], ids=["hj212-tcp", "coap"])
def test_network_only_gateway_loads_no_modbus_and_no_serial(tmp_path: Path, buses: str) -> None:
    modules = top_level(loaded_modules(tmp_path, buses.format(port=free_port())))
    assert "paho" in modules
    assert ("aiocoap" in modules) == (buses is COAP)  # the CoAP stack only where it is used
    assert modules & (NEVER - {"aiocoap"}) == set()
    assert modules & {"pymodbus", "serial", "edge.bus", "edge.modbus_link"} == set()
