"""The city's busiest hour on one machine: Mosquitto + `collector run --workers N` + PostgreSQL.

The load is docs/deployment.md's busiest-hour mix, in its proportions (section 1, with the
lift heartbeat at the 300 s it recommends at city scale):

  kind             envelopes/s of 16,600   values per envelope
  lift change      16,030                  1 (a floor, door or running change)
  lift heartbeat   77                      80 (4 lifts x 20 points)
  parking          240                     5.9 (one sensor report, by exception: a third full
                                           reports of 11, a third changes of 5, a third
                                           heartbeats of ~1.8)
  environment      253                     8 (an HJ 212 upload)

Generator processes publish it over QoS 1 as gateways would (each gateway's seq increasing),
at the offered rate, for the duration, after a warm-up that creates the devices. Printed per
run: offered and stored envelopes/s, lag p50/p99 (a probe gateway's envelope, sent every
0.25 s through the same shared subscription, from its send until its row is committed), the
hub's feature-hook lag, the broker's queue at the end, CPU (cores) and peak RSS of every
process (hub, each worker, Mosquitto, PostgreSQL backends of the database) and the machine's
load. A run *holds* the rate when the generators offered >= 98 % of it, lag p99 < 2 s, and
everything offered is stored within 2 s of the load's end. `--search` finds the largest rate
that holds, by bisection.

Run (the final figure, 5 minutes at the busiest hour with 2 workers):
  python -m bench city_hour --workers 2 --rate 16600 --duration 300
Compare 1 and 2 workers in one run, short:   --workers 1,2 --rate 8000 --duration 30
Compare ingest writers of one process:       --workers 1 --writers 1,2,3 --rate 12000
Largest sustained rate:                      --workers 2 --search 4000 20000 --duration 30
Settings also as BENCH_CITY_WORKERS, BENCH_CITY_RATE, BENCH_CITY_DURATION (make bench).
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import random
import signal
import sys
import tempfile
import threading
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt

from bench.common import ProcSample, percentile, sample, tree_cpu_s
from citygate.rig import (
    Broker,
    Proc,
    citygate,
    collector_health,
    free_port,
    mqtt_remaining_length,
    wait_for,
)
from collector.features import open_store
from devices import contract
from devices.model import Reading
from devices.quantities import QUANTITIES, ValueKind

PG_ADMIN = os.environ.get("CITYGATE_TEST_PG", "postgresql://postgres@127.0.0.1:5432/postgres")
MIX = (("lift_change", 16_030, 1), ("lift_heartbeat", 77, 80), ("parking", 240, 5.9),
       ("environment", 253, 8))
GATEWAYS = {"lift_change": 2000, "lift_heartbeat": 2000, "parking": 100, "environment": 1000}
LIFT_POINTS = ("service_mode", "car_running", "direction", "floor", "door_zone", "door_closed",
               "passenger_present", "fault_code", "trip_count", "running_hours", "speed",
               "power_supply", "door_lock", "safety_circuit", "alarm_button",
               "machine_room_temp", "load_percent", "brake_open", "door_cycles", "overload")
GENERATORS, CONNECTIONS, TICK_S = 2, 4, 0.02
HOLD_OFFERED, HOLD_LAG_P99_S = 0.98, 2.0


# --- the load ----------------------------------------------------------------------------------

def gateway_of(kind: str, i: int) -> str:
    """Lift gateways carry both changes and heartbeats of their 4 lifts."""
    return {"lift_change": "lg", "lift_heartbeat": "lg", "parking": "pc",
            "environment": "env"}[kind] + f"{i:05d}"


def point_value(point: str, rng: random.Random) -> Any:
    """A value of a lift point of the type the contract takes (a bool as a bool)."""
    kind = QUANTITIES[point].kind
    if kind is ValueKind.BOOL:
        return rng.random() < 0.5
    if kind is ValueKind.NUMBER:
        return round(rng.uniform(0, 100), 1)
    return rng.randrange(0, 3)


def values_of(kind: str, gw: str, rng: random.Random, now: int) -> list[Reading]:
    """One envelope's readings of this kind."""
    if kind == "lift_change":
        lift = f"{gw}-l{rng.randrange(4)}"
        return [Reading(lift, now, {"floor": rng.randrange(1, 30)})]
    if kind == "lift_heartbeat":
        return [Reading(f"{gw}-l{k}", now, {p: point_value(p, rng) for p in LIFT_POINTS})
                for k in range(4)]
    if kind == "parking":  # by exception, in the busiest hour's shares (docs/deployment.md)
        occupied, counter, part = rng.random() < 0.6, rng.randrange(1, 60000), rng.random()
        if part < 1 / 3:  # the hourly full report
            values: dict[str, Any] = {
                "occupied": occupied, "report_type": 2, "mag_x": 210, "mag_y": -150,
                "mag_z": 720 if occupied else 410, "send_counter": counter,
                "park_counter": counter % 7, "reset_cause": 4, "battery_mv": 3600,
                "rssi": -90, "temperature": 18.5}
        elif part < 2 / 3:  # an occupancy change: what moved
            values = {"occupied": occupied, "report_type": 1, "send_counter": counter,
                      "park_counter": counter % 7, "mag_z": 720 if occupied else 410}
        else:  # a heartbeat: the counter, and RSSI beyond its deadband 4 times in 5
            values = {"send_counter": counter}
            if rng.random() < 0.8:
                values["rssi"] = -90 + rng.choice((-5, 5))
        return [Reading(f"{gw}-s{rng.randrange(250)}", now, values)]
    return [Reading(f"{gw}-m", now, {"pm10": 61.0, "pm2_5": 35.0, "tsp": 120.0,
                                     "noise_laeq": 55.0, "wind_speed": 2.1, "temperature": 12.0,
                                     "humidity": 40.0, "pressure": 101.2})]


