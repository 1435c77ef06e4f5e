"""A small city for chaos tests, with exact accounting of every reading.

The simulator runs in counting mode: every read of a lift bumps its trip counter and is logged
with its monotonic time, so each reading the devices gave is unique and known. At the end the
readings stored at the collector are compared with that log: produced, stored, duplicates,
lost — and, for kill tests, how many of the lost were read in the instant before a kill -9
(between the Modbus answer and the outbox commit, which no software can save).
"""

from __future__ import annotations

import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from citygate.rig import (
    Broker,
    Proc,
    free_port,
    gateway_toml,
    http_json,
    port_open,
    tcp_bus,
    wait_for,
)
from devices.sim.elevator import idle_values

UNITS = (1, 2, 3)
KILL_WINDOW = 0.1  # seconds before a kill -9 in which a read may be lost before its commit


def hold(seconds: float) -> None:
    """Let a scenario last (an outage, a run of normal traffic): scenario time, not a wait."""
    time.sleep(seconds)


@dataclass
class Account:
    """Exact counts of one chaos run."""

    produced: int
    stored: int
    duplicates: int
    lost: int
    lost_before_kill: int = 0
    evicted_reported: int = 0
    lost_reads: list[str] = field(default_factory=list)  # each lost read, where it fell

    def __str__(self) -> str:
        return (f"produced={self.produced} stored={self.stored} duplicates={self.duplicates} "
                f"lost={self.lost} lost_before_kill={self.lost_before_kill} "
                f"evicted_reported={self.evicted_reported} lost_reads={self.lost_reads[:10]}")


