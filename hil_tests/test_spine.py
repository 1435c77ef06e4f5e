"""End to end: simulated lift registers → gateway (Modbus TCP and RTU) → MQTT → collector → REST."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest

from citygate.rig import (
    Broker,
    free_port,
    gateway_toml,
    http_json,
    port_open,
    rtu_bus,
    tcp_bus,
    wait_for,
)
from devices.modbus import codec
from devices.modbus.planner import plan_reads
from devices.profiles import load_profile
from devices.quantities import QUANTITIES, ValueKind
from devices.sim.elevator import idle_values

pytestmark = pytest.mark.hil
PROFILE = load_profile("elevator-gbt24476")
UNITS = (1, 2, 3)


def read_simulator_registers(port: int, unit: int) -> dict[str, Any]:
    """Read a simulated lift's registers with an independent client and decode them."""
    from pymodbus.client import AsyncModbusTcpClient

    async def read() -> dict[str, Any]:
        client = AsyncModbusTcpClient("127.0.0.1", port=port, timeout=2)
        await client.connect()
        out: dict[str, Any] = {}
        try:
            for block in plan_reads(PROFILE.points):
                rr = await client.read_holding_registers(block.start, count=block.count,
                                                         device_id=unit)
                assert not rr.isError(), rr
                for p in block.points:
                    out[p.quantity] = codec.decode(p, block.slice_for(p, rr.registers))
        finally:
            client.close()
        return out

    return asyncio.run(read())


def served_latest(base: str, device: str) -> dict[str, Any]:
    """The collector's latest values of a device, as {quantity: value}."""
    latest = http_json(f"{base}/api/v1/devices/{device}/latest")
    return {q: v["value"] for q, v in latest["quantities"].items()}


def same(quantity: str, a: Any, b: Any) -> bool:
    """Equal values, allowing float rounding for numbers."""
    if QUANTITIES[quantity].kind is ValueKind.NUMBER:
        return abs(float(a) - float(b)) < 1e-6
    return bool(a == b)


def test_registers_reach_the_hub_over_tcp_and_rtu(tmp_path: Path, broker: Broker,
                                                  procs: Any) -> None:
    registers_reach_the_hub(tmp_path, broker, procs)


def test_the_embedded_broker_carries_the_spine(tmp_path: Path, procs: Any,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    """Machines without Mosquitto run the demo on the embedded Python broker (amqtt)."""
    monkeypatch.setenv("CITYGATE_BROKER", "embedded")
    embedded = Broker(tmp_path / "embedded").start()
    try:
        assert embedded.kind == "embedded amqtt"
        registers_reach_the_hub(tmp_path, embedded, procs)
    finally:
        embedded.stop()


def registers_reach_the_hub(tmp_path: Path, broker: Broker, procs: Any) -> None:
    """Every point of every simulated lift, over TCP and RTU, equals what the hub serves."""
    modbus_port = free_port()
    tty = tmp_path / "ttyLIFTS"
    units = ",".join(map(str, UNITS))
    procs.start("sim-tcp", "sim", "elevators", "--tcp", f"127.0.0.1:{modbus_port}",
                "--units", units, "--static")
    procs.start("sim-rtu", "sim", "elevators", "--rtu", str(tty), "--units", units, "--static")
    wait_for(lambda: port_open(modbus_port), 15, "the TCP simulator")
    wait_for(tty.exists, 15, "the RTU simulator's line")
    _, base = procs.collector(broker)

    for gw, bus, prefix in (("gw-tcp", tcp_bus(modbus_port), "lt"),
                            ("gw-rtu", rtu_bus(tty), "lr")):
        cfg = tmp_path / f"{gw}.toml"
        cfg.write_text(gateway_toml(gw, tmp_path / gw, broker.url, bus,
                                    [(f"{prefix}{u}", u) for u in UNITS], poll="500ms"))
        procs.start(gw, "edge", "run", "--config", str(cfg))

    devices = [f"{p}{u}" for p in ("lt", "lr") for u in UNITS]

    def complete() -> bool:
        known = {x["id"] for x in http_json(f"{base}/api/v1/devices")}
        return known == set(devices) and all(
            len(served_latest(base, d)) == len(PROFILE.points) for d in devices)

    wait_for(complete, 45, "every point of every lift at the collector")

    for unit in UNITS:
        on_wire = read_simulator_registers(modbus_port, unit)
        expected = idle_values(unit)
        for prefix in ("lt", "lr"):
            served = served_latest(base, f"{prefix}{unit}")
            assert set(served) == {p.quantity for p in PROFILE.points}
            for q, value in served.items():
                assert same(q, value, on_wire[q]), (prefix, unit, q, value, on_wire[q])
                assert same(q, value, expected[q]), (prefix, unit, q, value, expected[q])

    gateways = {g["id"]: g for g in http_json(f"{base}/api/v1/gateways")}
    assert gateways["gw-tcp"]["state"] == "online"
    assert gateways["gw-rtu"]["state"] == "online"
    kinds = {d["id"]: d["kind"] for d in http_json(f"{base}/api/v1/devices")}
    assert set(kinds.values()) == {"elevator"}
    hist = http_json(f"{base}/api/v1/devices/lt1/readings?quantity=trip_count")
    assert hist["readings"], "history of lt1 is empty"
    assert all(r["value"] == expected_trips(1) for r in hist["readings"])


def expected_trips(unit: int) -> int:
    """Trip counter of a static simulated lift."""
    return int(idle_values(unit)["trip_count"] or 0)
