"""Push latency: from a register change at the lift simulator to the crew's phone page (the
incident arriving on the SSE stream /api/v1/incidents/stream, read with a crew API token), to
a signed webhook and to an SMS at a fake Aliyun SMS gateway (signature recomputed).

Real processes: a lift simulator (Modbus TCP, BENCH_PUSH_N static lifts), a gateway polling
each lift every second, a private broker and a collector whose alarms route controller faults
(`gbt24476_fault`, raised on the first poll that reads the fault code) straight to a webhook
and an SMS channel; the receivers and the SSE reader run in this process
(citygate/receivers.py). Every other setting is the collector's default; the only override
is `group_wait = "0s"`, which would otherwise hold a per-device fault back 30 s on purpose
(to let a gateway or power loss that explains it arrive first).

Each lift gets one `controller_fault@T:unit=N` scenario, staggered BENCH_PUSH_GAP seconds
apart (one per lift, because a re-raise of the same fault on the same lift reopens its incident
instead of paging again). Scenario times count from the simulator's first read, which its
`--count-reads` log timestamps with time.monotonic() — the same clock the receivers and the
SSE reader stamp arrivals with — so the register change happens at first_read + T. Latency
includes the wait for the next poll (0-1 s), the gateway's rules and outbox, MQTT, the
collector's ingest and alarm engine, then either the live stream or the notify queue and the
HTTP POST.

    python -m bench push          # BENCH_PUSH_N=60 BENCH_PUSH_GAP=0.7
"""

from __future__ import annotations

import json
import os
import re
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import httpx

from bench.common import percentile
from citygate import rig
from citygate.receivers import Receivers
from citygate.rig import (
    Broker,
    Proc,
    citygate,
    collector_health,
    free_port,
    gateway_toml,
    http_json,
    port_open,
    tcp_bus,
    toml_document,
    wait_for,
)

N = int(os.environ.get("BENCH_PUSH_N", "60"))
GAP = float(os.environ.get("BENCH_PUSH_GAP", "0.7"))
FIRST_AT = float(os.environ.get("BENCH_PUSH_FIRST", "8"))  # settle time before the first fault
TARGET_P99_S = 3.0
SECRET = "whsec-bench-" + os.urandom(8).hex()
SMS_SECRET = "sms-bench-" + os.urandom(8).hex()
RULES = "top_floor = 18, bottom_floor = 1, rated_speed = 1.0"
DEVICE_RE = re.compile(r"— (lift-\d+) at ")


def collector_config(rx: Receivers) -> dict[str, Any]:
    """Controller faults page a webhook and an SMS gateway at once (no group wait)."""
    sms = {"type": "sms", "provider": "aliyun", "url": rx.sms_url("aliyun"),
           "access_key_id": rx.sms_key_id, "access_key_secret": SMS_SECRET,
           "sign_name": "CityGate", "template": "SMS_100001", "to": ["13800000001"],
           "params": ["title", "site", "open_for", "link"]}
    return {
        "notify": {"channels": {"bench-hook": {"type": "webhook", "secret": SECRET,
                                               "url": rx.webhook_url("bench")},
                                "bench-sms": sms}},
        "alarms": {"group_wait": "0s",
                   "units": {"bench": {"escalation": [
                       {"after": "0s", "channels": ["bench-hook", "bench-sms"]}]}},
                   "routes": [{"kinds": ["gbt24476_fault"], "unit": "bench"}]},
    }


class StreamReader:
    """The crew page's live stream, read in a thread: when each device's incident arrived."""

    def __init__(self, base: str, token: str) -> None:
        self.url = f"{base}/api/v1/incidents/stream?token={token}"
        self.seen: dict[str, float] = {}  # device -> time.monotonic() of its first event
        self._stop = threading.Event()
        self._open = threading.Event()
        self._thread = threading.Thread(target=self._run, name="bench-sse", daemon=True)

    def start(self) -> StreamReader:
        """Connect and wait until the stream is open."""
        self._thread.start()
        wait_for(self._open.is_set, 15, "the incident stream")
        return self

    def stop(self) -> None:
        """Stop reading (the thread ends at the next line or keepalive)."""
        self._stop.set()

    def _run(self) -> None:
        try:
            self._read()
        except httpx.HTTPError:
            if not self._stop.is_set():  # the collector going away at the end is expected
                raise

    def _read(self) -> None:
        with httpx.Client(timeout=httpx.Timeout(5.0, read=30.0)) as http, \
                http.stream("GET", self.url) as resp:
            event = ""
            for line in resp.iter_lines():
                self._open.set()
                if self._stop.is_set():
                    return
                if line.startswith("event: "):
                    event = line[7:]
                elif line.startswith("data: ") and event == "incident":
                    device = json.loads(line[6:]).get("device", "")
                    self.seen.setdefault(device, time.monotonic())