@dataclass
class ChaosCity:
    """Broker, counting simulator, collector and one gateway, under a test's control."""

    root: Path
    procs: Any  # hil_tests.conftest.Procs
    broker: Broker
    uplink: str = 'keepalive = "3s"'  # extra [uplink] lines
    outbox: str = ""  # extra [outbox] lines
    gateway_keys: str = ""  # extra [gateway] lines
    uplink_url: str | None = None  # where the gateway connects (a proxy, say)
    window: str = "200ms"
    poll: str = "500ms"
    env: dict[str, str] | None = None
    collector_args: tuple[str, ...] = ()
    kills: list[float] = field(default_factory=list)
    base: str = ""
    modbus_port: int = 0
    gateway: Proc | None = None
    collector: Proc | None = None
    sim: Proc | None = None

    @property
    def log(self) -> Path:
        """The simulator's read log."""
        return self.root / "reads.log"

    def start(self) -> ChaosCity:
        """Start simulator, collector and gateway; wait for the first readings."""
        self.modbus_port = free_port()
        self.start_sim()
        self.start_collector()
        cfg = self.root / "gw.toml"
        devices = [(f"c{u}", u) for u in UNITS]
        cfg.write_text(gateway_toml(
            "gw-chaos", self.root / "gw", self.uplink_url or self.broker.url,
            tcp_bus(self.modbus_port), devices, poll=self.poll, uplink=self.uplink,
            outbox=f'durability_window = "{self.window}"\n{self.outbox}',
            gateway_keys=self.gateway_keys))
        self.gateway = self.procs.start("gateway", "edge", "run", "--config", str(cfg),
                                        env=self.env)
        wait_for(lambda: self.stored_total() > 0, 30, "the first readings at the collector")
        return self

    def start_sim(self) -> None:
        """(Re)start the counting simulator."""
        self.sim = self.procs.start("sim", "sim", "elevators", "--tcp",
                                    f"127.0.0.1:{self.modbus_port}", "--units",
                                    ",".join(map(str, UNITS)), "--static", "--count-reads",
                                    str(self.log))
        wait_for(lambda: port_open(self.modbus_port), 15, "the simulator")

    def start_collector(self, client_id: str = "chaos-collector", *extra: str) -> Proc:
        """(Re)start a collector on the same database; the first one's port is `base`."""
        from citygate.rig import collector_health

        first = client_id == "chaos-collector"
        port = int(self.base.rsplit(":", 1)[1]) if self.base and first else free_port()
        proc = self.procs.start(
            client_id, "collector", "run", "--db", f"sqlite:///{self.root / 'hub.sqlite'}",
            "--broker", self.broker.url, "--http", f"127.0.0.1:{port}",
            "--client-id", client_id, *self.collector_args, *extra)
        url = f"http://127.0.0.1:{port}"
        wait_for(lambda: collector_health(url), 30, "the collector API")
        if first:
            self.collector, self.base = proc, url
        return proc

    def kill_gateway(self) -> None:
        """kill -9 the gateway and note when."""
        assert self.gateway is not None
        self.kills.append(time.monotonic())
        self.gateway.kill9()

    def served(self) -> dict[int, list[tuple[float, int]]]:
        """What the simulator gave: unit -> [(monotonic time, trip counter)]."""
        out: dict[int, list[tuple[float, int]]] = {u: [] for u in UNITS}
        for line in self.log.read_text().splitlines():
            t, unit, value = line.split()
            out[int(unit)].append((float(t), int(value)))
        return out

    def stored(self, unit: int) -> list[int]:
        """Trip counter values stored at the collector for a unit."""
        r = http_json(f"{self.base}/api/v1/devices/c{unit}/readings?quantity=trip_count"
                      "&limit=100000", timeout=30)
        first = int(idle_values(unit)["trip_count"] or 0)
        return [int(x["value"]) for x in r["readings"] if int(x["value"]) > first]

    def stored_total(self) -> int:
        """Readings of trip counters stored so far (0 while devices are unknown)."""
        try:
            return sum(len(self.stored(u)) for u in UNITS)
        except OSError:
            return 0

    def gaps_reported(self) -> dict[str, int]:
        """Readings the gateway reported as evicted, per device."""
        out: Counter[str] = Counter()
        for e in http_json(f"{self.base}/api/v1/events?kind=data_gap&limit=10000"):
            out[e["device"]] += int(e["evidence"]["count"])
        return dict(out)

    def finish(self, timeout: float = 90) -> Account:
        """Stop the devices, wait for everything to arrive, and count."""
        assert self.sim is not None
        self.sim.stop()
        served = self.served()
        # Wait for the reads no kill put at risk: a lax count (all but as many as were at
        # risk) would stop early when at-risk reads arrived and others were still on the way.
        want = {u: {v for t, v in served[u] if not self._before_kill(t)} for u in UNITS}
        evicted = self.gaps_reported

        def arrived() -> bool:
            got = sum(len(want[u] & set(self.stored(u))) for u in UNITS)
            return got + sum(evicted().values()) >= sum(len(w) for w in want.values())

        try:
            wait_for(arrived, timeout, "every reading at the collector", interval=1.0)
        except TimeoutError:
            pass  # count what is there: the assertion shows the exact numbers
        return self.account(served)

    def _before_kill(self, t: float) -> bool:
        return any(0 <= k - t <= KILL_WINDOW for k in self.kills)

    def account(self, served: dict[int, list[tuple[float, int]]]) -> Account:
        """Compare what the devices gave with what the hub holds."""
        produced = stored = dups = lost = at_kill = 0
        lost_reads: list[str] = []
        for u in UNITS:
            values = self.stored(u)
            counts = Counter(values)
            produced += len(served[u])
            stored += len(counts)
            dups += sum(c - 1 for c in counts.values())
            reads = served[u]
            for i, (t, v) in enumerate(reads):
                if v not in counts:
                    lost += 1
                    at_kill += self._before_kill(t)
                    lost_reads.append(self._where(u, v, t, reads, i))
        evicted = sum(self.gaps_reported().values())
        return Account(produced, stored, dups, lost, at_kill, evicted, lost_reads)

    def _where(self, unit: int, value: int, t: float, reads: list[tuple[float, int]],
               i: int) -> str:
        """A lost read and its surroundings: the gaps to the unit's reads before and after it
        (a retried request shows as a short gap) and to the next kill, in ms."""
        def ms(x: float | None) -> str:
            return "-" if x is None else f"{x * 1000:.0f}"

        before = t - reads[i - 1][0] if i > 0 else None
        after = reads[i + 1][0] - t if i + 1 < len(reads) else None
        kill = min((k - t for k in self.kills if k >= t), default=None)
        return (f"c{unit}={value} prev+{ms(before)} next+{ms(after)} kill+{ms(kill)} "
                f"end-{ms(reads[-1][0] - t)}")
