"""Past one machine: gateways on a 3-node NATS cluster, collectors sharing one durable consumer.

Gateways here are citygate.feeder.Feeder: numbered envelopes, an outbox of the unacked, and
failover along the list of every node's MQTT URL — so every count is exact. Faults are real:
kill -9 of collector processes and of nats-server nodes. The invariant checked everywhere:
every produced (gateway, seq) stored exactly once, and exactly `readings` rows per envelope.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from citygate.cluster import (
    MQTT_MSGS_STREAM,
    MQTT_RETAINED_STREAM,
    NatsCluster,
    NatsServerMissing,
    nats_server_binary,
    nats_server_version,
)
from citygate.feeder import Feeder
from citygate.rig import Proc, collector_health, free_port, wait_for
from collector.features import open_store
from collector.ingest_nats import DURABLE, FILTER_SUBJECT, NatsIngest, topic_from_subject
from collector.store import Store
from hil_tests.conftest import Procs

pytestmark = pytest.mark.hil
ACK_WAIT = 4.0  # short, so a killed collector's batch is redelivered within the test


# --- fixtures ------------------------------------------------------------------------------------

@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[NatsCluster]:
    """A running 3-node cluster with the collectors' consumer created before any gateway."""
    try:
        nats_server_binary()
    except NatsServerMissing as exc:
        pytest.skip(str(exc))
    c = NatsCluster(tmp_path / "nats").start()
    try:
        c.create_consumer(DURABLE, ack_wait=ACK_WAIT)
        yield c
    finally:
        c.stop()


@pytest.fixture
def pg_db(pg_db: str) -> str:
    """The shared fresh database, migrated once before two collectors race to."""
    open_store(pg_db).close()
    return pg_db


# --- helpers -------------------------------------------------------------------------------------

def rotated(urls: list[str], first: int) -> list[str]:
    """The URL list starting at node `first` (a process prefers the first it is given)."""
    return urls[first:] + urls[:first]


def start_collector(procs: Procs, cluster: NatsCluster, db: str, name: str,
                    first_node: int) -> tuple[Proc, str]:
    """Start `citygate collector run --ingest nats` preferring node `first_node`."""
    port = free_port()
    proc = procs.start(name, "collector", "run", "--ingest", "nats",
                       "--nats", ",".join(rotated(cluster.nats_urls, first_node)),
                       "--broker", ",".join(rotated(cluster.mqtt_urls, first_node)),
                       "--client-id", name, "--db", db, "--http", f"127.0.0.1:{port}")
    base = f"http://127.0.0.1:{port}"
    wait_for(lambda: collector_health(base) or not proc.alive, 30, f"collector {name}")
    assert proc.alive, proc.tail()
    return proc, base


def restart_collector(proc: Proc, base: str) -> None:
    """Start a killed collector again with the same arguments and wait for its API."""
    proc.start()
    wait_for(lambda: collector_health(base) or not proc.alive, 30, f"{proc.name} again")
    assert proc.alive, proc.tail()


@dataclass(frozen=True)
class Tally:
    """Exact accounting of one gateway: produced vs what the hub holds."""

    gateway: str
    produced: int
    stored: int  # distinct (gateway, seq) in batches
    rows: int  # batch rows (the key makes this == stored; checked anyway)
    readings: int
    lost: int
    resent: int

    def line(self) -> str:
        """One line for assertion messages."""
        return (f"{self.gateway}: produced={self.produced} stored={self.stored} "
                f"batch_rows={self.rows} readings={self.readings} lost={self.lost} "
                f"duplicates_stored={self.rows - self.stored} "
                f"duplicates_on_wire={self.resent}")


def tally(db: str, feeders: list[Feeder]) -> list[Tally]:
    """Count every feeder's envelopes and readings in the hub."""
    import sqlalchemy as sa

    store = open_store(db)
    try:
        with store.engine.connect() as conn:
            out = []
            for f in feeders:
                rows, distinct = conn.execute(sa.text(
                    "SELECT count(*), count(DISTINCT seq) FROM batches "
                    "WHERE gateway_id = :g AND seq BETWEEN 1 AND :n"),
                    {"g": f.gateway, "n": f.counts.produced}).one()
                readings = conn.scalar(sa.text(
                    "SELECT count(*) FROM readings WHERE gateway_id = :g"), {"g": f.gateway})
                out.append(Tally(f.gateway, f.counts.produced, int(distinct), int(rows),
                                 int(readings or 0), f.counts.produced - int(distinct),
                                 f.counts.resent))
            return out
    finally:
        store.close()


