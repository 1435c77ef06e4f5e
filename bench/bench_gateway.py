"""Gateway cost at the reference load: 100 lifts x 20 points polled at 1 Hz over Modbus TCP.

Prints CPU seconds per 1000 readings (a reading = one point value polled), read->MQTT latency
(p50/p99 of each reported value's read time to its arrival at a subscriber on the broker),
bytes the gateway wrote to storage per hour, peak RSS, achieved vs configured rate, and Modbus
transactions per device per poll cycle; medians of several runs.

With BENCH_BASELINE set to a checkout of earlier code, every run is made twice, the gateway
running that code and then this one (same simulator and broker), and the ratios are printed:
the comparison is side by side on the same machine in the same minutes.
"""

from __future__ import annotations

import json
import os
import statistics
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt

from bench.common import median, percentile, report_runs, sample
from citygate.rig import Broker, Proc, citygate, free_port, port_open, wait_for
from devices import contract
from devices.profiles import load_profile

LIFTS = int(os.environ.get("BENCH_LIFTS", "100"))
BUSES = 4  # Modbus TCP connections, as for four controller groups
WINDOW = float(os.environ.get("BENCH_WINDOW", "30"))
RUNS = int(os.environ.get("BENCH_RUNS", "3"))
POINTS = len(load_profile("elevator-gbt24476").points)
BASELINE = os.environ.get("BENCH_BASELINE", "")  # a checkout of the code to compare with
OUTBOX = os.environ.get("BENCH_OUTBOX", "")  # [outbox] lines for the current code, e.g.
# 'send_delay = "5ms"', several separated by ';' (the baseline runs with its defaults)


class LatencyWatcher:
    """Read->MQTT latency of every reading and event a gateway publishes live.

    The latency of an item is its arrival at this subscriber (wall clock) minus its `ts`, the
    wall time the gateway took just before the Modbus request: read, filter, outbox and MQTT
    hop included.
    """

    def __init__(self, broker: Broker, gateway: str) -> None:
        self.samples: list[float] = []
        self.recording = False
        self.envelopes = 0
        self.client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="bench-latency")
        self.client.on_message = self._on_message
        self.client.connect("127.0.0.1", broker.port)
        self.client.subscribe([(contract.topic(gateway, contract.DATA), 1),
                               (contract.topic(gateway, contract.EVENTS), 1)])
        self.client.loop_start()

    def _on_message(self, _c: Any, _u: Any, msg: mqtt.MQTTMessage) -> None:
        now = time.time() * 1000
        if not self.recording:
            return
        doc = json.loads(msg.payload)
        if doc.get("replay"):
            return
        self.envelopes += 1
        self.samples.extend(now - item["ts"] for item in
                            doc.get("readings", doc.get("events", [])))

    def close(self) -> None:
        """Disconnect."""
        self.client.loop_stop()
        self.client.disconnect()


def bytes_written(pid: int) -> tuple[int, int]:
    """(bytes bound for storage, bytes passed to write calls) a process caused so far.

    From /proc/PID/io: `write_bytes` less `cancelled_write_bytes` (dirty pages dropped by a
    truncation before they were written back never reach the card), and `wchar`, the upper
    bound: everything handed to write calls, log lines included.
    """
    io = dict(line.split(":", 1) for line in Path(f"/proc/{pid}/io").read_text().splitlines())
    return int(io["write_bytes"]) - int(io["cancelled_write_bytes"]), int(io["wchar"])


class HealthWatcher:
    """Keeps the latest health message of a gateway."""

    def __init__(self, broker: Broker, gateway: str) -> None:
        self.latest: dict[str, Any] | None = None
        self.received = threading.Event()
        self.client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="bench-health")
        self.client.on_message = self._on_message
        self.client.connect("127.0.0.1", broker.port)
        self.client.subscribe(contract.topic(gateway, contract.HEALTH), qos=1)
        self.client.loop_start()

    def _on_message(self, _c: Any, _u: Any, msg: mqtt.MQTTMessage) -> None:
        self.latest = json.loads(msg.payload)
        self.received.set()

    def next(self, timeout: float = 20) -> dict[str, Any]:
        """Wait for the next health message."""
        self.received.clear()
        if not self.received.wait(timeout):
            raise TimeoutError("no health message from the gateway")
        assert self.latest is not None
        return self.latest

    def close(self) -> None:
        """Disconnect."""
        self.client.loop_stop()
        self.client.disconnect()


def totals(health: dict[str, Any]) -> dict[str, float]:
    """Sum per-device poll counters and copy the bus counters."""
    devs = health["devices"].values()
    c = health["counters"]
    return {"polls": sum(d["polls"] for d in devs), "ok": sum(d["ok"] for d in devs),
            "transactions": c["bus_transactions"], "reported": c["bus_readings"],
            "overruns": c["bus_overruns"]}


def config(root: Path, broker: Broker, modbus_port: int, outbox: str = "") -> Path:
    """A gateway with BUSES Modbus TCP connections sharing LIFTS lifts, health every 5 s."""
    lines = ["schema_version = 1", "[gateway]", 'id = "gw-bench"', f'data_dir = "{root}/gw"',
             "[uplink]", f'brokers = ["{broker.url}"]', 'health_interval = "5s"',
             "[outbox]", *outbox.split(";")]  # the product defaults unless told
    for b in range(BUSES):
        lines += ["[[buses]]", f'name = "tcp{b}"', 'type = "modbus-tcp"', 'host = "127.0.0.1"',
                  f"port = {modbus_port}"]
    for u in range(1, LIFTS + 1):
        lines += ["[[devices]]", f'id = "lift-{u:03d}"', f'bus = "tcp{u % BUSES}"',
                  'profile = "elevator-gbt24476"', f"unit = {u}", 'poll = "1s"']
    path = root / "gw.toml"
    path.write_text("\n".join(lines) + "\n")
    return path


