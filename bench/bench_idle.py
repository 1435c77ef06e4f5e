"""Gateway footprint on small hardware, and what it writes to the SD card.

Two scenarios, each a real `citygate edge run` against the elevator simulator and a broker:
- idle: 1 lift polled once a minute — RSS and share of one core;
- reference: 100 lifts x 20 points at 1 Hz (bench_gateway's rig) — RSS, CPU, and bytes written
  by the gateway process (/proc/<pid>/io write_bytes: everything it wrote, outbox, WAL and logs)
  per reading and per hour, plus the outbox files' net growth.
Targets: < 40 MB RSS and < 1 % of a core idle. The idle CPU figure is the agent's own time;
`idle_cpu_incl_children_pct` adds the time of processes it started and waited for (none is
expected: a helper run every few seconds would show there, not in the agent's own time).

    .venv/bin/python -m bench.bench_idle          # BENCH_IDLE_WINDOW=300 BENCH_WINDOW=60
    BENCH_IDLE_ONLY=1 BENCH_IDLE_RUNS=3 BENCH_IDLE_WINDOW=60 .venv/bin/python -m bench idle

BENCH_IDLE_RUNS (and BENCH_LOAD_RUNS for the reference load) run a scenario that many times,
one after the other, and print each run and the medians; BENCH_IDLE_ONLY=1 skips the reference
load.
"""

from __future__ import annotations

import os
import tempfile
import time
from pathlib import Path

from bench.bench_gateway import LIFTS, POINTS, HealthWatcher, config, totals
from bench.common import median, report_runs, sample
from citygate.rig import Broker, Proc, citygate, free_port, port_open, wait_for

IDLE_WINDOW = float(os.environ.get("BENCH_IDLE_WINDOW", "300"))
LOAD_WINDOW = float(os.environ.get("BENCH_WINDOW", "60"))
IDLE_RUNS = int(os.environ.get("BENCH_IDLE_RUNS", "1"))
IDLE_ONLY = os.environ.get("BENCH_IDLE_ONLY", "") not in ("", "0")
LOAD_RUNS = int(os.environ.get("BENCH_LOAD_RUNS", "1"))


def write_bytes(pid: int) -> int:
    """Bytes this process caused to be written to storage (/proc/<pid>/io)."""
    for line in Path(f"/proc/{pid}/io").read_text().splitlines():
        if line.startswith("write_bytes:"):
            return int(line.split()[1])
    raise RuntimeError("no write_bytes in /proc/<pid>/io")


def cpu_with_children(pid: int) -> float:
    """CPU seconds of a process plus those of the children it has waited for (/proc stat)."""
    stat = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return sum(int(x) for x in stat[11:15]) / os.sysconf("SC_CLK_TCK")


def pss_mb(pid: int) -> float:
    """Proportional set size: RSS with shared pages split among the processes mapping them."""
    for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
        if line.startswith("Pss:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no Pss in /proc/<pid>/smaps_rollup")


def outbox_bytes(data_dir: Path) -> int:
    """Size of the outbox database with its WAL and shared-memory files."""
    return sum(p.stat().st_size for p in data_dir.glob("outbox.sqlite*"))


def idle_config(root: Path, broker: Broker, modbus_port: int) -> Path:
    """One lift polled once a minute."""
    path = root / "idle.toml"
    path.write_text("\n".join([
        "schema_version = 1", "[gateway]", 'id = "gw-idle"', f'data_dir = "{root}/gw"',
        "[uplink]", f'brokers = ["{broker.url}"]', "[[buses]]", 'name = "tcp0"',
        'type = "modbus-tcp"', 'host = "127.0.0.1"', f"port = {modbus_port}", "[[devices]]",
        'id = "lift-001"', 'bus = "tcp0"', 'profile = "elevator-gbt24476"', "unit = 1",
        'poll = "60s"']) + "\n")
    return path


def idle(root: Path) -> dict[str, float]:
    """RSS and CPU of a gateway polling one lift a minute."""
    broker = Broker(root / "broker").start()
    port = free_port()
    sim = Proc("sim", citygate("sim", "elevators", "--tcp", f"127.0.0.1:{port}", "--units", "1"),
               root / "sim.log").start()
    gw = None
    try:
        wait_for(lambda: port_open(port), 20, "simulator")
        gw = Proc("gw", citygate("edge", "run", "--config", str(idle_config(root, broker, port))),
                  root / "gw.log").start()
        assert gw.popen is not None
        pid = gw.popen.pid
        time.sleep(15)  # start-up: imports, first poll, connect
        s0, c0, w0, t0 = sample(pid), cpu_with_children(pid), write_bytes(pid), time.monotonic()
        time.sleep(IDLE_WINDOW)
        s1, c1, w1, t1 = sample(pid), cpu_with_children(pid), write_bytes(pid), time.monotonic()
        assert gw.alive, f"the gateway exited:\n{gw.tail()}"
        return {"idle_rss_mb": s1.rss_kb / 1024, "idle_peak_rss_mb": s1.rss_peak_kb / 1024,
                "idle_pss_mb": pss_mb(pid),
                "idle_cpu_share_of_core_pct": 100 * (s1.cpu_s - s0.cpu_s) / (t1 - t0),
                "idle_cpu_incl_children_pct": 100 * (c1 - c0) / (t1 - t0),
                "idle_write_bytes_per_hour": (w1 - w0) * 3600 / (t1 - t0)}
    finally:
        if gw is not None:
            gw.stop()
        sim.stop()
        broker.stop()


