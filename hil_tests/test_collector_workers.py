"""`collector run --workers 2` on real Mosquitto and PostgreSQL: a worker killed with -9 mid-stream
is restarted with its client id and nothing is lost or stored twice; a fault reported through
both workers is one incident."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator
from typing import Any

import paho.mqtt.client as mqtt
import pytest
import sqlalchemy as sa

from citygate.feeder import Feeder
from citygate.rig import Broker, collector_health, free_port, http_json, wait_for
from collector.alarms import hash_token
from collector.features import open_store
from devices import contract
from devices.model import Action, Event, Severity
from hil_tests import test_cluster as tc
from hil_tests.conftest import Procs

pytestmark = [pytest.mark.hil, pytest.mark.postgres]
GATEWAYS, PER_GATEWAY, RATE = 4, 1500, 300.0
OPS_TOKEN = "ops-room-" + os.urandom(8).hex()


def workers_of(base: str) -> list[dict[str, Any]]:
    """The workers as the health endpoint lists them."""
    return list(((collector_health(base) or {}).get("ingest") or {}).get("workers") or [])


def all_running(base: str, n: int) -> bool:
    """Every worker running and connected to the broker."""
    ws = workers_of(base)
    return len(ws) == n and all(w["state"] == "running" and (w["ingest"] or {}).get(
        "broker_connected") for w in ws)


def tally(db: str) -> dict[str, tuple[int, int, int]]:
    """Per gateway: batch rows, distinct seqs, readings."""
    store = open_store(db)
    try:
        with store.engine.connect() as conn:
            rows = conn.execute(sa.text(
                "SELECT b.gateway_id, count(*), count(DISTINCT b.seq),"
                " (SELECT count(*) FROM readings r WHERE r.gateway_id = b.gateway_id)"
                " FROM batches b WHERE b.channel = 'data' GROUP BY b.gateway_id")).all()
        return {gw: (int(n), int(d), int(r)) for gw, n, d, r in rows}
    finally:
        store.close()


def raise_trapped(broker: Broker, times: int) -> None:
    """A lift gateway reporting the same entrapment in `times` successive envelopes, which the
    shared subscription hands to both workers in turn."""
    c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="gw-lift-fault")
    c.connect("127.0.0.1", broker.port)
    c.loop_start()
    try:
        for seq in range(1, times + 1):
            ev = Event("lift-07", 1_780_000_000_000 + seq, "trapped_passenger", Action.RAISE,
                       Severity.CRITICAL, evidence={"floor": 3})
            payload = contract.envelope("gw-lift-fault", contract.EVENTS, seq,
                                        1_780_000_000_000 + seq, contract.encode_batch([ev]))
            c.publish(contract.topic("gw-lift-fault", contract.EVENTS), payload,
                      qos=1).wait_for_publish(5)
    finally:
        c.loop_stop()
        c.disconnect()


def test_worker_kill9_mid_stream_exact_counts_and_one_incident(broker: Broker, pg_db: str,
                                                               procs: Procs) -> None:
    config = {"alarms": {"group_wait": "0s",
                         "ops": [{"name": "ops-room", "token_hash": hash_token(OPS_TOKEN)}]}}
    proc, base = procs.collector(broker, pg_db, "collector", "--workers", "2", config=config)
    wait_for(lambda: all_running(base, 2), 30, "two ingest workers connected")
    before = {w["index"]: w for w in workers_of(base)}
    assert before[1]["client_id"] == "citygate-collector"
    assert before[2]["client_id"] == "citygate-collector-2"

    feeders = [Feeder(f"gw{i + 1}", [broker.url], count=PER_GATEWAY, rate=RATE).start()
               for i in range(GATEWAYS)]
    try:
        wait_for(lambda: sum(f.counts.acked for f in feeders) > GATEWAYS * PER_GATEWAY // 3, 20,
                 "a third of the stream acknowledged by the broker")
        victim = before[2]["pid"]
        os.kill(victim, signal.SIGKILL)
        raise_trapped(broker, 6)
        wait_for(lambda: all(f.done for f in feeders), 40, "every feeder acknowledged")
        wait_for(lambda: all(v[1] == PER_GATEWAY for v in tally(pg_db).values())
                 and len(tally(pg_db)) == GATEWAYS, 30, "every envelope stored")
    finally:
        for f in feeders:
            f.stop()

    for gw, (rows, distinct, readings) in sorted(tally(pg_db).items()):
        assert (rows, distinct, readings) == (PER_GATEWAY, PER_GATEWAY, PER_GATEWAY), gw
    after = {w["index"]: w for w in workers_of(base)}
    assert after[2]["restarts"] == 1 and after[2]["pid"] != victim, after[2]
    assert after[2]["last_exit"] == "killed by SIGKILL"
    assert after[1]["restarts"] == 0
    log = proc.log.read_text()
    assert "restarting it" in log and "citygate-collector-2" in log
    assert "session present: True" in log  # the restarted worker found its queued messages

    def trapped() -> list[dict[str, Any]]:
        got = http_json(f"{base}/api/v1/incidents", token=OPS_TOKEN)
        return [i for i in got if i["device"] == "lift-07"]
    wait_for(trapped, 20, "the entrapment incident")
    health = collector_health(base) or {}
    feed = health["ingest"]["feed"]
    wait_for(lambda: (collector_health(base) or {})["ingest"]["feed"]["messages"]
             >= GATEWAYS * PER_GATEWAY + 6, 20, "every stored envelope fed to the hooks")
    fed = (collector_health(base) or {})["ingest"]["feed"]
    assert fed["messages"] == GATEWAYS * PER_GATEWAY + 6, fed  # each stored envelope once
    assert len(trapped()) == 1, trapped()
    assert health["ingest"]["leader"] is True, feed


def session_present(broker: Broker, client_id: str) -> bool:
    """Does the broker hold a persistent session for this client id?"""
    flags: dict[str, bool] = {}
    c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=client_id, clean_session=False)

    def on_connect(_c: Any, _u: Any, f: Any, _rc: Any, _p: Any) -> None:
        flags["present"] = f.session_present

    c.on_connect = on_connect
    c.connect("127.0.0.1", broker.port)
    c.loop_start()
    try:
        wait_for(lambda: "present" in flags, 10, f"connected as {client_id}")
    finally:
        c.disconnect()
        c.loop_stop()
    return flags["present"]


@pytest.mark.slow  # ~50 s: two collector starts and two idle waits of the drain
def test_fewer_workers_drain_and_delete_the_removed_sessions(broker: Broker, pg_db: str,
                                                            procs: Procs) -> None:
    first, base = procs.collector(broker, pg_db, "three", "--workers", "3")
    wait_for(lambda: all_running(base, 3), 30, "three ingest workers connected")
    first.stop()
    down = Feeder("gw-down", [broker.url], count=300, rate=600).start()
    try:
        wait_for(lambda: down.done, 20, "300 envelopes queued at the broker for three sessions")
    finally:
        down.stop()
    second, base = procs.collector(broker, pg_db, "two", "--workers", "2")
    wait_for(lambda: tally(pg_db).get("gw-down", (0, 0, 0))[1] == 300, 30,
             "the removed worker's share stored too")
    wait_for(lambda: "drained and deleted" in second.log.read_text(), 20, "the drain")
    assert not session_present(broker, "citygate-collector-3")
    after = Feeder("gw-after", [broker.url], count=200, rate=400).start()
    try:
        wait_for(lambda: after.done, 20, "200 more acknowledged")
        wait_for(lambda: tally(pg_db).get("gw-after", (0, 0, 0))[1] == 200, 20,
                 "every envelope after the drain stored by the two workers")
    finally:
        after.stop()
    assert tally(pg_db)["gw-down"] == (300, 300, 300)


@pytest.mark.parametrize("how", ["flag", "collector.toml"])
def test_workers_refused_on_sqlite(tmp_path: Any, how: str) -> None:
    toml = tmp_path / "collector.toml"
    toml.write_text("workers = 2\n")
    extra = ["--workers", "2"] if how == "flag" else ["--config", str(toml)]
    out = subprocess.run([sys.executable, "-m", "citygate.cli", "collector", "run", *extra,
                          "--db", f"sqlite:///{tmp_path / 'hub.sqlite'}"],
                         check=False, capture_output=True, text=True, timeout=30)
    assert out.returncode == 2
    assert "--workers 2 needs PostgreSQL" in out.stderr
    assert not (tmp_path / "hub.sqlite").exists()


@pytest.fixture
def nats(tmp_path: Any) -> Iterator[Any]:
    """A 3-node NATS cluster with the collectors' consumer (as hil_tests/test_cluster.py)."""
    from citygate.cluster import NatsCluster, NatsServerMissing, nats_server_binary
    from collector.ingest_nats import DURABLE

    try:
        nats_server_binary()
    except NatsServerMissing as exc:
        pytest.skip(str(exc))
    c = NatsCluster(tmp_path / "nats").start()
    try:
        c.create_consumer(DURABLE, ack_wait=tc.ACK_WAIT)
        yield c
    finally:
        c.stop()


