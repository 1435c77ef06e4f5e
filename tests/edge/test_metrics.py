"""Gateway metrics: the Prometheus text format, the local endpoint, and the agent's figures."""

from __future__ import annotations

import asyncio
import contextlib
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from citygate.rig import free_port
from devices.process import process_figures
from devices.sim.elevator import make_bank, serve_tcp
from edge.agent import Agent
from edge.config import ConfigError, parse_config
from edge.metrics import CONTENT_TYPE, MetricsServer, render

HEALTH: dict[str, Any] = {
    "gateway": "gw-1", "version": "1.2.3",
    "counters": {"outbox_readings": 12, "outbox_oldest_age_s": 3.5, "uplink_connected": 1,
                 "uplink_published": 40, "process_cpu_s": 1.25, "process_rss_bytes": 2048,
                 "process_open_fds": 9},
    "devices": {"lift-1": {"online": True, "polls": 10, "timeouts": 2},
                'odd"id': {"online": False, "polls": 1, "note": "text is skipped"}},
}


def test_render_names_types_and_labels() -> None:
    text = render(HEALTH).decode()
    lines = text.splitlines()
    assert "# TYPE citygate_outbox_readings gauge" in lines
    assert 'citygate_outbox_readings{gateway="gw-1"} 12' in lines
    assert 'citygate_outbox_oldest_age_seconds{gateway="gw-1"} 3.5' in lines
    assert 'citygate_uplink_published_total{gateway="gw-1"} 40' in lines
    assert 'process_cpu_seconds_total{gateway="gw-1"} 1.25' in lines
    assert 'process_resident_memory_bytes{gateway="gw-1"} 2048' in lines
    assert 'citygate_device_timeouts_total{gateway="gw-1",device="lift-1"} 2' in lines
    assert 'citygate_device_online{gateway="gw-1",device="odd\\"id"} 0' in lines
    assert 'citygate_info{gateway="gw-1",version="1.2.3"} 1' in lines
    assert "note" not in text
    assert sum(1 for x in lines if x == "# TYPE citygate_device_polls_total counter") == 1
    assert text.endswith("\n")


def test_process_figures_are_plausible() -> None:
    p = process_figures()
    assert p["process_rss_bytes"] > 1_000_000
    assert p["process_open_fds"] >= 3
    assert p["process_cpu_s"] > 0


def test_listen_must_be_host_port() -> None:
    base = 'schema_version = 1\n[gateway]\nid = "gw-1"\n[metrics]\n'
    assert parse_config(base + 'listen = "127.0.0.1:9464"').metrics.listen == "127.0.0.1:9464"
    assert parse_config(base).metrics.listen == ""
    with pytest.raises(ConfigError, match=r"metrics\.listen"):
        parse_config(base + 'listen = "9464"')


async def _get(url: str) -> tuple[int, str, str]:
    def fetch() -> tuple[int, str, str]:
        try:
            with urllib.request.urlopen(url, timeout=5) as r:
                return r.status, r.headers["Content-Type"], r.read().decode()
        except urllib.error.HTTPError as exc:
            return exc.code, "", ""
    return await asyncio.to_thread(fetch)


def test_server_answers_metrics_and_nothing_else() -> None:
    async def scenario() -> None:
        server = await MetricsServer("127.0.0.1:0", lambda: HEALTH).start()
        try:
            status, ctype, body = await _get(f"http://127.0.0.1:{server.port}/metrics")
            assert (status, ctype) == (200, CONTENT_TYPE)
            assert 'citygate_info{gateway="gw-1",version="1.2.3"} 1' in body
            assert (await _get(f"http://127.0.0.1:{server.port}/"))[0] == 404
            assert server.scrapes == 1
        finally:
            await server.close()
            await server.close()

    asyncio.run(scenario())


GATEWAY = """
schema_version = 1
[gateway]
id = "gw-metrics"
data_dir = "{data}"
[uplink]
brokers = ["mqtt://127.0.0.1:{broker}"]
[metrics]
listen = "127.0.0.1:{metrics}"
[[buses]]
name = "lifts"
type = "modbus-tcp"
host = "127.0.0.1"
port = {modbus}
[[devices]]
id = "lift-1"
bus = "lifts"
profile = "elevator-gbt24476"
unit = 1
poll = "100ms"
"""


def test_agent_serves_its_health_figures(tmp_path: Path) -> None:
    asyncio.run(_agent_scenario(tmp_path))


async def _agent_scenario(tmp_path: Path) -> None:
    modbus, port = free_port(), free_port()
    started = asyncio.Event()
    sim = asyncio.create_task(serve_tcp(make_bank([1], static=True), "127.0.0.1", modbus,
                                        started))
    await asyncio.wait_for(started.wait(), 10)
    agent = Agent(parse_config(GATEWAY.format(data=tmp_path, broker=free_port(), modbus=modbus,
                                              metrics=port)), password="")
    stop = asyncio.Event()
    run = asyncio.create_task(agent.run(stop))
    try:
        await asyncio.wait_for(agent.started.wait(), 10)
        body = ""
        for _ in range(100):
            _, _, body = await _get(f"http://127.0.0.1:{port}/metrics")
            if 'citygate_device_ok_total{gateway="gw-metrics",device="lift-1"}' in body:
                break
            await asyncio.sleep(0.1)
        assert 'citygate_device_ok_total{gateway="gw-metrics",device="lift-1"}' in body, body
        assert 'citygate_uplink_connected{gateway="gw-metrics"} 0' in body
        assert "citygate_outbox_readings" in body and "process_open_fds" in body
        health = agent.health()
        counters: Any = health["counters"]
        assert health["version"] and counters["process_rss_bytes"] > 0
        assert counters["asyncio_tasks"] >= 5
    finally:
        stop.set()
        with contextlib.suppress(Exception):
            await asyncio.wait_for(run, 15)
        sim.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await sim
