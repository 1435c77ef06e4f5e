"""One collector's ingest ceiling: lift-change envelopes stored per second, hub feeds on.

A real `citygate collector run` (every feature wired, the hub feeds included) subscribes once
to a private Mosquitto and stops; BENCH_INGEST_N lift-change envelopes (one reading of 3
changed values each, as a gateway sends when a lift moves) from BENCH_INGEST_GATEWAYS gateways
are then queued at the broker for its persistent session, and the collector is started again.
The rate is envelopes stored / seconds between the first received and the last stored (the
health endpoint's `received` and `stored_messages`, sampled every 0.1 s), so start-up and the
publisher's own speed are outside the figure. Peak RSS and CPU of the collector process are
printed too.

Old and new code side by side in the same run: `--baseline PATH` runs the same collector from
another checkout (PYTHONPATH=PATH) in alternation with this one; medians of BENCH_RUNS runs.

    python -m bench ingest --backends sqlite,postgresql --baseline /work/main

Numbers of ingest writers side by side, the envelopes queued at a Mosquitto or in a one-node
NATS server's JetStream (`collector run --ingest nats`):

    python -m bench ingest --backends postgresql --writers 1,4 --source nats

`--hot-path` measures instead the collector's own CPU per envelope on the hot path, in one
process without broker or features: `contract.decode` of every payload, then `Store.ingest` in
batches of 500 (process CPU time, so the figures hold on a loaded machine), for this code and
the baseline in alternation.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import threading
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt

from bench.common import database, median, sample
from citygate.rig import Broker, Proc, citygate, collector_health, free_port, wait_for
from devices import contract

N = int(os.environ.get("BENCH_INGEST_N", "60000"))
GATEWAYS = int(os.environ.get("BENCH_INGEST_GATEWAYS", "20"))
LIFTS = 5  # per gateway
RUNS = int(os.environ.get("BENCH_RUNS", "3"))
CLIENT = "bench-ingest"


def payloads(n: int, gateways: int) -> list[tuple[str, bytes]]:
    """(topic, payload) of n lift-change envelopes, gateways round robin, seq from 1."""
    out = []
    t0 = int(time.time() * 1000) - n
    for i in range(n):
        g, k = i % gateways, i // gateways
        gw = f"gw-lift-{g:03d}"
        ts = t0 + i
        reading = {"device": f"lift-{g:03d}-{k % LIFTS}", "ts": ts, "mono": 1_000_000 + i,
                   "values": {"floor": k % 20, "car_running": bool(k % 2),
                              "door_closed": not k % 3}}
        body = contract.envelope(gw, contract.DATA, k + 1, ts + 5,
                                 contract.orjson.dumps([reading]))
        out.append((contract.topic(gw, contract.DATA), body))
    return out


def publish_all(port: int, items: list[tuple[str, bytes]]) -> None:
    """Publish at QoS 1 and wait until the broker acknowledged every message."""
    done = threading.Event()
    acked = [0]

    def on_publish(_c: mqtt.Client, _u: object, _mid: int, _rc: object, _p: object) -> None:
        acked[0] += 1
        if acked[0] == len(items):
            done.set()

    c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=f"bench-pub-{uuid.uuid4().hex}")
    c.max_inflight_messages_set(2000)
    c.max_queued_messages_set(0)
    c.on_publish = on_publish
    c.connect("127.0.0.1", port)
    c.loop_start()
    try:
        for t, p in items:
            c.publish(t, p, qos=1)
        if not done.wait(300):
            raise RuntimeError(f"broker acknowledged {acked[0]} of {len(items)}")
    finally:
        c.loop_stop()
        c.disconnect()


@dataclass(frozen=True)
class Code:
    """What one series of runs measures: a checkout (None: this one) and its settings."""

    name: str
    checkout: str | None
    writers: int | None = None  # collector.toml [ingest] writers (None: the default)
    source: str = "mqtt"  # or "nats": a one-node NATS server with JetStream and MQTT


def one_run(backend: str, code: Code, root: Path,
            items: list[tuple[str, bytes]], profile: str | None = None) -> dict[str, float]:
    """Envelopes/s, peak RSS (MiB) and CPU per 1000 envelopes of one collector run."""
    with database(backend, "bench_ingest") as url:
        return collector_run(url, code, root, items, profile)


def collector_run(url: str, code: Code, root: Path,
                  items: list[tuple[str, bytes]], profile: str | None) -> dict[str, float]:
    """One collector on the database at `url` stores the queued items (see one_run)."""
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    # PYTHONSAFEPATH: the working directory is not put before PYTHONPATH (`python -m`)
    env = {"PYTHONPATH": code.checkout, "PYTHONSAFEPATH": "1"} if code.checkout else None
    config: tuple[str, ...] = ()
    source: tuple[str, ...]
    if code.writers is not None:
        (root / "collector.toml").write_text(f"[ingest]\nwriters = {code.writers}\n")
        config = ("--config", str(root / "collector.toml"))
    if code.source == "nats":
        from citygate.cluster import NatsCluster
        from collector.ingest_nats import DURABLE

        server: Any = NatsCluster(root / "nats", size=1, stream_replicas=1).start()
        server.create_consumer(DURABLE)
        mqtt_port = server.nodes[0].mqtt_port
        source = ("--ingest", "nats", "--nats", server.nats_urls[0], "--broker",
                  server.mqtt_urls[0])
    else:
        server = Broker(root / "broker").start()
        mqtt_port, source = server.port, ("--broker", server.url)
    argv = citygate("collector", "run", "--db", url, *source, "--http",
                    f"127.0.0.1:{port}", "--client-id", CLIENT, *config)

    def start() -> Proc:
        return Proc("collector", argv, root / "collector.log", env=env).start()

    coll = start()
    try:
        wait_for(lambda: ((h := collector_health(base)) is not None
                          and h["ingest"]["broker_connected"]) or not coll.alive, 120,
                 "the collector to subscribe")
        assert coll.alive, coll.tail()
        coll.stop()
        publish_all(mqtt_port, items)
        coll = start()
        assert coll.popen is not None
        pid, n = coll.popen.pid, len(items)
        spy = None
        first: tuple[float, int] | None = None
        s0 = None
        deadline = time.monotonic() + 900
        stored = 0
        while time.monotonic() < deadline and coll.alive:
            h = collector_health(base)
            now = time.monotonic()
            stored = h["ingest"]["stored_messages"] if h else 0
            # From the first message received, not the first stored: messages received before
            # the first commit are part of the work measured (up to the broker's window, more
            # than a batch), whatever the batch size.
            if first is None and h and h["ingest"]["received"] > 0:
                first, s0 = (now, stored), sample(pid)
                if profile:  # py-spy: where the collector holds the GIL while it stores
                    import subprocess

                    spy = subprocess.Popen(
                        ["py-spy", "record", "-p", str(pid), "-t", "--gil", "-r", "250",
                         "--format", "raw", "-o", profile],
                        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            if stored >= n:
                break
            time.sleep(0.1)
        s1 = sample(pid)
        if spy is not None:
            spy.send_signal(2)
            spy.wait(30)
        if first is None or stored < n or s0 is None:
            raise RuntimeError(f"stored {stored} of {n}:\n{coll.tail()}")
        elapsed = max(now - first[0], 1e-3)
        commits = (h or {}).get("ingest", {}).get("commits")
        return {"envelopes/s": (n - first[1]) / elapsed,
                "cpu s/1000 env": (s1.cpu_s - s0.cpu_s) / (n - first[1]) * 1000,
                "peak RSS MiB": s1.rss_peak_kb / 1024,
                **({"envelopes/commit": n / commits} if commits else {})}
    finally:
        coll.stop()
        server.stop()


HOT_PATH = """
import sys, time
import orjson
from collector.features import open_store
from collector.store import Accepted, Store
from devices import contract
n, url = int(sys.argv[1]), sys.argv[2]
items = []
for i in range(n):  # as payloads() above
    g, k, ts = i % 20, i // 20, 1_763_690_000_000 + i
    gw = f"gw-lift-{g:03d}"
    reading = {"device": f"lift-{g:03d}-{k % 5}", "ts": ts, "mono": 1_000_000 + i,
               "values": {"floor": k % 20, "car_running": bool(k % 2), "door_closed": not k % 3}}
    items.append((contract.topic(gw, "data"),
                  contract.envelope(gw, "data", k + 1, ts + 5, orjson.dumps([reading]))))