def test_nats_workers_share_the_durable_consumer_through_a_kill9(nats: Any, pg_db: str,
                                                                procs: Procs) -> None:
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    procs.start("collector", "collector", "run", "--workers", "2", "--ingest", "nats",
                "--nats", ",".join(nats.nats_urls), "--broker", ",".join(nats.mqtt_urls),
                "--db", pg_db, "--http", f"127.0.0.1:{port}")
    wait_for(lambda: len(workers_of(base)) == 2 and all(
        w["state"] == "running" and w["ingest"] for w in workers_of(base)), 30,
        "two NATS ingest workers")
    feeders = tc.run_feeders(nats, 3, count=1000, rate=250)
    try:
        wait_for(lambda: sum(f.counts.acked for f in feeders) > 1000, 20, "a third acknowledged")
        # Both workers pull from the one durable consumer. Shown before the kill: the restarted
        # worker's counters start from zero, and the survivor may take all that is left.
        wait_for(lambda: [(w["ingest"] or {}).get("stored_messages", 0) > 0
                          for w in workers_of(base)] == [True, True], 20, "both workers storing")
        victim = {w["index"]: w for w in workers_of(base)}[1]["pid"]
        os.kill(victim, signal.SIGKILL)
        tc.finish(feeders, 40)
        wait_for(lambda: tc.all_stored(pg_db, feeders), tc.ACK_WAIT * 3 + 20,
                 "every envelope stored after redelivery")
        report = tc.assert_exact(pg_db, feeders)
    finally:
        for f in feeders:
            f.stop()
    workers = {w["index"]: w for w in workers_of(base)}
    assert workers[1]["restarts"] == 1 and workers[1]["pid"] != victim, workers[1]
    assert all(w["ingest"]["source"] == "nats" for w in workers.values()), report
    wait_for(lambda: (collector_health(base) or {})["ingest"]["feed"]["messages"] >= 3000, 20,
             "every stored envelope fed to the hooks")


