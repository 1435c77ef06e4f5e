"""Scanning lines: unit ids over Modbus TCP and RTU (with baud detection), and listening."""

from __future__ import annotations

import asyncio
import contextlib
import os
import subprocess
import termios
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from citygate.rig import Proc, citygate, free_port, port_open, wait_for
from devices import hj212, parking
from devices.sim.elevator import make_bank, serve_rtu
from devices.sim.ptylink import PtyLink
from provisioning import rtu_probe, scan
from provisioning.errors import ProvisionError

HJ212_FRAME = (b"##0101QN=20160801085857223;ST=32;CN=1062;PW=100000;MN=010000A8900016F000169DC0;"
               b"Flag=5;CP=&&RtdInterval=30&&1C80\r\n")


@pytest.fixture
def tcp_sim(tmp_path: Path) -> Iterator[int]:
    port = free_port()
    proc = Proc("sim", citygate("sim", "elevators", "--tcp", f"127.0.0.1:{port}", "--units",
                                "3,7", "--static"), tmp_path / "sim.log").start()
    try:
        wait_for(lambda: port_open(port) or not proc.alive, 15, "the TCP simulator")
        assert proc.alive, proc.tail()
        yield port
    finally:
        proc.stop()


def test_tcp_scan_finds_the_simulators_units(tcp_sim: int) -> None:
    seen: list[str] = []
    found = asyncio.run(scan.scan_tcp("127.0.0.1", tcp_sim, range(1, 11), scan.Probe(),
                                      timeout=0.2, progress=seen.append))
    assert [u.unit for u in scan.with_data(found)] == [3, 7]
    # register 0 is the service mode: 1, "normal"
    assert all(u.registers == (1,) for u in scan.with_data(found))
    assert seen[:2] == ["unit 1", "unit 2"]
    by_profile = asyncio.run(scan.scan_tcp("127.0.0.1", tcp_sim, [3], scan.Probe.for_profile(
        "elevator-gbt24476"), timeout=0.5))
    assert len(scan.with_data(by_profile)[0].registers) == 8


def test_tcp_scan_of_a_dead_endpoint_says_what_to_check() -> None:
    with pytest.raises(ProvisionError, match="nothing accepts Modbus TCP") as err:
        asyncio.run(scan.scan_tcp("127.0.0.1", free_port(), [1], scan.Probe()))
    assert "502" in err.value.hint


def _settings(fd: int) -> tuple[int, int, int]:
    attrs = termios.tcgetattr(fd)
    mask = termios.PARENB | termios.PARODD | termios.CSIZE | termios.CSTOPB
    return attrs[4], attrs[5], attrs[2] & mask


@pytest.fixture
def rtu_line() -> Iterator[str]:
    """A simulator at 19200 8N1 on a pty pair whose bytes turn to garbage unless both ends
    use the same serial settings, as on a real RS-485 line."""
    holder: dict[str, PtyLink] = {}

    def baud_guard(_direction: str, data: bytes) -> bytes:
        fds = holder["link"]._fds
        if _settings(fds[1]) != _settings(fds[3]):
            return bytes(b ^ 0x5A for b in data)
        return data

    link = holder["link"] = PtyLink(tamper=baud_guard).open()
    loop = asyncio.new_event_loop()
    ready = threading.Event()

    async def serve() -> None:
        started = asyncio.Event()
        task = asyncio.create_task(serve_rtu(make_bank([2, 5], static=True), link.a_path,
                                             19200, started))
        await started.wait()
        ready.set()
        with contextlib.suppress(asyncio.CancelledError):
            await task

    thread = threading.Thread(target=lambda: loop.run_until_complete(serve()), daemon=True)
    thread.start()
    assert ready.wait(10)
    try:
        yield link.b_path
    finally:
        for task in asyncio.all_tasks(loop):
            loop.call_soon_threadsafe(task.cancel)
        thread.join(5)
        with contextlib.suppress(Exception):
            loop.close()
        link.close()


