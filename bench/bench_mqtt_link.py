"""The collector's MQTT adapter, driven by the event loop, against paho's own network thread
bridged to asyncio with `call_soon_threadsafe` (the other way to drive paho from asyncio).

Per mode, on a private Mosquitto: QoS 1 publishes awaited on their PUBACK, `--window` in
flight (throughput and process CPU per 1000 messages), then one at a time (round-trip latency
p50/p99, what a command to a gateway sees). Runs alternate loop,thread,... `--runs` times;
medians are printed.

    python bench/bench_mqtt_link.py [--messages 5000] [--window 64] [--runs 3]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt

from citygate.rig import Broker
from collector.mqtt_link import LinkSettings, MqttLink

Publish = Callable[[str, bytes], Awaitable[None]]
PAYLOAD = b'{"v":1,"id":"cmd-000001","args":{"register":40001,"value":1}}'


async def loop_driven(url: str) -> tuple[Publish, Callable[[], Awaitable[None]]]:
    """The collector's MqttLink."""
    link = MqttLink(LinkSettings.from_url(url, client_id="bench-loop"))
    task = asyncio.create_task(link.run())
    await asyncio.to_thread(link.connected.wait, 10)

    async def close() -> None:
        await link.aclose()
        task.cancel()

    return (lambda t, p: link.publish(t, p, qos=1)), close


async def thread_bridged(url: str) -> tuple[Publish, Callable[[], Awaitable[None]]]:
    """paho's loop_start thread; PUBACKs resolve futures through call_soon_threadsafe."""
    loop = asyncio.get_running_loop()
    pending: dict[int, asyncio.Future[None]] = {}
    early: set[int] = set()
    c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="bench-thread",
                    protocol=mqtt.MQTTv311)
    connected = asyncio.Event()

    def acked(mid: int) -> None:
        fut = pending.pop(mid, None)
        if fut is None:
            early.add(mid)  # the PUBACK beat the registration
        elif not fut.done():
            fut.set_result(None)

    c.on_connect = lambda *_a: loop.call_soon_threadsafe(connected.set)
    c.on_publish = lambda _c, _u, mid, _rc, _p: loop.call_soon_threadsafe(acked, mid)
    host, port = url.removeprefix("mqtt://").split(":")
    c.connect(host, int(port), 30)
    c.loop_start()
    await connected.wait()

    async def publish(topic: str, payload: bytes) -> None:
        info = c.publish(topic, payload, qos=1)
        if info.mid in early:
            early.discard(info.mid)
            return
        fut = loop.create_future()
        pending[info.mid] = fut
        await fut

    async def close() -> None:
        c.disconnect()
        c.loop_stop()

    return publish, close


async def measure(make: Callable[[str], Awaitable[Any]], url: str, n: int,
                  window: int) -> dict[str, float]:
    """Throughput and CPU with `window` in flight, then one-at-a-time latency."""
    publish, close = await make(url)
    gate = asyncio.Semaphore(window)

    async def one(i: int) -> None:
        async with gate:
            await publish(f"bench/cmd/{i % 100}", PAYLOAD)

    cpu0, t0 = time.process_time(), time.perf_counter()
    await asyncio.gather(*(one(i) for i in range(n)))
    wall, cpu = time.perf_counter() - t0, time.process_time() - cpu0
    lat = []
    for i in range(min(n, 500)):
        s = time.perf_counter()
        await publish(f"bench/cmd/{i % 100}", PAYLOAD)
        lat.append((time.perf_counter() - s) * 1000)
    await close()
    lat.sort()
    return {"msg_s": n / wall, "cpu_ms_per_1000": cpu / n * 1e6,
            "rtt_p50_ms": lat[len(lat) // 2], "rtt_p99_ms": lat[int(len(lat) * 0.99)]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--messages", type=int, default=5000)
    ap.add_argument("--window", type=int, default=64)
    ap.add_argument("--runs", type=int, default=3)
    args = ap.parse_args()
    modes = {"loop-driven (MqttLink)": loop_driven, "paho thread + bridge": thread_bridged}
    results: dict[str, list[dict[str, float]]] = {m: [] for m in modes}
    with tempfile.TemporaryDirectory() as tmp:
        broker = Broker(Path(tmp) / "broker").start()
        try:
            for _ in range(args.runs):
                for name, make in modes.items():
                    results[name].append(asyncio.run(
                        measure(make, broker.url, args.messages, args.window)))
        finally:
            broker.stop()
    print(f"{args.messages} QoS 1 publishes, {args.window} in flight, {args.runs} runs "
          f"(medians), broker {broker.kind}")
    print(f"{'mode':26} {'msg/s':>9} {'CPU ms/1000':>12} {'RTT p50 ms':>11} {'RTT p99 ms':>11}")
    for name, runs in results.items():
        med = {k: statistics.median(r[k] for r in runs) for k in runs[0]}
        print(f"{name:26} {med['msg_s']:9.0f} {med['cpu_ms_per_1000']:12.1f} "
              f"{med['rtt_p50_ms']:11.2f} {med['rtt_p99_ms']:11.2f}")


if __name__ == "__main__":
    main()