_MEMBER = """
import sys, time
import paho.mqtt.client as mqtt
c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="member-a", clean_session=False,
                manual_ack=True)
got, subscribed = [], []
c.on_message = lambda *a: got.append(1)  # never acknowledged
c.on_connect = lambda cl, *a: cl.subscribe("$share/g/t/#", 1)
c.on_subscribe = lambda *a: subscribed.append(1)
c.connect("127.0.0.1", int(sys.argv[1]))
c.loop_start()
while not subscribed:  # the first line printed says: a member of the group now
    time.sleep(0.01)
while True:
    print(len(got), flush=True)
    time.sleep(0.05)
"""


def shared_member(broker: Broker, client_id: str, got: list[str],
                  subscribed: threading.Event | None = None) -> mqtt.Client:
    """A member of the shared group g that acknowledges what it receives (`subscribed` is set
    once the broker confirmed the subscription)."""
    c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=client_id, clean_session=False)
    c.on_message = lambda _c, _u, m: got.append(m.payload.decode())
    c.on_connect = lambda cl, *_: cl.subscribe("$share/g/t/#", 1)
    if subscribed is not None:
        c.on_subscribe = lambda *_: subscribed.set()
    c.connect("127.0.0.1", broker.port)
    c.loop_start()
    return c


def test_mosquitto_keeps_a_dead_shared_members_messages_for_its_session(broker: Broker) -> None:
    """What collector/workers.py relies on (and so restarts a worker with its client id)."""
    member = subprocess.Popen([sys.executable, "-c", _MEMBER, str(broker.port)],
                              stdout=subprocess.PIPE, text=True)
    got_b: list[str] = []
    b_subscribed = threading.Event()
    b = shared_member(broker, "member-b", got_b, b_subscribed)
    pub = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="publisher")
    pub.connect("127.0.0.1", broker.port)
    pub.loop_start()
    try:
        assert member.stdout is not None and member.stdout.readline()  # a is subscribed
        wait_for(lambda: pub.is_connected() and b_subscribed.is_set(), 10,
                 "the publisher connected and b subscribed")
        for i in range(20):
            pub.publish("t/x", f"a{i}", qos=1).wait_for_publish(5)
        wait_for(lambda: len(got_b) == 10, 10, "member b's half of the first 20")
        held = 0
        while held < 10:  # member a holds its half, unacknowledged
            held = int(member.stdout.readline())
        member.kill()
        member.wait(10)
        for i in range(20):
            pub.publish("t/x", f"b{i}", qos=1).wait_for_publish(5)
        wait_for(lambda: len(got_b) >= 20, 10, "member b's half of the next 20")
        assert sorted(m[0] for m in got_b) == ["a"] * 10 + ["b"] * 10, got_b  # nothing moved
        got_a: list[str] = []
        back = shared_member(broker, "member-a", got_a)
        try:
            wait_for(lambda: len(got_a) >= 20, 10, "member a's session delivered on return")
        finally:
            back.disconnect()
            back.loop_stop()
        assert len(got_a) == 20 and not set(got_a) & set(got_b)
        assert len(set(got_a) | set(got_b)) == 40
    finally:
        member.kill()
        for c in (b, pub):
            c.disconnect()
            c.loop_stop()
