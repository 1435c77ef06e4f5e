"""HJ 212 cost: codec parse rate per core, and gateway CPU per 1000 HJ 212 readings.

1. parse: frames/s on one core for a typical real-time dust upload (~400 bytes), for
   `parse` alone, and for the gateway's path (StreamDecoder.feed + normalise); median of runs.
2. gateway: a real `citygate edge run` process with an HJ 212 TCP listener, LOGGERS simulated
   loggers connecting in and uploading RATE frames/s each (9 values per frame), a private
   broker; CPU seconds of the gateway per 1000 readings (a reading = one canonical value).
"""

from __future__ import annotations

import asyncio
import os
import tempfile
import threading
import time
from datetime import UTC, datetime
from pathlib import Path

from bench.bench_gateway import HealthWatcher
from bench.common import median, report_runs, sample
from citygate.rig import Broker, Proc, citygate, free_port, port_open, wait_for
from devices.hj212 import StreamDecoder, parse
from devices.hj212.normalise import normalise
from devices.profiles import load_profile
from devices.sim.environment import StationSim

RUNS = int(os.environ.get("BENCH_RUNS", "5"))
FRAMES = int(os.environ.get("BENCH_FRAMES", "20000"))
LOGGERS = int(os.environ.get("BENCH_LOGGERS", "20"))
RATE = float(os.environ.get("BENCH_RATE", "10"))  # frames per second per logger
WINDOW = float(os.environ.get("BENCH_WINDOW", "15"))
GW_RUNS = int(os.environ.get("BENCH_GW_RUNS", "3"))
PROFILE = load_profile("dust-hj212")


def sample_frames(n: int) -> list[bytes]:
    """Distinct real-time dust uploads as a logger sends them."""
    sim = StationSim(kind="dust", mn="DUST00000000000000000001")
    at = datetime(2024, 5, 1, 2, 0, tzinfo=UTC)
    return [sim.frames("2011", at)[0] for _ in range(n)]


def parse_rate(frames: list[bytes]) -> tuple[float, float]:
    """(parse-only frames/s, decode+normalise frames/s) over `frames` on this core."""
    t0 = time.process_time()
    for f in frames:
        parse(f)
    t1 = time.process_time()
    decoder = StreamDecoder()
    blob = b"".join(frames)
    t2 = time.process_time()
    for i in range(0, len(blob), 4096):
        for item in decoder.feed(blob[i:i + 4096]):
            if not isinstance(item, Exception):
                normalise(item, PROFILE, "dust-1", received_ms=0)
    t3 = time.process_time()
    return len(frames) / (t1 - t0), len(frames) / (t3 - t2)


def gateway_config(root: Path, broker: Broker, port: int, mns: list[str]) -> Path:
    """One HJ 212 TCP listener with a dust station per simulated logger."""
    lines = ["schema_version = 1", "[gateway]", 'id = "gw-hj212"', f'data_dir = "{root}/gw"',
             "[uplink]", f'brokers = ["{broker.url}"]', 'health_interval = "5s"',
             "[outbox]", 'durability_window = "200ms"', "[[buses]]", 'name = "tcp"',
             'type = "hj212-tcp"', 'host = "127.0.0.1"', f"port = {port}"]
    for i, mn in enumerate(mns):
        lines += ["[[devices]]", f'id = "dust-{i:03d}"', 'bus = "tcp"',
                  'profile = "dust-hj212"', f'mn = "{mn}"']
    path = root / "gw.toml"
    path.write_text("\n".join(lines) + "\n")
    return path


async def _loggers(port: int, mns: list[str], stop: threading.Event) -> None:
    async def one(mn: str) -> None:
        sim = StationSim(kind="dust", mn=mn)
        _, writer = await asyncio.open_connection("127.0.0.1", port)
        loop = asyncio.get_running_loop()
        due = loop.time()
        while not stop.is_set():
            writer.write(sim.frames("2011", datetime.now(UTC))[0])
            await writer.drain()
            due += 1 / RATE
            await asyncio.sleep(max(0.0, due - loop.time()))
        writer.close()

    await asyncio.gather(*(one(mn) for mn in mns))


def gateway_run(root: Path) -> dict[str, float]:
    """Start broker and gateway, drive the loggers, measure one window."""
    broker = Broker(root / "broker").start()
    port = free_port()
    mns = [f"DUST{i:020d}" for i in range(LOGGERS)]
    gw = Proc("gw", citygate("edge", "run", "--config",
                             str(gateway_config(root, broker, port, mns))),
              root / "gw.log").start()
    watcher = HealthWatcher(broker, "gw-hj212")
    stop = threading.Event()
    load = threading.Thread(target=lambda: asyncio.run(_loggers(port, mns, stop)), daemon=True)
    try:
        assert gw.popen is not None
        wait_for(lambda: port_open(port), 20, "the gateway's HJ 212 listener")
        load.start()
        watcher.next()  # warm-up
        h0, s0, t0 = watcher.next(), sample(gw.popen.pid), time.monotonic()
        while time.monotonic() - t0 < WINDOW:
            h1 = watcher.next()
        s1, t1 = sample(gw.popen.pid), time.monotonic()
        c0, c1 = h0["counters"], h1["counters"]
        elapsed = (h1["sent"] - h0["sent"]) / 1000
        values = c1["bus_values"] - c0["bus_values"]
        cpu = s1.cpu_s - s0.cpu_s
        return {"cpu_s_per_1000_readings": cpu / (values / 1000),
                "cpu_share_of_core": cpu / (t1 - t0), "readings_per_s": values / elapsed,
                "frames_per_s": (c1["bus_frames"] - c0["bus_frames"]) / elapsed,
                "bad_frames": c1["bus_bad_frames"] - c0["bus_bad_frames"],
                "peak_rss_mb": s1.rss_peak_kb / 1024}
    finally:
        stop.set()
        load.join(timeout=5)
        watcher.close()
        gw.stop()
        broker.stop()


def main() -> None:
    """Print the parse rates and the gateway cost, each a median of several runs."""
    frames = sample_frames(FRAMES)
    rates = [parse_rate(frames) for _ in range(RUNS)]
    size = sum(map(len, frames)) / len(frames)
    print(f"parse: {FRAMES} real-time dust frames of {size:.0f} bytes, median of {RUNS} runs")
    print(f"  parse() only                      {median([r[0] for r in rates]):,.0f} frames/s"
          " per core")
    print(f"  StreamDecoder.feed + normalise    {median([r[1] for r in rates]):,.0f} frames/s"
          " per core")
    runs = []
    for _ in range(GW_RUNS):
        with tempfile.TemporaryDirectory(prefix="bench-hj212-") as tmp:
            runs.append(gateway_run(Path(tmp)))
    report_runs(runs, f"gateway: {LOGGERS} HJ 212 loggers over TCP at {RATE:g} frames/s each, "
                      f"{WINDOW:g} s windows", width=28)


if __name__ == "__main__":
    main()