def all_stored(db: str, feeders: list[Feeder]) -> bool:
    """True once every produced envelope of every feeder is in the hub."""
    return all(t.stored == t.produced for t in tally(db, feeders))


def assert_exact(db: str, feeders: list[Feeder], readings_per: int = 1) -> str:
    """Every produced envelope stored once, with exactly its readings; return the report."""
    tallies = tally(db, feeders)
    report = "\n".join(t.line() for t in tallies)
    for t in tallies:
        assert t.lost == 0, f"lost envelopes\n{report}"
        assert t.rows == t.stored, f"duplicates stored\n{report}"
        assert t.readings == t.produced * readings_per, f"duplicate or missing readings\n{report}"
    return report


def run_feeders(cluster: NatsCluster, n: int, count: int, rate: float) -> list[Feeder]:
    """Start `n` feeders, gateway i preferring node i % 3."""
    return [Feeder(f"gw{i + 1}", cluster.mqtt_urls, count=count, rate=rate,
                   first_broker=i % len(cluster.nodes)).start() for i in range(n)]


def finish(feeders: list[Feeder], timeout: float) -> None:
    """Wait until every feeder produced everything and holds no unacked envelope."""
    wait_for(lambda: all(f.done for f in feeders), timeout,
             "every feeder acknowledged: " + ", ".join(
                 f"{f.gateway} produced={f.counts.produced} unacked={f.unacked}"
                 for f in feeders))


def stats(base: str) -> dict[str, Any]:
    """The collector's ingest counters."""
    health = collector_health(base) or {}
    return dict(health.get("ingest") or {})


# --- tests ---------------------------------------------------------------------------------------

def test_mqtt_msgs_stream_is_the_one_we_rely_on(cluster: NatsCluster) -> None:
    """Fails when NATS renames `$MQTT_msgs`, its subjects, or its retention (see DESIGN.md)."""
    version = nats_server_version()
    assert version.startswith("2.9."), (
        f"nats-server {version}: `$MQTT_msgs` is internal to NATS; re-check this test and "
        "docs/deployment.md before moving off the pinned 2.9 series")
    info = cluster.stream_info(MQTT_MSGS_STREAM)
    assert info is not None, f"stream {MQTT_MSGS_STREAM} does not exist any more"
    cfg = info["config"]
    assert cfg["subjects"] == ["$MQTT.msgs.>"], cfg["subjects"]
    assert cfg["retention"] == "interest", cfg["retention"]
    assert cfg["num_replicas"] == 3, cfg["num_replicas"]
    retained = cluster.stream_info(MQTT_RETAINED_STREAM)
    assert retained is not None and retained["config"]["subjects"] == ["$MQTT.rmsgs"]
    consumer = cluster.consumer_info(DURABLE)
    assert consumer is not None and consumer["config"]["filter_subject"] == FILTER_SUBJECT
    assert topic_from_subject("$MQTT.msgs.citygate.v1.gw1.data") == "citygate/v1/gw1/data"

    feeder = Feeder("gwprobe", cluster.mqtt_urls, count=3, rate=100).start()
    try:
        finish([feeder], 20)
        wait_for(lambda: (cluster.consumer_info(DURABLE) or {}).get("num_pending", 0) >= 3, 10,
                 "three messages of citygate/v1/gwprobe/data pending on the consumer")
    finally:
        feeder.stop()