class WirePublisher:
    """A QoS 1 publisher that writes MQTT 3.1.1 PUBLISH packets straight to its socket.

    A load generator only: paho spends ~60 µs of Python per QoS 1 publish, which at the
    busiest hour's 16,600 envelopes/s would take most of this 2-core machine from the stack
    under test. Each tick's packets go out in one write; a thread counts the PUBACKs (the
    only packets the broker sends back to a client that subscribes to nothing and keeps no
    keep-alive).
    """

    def __init__(self, port: int, client_id: str) -> None:
        import socket

        self.sock = socket.create_connection(("127.0.0.1", port))
        cid = client_id.encode()
        body = (b"\x00\x04MQTT\x04\x02\x00\x00"  # MQTT 3.1.1, clean session, no keep-alive
                + len(cid).to_bytes(2, "big") + cid)
        self.sock.sendall(b"\x10" + mqtt_remaining_length(len(body)) + body)
        connack = self.sock.recv(4)
        if len(connack) != 4 or connack[0] != 0x20 or connack[3] != 0:
            raise RuntimeError(f"broker refused the load generator: {connack!r}")
        self.acked = 0
        self._next_id = 0
        self._reader = threading.Thread(target=self._count_acks, daemon=True)
        self._reader.start()

    def send(self, messages: list[tuple[str, bytes]]) -> None:
        """Publish every (topic, payload) at QoS 1 in one write."""
        out = bytearray()
        for topic, payload in messages:
            t = topic.encode()
            self._next_id = self._next_id % 65535 + 1
            body_len = 2 + len(t) + 2 + len(payload)
            out += b"\x32" + mqtt_remaining_length(body_len) + len(t).to_bytes(2, "big") + t
            out += self._next_id.to_bytes(2, "big") + payload
        self.sock.sendall(out)

    def _count_acks(self) -> None:
        rest = 0
        while True:
            try:
                data = self.sock.recv(65536)
            except OSError:
                return
            if not data:
                return
            rest += len(data)
            self.acked += rest // 4
            rest %= 4

    def close(self) -> None:
        """Disconnect."""
        import contextlib

        with contextlib.suppress(OSError):
            self.sock.sendall(b"\xe0\x00")
            self.sock.close()