def injections() -> dict[str, float]:
    """Device id → scenario start (seconds after the simulator's first read)."""
    return {f"lift-{u:03d}": FIRST_AT + (u - 1) * GAP for u in range(1, N + 1)}


def run(root: Path) -> dict[str, list[float]]:
    """Start the rig, play the faults, return latencies in seconds per path (one per lift)."""
    admin = "cg_bench-" + os.urandom(12).hex()
    rig.DEFAULT_TOKEN = admin
    procs: list[Proc] = []
    with Receivers(secret=SECRET, sms_secret=SMS_SECRET) as rx:
        broker = Broker(root / "broker").start()
        try:
            return _play(root, broker, rx, admin, procs)
        finally:
            for p in reversed(procs):
                p.stop()
            broker.stop()


def _play(root: Path, broker: Broker, rx: Receivers, admin: str,
          procs: list[Proc]) -> dict[str, list[float]]:
    def start(name: str, *args: str, env: dict[str, str] | None = None) -> Proc:
        proc = Proc(name, citygate(*args), root / "logs" / f"{name}.log", env=env).start()
        procs.append(proc)
        return proc

    cfg = root / "collector.toml"
    cfg.write_text(toml_document(collector_config(rx)))
    http = free_port()
    base = f"http://127.0.0.1:{http}"
    start("collector", "collector", "run", "--db", f"sqlite:///{root / 'hub.sqlite'}",
          "--broker", broker.url, "--http", f"127.0.0.1:{http}", "--config", str(cfg),
          env={"CITYGATE_ADMIN_TOKEN": admin})
    wait_for(lambda: collector_health(base), 30, "the collector")
    crew = http_json(f"{base}/api/v1/tokens", method="POST", token=admin,
                     body={"name": "bench-phone", "role": "crew", "unit": "bench"})["token"]
    stream = StreamReader(base, crew).start()
    try:
        return _inject(root, broker, rx, procs, start, stream)
    finally:
        stream.stop()


def _inject(root: Path, broker: Broker, rx: Receivers, procs: list[Proc], start: Any,
            stream: StreamReader) -> dict[str, list[float]]:
    at = injections()
    modbus, reads = free_port(), root / "reads.log"
    scenarios = [a for u, t in enumerate(at.values(), 1)
                 for a in ("--scenario", f"controller_fault@{t:.3f}:unit={u}:for=600")]
    start("sim", "sim", "elevators", "--tcp", f"127.0.0.1:{modbus}", "--units", f"1-{N}",
          "--static", "--count-reads", str(reads), *scenarios)
    wait_for(lambda: port_open(modbus), 15, "the simulator")
    gw = root / "gw.toml"
    gw.write_text(gateway_toml("gw-bench", root / "gw", broker.url, tcp_bus(modbus),
                               [(dev, u) for u, dev in enumerate(at, 1)], device_rules=RULES))
    start("gateway", "edge", "run", "--config", str(gw))
    wait_for(lambda: reads.exists() and reads.stat().st_size > 0, 20, "the first read")
    first_read = float(reads.read_text().split(maxsplit=1)[0])
    deadline = FIRST_AT + N * GAP + 30
    for channel in ("webhook:bench", "sms:aliyun"):
        wait_for(lambda: len(rx.pushes(channel, delivered=True)) >= N,  # noqa: B023
                 deadline, f"{N} pushes at {channel}", interval=0.2)
    wait_for(lambda: len(stream.seen) >= N, 30, f"{N} incidents on the crew stream")
    out: dict[str, list[float]] = {"crew page (SSE)": [
        stream.seen[dev] - (first_read + t) for dev, t in at.items()]}
    for path, channel in (("webhook", "webhook:bench"), ("SMS (Aliyun)", "sms:aliyun")):
        out[path] = []
        for push in rx.pushes(channel, delivered=True):
            m = DEVICE_RE.search(push.title)
            assert m and push.verified, push
            out[path].append(push.monotonic - (first_read + at[m.group(1)]))
    return out


def main() -> None:
    """Run the benchmark and print p50 / p99 / max per path."""
    t = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="bench-push-") as tmp:
        paths = run(Path(tmp))
    print(f"push latency from a register change at the simulator ({N} injections on {N} "
          f"lifts, poll 1 s, run {time.monotonic() - t:.0f} s):")
    for path, lat in paths.items():
        p50, p99 = percentile(lat, 50), percentile(lat, 99)
        verdict = "PASS" if p99 < TARGET_P99_S else "FAIL"
        print(f"  → {path:16s} n={len(lat):3d}  p50 {p50:.3f} s   p99 {p99:.3f} s   "
              f"min {min(lat):.3f} s   max {max(lat):.3f} s   target p99 < {TARGET_P99_S:g} s: "
              f"{verdict}")


if __name__ == "__main__":
    main()