@pytest.mark.postgres
@pytest.mark.slow  # `make chaos`; make test keeps the NATS kill in test_collector_workers.py
def test_collector_kill9_mid_stream_loses_nothing(cluster: NatsCluster, pg_db: str,
                                                  procs: Procs) -> None:
    """collector_kill9: two collectors share the consumer; one dies with -9 and comes back."""
    a, base_a = start_collector(procs, cluster, pg_db, "coll-a", 0)
    _, base_b = start_collector(procs, cluster, pg_db, "coll-b", 1)
    feeders = run_feeders(cluster, 3, count=1500, rate=250)
    try:
        wait_for(lambda: stats(base_a).get("stored_messages", 0) > 300, 30,
                 "coll-a storing mid-stream")
        a.kill9()
        wait_for(lambda: sum(f.counts.produced for f in feeders) > 3000, 30, "more produced")
        restart_collector(a, base_a)
        finish(feeders, 60)
        wait_for(lambda: all_stored(pg_db, feeders), ACK_WAIT * 3 + 30,
                 "every envelope stored after redelivery")
        report = assert_exact(pg_db, feeders)
        a_after, b = stats(base_a), stats(base_b)
        assert b["stored_messages"] > 0, f"coll-b stored nothing: the consumer is not shared\n{b}"
        assert b["source"] == "nats", b
    finally:
        for f in feeders:
            f.stop()
    print(f"{report}\ncoll-b: stored={b['stored_messages']} duplicates={b['duplicates']} "
          f"redelivered={b['redelivered']}; coll-a after restart: "
          f"stored={a_after['stored_messages']} redelivered={a_after['redelivered']}")


@pytest.mark.slow
@pytest.mark.postgres
def test_gateway_node_kill9_fails_over_losing_nothing(cluster: NatsCluster, pg_db: str,
                                                      procs: Procs) -> None:
    """broker_node_kill9: the node a gateway is on dies; it fails over, duplicates absorbed."""
    start_collector(procs, cluster, pg_db, "coll-a", 0)
    start_collector(procs, cluster, pg_db, "coll-b", 2)
    feeders = run_feeders(cluster, 3, count=2000, rate=200)
    try:
        victim = feeders[1]  # prefers node n2; its collectors are on n1 and n3
        wait_for(lambda: victim.counts.acked > 500, 30, "gw2 mid-stream")
        node = cluster.node(f"n{victim.broker_index % 3 + 1}")
        node.kill9()
        wait_for(lambda: victim.counts.connects >= 2, 30, f"gw2 failing over from {node.name}")
        cluster.restart(node)
        finish(feeders, 90)
        wait_for(lambda: all_stored(pg_db, feeders), 60, "every envelope stored")
        report = assert_exact(pg_db, feeders)
        assert victim.counts.brokers_used[0] != victim.counts.brokers_used[-1], report
    finally:
        for f in feeders:
            f.stop()
    print(report)


@pytest.mark.slow
@pytest.mark.postgres
def test_stream_leader_kill9_loses_nothing(cluster: NatsCluster, pg_db: str,
                                           procs: Procs) -> None:
    """stream_leader_kill9: the `$MQTT_msgs` leader dies mid-stream; a new one is elected."""
    start_collector(procs, cluster, pg_db, "coll-a", 0)
    start_collector(procs, cluster, pg_db, "coll-b", 1)
    feeders = run_feeders(cluster, 3, count=2000, rate=200)
    try:
        wait_for(lambda: sum(f.counts.acked for f in feeders) > 1500, 30, "mid-stream")
        leader = cluster.stream_leader()
        leader.kill9()
        new_leader = cluster.stream_leader()
        assert new_leader is not leader
        wait_for(lambda: sum(f.counts.produced for f in feeders) > 4500, 60, "more produced")
        cluster.restart(leader)
        finish(feeders, 90)
        wait_for(lambda: all_stored(pg_db, feeders), 60, "every envelope stored")
        report = assert_exact(pg_db, feeders)
    finally:
        for f in feeders:
            f.stop()
    print(f"leader {leader.name} killed, {new_leader.name} took over\n{report}")