def generate(index: int, port: int, rate: float, duration: float, seq_base: int,
             start_at: float, out: Any) -> None:
    """One generator process: its share of every kind's gateways, paced per tick."""
    rng = random.Random(index)
    pubs = [WirePublisher(port, f"bench-city-{index}-{c}") for c in range(CONNECTIONS)]
    total = sum(n for _, n, _ in MIX)
    kinds = [(kind, rate * n / total / GENERATORS,
              [gateway_of(kind, i) for i in range(index, GATEWAYS[kind], GENERATORS)])
             for kind, n, _ in MIX]
    seqs: dict[str, int] = {}
    owed = dict.fromkeys((k for k, _, _ in kinds), 0.0)
    published = 0
    time.sleep(max(0.0, start_at - time.time()))
    t0, cpu0 = time.monotonic(), time.process_time()
    ticks = 0
    while time.monotonic() - t0 < duration:
        now = int(time.time() * 1000)
        batches: list[list[tuple[str, bytes]]] = [[] for _ in pubs]
        for kind, per_s, gws in kinds:
            owed[kind] += per_s * TICK_S
            while owed[kind] >= 1:
                owed[kind] -= 1
                gw = gws[rng.randrange(len(gws))]
                seq = seqs[gw] = seqs.get(gw, seq_base) + 1
                payload = contract.envelope(gw, contract.DATA, seq, now, contract.encode_batch(
                    values_of(kind, gw, rng, now)))
                batches[hash(gw) % CONNECTIONS].append((contract.topic(gw, contract.DATA),
                                                        payload))
                published += 1
        for pub, batch in zip(pubs, batches, strict=True):
            if batch:
                pub.send(batch)
        ticks += 1
        time.sleep(max(0.0, t0 + ticks * TICK_S - time.monotonic()))
    cpu = time.process_time() - cpu0  # of the load (the wait for acks after it is idle)
    deadline = time.monotonic() + 30
    while sum(p.acked for p in pubs) < published and time.monotonic() < deadline:
        time.sleep(0.05)
    acked = sum(p.acked for p in pubs)
    for p in pubs:
        p.close()
    out.put((index, published, acked, cpu))


class Probe(threading.Thread):
    """A gateway sending one lift change every 0.25 s; lag = send to committed row."""

    def __init__(self, port: int, db: str) -> None:
        super().__init__(name="probe", daemon=True)
        self.port, self.db = port, db
        self.lags: list[float] = []
        self.stop = threading.Event()
        self.gateway = f"probe{uuid.uuid4().hex[:6]}"
        self.sent = 0

    def run(self) -> None:
        import psycopg

        cl = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=self.gateway)
        cl.connect("127.0.0.1", self.port)
        cl.loop_start()
        sent: dict[int, float] = {}
        seq, next_send = 0, time.monotonic()
        with psycopg.connect(self.db, autocommit=True) as conn:
            while not self.stop.is_set():
                if time.monotonic() >= next_send:
                    seq += 1
                    now = int(time.time() * 1000)
                    payload = contract.envelope(self.gateway, contract.DATA, seq, now,
                                                contract.encode_batch([Reading(
                                                    f"{self.gateway}-l0", now, {"floor": seq})]))
                    sent[seq] = time.monotonic()
                    self.sent = seq
                    cl.publish(contract.topic(self.gateway, contract.DATA), payload, qos=1)
                    next_send += 0.25
                row = conn.execute("SELECT max(seq) FROM batches WHERE gateway_id = %s",
                                   (self.gateway,)).fetchone()
                top = int(row[0]) if row and row[0] else 0
                for s in [s for s in sent if s <= top]:
                    self.lags.append(time.monotonic() - sent.pop(s))
                time.sleep(0.02)
        cl.loop_stop()
        cl.disconnect()


# --- one run -----------------------------------------------------------------------------------

