"""`citygate collector run` (ingest + API, ingest in --workers processes if asked) and
`citygate collector worker` (one of those processes)."""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from citygate.cli import DEFAULT_DB, _setup_logging, host_port


def add_collector_commands(sub: Any) -> None:
    """The `collector` subcommands."""
    coll = sub.add_parser("collector", help="the collector").add_subparsers(dest="coll_cmd",
                                                                           required=True)
    crun = coll.add_parser("run", help="run ingest and the API")
    _collector_args(crun)
    crun.add_argument("--http", type=host_port, default=("127.0.0.1", 8080))
    crun.add_argument("--workers", type=int, metavar="N",
                      help="ingest in N worker processes, supervised and restarted with their "
                           "client ids (PostgreSQL only; default: `workers` in collector.toml, "
                           "else 1)")
    crun.set_defaults(func=cmd_collector_run)
    cwork = coll.add_parser("worker", help="one ingest worker (started by `collector run "
                                           "--workers N`)")
    _collector_args(cwork)
    cwork.add_argument("--drain", action="store_true",
                       help="store what the session of a removed worker holds, then delete it")
    cwork.set_defaults(func=cmd_collector_worker)


def _collector_args(p: argparse.ArgumentParser) -> None:
    """Where a collector or one of its workers stores and what it subscribes to."""
    p.add_argument("--db", default=DEFAULT_DB,
                   help="sqlite:///PATH (default) or postgresql://USER@HOST:PORT/DB")
    p.add_argument("--broker", default="mqtt://127.0.0.1:1883")
    p.add_argument("--config", type=Path, help="collector.toml (push channels, alarms, "
                   "sites); defaults apply without it")
    p.add_argument("--client-id", default="citygate-collector",
                   help="fixed MQTT client id of the persistent session (worker k of "
                        "--workers N: <client id>-k, worker 1 keeps it)")
    p.add_argument("--username", help="MQTT user (password from CITYGATE_MQTT_PASSWORD)")
    p.add_argument("--share", metavar="GROUP",
                   help="split the ingest with the other collectors of GROUP ($share "
                        "subscription; give each collector its own --client-id)")
    p.add_argument("--ingest", choices=("mqtt", "nats"), default="mqtt",
                   help="mqtt: subscribe at --broker (default); nats: pull from the shared "
                        "JetStream consumer of a NATS cluster (--broker then lists the "
                        "nodes' MQTT URLs, comma-separated, for retained states)")
    p.add_argument("--nats", help="NATS URLs of the cluster nodes, comma-separated")


def cmd_collector_run(args: argparse.Namespace) -> int:
    """Run the collector (ingest + API), ingest in --workers processes if asked."""
    from collector.config import CollectorConfigError, load_collector_config
    from collector.service import WorkerPlan, run_collector
    from collector.workers import WorkersError, check_workers

    _setup_logging(args.verbose)
    host, port = args.http
    password = os.environ.get("CITYGATE_MQTT_PASSWORD")
    if args.ingest == "nats" and not args.nats:
        print("--ingest nats needs --nats nats://HOST:PORT[,...]", file=sys.stderr)
        return 2
    try:
        config = load_collector_config(args.config)
    except CollectorConfigError as exc:
        print(str(exc), file=sys.stderr)
        return 2
    workers = args.workers if args.workers is not None else config.workers
    try:
        check_workers(workers, args.db)
    except WorkersError as exc:
        print(f"collector: {exc}", file=sys.stderr)
        return 2
    try:
        asyncio.run(run_collector(args.db, args.broker.split(",")[0], host, port,
                                  client_id=args.client_id, username=args.username,
                                  password=password, make_ingest=_nats_ingest(args, password),
                                  config=config, share_group=args.share,
                                  config_source=str(args.config or "defaults"),
                                  workers=WorkerPlan(workers, _worker_argv(args),
                                                     sessions=args.ingest == "mqtt"),
                                  source=args.ingest))
    except CollectorConfigError as exc:  # a feature's own section, checked as it starts
        print(str(exc), file=sys.stderr)
        return 2
    return 0


def _nats_ingest(args: argparse.Namespace, password: str | None) -> Any:
    """The ingest factory of `--ingest nats`, None for MQTT."""
    if args.ingest != "nats":
        return None
    from collector.ingest_nats import NatsIngest
    from collector.store import Store

    def make_ingest(store: Store, on_stored: Any, on_state: Any, writers: int) -> NatsIngest:
        return NatsIngest(store, args.nats, mqtt_urls=args.broker.split(","),
                          client_id=args.client_id, username=args.username,
                          password=password, on_stored=on_stored, on_state=on_state,
                          writers=writers)
    return make_ingest


def _worker_argv(args: argparse.Namespace) -> Callable[[int, str], list[str]]:
    """How the collector starts its ingest worker `index` as `collector worker`."""
    from collector.ingest import DEFAULT_SHARE_GROUP

    def argv(_index: int, client_id: str) -> list[str]:
        out = [sys.executable, "-m", "citygate.cli", *(["--verbose"] if args.verbose else []),
               "collector", "worker", "--db", args.db,
               "--broker", args.broker, "--client-id", client_id,
               "--share", args.share or DEFAULT_SHARE_GROUP, "--ingest", args.ingest]
        for flag, value in (("--nats", args.nats), ("--username", args.username),
                            ("--config", args.config)):
            if value:
                out += [flag, str(value)]
        return out
    return argv


def cmd_collector_worker(args: argparse.Namespace) -> int:
    """One ingest worker of `collector run --workers N` (that command starts it)."""
    from collector.config import CollectorConfigError, load_collector_config
    from collector.features import open_store
    from collector.feed import FeedWriter
    from collector.ingest import IngestSettings
    from collector.ngsi import HubFeedSettings
    from collector.ngsi.history import HistoryKeeper
    from collector.workers import (
        DrainingIngest,
        FeedingIngest,
        forget_session,
        nats_source,
        run_drain,
        run_worker,
    )

    _setup_logging(args.verbose)
    if args.drain and args.ingest != "mqtt":
        print("--drain is for MQTT sessions (--ingest mqtt)", file=sys.stderr)
        return 2
    password = os.environ.get("CITYGATE_MQTT_PASSWORD")
    try:
        config = load_collector_config(args.config)
        settings = IngestSettings.from_section(config.ingest)
        writers = settings.writers_for(args.db, args.ingest)
        retention = HubFeedSettings.from_section(config.hub_feed).retention
    except (CollectorConfigError, ValueError) as exc:
        print(str(exc), file=sys.stderr)
        return 2
    store = open_store(args.db)
    settings.apply(store)
    store.row_writers.append(HistoryKeeper(store, retention).write_rows)

    def source(feed: FeedWriter) -> Any:
        store.tx_writers.append(feed)
        if args.ingest == "nats":
            return nats_source(feed, store, args.nats, mqtt_urls=args.broker.split(","),
                               client_id=args.client_id, username=args.username,
                               password=password, writers=writers)
        kind = DrainingIngest if args.drain else FeedingIngest
        ingest = kind(store, args.broker.split(",")[0], client_id=args.client_id,
                      share_group=args.share, username=args.username, password=password,
                      max_pending_bytes=settings.max_pending, writers=writers)
        ingest.feed = feed
        return ingest
    try:
        if args.drain:
            drained = source(FeedWriter(args.client_id))
            return run_drain(drained, lambda: forget_session(
                drained.host, drained.port, args.client_id, args.username, password))
        return run_worker(source)
    finally:
        store.close()
