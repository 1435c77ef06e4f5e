"""`citygate cluster-demo`: the city past one machine, on this machine.

A 3-node NATS cluster (JetStream, MQTT on every node), two collectors sharing one durable
consumer and one PostgreSQL database, lift simulators and gateways that list every node.
Prints where to look and what to kill.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from citygate.cluster import NatsCluster
from citygate.rig import (
    Proc,
    citygate,
    collector_health,
    free_port,
    gateway_toml,
    port_open,
    tcp_bus,
    wait_for,
)
from collector.ingest_nats import DURABLE

DEFAULT_PG = "postgresql://postgres@127.0.0.1:5432/postgres"
DEMO_DB = "citygate_cluster_demo"


def add_parser(sub: Any) -> None:
    """Register `citygate cluster-demo` on the CLI's subparsers."""
    p = sub.add_parser("cluster-demo", help="the city on a 3-node NATS cluster, two collectors")
    p.add_argument("--duration", type=float, help="stop after this many seconds")
    p.add_argument("--data-dir", type=Path,
                   help="where state and logs go (default ./var/cluster-demo, replaced each run)")
    p.add_argument("--pg", default=DEFAULT_PG,
                   help=f"PostgreSQL admin URL; database {DEMO_DB} is created afresh there "
                        f"(default {DEFAULT_PG})")
    p.add_argument("--gateways", type=int, default=3, help="gateways (default 3)")
    p.add_argument("--elevators", type=int, default=6, help="lifts per gateway (default 6)")
    p.add_argument("--http-base", type=int, default=8080,
                   help="collector APIs on this port and the next (default 8080)")
    p.set_defaults(func=main)


@dataclass
class ClusterCity:
    """The demo's processes; stopped newest first, the cluster last."""

    data_dir: Path
    cluster: NatsCluster
    procs: list[Proc] = field(default_factory=list)

    def start(self, name: str, *args: str) -> Proc:
        """Start `citygate <args>` logging to logs/<name>.log."""
        proc = Proc(name, citygate(*args), self.data_dir / "logs" / f"{name}.log").start()
        self.procs.append(proc)
        return proc

    def stop(self) -> None:
        """Stop everything (idempotent)."""
        for proc in reversed(self.procs):
            proc.stop()
        self.cluster.stop()


def fresh_database(admin_url: str, name: str = DEMO_DB) -> str:
    """Drop and create `name` on the server of `admin_url`; return its URL."""
    import psycopg

    try:
        with psycopg.connect(admin_url, autocommit=True, connect_timeout=3) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
            conn.execute(f'CREATE DATABASE "{name}"')
    except psycopg.OperationalError as exc:
        raise RuntimeError(f"PostgreSQL at {admin_url} is not reachable ({exc}); "
                           "start it or give --pg postgresql://USER@HOST:PORT/postgres") from None
    return f"{admin_url.rsplit('/', 1)[0]}/{name}"


def rotated(urls: list[str], first: int) -> list[str]:
    """`urls` starting at index `first`: processes prefer the first URL they are given."""
    first %= len(urls)
    return urls[first:] + urls[:first]