@dataclass
class Stack:
    """Broker, database and collector of one setting, kept across the runs of a search."""

    workers: int
    root: Path
    writers: int | None = None  # collector.toml [ingest] writers (None: the collector's default)
    db: str = ""
    base: str = ""
    broker: Broker | None = None
    collector: Proc | None = None
    sent: int = 0  # envelopes offered so far (each stored once when all is drained)

    def start(self) -> Stack:
        import psycopg

        name = f"citygate_city_{uuid.uuid4().hex[:8]}"
        with psycopg.connect(PG_ADMIN, autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
        self.db = f"{PG_ADMIN.rsplit('/', 1)[0]}/{name}"
        self.broker = Broker(self.root / "broker").start()
        port = free_port()
        self.base = f"http://127.0.0.1:{port}"
        config: tuple[str, ...] = ()
        if self.writers is not None:
            (self.root / "collector.toml").write_text(f"[ingest]\nwriters = {self.writers}\n")
            config = ("--config", str(self.root / "collector.toml"))
        collector = self.collector = Proc("collector", citygate(
            "collector", "run", "--db", self.db, "--broker", self.broker.url,
            "--http", f"127.0.0.1:{port}", "--workers", str(self.workers), *config),
            self.root / "collector.log").start()
        wait_for(lambda: self._ready() or not collector.alive, 60, "the collector")
        assert collector.alive, collector.tail()
        return self

    @property
    def label(self) -> str:
        """The setting, as printed."""
        return f"workers={self.workers}" + (f" writers={self.writers}" if self.writers else "")

    def _ready(self) -> bool:
        ing = (collector_health(self.base) or {}).get("ingest") or {}
        if self.workers == 1:
            return bool(ing.get("broker_connected"))
        ws = ing.get("workers") or []
        return len(ws) == self.workers and all(w["state"] == "running" and (
            w["ingest"] or {}).get("broker_connected") for w in ws)

    def pids(self) -> dict[str, int]:
        """Every process of the stack by role."""

        assert self.collector and self.collector.popen and self.broker and self.broker.proc
        assert self.broker.proc.popen is not None
        out = {"hub": self.collector.popen.pid, "mosquitto": self.broker.proc.popen.pid}
        ing = (collector_health(self.base) or {}).get("ingest") or {}
        for w in ing.get("workers") or []:
            out[f"worker{w['index']}"] = int(w["pid"])
        return out

    def postmaster(self) -> int:
        """PostgreSQL's server process (the parent of this database's backends)."""
        import psycopg

        with psycopg.connect(self.db, autocommit=True) as conn:
            row = conn.execute("SELECT pg_backend_pid()").fetchone()
            assert row is not None
            stat = Path(f"/proc/{row[0]}/stat").read_text().rsplit(")", 1)[1].split()
        return int(stat[1])

    def sessions(self) -> int:
        """Connections opened to this database so far (pg_stat_database.sessions)."""
        import psycopg

        with psycopg.connect(self.db, autocommit=True) as conn:
            row = conn.execute("SELECT sessions FROM pg_stat_database"
                               " WHERE datname = current_database()").fetchone()
        return int(row[0]) if row else 0

    def turned_away(self) -> dict[str, int]:
        """What the collectors rejected or left out of the load so far, by reason (a load the
        contract refuses would measure less work than it claims)."""
        ing = (collector_health(self.base) or {}).get("ingest") or {}
        out: dict[str, int] = {}
        for part in [ing, *[w.get("ingest") or {} for w in ing.get("workers") or []]]:
            for what in ("rejected", "refused"):
                for reason, n in (part.get(what) or {}).items():
                    out[f"{what} {reason}"] = out.get(f"{what} {reason}", 0) + int(n)
        return out

    def stored(self) -> int:
        import psycopg

        with psycopg.connect(self.db, autocommit=True) as conn:
            row = conn.execute("SELECT count(*) FROM batches").fetchone()
        return int(row[0]) if row else 0

    def stop(self) -> None:
        import psycopg

        if self.collector:
            self.collector.stop()
        if self.broker:
            self.broker.stop()
        if self.db:
            with psycopg.connect(PG_ADMIN, autocommit=True) as conn:
                conn.execute(f'DROP DATABASE IF EXISTS "{self.db.rsplit("/", 1)[1]}"'
                             " WITH (FORCE)")


SETTINGS = ("autovacuum", "shared_buffers", "synchronous_commit", "max_wal_size",
            "checkpoint_timeout")


def server_settings() -> str:
    """The PostgreSQL settings the figures depend on (a server with autovacuum off, as some
    CI images run, never analyses or vacuums the tables the run fills)."""
    import psycopg

    with psycopg.connect(PG_ADMIN, autocommit=True) as conn:
        rows = conn.execute("SELECT name, current_setting(name) FROM pg_settings"
                            " WHERE name = ANY(%s) ORDER BY name", (list(SETTINGS),)).fetchall()
    return "PostgreSQL " + ", ".join(f"{k}={v}" for k, v in rows)


def machine_cpu() -> tuple[float, float]:
    """Busy and total jiffies of the whole machine."""
    fields = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    idle = fields[3] + fields[4]
    return float(sum(fields) - idle), float(sum(fields))


def offer(stack: Stack, rate: float, duration: float) -> dict[str, float]:
    """Offer `rate` envelopes/s for `duration` s; the figures of the run."""
    assert stack.broker is not None
    left = _drained(stack, stack.sent, 180.0)  # each run starts with nothing queued
    if left:
        print(f"  (the previous run's {left} envelopes are still queued)", flush=True)
    seq_base = int(time.time()) * 1_000_000
    out: Any = mp.get_context("fork").Queue()
    start_at = time.time() + 1.0
    gens = [mp.get_context("fork").Process(target=generate, args=(
        i, stack.broker.port, rate, duration, seq_base, start_at, out), daemon=True)
        for i in range(GENERATORS)]
    for g in gens:
        g.start()
    probe = Probe(stack.broker.port, stack.db)
    time.sleep(max(0.0, start_at - time.time()))
    pids = stack.pids()  # generators measure their own CPU: they end with the load
    postmaster, sessions0 = stack.postmaster(), stack.sessions()
    first = {k: _sample(p) for k, p in pids.items()}
    cpu0 = {k: v.cpu_s for k, v in first.items() if v is not None}
    pg0 = tree_cpu_s(postmaster)
    busy0, all0 = machine_cpu()
    stored0, t0 = stack.stored(), time.monotonic()
    probe.start()
    hook_lags: list[float] = []
    while time.monotonic() - t0 < duration:
        time.sleep(1.0)
        feed = ((collector_health(stack.base) or {}).get("ingest") or {}).get("feed") or {}
        if "lag_s" in feed:
            hook_lags.append(float(feed["lag_s"]))
    stored1, t1 = stack.stored(), time.monotonic()
    turned_away = stack.turned_away()
    if turned_away:
        print(f"  WARNING: the collector turned part of the load away: {turned_away}",
              flush=True)
    last = {k: _sample(p) for k, p in pids.items()}
    rss = {k: v.rss_peak_kb / 1024 for k, v in last.items() if v is not None}
    cpu = {k: (v.cpu_s - cpu0[k]) / (t1 - t0) for k, v in last.items()
           if v is not None and k in cpu0}
    # the whole server (backends, WAL writer, checkpointer, autovacuum) works for the stack
    cpu["postgres"] = (tree_cpu_s(postmaster) - pg0) / (t1 - t0)
    sessions = stack.sessions() - sessions0 - 2  # the two opened here to count
    busy1, all1 = machine_cpu()
    results = [out.get(timeout=60) for _ in gens]
    for g in gens:
        g.join(10)
    published = sum(r[1] for r in results)
    probe.stop.set()
    probe.join(5)
    stack.sent += published + probe.sent
    drained = _drained(stack, stack.sent, HOLD_LAG_P99_S)
    figures = {
        "offered_env_s": published / duration,
        "stored_env_s": (stored1 - stored0) / (t1 - t0),
        "lag_p50_s": percentile(probe.lags, 50), "lag_p99_s": percentile(probe.lags, 99),
        "hook_lag_p99_s": percentile(hook_lags, 99) if hook_lags else 0.0,
        "backlog_after_2s": float(drained),
        "cpu_hub": cpu.get("hub", 0.0),
        "cpu_workers": sum(v for k, v in cpu.items() if k.startswith("worker")),
        "cpu_mosquitto": cpu.get("mosquitto", 0.0),
        "cpu_postgres": cpu["postgres"],
        "pg_sessions_opened": float(sessions),
        "cpu_generators": sum(r[3] for r in results) / duration,
        "machine_busy_cores": (busy1 - busy0) / (all1 - all0) * (os.cpu_count() or 2),
        "rss_hub_mb": rss.get("hub", 0.0),
        "rss_worker_max_mb": max((v for k, v in rss.items() if k.startswith("worker")),
                                 default=0.0),
        "rss_mosquitto_mb": rss.get("mosquitto", 0.0),
        "load1": os.getloadavg()[0],
        "turned_away": float(sum(turned_away.values())),
    }
    stack_cpu = sum(v for k, v in cpu.items() if not k.startswith("gen"))
    figures["stack_cpu_us_per_env"] = stack_cpu / max(figures["stored_env_s"], 1.0) * 1e6
    # What the stack's own CPU per envelope allows on an otherwise idle machine of this size.
    figures["idle_machine_env_s_est"] = (os.cpu_count() or 2) * 1e6 / max(
        figures["stack_cpu_us_per_env"], 1.0)
    figures["hub_us_per_env"] = figures["cpu_hub"] / max(figures["stored_env_s"], 1.0) * 1e6
    figures["holds"] = float(figures["offered_env_s"] >= HOLD_OFFERED * rate
                             and figures["lag_p99_s"] < HOLD_LAG_P99_S
                             and figures["backlog_after_2s"] == 0)
    return figures


def _sample(pid: int) -> ProcSample | None:
    """CPU and RSS of a process, None once it has gone (a backend may close mid-run)."""
    try:
        return sample(pid)
    except (OSError, KeyError, IndexError, ValueError):
        return None


def _drained(stack: Stack, want: int, within: float) -> int:
    """Envelopes still not stored `within` s after the load stopped."""
    deadline = time.monotonic() + within
    left = want - stack.stored()
    while left > 0 and time.monotonic() < deadline:
        time.sleep(0.5)
        left = want - stack.stored()
    return max(0, left)


def warm_up(stack: Stack, seconds: float) -> None:
    """Most gateways and devices once, and that stored, so the runs measure steady state."""
    offer(stack, 1000.0, seconds)
    _drained(stack, stack.sent, 180.0)


def show(setting: str, f: dict[str, float]) -> None:
    """One run's figures on a few lines."""
    print(f"{setting} offered={f['offered_env_s']:.0f}/s stored={f['stored_env_s']:.0f}/s"
          f" lag p50={f['lag_p50_s']:.2f}s p99={f['lag_p99_s']:.2f}s hook lag p99="
          f"{f['hook_lag_p99_s']:.2f}s backlog 2 s after={f['backlog_after_2s']:.0f} "
          f"holds={'yes' if f['holds'] else 'NO'}", flush=True)
    print(f"  cpu cores: hub {f['cpu_hub']:.2f}, workers {f['cpu_workers']:.2f}, mosquitto "
          f"{f['cpu_mosquitto']:.2f}, postgres {f['cpu_postgres']:.2f}, load generators "
          f"{f['cpu_generators']:.2f}, machine busy "
          f"{f['machine_busy_cores']:.2f} of {os.cpu_count()}; load1 {f['load1']:.1f}; "
          f"PostgreSQL connections opened {f['pg_sessions_opened']:.0f}", flush=True)
    print(f"  stack CPU per stored envelope {f['stack_cpu_us_per_env']:.0f} us -> an idle "
          f"{os.cpu_count()}-core machine would store ~{f['idle_machine_env_s_est']:.0f}/s; "
          f"hub {f['hub_us_per_env']:.0f} us per envelope (one core: "
          f"~{1e6 / max(f['hub_us_per_env'], 1.0):.0f}/s)", flush=True)
    print(f"  peak RSS MB: hub {f['rss_hub_mb']:.0f}, worker max {f['rss_worker_max_mb']:.0f}, "
          f"mosquitto {f['rss_mosquitto_mb']:.0f}", flush=True)


def search(stack: Stack, lo: float, hi: float, duration: float, steps: int) -> float:
    """The largest rate in [lo, hi] that holds (0 if even lo does not), by bisection."""
    best, rate = 0.0, lo
    for _ in range(steps):
        f = offer(stack, rate, duration)
        show(stack.label, f)
        if f["holds"]:
            best = lo = rate
        else:
            hi = rate
        if not best or hi - lo < 500:
            break
        rate = (lo + hi) / 2
    return best


def hub_cost(envelopes: int) -> dict[str, float]:
    """CPU of the hub process per envelope fed (decode, then the features' hooks), measured
    in-process on the mix: what one hub core can feed, however loaded the machine is."""
    import psycopg

    from collector.config import CollectorConfig
    from collector.features import build_hub
    from collector.feed import FeedReader, FeedWriter, ensure_feed
    from collector.ingest import entry_of

    name = f"citygate_city_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(PG_ADMIN, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    url = f"{PG_ADMIN.rsplit('/', 1)[0]}/{name}"
    try:
        with tempfile.TemporaryDirectory() as tmp:
            store = open_store(url)
            ensure_feed(store.engine)
            hub = build_hub(store, CollectorConfig(), dict, admin_token_file=Path(tmp) / "t")
            feed = FeedWriter("bench")
            store.tx_writers.append(feed)
            rng, seqs = random.Random(3), dict[str, int]()
            total = sum(n for _, n, _ in MIX)
            kinds = [k for k, n, _ in MIX for _ in range(max(1, round(200 * n / total)))]
            for start in range(0, envelopes, 200):
                now = int(time.time() * 1000)
                entries = []
                for _ in range(min(200, envelopes - start)):
                    kind = rng.choice(kinds)
                    gw = gateway_of(kind, rng.randrange(GATEWAYS[kind]))
                    seq = seqs[gw] = seqs.get(gw, 0) + 1
                    topic = contract.topic(gw, contract.DATA)
                    payload = contract.envelope(gw, contract.DATA, seq, now, contract.encode_batch(
                        values_of(kind, gw, rng, now)))
                    entries.append(entry_of(contract.decode(topic, payload), topic, payload,
                                            now, True))
                feed.expect(entries)
                store.ingest([e.record for e in entries if e.record is not None])
            decoded: list[Any] = []
            reader = FeedReader(store, decoded.extend, lambda *_: None, limit=50)
            c0 = time.process_time()
            while reader.poll():
                pass
            decode_s = time.process_time() - c0
            c0 = time.process_time()
            for i in range(0, len(decoded), 200):
                hub.on_stored(decoded[i:i + 200])
            hooks_s = time.process_time() - c0
            asyncio_close(hub)
            store.close()
    finally:
        with psycopg.connect(PG_ADMIN, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    n = max(1, len(decoded))
    return {"read_decode_us": decode_s / n * 1e6, "hooks_us": hooks_s / n * 1e6,
            "hub_env_s_per_core": n / max(decode_s + hooks_s, 1e-9)}


def asyncio_close(hub: Any) -> None:
    """Stop the features' own threads and connections."""
    import asyncio

    asyncio.run(hub.close())


def main(argv: list[str] | None = None) -> None:
    """Run the busiest-hour mix against 1..N workers."""
    p = argparse.ArgumentParser(prog="python -m bench city_hour")
    p.add_argument("--workers", default=os.environ.get("BENCH_CITY_WORKERS", "1,2"),
                   help="comma-separated worker counts, each its own stack (default 1,2)")
    p.add_argument("--writers", default=os.environ.get("BENCH_CITY_WRITERS", ""),
                   help="comma-separated [ingest] writers of each worker, each its own stack "
                        "(default: the collector's)")
    p.add_argument("--rate", type=float, default=float(os.environ.get("BENCH_CITY_RATE", "16600")))
    p.add_argument("--duration", type=float,
                   default=float(os.environ.get("BENCH_CITY_DURATION", "30")))
    p.add_argument("--warmup", type=float, default=10.0)
    p.add_argument("--runs", type=int, default=1)
    p.add_argument("--search", nargs=2, type=float, metavar=("LO", "HI"))
    p.add_argument("--hub-cost", type=int, metavar="ENVELOPES",
                   help="only measure the hub's CPU per envelope fed, on this many envelopes")
    args = p.parse_args(argv or [])
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # stop the stack on the way out
    if args.hub_cost:
        for _ in range(args.runs):
            c = hub_cost(args.hub_cost)
            print(f"hub per envelope fed: read+decode {c['read_decode_us']:.0f} us, hooks "
                  f"{c['hooks_us']:.0f} us -> one hub core feeds ~{c['hub_env_s_per_core']:.0f}"
                  " envelopes/s", flush=True)
        return
    print(server_settings(), flush=True)
    writers = [int(x) for x in args.writers.split(",")] if args.writers else [None]
    for n, w in ((n, w) for n in (int(x) for x in args.workers.split(",")) for w in writers):
        with tempfile.TemporaryDirectory(prefix="bench-city-") as tmp:
            stack = Stack(n, Path(tmp), w)
            try:
                stack.start()
                warm_up(stack, args.warmup)
                if args.search:
                    best = search(stack, args.search[0], args.search[1], args.duration, 6)
                    print(f"{stack.label}: largest rate held for {args.duration:.0f} s: "
                          f"{best:.0f} envelopes/s", flush=True)
                    continue
                for _ in range(args.runs):
                    show(stack.label, offer(stack, args.rate, args.duration))
            finally:
                stack.stop()
