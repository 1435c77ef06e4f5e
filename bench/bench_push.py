"""Push latency: from a register change at the lift simulator to receipt at a webhook.

Real processes: a lift simulator (Modbus TCP, BENCH_PUSH_N static lifts), a gateway polling
each lift every second, a private broker and a collector whose alarms route controller faults
(`gbt24476_fault`, raised on the first poll that reads the fault code) straight to a signed
webhook channel; the webhook receiver runs in this process (citygate/receivers.py).

Each lift gets one `controller_fault@T:unit=N` scenario, staggered BENCH_PUSH_GAP seconds
apart (one per lift, because a re-raise of the same fault on the same lift reopens its incident
instead of paging again). Scenario times count from the simulator's first read, which its
`--count-reads` log timestamps with time.monotonic() — the same clock the receiver stamps
pushes with — so the register change happens at first_read + T. Latency includes the wait for
the next poll (0-1 s), the gateway's rules and outbox, MQTT, the collector's ingest, alarm
engine and notify queue, and the HTTP POST.

    python -m bench push          # BENCH_PUSH_N=60 BENCH_PUSH_GAP=0.7
"""

from __future__ import annotations

import os
import re
import tempfile
import time
from pathlib import Path
from typing import Any

from bench.common import percentile
from citygate import rig
from citygate.receivers import Receivers
from citygate.rig import (
    Broker,
    Proc,
    citygate,
    collector_health,
    free_port,
    gateway_toml,
    port_open,
    tcp_bus,
    toml_document,
    wait_for,
)

N = int(os.environ.get("BENCH_PUSH_N", "60"))
GAP = float(os.environ.get("BENCH_PUSH_GAP", "0.7"))
FIRST_AT = float(os.environ.get("BENCH_PUSH_FIRST", "8"))  # settle time before the first fault
TARGET_P99_S = 3.0
SECRET = "whsec-bench-" + os.urandom(8).hex()
RULES = "top_floor = 18, bottom_floor = 1, rated_speed = 1.0"
DEVICE_RE = re.compile(r"— (lift-\d+) at ")


def collector_config(rx: Receivers) -> dict[str, Any]:
    """Controller faults page one webhook at once (no group wait)."""
    return {
        "notify": {"channels": {"bench-hook": {"type": "webhook", "secret": SECRET,
                                               "url": rx.webhook_url("bench")}}},
        "alarms": {"group_wait": "0s",
                   "units": {"bench": {"escalation": [{"after": "0s",
                                                       "channels": ["bench-hook"]}]}},
                   "routes": [{"kinds": ["gbt24476_fault"], "unit": "bench"}]},
    }


def injections() -> dict[str, float]:
    """Device id → scenario start (seconds after the simulator's first read)."""
    return {f"lift-{u:03d}": FIRST_AT + (u - 1) * GAP for u in range(1, N + 1)}


def run(root: Path) -> list[float]:
    """Start the rig, play the faults, return latencies in seconds (one per injection)."""
    admin = "cg_bench-" + os.urandom(12).hex()
    rig.DEFAULT_TOKEN = admin
    procs: list[Proc] = []
    with Receivers(secret=SECRET) as rx:
        broker = Broker(root / "broker").start()
        try:
            return _play(root, broker, rx, admin, procs)
        finally:
            for p in reversed(procs):
                p.stop()
            broker.stop()


def _play(root: Path, broker: Broker, rx: Receivers, admin: str,
          procs: list[Proc]) -> list[float]:
    def start(name: str, *args: str, env: dict[str, str] | None = None) -> Proc:
        proc = Proc(name, citygate(*args), root / "logs" / f"{name}.log", env=env).start()
        procs.append(proc)
        return proc

    cfg = root / "collector.toml"
    cfg.write_text(toml_document(collector_config(rx)))
    http = free_port()
    base = f"http://127.0.0.1:{http}"
    start("collector", "collector", "run", "--db", f"sqlite:///{root / 'hub.sqlite'}",
          "--broker", broker.url, "--http", f"127.0.0.1:{http}", "--config", str(cfg),
          env={"CITYGATE_ADMIN_TOKEN": admin})
    wait_for(lambda: collector_health(base), 30, "the collector")
    at = injections()
    modbus, reads = free_port(), root / "reads.log"
    scenarios = [a for u, t in enumerate(at.values(), 1)
                 for a in ("--scenario", f"controller_fault@{t:.3f}:unit={u}:for=600")]
    start("sim", "sim", "elevators", "--tcp", f"127.0.0.1:{modbus}", "--units", f"1-{N}",
          "--static", "--count-reads", str(reads), *scenarios)
    wait_for(lambda: port_open(modbus), 15, "the simulator")
    gw = root / "gw.toml"
    gw.write_text(gateway_toml("gw-bench", root / "gw", broker.url, tcp_bus(modbus),
                               [(dev, u) for u, dev in enumerate(at, 1)], device_rules=RULES))
    start("gateway", "edge", "run", "--config", str(gw))
    wait_for(lambda: reads.exists() and reads.stat().st_size > 0, 20, "the first read")
    first_read = float(reads.read_text().split(maxsplit=1)[0])
    deadline = FIRST_AT + N * GAP + 30
    wait_for(lambda: len(rx.pushes("webhook:bench", delivered=True)) >= N, deadline,
             f"{N} pushes at the webhook", interval=0.2)
    latencies = []
    for push in rx.pushes("webhook:bench", delivered=True):
        m = DEVICE_RE.search(push.title)
        assert m and push.verified, push
        latencies.append(push.monotonic - (first_read + at[m.group(1)]))
    return latencies


def main() -> None:
    """Run the benchmark and print p50 / p99 / max."""
    t = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="bench-push-") as tmp:
        lat = run(Path(tmp))
    p50, p99 = percentile(lat, 50), percentile(lat, 99)
    verdict = "PASS" if p99 < TARGET_P99_S else "FAIL"
    print(f"push latency, register change at the simulator → signed webhook received "
          f"({len(lat)} injections on {N} lifts, poll 1 s, run {time.monotonic() - t:.0f} s):")
    print(f"  p50 {p50:.3f} s   p99 {p99:.3f} s   min {min(lat):.3f} s   max {max(lat):.3f} s"
          f"   target p99 < {TARGET_P99_S:g} s: {verdict}")


if __name__ == "__main__":
    main()
