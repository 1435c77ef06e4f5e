"""Gateway observability: the Prometheus text format, and a local endpoint.

The process's own figures (CPU, RSS, open files) come from `devices.process`, shared with the
collector's health.

The endpoint renders the agent's health message (`Agent.health()`), so the scrape and the
periodic MQTT health message always carry the same figures. It is off by default and binds
127.0.0.1 when turned on (`[metrics] listen = "127.0.0.1:9464"`): a gateway exposes nothing
on its field network unless someone decides so.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
from collections.abc import Callable, Mapping
from typing import Any

log = logging.getLogger(__name__)

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
# Health counters that are levels, not running totals.
GAUGES = frozenset({
    "outbox_messages", "outbox_readings", "outbox_bytes", "outbox_oldest_age_s",
    "outbox_write_failures", "clock_synced", "uplink_connected", "watchdog_stalled_loops",
    "asyncio_tasks", "process_threads", "process_open_fds", "process_rss_bytes",
})
# Health keys with a standard Prometheus name.
STANDARD = {"process_cpu_s": ("process_cpu_seconds_total", "counter"),
            "process_rss_bytes": ("process_resident_memory_bytes", "gauge"),
            "process_open_fds": ("process_open_fds", "gauge")}
_NAME_OK = re.compile(r"[^a-zA-Z0-9_]")


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _metric_name(key: str) -> tuple[str, str]:
    if key in STANDARD:
        return STANDARD[key]
    name = "citygate_" + _NAME_OK.sub("_", key)
    if key in GAUGES:
        return name.replace("_age_s", "_age_seconds"), "gauge"
    return name + "_total", "counter"


def render(health: Mapping[str, Any]) -> bytes:
    """The Prometheus text exposition (format 0.0.4) of a health message."""
    lines: list[str] = []
    gw = _escape(str(health.get("gateway", "")))
    for key, value in sorted(dict(health.get("counters", {})).items()):
        if not isinstance(value, int | float):
            continue
        name, kind = _metric_name(str(key))
        lines += [f"# TYPE {name} {kind}", f'{name}{{gateway="{gw}"}} {float(value):g}']
    lines += _device_lines(gw, health.get("devices", {}))
    version = _escape(str(health.get("version", "")))
    lines += ["# TYPE citygate_info gauge",
              f'citygate_info{{gateway="{gw}",version="{version}"}} 1']
    return ("\n".join(lines) + "\n").encode()


def _device_lines(gw: str, devices: Mapping[str, Mapping[str, Any]]) -> list[str]:
    by_name: dict[str, tuple[str, list[str]]] = {}
    for device, figures in sorted(devices.items()):
        for key, raw in figures.items():
            if isinstance(raw, bool):
                name, kind, value = f"citygate_device_{key}", "gauge", float(raw)
            elif isinstance(raw, int | float):
                name, kind = f"citygate_device_{_NAME_OK.sub('_', key)}_total", "counter"
                value = float(raw)
            else:
                continue
            entry = by_name.setdefault(name, (kind, []))
            entry[1].append(f'{name}{{gateway="{gw}",device="{_escape(device)}"}} {value:g}')
    lines: list[str] = []
    for name, (kind, samples) in by_name.items():
        lines += [f"# TYPE {name} {kind}", *samples]
    return lines


class MetricsServer:
    """A minimal HTTP/1.0 server answering GET /metrics with `render(snapshot())`."""

    def __init__(self, listen: str, snapshot: Callable[[], Mapping[str, Any]]) -> None:
        host, _, port = listen.rpartition(":")
        self.host, self.port = host.strip("[]"), int(port)
        self.snapshot = snapshot
        self.scrapes = 0
        self._server: asyncio.Server | None = None

    async def start(self) -> MetricsServer:
        """Bind and serve in the background."""
        self._server = await asyncio.start_server(self._serve, self.host, self.port)
        self.port = int(self._server.sockets[0].getsockname()[1])
        log.info("metrics on http://%s:%d/metrics", self.host, self.port)
        return self

    async def close(self) -> None:
        """Stop serving (idempotent)."""
        server, self._server = self._server, None
        if server is not None:
            server.close()
            await server.wait_closed()

    async def run(self) -> None:
        """Serve until cancelled."""
        await self.start()
        try:
            await asyncio.Event().wait()
        finally:
            await self.close()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            request = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5.0)
            method, path = [*request.split(b" ", 2), b"", b""][:2]
            if method == b"GET" and path.split(b"?")[0] == b"/metrics":
                self.scrapes += 1
                self._answer(writer, "200 OK", render(self.snapshot()), CONTENT_TYPE)
            else:
                self._answer(writer, "404 Not Found", b"try /metrics\n", "text/plain")
            await writer.drain()
        except (TimeoutError, asyncio.IncompleteReadError, asyncio.LimitOverrunError,
                ConnectionError):
            pass
        finally:
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()

    @staticmethod
    def _answer(writer: asyncio.StreamWriter, status: str, body: bytes, ctype: str) -> None:
        writer.write(f"HTTP/1.0 {status}\r\nContent-Type: {ctype}\r\n"
                     f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n".encode() + body)
