"""Ingest past one machine: NATS cluster with 1 and 2 collectors vs one Mosquitto, same run.

For each setup (fresh PostgreSQL database, collectors as real `citygate collector run`
processes, gateways as citygate.feeder.Feeder publishers, 1 reading per envelope):
  - throughput: GATEWAYS x FAST envelopes published as fast as QoS 1 allows; rate = envelopes
    / (first publish .. last envelope stored);
  - latency: GATEWAYS x STEADY_RATE envelopes/s for WINDOW s; p50/p99 of collector receive
    time minus gateway send time (`batches.received - batches.sent`, one machine, one clock);
  - burst: STEADY_RATE, then 10x for BURST s, then STEADY_RATE; backlog = envelopes acked by
    the broker but not yet stored, sampled every 0.25 s (and the consumer's num_pending on
    NATS): the peak, and how long after the burst it took to drain.
Environment: BENCH_GATEWAYS, BENCH_FAST, BENCH_STEADY_RATE, BENCH_WINDOW, BENCH_BURST,
CITYGATE_TEST_PG (admin URL, default postgresql://postgres@127.0.0.1:5432/postgres).
"""

from __future__ import annotations

import os
import tempfile
import time
from collections.abc import Callable
from contextlib import AbstractContextManager
from dataclasses import dataclass
from pathlib import Path

import psycopg

from bench.common import percentile
from citygate.cluster import NatsCluster
from citygate.feeder import Feeder
from citygate.rig import (
    Broker,
    Proc,
    citygate,
    collector_health,
    free_port,
    pg_database,
    wait_for,
)
from collector.ingest_nats import DURABLE

GATEWAYS = int(os.environ.get("BENCH_GATEWAYS", "4"))
FAST = int(os.environ.get("BENCH_FAST", "5000"))  # envelopes per gateway, throughput phase
STEADY_RATE = float(os.environ.get("BENCH_STEADY_RATE", "100"))  # per gateway
WINDOW = float(os.environ.get("BENCH_WINDOW", "10"))
BURST = float(os.environ.get("BENCH_BURST", "5"))


@dataclass
class Figures:
    """One setup's results."""

    setup: str
    rate: float = 0.0
    p50_ms: float = 0.0
    p99_ms: float = 0.0
    burst_peak: int = 0
    burst_peak_pending: int = 0
    drain_s: float = 0.0
    lost: int = 0


@dataclass
class Setup:
    """Where gateways publish and how collectors are started."""

    name: str
    mqtt_urls: list[str]
    collector_args: list[list[str]]
    pending: Callable[[], int]  # consumer lag (NATS), 0 where there is no such thing


def fresh_db() -> AbstractContextManager[str]:
    """A new PostgreSQL database, dropped afterwards."""
    return pg_database("citygate_bench")


def stored(db: str, prefix: str) -> int:
    """Envelopes stored from gateways whose id starts with `prefix`."""
    with psycopg.connect(db) as conn:
        row = conn.execute("SELECT count(*) FROM batches WHERE gateway_id LIKE %s",
                           (prefix + "%",)).fetchone()
    return int(row[0]) if row else 0


def latencies(db: str, prefix: str) -> list[float]:
    """received - sent (ms) of every envelope of those gateways."""
    with psycopg.connect(db) as conn:
        rows = conn.execute("SELECT received - sent FROM batches WHERE gateway_id LIKE %s",
                            (prefix + "%",)).fetchall()
    return [float(r[0]) for r in rows]


def feeders(setup: Setup, prefix: str, count: int, rate: float) -> list[Feeder]:
    """GATEWAYS feeders spread over the brokers."""
    return [Feeder(f"{prefix}{i + 1}", setup.mqtt_urls, count=count, rate=rate,
                   first_broker=i).start() for i in range(GATEWAYS)]


def run_setup(setup: Setup, root: Path) -> Figures:
    """Start the collectors on a fresh database and measure the three phases."""
    fig = Figures(setup.name)
    with fresh_db() as db:
        procs = []
        try:
            for i, args in enumerate(setup.collector_args):
                port = free_port()
                proc = Proc(f"c{i}", citygate("collector", "run", "--db", db, "--http",
                                              f"127.0.0.1:{port}", "--client-id",
                                              f"bench-c{i}", *args),
                            root / f"{setup.name.replace(' ', '_')}-c{i}.log").start()
                procs.append(proc)
                wait_for(lambda p=port: collector_health(f"http://127.0.0.1:{p}"), 60,  # type: ignore[misc]
                         "collector API")
            time.sleep(1.0)  # subscriptions in place
            _throughput(setup, db, fig)
            _latency(setup, db, fig)
            _burst(setup, db, fig)
        finally:
            for p in procs:
                p.stop()
    return fig


