"""Store-and-forward figures: outbox append rate, bytes written per reading (SD-card wear),
backlog drain after an outage at the reference load, and the gateway's RSS over a day's backlog.

Bytes per reading are given for messages committed before they are sent (every 200 ms or 1 s,
or `durability_window = 0`'s commit per poll) and for the default path: sealed into the
journal every 20 ms, sent and acknowledged, and committed every second.
"""

from __future__ import annotations

import contextlib
import os
import random
import sqlite3
import tempfile
import time
from pathlib import Path

from bench.common import median, sample
from citygate.rig import (
    Broker,
    Proc,
    citygate,
    collector_health,
    free_port,
    gateway_toml,
    port_open,
    tcp_bus,
    wait_for,
)
from devices.model import Reading
from devices.sim.elevator import idle_values
from edge.outbox import Outbox

LIFTS = int(os.environ.get("BENCH_LIFTS", "100"))
OUTAGE_S = float(os.environ.get("BENCH_OUTAGE", "600"))  # the outage the backlog represents
DAY_FRACTION = float(os.environ.get("BENCH_DAY_FRACTION", "0.25"))
RUNS = int(os.environ.get("BENCH_RUNS", "3"))


def io_written() -> int:
    """Bytes this process caused to be written to storage (/proc/self/io write_bytes, less
    the dirty pages a truncation dropped before write-back)."""
    io = dict(line.split(":", 1) for line in Path("/proc/self/io").read_text().splitlines())
    return int(io["write_bytes"]) - int(io["cancelled_write_bytes"])


def snapshot(unit: int, ts: int, rng: random.Random) -> Reading:
    """A full 20-point lift snapshot (the heaviest reading a gateway stores)."""
    values = dict(idle_values(unit))
    values["floor"] = rng.randint(1, 18)
    values["trip_count"] = int(values["trip_count"] or 0) + ts // 1000 % 100_000
    return Reading(f"lift-{unit:03d}", ts, values, mono=ts)


def change(unit: int, ts: int, rng: random.Random) -> Reading:
    """A report-on-change reading: one or two values, as most polls of a lift produce."""
    return Reading(f"lift-{unit:03d}", ts, {"floor": rng.randint(1, 18)}, mono=ts)