def reference(root: Path) -> dict[str, float]:
    """RSS, CPU and write volume at 100 lifts x 20 points at 1 Hz."""
    broker = Broker(root / "broker").start()
    port = free_port()
    sim = Proc("sim", citygate("sim", "elevators", "--tcp", f"127.0.0.1:{port}", "--units",
                               f"1-{LIFTS}"), root / "sim.log").start()
    gw = None
    watcher = HealthWatcher(broker, "gw-bench")
    try:
        wait_for(lambda: port_open(port), 20, "simulator")
        gw = Proc("gw", citygate("edge", "run", "--config", str(config(root, broker, port))),
                  root / "gw.log").start()
        assert gw.popen is not None
        pid = gw.popen.pid
        watcher.next()
        h0 = watcher.next()
        s0, w0, o0, t0 = sample(pid), write_bytes(pid), outbox_bytes(root / "gw"), \
            time.monotonic()
        h1 = h0
        while time.monotonic() - t0 < LOAD_WINDOW:
            h1 = watcher.next()
        s1, w1, o1, t1 = sample(pid), write_bytes(pid), outbox_bytes(root / "gw"), \
            time.monotonic()
        a, b = totals(h0), totals(h1)
        polled = (b["ok"] - a["ok"]) * POINTS
        reported = b["reported"] - a["reported"]
        wrote = w1 - w0
        return {"load_rss_mb": s1.rss_kb / 1024, "load_peak_rss_mb": s1.rss_peak_kb / 1024,
                "load_cpu_share_of_core_pct": 100 * (s1.cpu_s - s0.cpu_s) / (t1 - t0),
                "polled_values_per_s": polled / (t1 - t0),
                "write_bytes_per_polled_value": wrote / max(1, polled),
                "write_bytes_per_reported_value": wrote / max(1, reported),
                "write_mb_per_hour": wrote * 3600 / (t1 - t0) / 1e6,
                "outbox_net_growth_bytes": o1 - o0,
                "log_bytes": (root / "gw.log").stat().st_size}
    finally:
        watcher.close()
        if gw is not None:
            gw.stop()
        sim.stop()
        broker.stop()


def main() -> None:
    """Run both scenarios (or only the idle one) and print their figures."""
    runs = []
    for _ in range(max(1, IDLE_RUNS)):
        with tempfile.TemporaryDirectory(prefix="bench-idle-") as tmp:
            runs.append(idle(Path(tmp) / "idle"))
    figures = {key: median([r[key] for r in runs]) for key in runs[0]}
    if len(runs) > 1:
        report_runs(runs, f"idle gateway (1 lift / 60 s, {IDLE_WINDOW:g} s window)", width=34)
    if IDLE_ONLY:
        if len(runs) == 1:
            for key, value in figures.items():
                print(f"  {key:34s} {value:.4g}")
        print("  (targets: idle RSS < 40 MB, idle CPU < 1 % of a core)")
        return
    loads = []
    for _ in range(max(1, LOAD_RUNS)):
        with tempfile.TemporaryDirectory(prefix="bench-load-") as tmp:
            loads.append(reference(Path(tmp) / "load"))
    if len(loads) > 1:
        report_runs(loads, f"reference load ({LIFTS} lifts x {POINTS} points @ 1 Hz, "
                           f"{LOAD_WINDOW:g} s window)", width=34)
    figures |= {key: median([r[key] for r in loads]) for key in loads[0]}
    print(f"gateway footprint: idle (1 lift / 60 s, {IDLE_WINDOW:g} s window) and reference "
          f"load ({LIFTS} lifts x {POINTS} points @ 1 Hz, {LOAD_WINDOW:g} s window):")
    for key, value in figures.items():
        print(f"  {key:34s} {value:.4g}")
    print("  (targets: idle RSS < 40 MB, idle CPU < 1 % of a core)")


if __name__ == "__main__":
    main()