def one_run(root: Path, code: str = "") -> dict[str, float]:
    """Start the rig, measure one window, stop; `code` is a checkout the gateway runs instead
    of this one."""
    broker = Broker(root / "broker").start()
    modbus_port = free_port()
    sim = Proc("sim", citygate("sim", "elevators", "--tcp", f"127.0.0.1:{modbus_port}",
                               "--units", f"1-{LIFTS}"), root / "sim.log").start()
    gw = None
    watcher = HealthWatcher(broker, "gw-bench")
    latency = LatencyWatcher(broker, "gw-bench")
    try:
        wait_for(lambda: port_open(modbus_port), 20, "simulator")
        cfg = config(root, broker, modbus_port, "" if code else OUTBOX)
        argv = citygate("edge", "run", "--config", str(cfg))
        if code:  # -P: the working directory must not come before the checkout on the path
            argv.insert(1, "-P")
        gw = Proc("gw", argv, root / "gw.log",
                  env={"PYTHONPATH": code} if code else None).start()
        assert gw.popen is not None
        watcher.next()  # warm-up: first health after 5 s
        h0, s0, t0 = watcher.next(), sample(gw.popen.pid), time.monotonic()
        w0 = bytes_written(gw.popen.pid)
        latency.recording = True
        while time.monotonic() - t0 < WINDOW:
            h1 = watcher.next()
        latency.recording = False
        s1, t1 = sample(gw.popen.pid), time.monotonic()
        w1 = bytes_written(gw.popen.pid)
        a, b = totals(h0), totals(h1)
        lat = latency.samples
        elapsed = (h1["sent"] - h0["sent"]) / 1000
        polled_values = (b["ok"] - a["ok"]) * POINTS
        cpu = s1.cpu_s - s0.cpu_s
        return {
            "cpu_s_per_1000_readings": cpu / (polled_values / 1000),
            "cpu_share_of_core": cpu / (t1 - t0),
            "achieved_rate_share": (b["ok"] - a["ok"]) / (LIFTS * elapsed),
            "readings_per_s": polled_values / elapsed,
            "reported_values_per_s": (b["reported"] - a["reported"]) / elapsed,
            "transactions_per_device_cycle": (b["transactions"] - a["transactions"])
            / max(1, b["polls"] - a["polls"]),
            "overruns": b["overruns"] - a["overruns"],
            "peak_rss_mb": s1.rss_peak_kb / 1024,
            "latency_p50_ms": percentile(lat, 50),
            "latency_p99_ms": percentile(lat, 99),
            "latency_max_ms": max(lat, default=float("nan")),
            "latency_minute_p50_spread_ms": minute_spread(lat, elapsed),
            "envelopes_per_s": latency.envelopes / (t1 - t0),
            "mb_written_per_hour": (w1[0] - w0[0]) / (t1 - t0) * 3600 / 2**20,
            "mb_write_calls_per_hour": (w1[1] - w0[1]) / (t1 - t0) * 3600 / 2**20,
        }
    finally:
        latency.close()
        watcher.close()
        if gw is not None:
            gw.stop()
        sim.stop()
        broker.stop()


def minute_spread(samples: list[float], elapsed: float) -> float:
    """Largest minus smallest per-minute median latency: a commit tick drifting against the
    poll grid makes latency cycle, which shows here (samples are in arrival order)."""
    minutes = max(1, int(elapsed // 60))
    if minutes < 2 or not samples:
        return 0.0
    size = len(samples) // minutes
    medians = [statistics.median(samples[i * size:(i + 1) * size]) for i in range(minutes)]
    return max(medians) - min(medians)


def main() -> None:
    """Run RUNS windows (each twice with BENCH_BASELINE) and print each run and the medians."""
    codes = [("baseline", BASELINE), ("current", "")] if BASELINE else [("current", "")]
    runs: dict[str, list[dict[str, float]]] = {name: [] for name, _ in codes}
    for _ in range(RUNS):
        for name, code in codes:
            with tempfile.TemporaryDirectory(prefix="bench-gw-") as tmp:
                runs[name].append(one_run(Path(tmp), code))
            print(f"{name}: " + ", ".join(f"{k}={v:.4g}" for k, v in runs[name][-1].items()),
                  flush=True)
    title = (f"gateway at {LIFTS} lifts x {POINTS} points @ 1 Hz over Modbus TCP "
             f"({BUSES} connections), {WINDOW:g} s windows")
    for name, _ in codes:
        report_runs(runs[name], f"{title} [{name}]")
    if BASELINE:
        print("\ncurrent / baseline (medians):")
        for key in runs["current"][0]:
            old = median([r[key] for r in runs["baseline"]])
            new = median([r[key] for r in runs["current"]])
            print(f"  {key:32s} {new / old if old else float('nan'):.3g}")
    print("  (reference: ThingsBoard IoT Gateway 3.8.5 ~1.2 CPU-s per 1000 readings at 10 "
          "devices, ~55 % of the configured rate at this load)")


if __name__ == "__main__":
    main()