@pytest.mark.slow
def test_retained_states_and_last_wills_reach_collectors_on_other_nodes(
        cluster: NatsCluster, tmp_path: Path) -> None:
    """gateway_kill9: birth and will published on n1 reach collectors on n2 and n3."""
    live_store = open_store(f"sqlite:///{tmp_path / 'live.sqlite'}")
    live = NatsIngest(live_store, rotated(cluster.nats_urls, 2),
                      mqtt_urls=rotated(cluster.mqtt_urls, 2), client_id="coll-n3")
    live.start()
    feeder = Feeder("gwwill", cluster.mqtt_urls, count=5, rate=50, first_broker=0).start()
    late_store = open_store(f"sqlite:///{tmp_path / 'late.sqlite'}")
    late: NatsIngest | None = None
    try:
        finish([feeder], 20)

        def state(store: Store) -> tuple[str, str] | None:
            g = {x["gateway_id"]: x for x in store.gateways()}.get("gwwill")
            return (g["state"], g["state_reason"]) if g else None

        wait_for(lambda: state(live_store) == ("online", ""), 20, "birth at coll-n3")
        feeder.stop(graceful=False)  # socket closed without DISCONNECT: n1 publishes the will
        wait_for(lambda: state(live_store) == ("offline", "lost"), 30,
                 f"last will at coll-n3 (now {state(live_store)})")
        # A collector on n2 with an empty database learns the state from the retained store.
        late = NatsIngest(late_store, rotated(cluster.nats_urls, 1),
                          mqtt_urls=rotated(cluster.mqtt_urls, 1), client_id="coll-n2",
                          durable="citygate-late")
        late.start()
        wait_for(lambda: state(late_store) == ("offline", "lost"), 20,
                 f"retained will at coll-n2 (now {state(late_store)})")
        assert late.stats.retained_states >= 1
        assert live.stats.stored_messages == 5, live.stats.as_dict()
    finally:
        live.stop()
        if late is not None:
            late.stop()
        live_store.close()
        late_store.close()


@pytest.mark.postgres
def test_nats_writers_store_other_gateways_while_one_is_held(cluster: NatsCluster,
                                                              pg_db: str) -> None:
    """[ingest] writers on NATS: a fetched batch is stored by several writers, each gateway by
    one of them, and each writer's share is acknowledged as soon as it is stored."""
    import threading
    from urllib.parse import urlparse

    import paho.mqtt.client as mqtt

    from devices import contract
    from devices.model import Reading

    slow = "gw-slow"
    fast = next(f"gw-{i}" for i in range(1000) if hash(f"gw-{i}") % 2 != hash(slow) % 2)
    u = urlparse(cluster.mqtt_urls[0])
    pub = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="gw-pub-nats-writers")
    pub.connect(u.hostname or "127.0.0.1", u.port or 1883)
    pub.loop_start()
    try:  # all queued in the stream before the collector starts: one fetch takes them all
        for gw, seq in [(slow, 1), *[(fast, s) for s in range(1, 6)]]:
            body = contract.encode_batch([Reading(f"{gw}-lift", 1_763_690_000_000 + seq,
                                                  {"floor": seq})])
            pub.publish(contract.topic(gw, contract.DATA), contract.envelope(
                gw, contract.DATA, seq, 1_763_690_000_000 + seq, body), qos=1
            ).wait_for_publish(10)
    finally:
        pub.loop_stop()
        pub.disconnect()
    store = open_store(pg_db)
    gate = threading.Event()
    ingest_batch = store.ingest

    def held_for_slow(items: Any) -> Any:
        if any(i.gateway == slow for i in items):
            gate.wait(30)
        return ingest_batch(items)

    store.ingest = held_for_slow  # type: ignore[method-assign]
    ingest = NatsIngest(store, cluster.nats_urls, writers=2)
    ingest.start()
    try:
        wait_for(lambda: ingest.stats.acked == 5, 20, "the fast gateway stored and acknowledged")
        assert store.counts()["batches"] == 5 and store.seq_gaps(fast) == []
        assert ingest.stats.as_dict()["writers"] == 2
        gate.set()
        wait_for(lambda: ingest.stats.acked == 6, 20, "the held gateway stored after release")
        assert store.counts()["batches"] == 6 and ingest.stats.handled == 6
    finally:
        gate.set()
        ingest.stop()
        store.close()
    with pytest.raises(ValueError, match="writers: 9 is not from 1 to 8"):
        NatsIngest(store, cluster.nats_urls, writers=9)
