"""Bus efficiency on an emulated 9600-baud RS-485 line: achieved polls/s over the wire limit.

Ptys move bytes at memory speed, so the simulator's null-modem is paced like a real line
(`citygate sim elevators --wire-baud 9600`: each chunk is held for its bytes x 10 bits / 9600
before it is delivered). The wire limit is computed from the profile's frames: request 8 bytes,
response 5 + 2 x registers bytes, plus the 3.5-character silent interval after each frame,
at 10 bits per character (8N1). The gateway polls 8 lifts at a period far shorter than the
line can serve, so it runs flat out; achieved polls/s come from its health counters.
"""

from __future__ import annotations

import json
import os
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from bench.common import median
from citygate.rig import Broker, Proc, citygate, gateway_toml, rtu_bus, wait_for
from devices.modbus.planner import plan_reads
from devices.profiles import load_profile

BAUD = 9600
BITS = 10  # 8N1: start + 8 data + stop
UNITS = 8
WINDOW = float(os.environ.get("BENCH_WINDOW", "12"))
RUNS = int(os.environ.get("BENCH_RUNS", "3"))


def wire_limit(profile: str = "elevator-gbt24476", baud: int = BAUD) -> tuple[float, float]:
    """(seconds of wire time per device poll, polls/s the line allows at best)."""
    prof = load_profile(profile)
    gap = prof.timing.inter_frame_gap(baud, BITS)
    per_poll = 0.0
    for block in plan_reads(prof.points, max_gap=prof.max_gap):
        request, response = 8, 5 + 2 * block.count
        per_poll += (request + response) * BITS / baud + 2 * gap
    return per_poll, 1 / per_poll


def health_messages(broker: Broker, out: list[dict[str, Any]]) -> Any:
    """Subscribe to the gateway's health topic, appending each message to `out`."""
    import paho.mqtt.client as mqtt

    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="bench-bus")
    client.on_message = lambda _c, _u, msg: out.append(json.loads(msg.payload))
    client.connect("127.0.0.1", broker.port)
    client.subscribe("citygate/v1/gw-bus/health", qos=1)
    client.loop_start()
    return client


def one_run(root: Path) -> float:
    """Achieved device polls per second over the paced line."""
    broker = Broker(root / "broker").start()
    tty = root / "ttyBUS"
    procs = [Proc("sim", citygate("sim", "elevators", "--rtu", str(tty), "--units",
                                  f"1-{UNITS}", "--static", "--wire-baud", str(BAUD)),
                  root / "sim.log").start()]
    seen: list[dict[str, Any]] = []
    client = health_messages(broker, seen)
    try:
        wait_for(tty.exists, 15, "the simulated line")
        cfg = gateway_toml("gw-bus", root / "gw", broker.url, rtu_bus(tty, BAUD),
                           [(f"lift{u}", u) for u in range(1, UNITS + 1)], poll="100ms")
        (root / "gw.toml").write_text(cfg.replace('health_interval = "10s"',
                                                  'health_interval = "2s"'))
        procs.append(Proc("gw", citygate("edge", "run", "--config", str(root / "gw.toml")),
                          root / "gw.log").start())
        wait_for(lambda: len(seen) >= 2, 30, "health messages")  # past start-up
        start = seen[-1]
        deadline = time.monotonic() + WINDOW + 5
        wait_for(lambda: seen[-1]["sent"] - start["sent"] >= WINDOW * 1000
                 or time.monotonic() > deadline, WINDOW + 10, "the window")
        end = seen[-1]
        ok = sum(end["devices"][d]["ok"] - start["devices"][d]["ok"] for d in end["devices"])
        return ok / ((end["sent"] - start["sent"]) / 1000)
    finally:
        client.loop_stop()
        client.disconnect()
        for p in reversed(procs):
            p.stop()
        broker.stop()
        threading.Event().wait(0.2)


def main() -> None:
    """Print the wire limit, achieved polls/s per run, and the median efficiency."""
    per_poll, limit = wire_limit()
    print(f"wire limit at {BAUD} 8N1: {per_poll * 1000:.1f} ms per poll "
          f"(request + response + 2 x 3.5-char gaps) = {limit:.2f} polls/s")
    achieved = []
    for run in range(RUNS):
        with tempfile.TemporaryDirectory() as tmp:
            achieved.append(one_run(Path(tmp)))
        print(f"run {run + 1}: {achieved[-1]:.2f} polls/s ({achieved[-1] / limit:.0%})",
              flush=True)
    print(f"bus efficiency, median of {RUNS} runs: {median(achieved):.2f} polls/s of "
          f"{limit:.2f} = {median(achieved) / limit:.0%} (paced pty emulating {BAUD} baud)")


if __name__ == "__main__":
    main()