def main(args: argparse.Namespace) -> int:
    """Run the cluster demo until Ctrl-C or --duration."""
    data_dir = (args.data_dir or Path("var/cluster-demo")).resolve()
    if args.data_dir is None and data_dir.exists():
        shutil.rmtree(data_dir)  # the default place holds only the previous run
    data_dir.mkdir(parents=True, exist_ok=True)
    city = ClusterCity(data_dir, NatsCluster(data_dir / "nats"))
    try:
        return _run(city, args)
    except (RuntimeError, TimeoutError) as exc:
        print(f"cluster demo failed: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 0
    finally:
        city.stop()


def _run(city: ClusterCity, args: argparse.Namespace) -> int:
    d, cluster = city.data_dir, city.cluster
    for port in (args.http_base, args.http_base + 1):
        if port_open(port):
            raise RuntimeError(f"port {port} is taken; pick others with --http-base PORT")
    print(f"CityGate cluster demo — state in {d}")
    db = fresh_database(args.pg)
    cluster.start()
    cluster.create_consumer(DURABLE)  # before any gateway publishes: interest retention
    for n in cluster.nodes:
        pid = n.proc.popen.pid if n.proc and n.proc.popen else "?"
        print(f"  nats {n.name}     mqtt 127.0.0.1:{n.mqtt_port}  nats 127.0.0.1:{n.client_port}"
              f"  monitor http://127.0.0.1:{n.http_port}/jsz?consumers=true  (pid {pid})")
    bases = _collectors(city, db, args.http_base)
    _gateways(city, args.gateways, args.elevators)
    leader = cluster.stream_leader()
    print(f"  database    {db}")
    print(f"  logs        {d / 'logs'}")
    print(f"  $MQTT_msgs  leader {leader.name}; consumer {DURABLE} shared by both collectors")
    print("  try         kill -9 a collector or a node (pids above); nothing is lost, see "
          "ingest.stored_messages/redelivered in /api/v1/health")
    sys.stdout.flush()
    wait_for(lambda: _stored(bases) > 0, 60, "the first stored batches")
    print("  data is flowing; stop with Ctrl-C"
          + (f" (or wait {args.duration:g}s)" if args.duration else ""))
    sys.stdout.flush()
    end = time.monotonic() + args.duration if args.duration else None
    while end is None or time.monotonic() < end:
        time.sleep(1.0)
    print(f"summary: {_stored(bases)} batches stored by {len(bases)} collectors")
    return 0


def _collectors(city: ClusterCity, db: str, http_base: int) -> list[str]:
    bases = []
    for i in range(2):
        name, port = f"collector-{i + 1}", http_base + i
        c = city.cluster
        proc = city.start(name, "collector", "run", "--ingest", "nats",
                          "--nats", ",".join(rotated(c.nats_urls, i)),
                          "--broker", ",".join(rotated(c.mqtt_urls, i)), "--client-id", name,
                          "--db", db, "--http", f"127.0.0.1:{port}")
        base = f"http://127.0.0.1:{port}"
        wait_for(lambda b=base, p=proc: collector_health(b) or not p.alive, 60, name)  # type: ignore[misc]
        if not proc.alive:
            raise RuntimeError(f"{name} exited:\n{proc.tail(10)}")
        pid = proc.popen.pid if proc.popen else "?"
        print(f"  {name} {base}/  (API {base}/docs, pid {pid})")
        bases.append(base)
    return bases


def _gateways(city: ClusterCity, gateways: int, elevators: int) -> None:
    d, urls = city.data_dir, city.cluster.mqtt_urls
    modbus_port = free_port()
    city.start("sim-tcp", "sim", "elevators", "--tcp", f"127.0.0.1:{modbus_port}",
               "--units", f"1-{elevators}")
    wait_for(lambda: port_open(modbus_port), 15, "the Modbus TCP simulator")
    for g in range(gateways):
        gw = f"gw-cluster-{g + 1:02d}"
        brokers = ", ".join(f'"{u}"' for u in rotated(urls, g))
        text = gateway_toml(gw, d / gw, urls[0], tcp_bus(modbus_port),
                            [(f"lift-c{g + 1}-{u:02d}", u) for u in range(1, elevators + 1)])
        cfg = d / f"{gw}.toml"
        cfg.write_text(text.replace(f'brokers = ["{urls[0]}"]', f"brokers = [{brokers}]"))
        proc = city.start(gw, "edge", "run", "--config", str(cfg))
        print(f"  {gw}  brokers {rotated(urls, g)[0]} first, {elevators} lifts "
              f"(pid {proc.popen.pid if proc.popen else '?'})")


def _stored(bases: list[str]) -> int:
    total = 0
    for base in bases:
        health = collector_health(base) or {}
        total += int((health.get("ingest") or {}).get("stored_messages", 0))
    return total


if __name__ == "__main__":
    from citygate.cli import _setup_logging

    parser = argparse.ArgumentParser(prog="citygate cluster-demo")
    add_parser(parser.add_subparsers(dest="command", required=True))
    ns = parser.parse_args(["cluster-demo", *sys.argv[1:]])
    _setup_logging(False)
    sys.exit(main(ns))