def _throughput(setup: Setup, db: str, fig: Figures) -> None:
    total = GATEWAYS * FAST
    t0 = time.monotonic()
    fs = feeders(setup, "fast", FAST, 1e9)
    wait_for(lambda: stored(db, "fast") >= total, 300, "throughput phase stored", interval=0.2)
    fig.rate = total / (time.monotonic() - t0)
    for f in fs:
        f.stop()
    fig.lost += total - stored(db, "fast")


def _latency(setup: Setup, db: str, fig: Figures) -> None:
    count = int(STEADY_RATE * WINDOW)
    fs = feeders(setup, "lat", count, STEADY_RATE)
    wait_for(lambda: all(f.done for f in fs), WINDOW + 60, "latency phase acked")
    wait_for(lambda: stored(db, "lat") >= count * GATEWAYS, 60, "latency phase stored")
    lat = latencies(db, "lat")
    fig.p50_ms, fig.p99_ms = percentile(lat, 50), percentile(lat, 99)
    for f in fs:
        f.stop()


def _burst(setup: Setup, db: str, fig: Figures) -> None:
    fs = feeders(setup, "burst", 10**9, STEADY_RATE)
    samples: list[tuple[float, int]] = []

    def sample_for(seconds: float) -> None:
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            acked = sum(f.counts.acked for f in fs)
            backlog = max(0, acked - stored(db, "burst"))
            samples.append((time.monotonic(), backlog))
            fig.burst_peak_pending = max(fig.burst_peak_pending, setup.pending())
            time.sleep(0.25)

    sample_for(3)
    for f in fs:
        f.rate = STEADY_RATE * 10
    sample_for(BURST)
    for f in fs:
        f.rate = STEADY_RATE
    burst_end = time.monotonic()
    fig.burst_peak = max(b for _, b in samples)
    try:
        wait_for(lambda: sum(f.counts.acked for f in fs) - stored(db, "burst") <= 0, 120,
                 "backlog drained", interval=0.25)
        fig.drain_s = time.monotonic() - burst_end
    except TimeoutError:
        fig.drain_s = float("inf")
    for f in fs:
        f.stop()


def _print(figs: list[Figures]) -> None:
    print(f"{GATEWAYS} gateways, 1 reading/envelope, QoS 1, PostgreSQL, {os.cpu_count()} CPUs")
    print(f"{'setup':<30} {'ingest env/s':>12} {'p50 ms':>8} {'p99 ms':>8} "
          f"{'burst peak backlog':>19} {'peak lag':>9} {'drain s':>8} {'lost':>5}")
    for f in figs:
        print(f"{f.setup:<30} {f.rate:>12.0f} {f.p50_ms:>8.1f} {f.p99_ms:>8.1f} "
              f"{f.burst_peak:>19} {f.burst_peak_pending:>9} {f.drain_s:>8.1f} {f.lost:>5}")
    print(f"(latency at {GATEWAYS}x{STEADY_RATE:g}/s; burst {GATEWAYS}x{STEADY_RATE * 10:g}/s for "
          f"{BURST:g}s; peak lag = the shared consumer's num_pending)")


def main() -> None:
    """Run the three setups in one go and print the table."""
    with tempfile.TemporaryDirectory(prefix="bench-cluster-") as tmp:
        root = Path(tmp)
        figs = []
        broker = Broker(root / "mosquitto").start()
        try:
            figs.append(run_setup(Setup("mosquitto, 1 collector", [broker.url],
                                        [["--broker", broker.url]], lambda: 0), root))
        finally:
            broker.stop()
        cluster = NatsCluster(root / "nats").start()
        try:
            cluster.create_consumer(DURABLE)

            def lag() -> int:
                return int((cluster.consumer_info(DURABLE) or {}).get("num_pending", 0))

            def nats_args(i: int) -> list[str]:
                n = cluster.nats_urls[i:] + cluster.nats_urls[:i]
                m = cluster.mqtt_urls[i:] + cluster.mqtt_urls[:i]
                return ["--ingest", "nats", "--nats", ",".join(n), "--broker", ",".join(m)]

            for k in (1, 2):
                figs.append(run_setup(Setup(f"nats 3 nodes, {k} collector(s)",
                                            cluster.mqtt_urls,
                                            [nats_args(i) for i in range(k)], lag), root))
        finally:
            cluster.stop()
        _print(figs)


if __name__ == "__main__":
    main()