def fill(outbox: Outbox, seconds: float, make: type | object, window_s: float = 0.2,
         start_ms: int | None = None) -> int:
    """Append `seconds` of 1 Hz readings from LIFTS lifts, committing every `window_s`."""
    rng = random.Random(1)
    t0 = start_ms if start_ms is not None else int(time.time() * 1000) - int(seconds * 1000)
    per_commit = max(1, int(LIFTS * window_s))
    total = LIFTS * int(seconds)
    pending = 0
    for i in range(total):
        unit, ts = i % LIFTS + 1, t0 + (i // LIFTS) * 1000
        outbox.add([make(unit, ts, rng)])  # type: ignore[operator]
        pending += 1
        if pending >= per_commit:
            outbox.commit()
            pending = 0
    outbox.commit()
    return total


def fill_sent(outbox: Outbox, seconds: float, make: type | object,
              delay_s: float = 0.02) -> int:
    """As `fill`, on the default path: each 1 Hz cycle's readings are sealed into the journal
    in `delay_s` groups (a poll cycle spreads over ~100 ms), sent and acknowledged at once
    (a broker that is up), and committed once a second."""
    rng = random.Random(1)
    t0 = int(time.time() * 1000) - int(seconds * 1000)
    groups = max(1, int(0.1 / delay_s))
    for second in range(int(seconds)):
        for g in range(groups):
            outbox.add([make(unit, t0 + second * 1000, rng)  # type: ignore[operator]
                        for unit in range(1 + g, LIFTS + 1, groups)])
            outbox.flush()
            for msg in outbox.next_messages(LIFTS, set()):
                outbox.ack(msg.seq)
        outbox.commit()
    return LIFTS * int(seconds)


def sent_rate(sync: str, make: object, label: str) -> dict[str, float]:
    """Bytes written to storage per reading on the default path (journal, 1 s commits)."""
    label = f"{label}_journal_1s"
    with tempfile.TemporaryDirectory(prefix="bench-ob-") as tmp:
        ob = Outbox(Path(tmp) / "outbox.sqlite", synchronous=sync).open()
        w0, t0 = io_written(), time.perf_counter()
        n = fill_sent(ob, 120, make)
        os.sync()
        elapsed, written = time.perf_counter() - t0, io_written() - w0
        ob.close()
    return {f"{label}_{sync}_readings_per_s": n / elapsed,
            f"{label}_{sync}_bytes_written_per_reading": written / n}


def append_rate(sync: str, make: object, label: str, window_s: float) -> dict[str, float]:
    """Readings/s the outbox accepts, and bytes written to storage per reading."""
    label = f"{label}_{window_s * 1000:.0f}ms"
    with tempfile.TemporaryDirectory(prefix="bench-ob-") as tmp:
        ob = Outbox(Path(tmp) / "outbox.sqlite", synchronous=sync).open()
        w0, t0 = io_written(), time.perf_counter()
        n = fill(ob, 120, make, window_s=window_s)
        os.sync()
        elapsed, written = time.perf_counter() - t0, io_written() - w0
        size = ob.stats()["bytes"]
        ob.close()
    return {f"{label}_{sync}_readings_per_s": n / elapsed,
            f"{label}_{sync}_bytes_written_per_reading": written / n,
            f"{label}_{sync}_stored_bytes_per_reading": size / n}


def drain(root: Path) -> dict[str, float]:
    """Time for a gateway to empty an outage backlog while live data keeps flowing."""
    broker = Broker(root / "broker").start()
    modbus_port, http_port = free_port(), free_port()
    gw_dir = root / "gw"
    ob = Outbox(gw_dir / "outbox.sqlite").open()
    backlog = fill(ob, OUTAGE_S, snapshot)  # worst case: full snapshots every second
    last_seq = ob._require_seq().last
    ob.close()
    sim = Proc("sim", citygate("sim", "elevators", "--tcp", f"127.0.0.1:{modbus_port}",
                               "--units", f"1-{LIFTS}"), root / "sim.log").start()
    base = f"http://127.0.0.1:{http_port}"
    coll = Proc("collector", citygate("collector", "run", "--db",
                                      f"sqlite:///{root / 'hub.sqlite'}", "--broker", broker.url,
                                      "--http", f"127.0.0.1:{http_port}"),
                root / "collector.log").start()
    gw = None
    try:
        wait_for(lambda: port_open(modbus_port) and collector_health(base), 30, "rig")
        cfg = root / "gw.toml"
        cfg.write_text(gateway_toml(
            "gw-bench", gw_dir, broker.url, tcp_bus(modbus_port),
            [(f"lift-{u:03d}", u) for u in range(1, LIFTS + 1)],
            outbox='durability_window = "200ms"\nbacklog_rate = 20000\nmax_batch = 500',
            uplink="max_inflight = 32"))
        t0 = time.monotonic()
        gw = Proc("gw", citygate("edge", "run", "--config", str(cfg)), root / "gw.log").start()

        hub = root / "hub.sqlite"

        def stored_backlog() -> bool:
            with contextlib.closing(sqlite3.connect(hub, timeout=5)) as db:
                got = db.execute("SELECT COUNT(*) FROM batches WHERE gateway_id = 'gw-bench' "
                                 "AND seq <= ?", (last_seq,)).fetchone()[0]
            return bool(got == last_seq)
        wait_for(stored_backlog, 900, "the backlog at the collector", interval=0.5)
        return {"drain_backlog_readings": backlog, "drain_seconds": time.monotonic() - t0,
                "drain_readings_per_s": backlog / (time.monotonic() - t0)}
    finally:
        if gw is not None:
            gw.stop()
        coll.stop()
        sim.stop()
        broker.stop()


def day_rss(root: Path) -> dict[str, float]:
    """RSS of a gateway holding a day's backlog (report-on-change rate) with its broker down."""
    gw_dir = root / "gw"
    ob = Outbox(gw_dir / "outbox.sqlite").open()
    readings = fill(ob, 86400 * DAY_FRACTION, change, window_s=1.0)
    size = ob.stats()["bytes"]
    ob.close()
    modbus_port = free_port()
    sim = Proc("sim", citygate("sim", "elevators", "--tcp", f"127.0.0.1:{modbus_port}",
                               "--units", f"1-{LIFTS}"), root / "sim.log").start()
    cfg = root / "gw.toml"
    cfg.write_text(gateway_toml(
        "gw-day", gw_dir, f"mqtt://127.0.0.1:{free_port()}", tcp_bus(modbus_port),
        [(f"lift-{u:03d}", u) for u in range(1, LIFTS + 1)],
        outbox='max_bytes = "4GB"'))
    gw = Proc("gw", citygate("edge", "run", "--config", str(cfg)), root / "gw.log").start()
    try:
        assert gw.popen is not None
        wait_for(lambda: "cannot connect" in gw.log.read_text(), 30, "the gateway running")
        time.sleep(30)  # scenario time: the gateway polls and buffers with its backlog on disk
        s = sample(gw.popen.pid)
        return {"day_fraction": DAY_FRACTION, "day_backlog_readings": readings,
                "day_backlog_mb": size / 2**20, "day_gateway_rss_mb": s.rss_kb / 1024,
                "day_gateway_peak_rss_mb": s.rss_peak_kb / 1024}
    finally:
        gw.stop()
        sim.stop()


def main() -> None:
    """Print every figure; append rates are medians of RUNS runs."""
    results: dict[str, list[float]] = {}
    for _ in range(RUNS):
        for sync in ("NORMAL", "FULL"):
            for make, label in ((snapshot, "snapshot"), (change, "change")):
                for window in (0.2, 1.0):
                    for k, v in append_rate(sync, make, label, window).items():
                        results.setdefault(k, []).append(v)
                for k, v in sent_rate(sync, make, label).items():
                    results.setdefault(k, []).append(v)
    print(f"outbox append ({LIFTS} lifts at 1 Hz, group commit every 200 ms or 1 s; "
          f"median of {RUNS} runs):")
    for k, vals in results.items():
        print(f"  {k:48s} {median(vals):12.1f}")
    with tempfile.TemporaryDirectory(prefix="bench-drain-") as tmp:
        d = drain(Path(tmp))
    print(f"drain after a {OUTAGE_S:g} s outage at {LIFTS} lifts (full snapshots, live data on):")
    for k, v in d.items():
        print(f"  {k:48s} {v:12.1f}")
    with tempfile.TemporaryDirectory(prefix="bench-day-") as tmp:
        r = day_rss(Path(tmp))
    print("gateway buffering with the broker unreachable:")
    for k, v in r.items():
        print(f"  {k:48s} {v:12.2f}")


if __name__ == "__main__":
    main()