c0 = time.process_time()
recs = [contract.decode(t, p) for t, p in items]
c1 = time.process_time()
store = open_store(url)
acc = [Accepted(r.gateway, r.message, int(time.time() * 1000), False) for r in recs]
c2 = time.process_time()
for i in range(0, n, 500):
    store.ingest(acc[i:i + 500])
c3 = time.process_time()
store.close()
print((c1 - c0) / n * 1e6, (c3 - c2) / n * 1e6)
"""


def hot_path(backend: str, checkout: str, n: int) -> dict[str, float]:
    """µs of CPU per envelope to decode and to store, in a process of `checkout`'s code."""
    import subprocess
    import sys

    with database(backend, "bench_ingest_hot") as url:
        out = subprocess.run([sys.executable, "-c", HOT_PATH, str(n), url], check=True,
                             capture_output=True, text=True,
                             env={**os.environ, "PYTHONSAFEPATH": "1",
                                  "PYTHONPATH": checkout}).stdout.split()
    return {"decode us/env": float(out[0]), "store cpu us/env": float(out[1])}


def main(argv: list[str] | None = None) -> None:
    """Alternate baseline and this code per backend; print every run and the medians."""
    p = argparse.ArgumentParser(prog="bench ingest")
    p.add_argument("--backends", default="sqlite,postgresql")
    p.add_argument("--baseline", help="another checkout to run side by side (PYTHONPATH)")
    p.add_argument("--runs", type=int, default=RUNS)
    p.add_argument("-n", type=int, default=N)
    p.add_argument("--profile", metavar="DIR", help="py-spy collapsed stacks of each run here")
    p.add_argument("--hot-path", action="store_true",
                   help="CPU per envelope of decode and Store.ingest, in one process")
    p.add_argument("--source", choices=("mqtt", "nats"), default="mqtt",
                   help="queue the envelopes at a Mosquitto (default) or a one-node NATS "
                        "server's JetStream (collector run --ingest nats)")
    p.add_argument("--writers", help="comma-separated [ingest] writers, side by side "
                                     "(instead of --baseline)")
    args = p.parse_args(argv or [])
    here = str(Path(__file__).resolve().parent.parent)
    codes = [("this", here)] + ([("baseline", args.baseline)] if args.baseline else [])
    runs_of = [Code(name, checkout, source=args.source) for name, checkout in codes]
    if args.writers:
        runs_of = [Code(f"writers={w}", here, int(w), args.source)
                   for w in args.writers.split(",")]
    if args.hot_path:
        for backend in args.backends.split(","):
            hot: dict[str, list[dict[str, float]]] = {name: [] for name, _ in codes}
            for run in range(args.runs):
                for name, checkout in codes:
                    hot[name].append(hot_path(backend, checkout, min(args.n, 20_000)))
                    print(f"  {backend} hot path run {run + 1} {name:8s}: " + ", ".join(
                        f"{k} {v:.1f}" for k, v in hot[name][-1].items()), flush=True)
            for name, runs in hot.items():
                print(f"{backend} hot path, median of {args.runs}, {name}: " + ", ".join(
                    f"{k} {median([r[k] for r in runs]):.1f}" for k in runs[0]), flush=True)
        return
    items = payloads(args.n, GATEWAYS)
    print(f"ingest ceiling: {args.n:,} lift-change envelopes (1 reading, 3 values) from "
          f"{GATEWAYS} gateways queued at the broker ({args.source}), one `collector run` "
          f"with every feature and the hub feeds; {os.cpu_count()} CPUs shared with the "
          "broker", flush=True)
    for backend in args.backends.split(","):
        got: dict[str, list[dict[str, float]]] = {c.name: [] for c in runs_of}
        for run in range(args.runs):
            for code in runs_of:
                with tempfile.TemporaryDirectory(prefix="bench-ingest-") as tmp:
                    prof = (f"{args.profile}/{backend}-{code.name}-{run + 1}.txt"
                            if args.profile else None)
                    r = one_run(backend, code, Path(tmp), items, prof)
                got[code.name].append(r)
                print(f"  {backend} run {run + 1} {code.name:8s}: "
                      + ", ".join(f"{k} {v:,.4g}" for k, v in r.items()), flush=True)
        meds = {name: {k: median([r[k] for r in runs]) for k in runs[0]}
                for name, runs in got.items()}
        line = ", ".join(f"{name} {m['envelopes/s']:,.0f} env/s (peak RSS "
                         f"{m['peak RSS MiB']:.0f} MiB)" for name, m in meds.items())
        names = list(meds)
        ratio = (f"; ratio {names[0]} / {names[-1]} "
                 f"{meds[names[0]]['envelopes/s'] / meds[names[-1]]['envelopes/s']:.2f}x"
                 if len(names) > 1 else "")
        print(f"{backend}, median of {args.runs}: {line}{ratio}", flush=True)


if __name__ == "__main__":
    import sys

    main(sys.argv[1:])