def test_rtu_scan_detects_baud_and_units(rtu_line: str) -> None:
    tried: list[str] = []
    found = asyncio.run(scan.scan_serial(rtu_line, range(1, 7), scan.Probe(), timeout=0.2,
                                         progress=tried.append))
    assert found is not None
    setting, units = found
    assert str(setting) == "19200 8N1"
    assert [u.unit for u in scan.with_data(units)] == [2, 5]
    assert [t for t in tried if t.startswith("trying")] == [
        "trying 9600 8N1", "trying 9600 8E1", "trying 9600 8O1", "trying 19200 8N1"]


def test_rtu_scan_with_no_answer_at_any_setting(rtu_line: str) -> None:
    only_wrong = [scan.SerialSetting(9600, "N"), scan.SerialSetting(38400, "E")]
    assert asyncio.run(scan.scan_serial(rtu_line, [2], scan.Probe(), settings=only_wrong,
                                        timeout=0.2)) is None


def test_recognise_hj212_parking_and_noise() -> None:
    heard = scan.recognise(b"\x00garbage" + HJ212_FRAME + HJ212_FRAME)
    assert (heard.protocol, heard.frames) == ("hj212", 2)
    assert "010000A8900016F000169DC0" in heard.detail
    frame = parking.encode_frame(_report())
    heard = scan.recognise(b"\xff" + frame + frame[:5])
    assert (heard.protocol, heard.frames) == ("parking", 1)
    assert "4242" in heard.detail
    assert scan.recognise(b"##01garbage").frames == 0
    assert scan.recognise(b"\x13\x37" * 20).protocol == "unknown"
    assert hj212.parse(HJ212_FRAME.strip()).mn == "010000A8900016F000169DC0"


def _report() -> parking.SensorReport:
    return parking.SensorReport(sensor_id=4242, msg_type=parking.MessageType.OCCUPANCY_CHANGE,
                                occupied=True, mag=(312, -145, 688), baseline=(205, -160, 402))


def test_listen_hears_hj212_at_the_right_setting() -> None:
    link = PtyLink().open()
    try:
        stop = threading.Event()

        def talk() -> None:
            while not stop.is_set():
                link.inject("a>b", HJ212_FRAME)
                stop.wait(0.1)

        threading.Thread(target=talk, daemon=True).start()
        got = scan.listen_all(link.b_path, 0.5, settings=[scan.SerialSetting(9600, "N")])
        stop.set()
        assert got is not None
        assert got[1].protocol == "hj212" and got[1].frames >= 2
    finally:
        link.close()


def test_rtu_frames() -> None:
    assert rtu_probe.request(1, 3, 0, 1).hex() == "010300000001840a"
    answer = bytes([1, 3, 2, 0x12, 0x34])
    frame = answer + rtu_probe.crc16_modbus(answer).to_bytes(2, "little")
    assert rtu_probe.parse(1, 3, 1, frame) == [0x1234]
    assert rtu_probe.parse(2, 3, 1, frame) is None  # another unit's answer
    assert rtu_probe.parse(1, 3, 1, frame[:-1] + b"\x00") is None  # bad CRC
    exc = bytes([1, 0x83, 2])
    assert rtu_probe.parse(1, 3, 1, exc + rtu_probe.crc16_modbus(exc).to_bytes(2, "little")) == 2


def test_preview_and_scan_commands_against_the_simulator(tcp_sim: int) -> None:
    from devices.sim.elevator import idle_values

    def tool(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(citygate("provision", *args), capture_output=True, text=True,
                              timeout=60, check=False, env={**os.environ, "COLUMNS": "160"})

    out = tool("preview", "--host", "127.0.0.1", "--port", str(tcp_sim), "--unit", "3",
               "--address", "8", "--count", "2")
    assert out.returncode == 0, out.stderr
    u32 = next(x for x in out.stdout.splitlines() if " u32 " in x)
    cells = [c.strip() for c in u32.split("│") if c.strip()]
    assert cells[:3] == ["8", "u32", str(idle_values(3)["trip_count"])]  # ABCD column
    scanned = tool("scan", "--host", "127.0.0.1", "--port", str(tcp_sim), "--units", "1-4")
    assert scanned.returncode == 0 and "0001" in scanned.stdout
    dead = tool("preview", "--host", "127.0.0.1", "--port", str(free_port()), "--unit", "1",
                "--address", "0")
    assert dead.returncode == 2 and "cannot open" in dead.stdout and "→" in dead.stdout
