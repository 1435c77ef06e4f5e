"""Parking sources: concentrator reader on a real pty, CoAP endpoint on real UDP."""

from __future__ import annotations

import asyncio
import importlib.util
import logging
import shutil
import socket
import struct
from collections.abc import AsyncIterator, Callable, Sequence
from pathlib import Path
from typing import Any

import aiocoap
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from devices.model import Event, Reading
from devices.parking import (
    MessageType,
    ParkingFrameError,
    ResetCause,
    SensorReport,
    decode_config,
    encode_body,
    encode_cbor,
    encode_frame,
)
from devices.sim.ptylink import PtyLink
from edge.config import PARKING_DEADBANDS, CoapBus, ParkingSerialBus
from edge.parking_source import (
    CoapSource,
    LineTiming,
    ParkingSerialSource,
    SensorRegistry,
    SensorTrack,
    report_values,
)

pytestmark = pytest.mark.anyio
FIRMWARE = Path(__file__).resolve().parents[2] / "firmware"


@pytest.fixture
def anyio_backend() -> str:
    """Async tests run on asyncio (the gateway's loop)."""
    return "asyncio"


def node_coap() -> Any:
    """The node firmware's CoAP encoder (MicroPython module, plain Python)."""
    spec = importlib.util.spec_from_file_location("node_coap", FIRMWARE / "coap.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def report(sid: int = 1001, counter: int = 1, occupied: bool = True,
           msg_type: MessageType = MessageType.OCCUPANCY_CHANGE, rssi: int | None = -90,
           battery: int | None = 3550, mag: tuple[int, int, int] = (350, -200, 710),
           temperature: float = 21.5) -> SensorReport:
    """A report as a node would send it."""
    return SensorReport(sensor_id=sid, msg_type=msg_type, occupied=occupied,
                        mag=mag, baseline=(210, -150, 410), battery_mv=battery,
                        rssi_dbm=rssi, temperature_c=temperature, send_counter=counter,
                        park_counter=7, reset_cause=ResetCause.DEEP_SLEEP_WAKE)


class Collected:
    """A sink that keeps what a source emits and lets a test await a count."""

    def __init__(self) -> None:
        self.readings: list[Reading] = []
        self.changed = asyncio.Event()

    def __call__(self, items: Sequence[Reading | Event]) -> None:
        self.readings.extend(i for i in items if isinstance(i, Reading))
        self.changed.set()

    async def wait_for(self, n: int, timeout: float = 5.0) -> list[Reading]:
        """Wait until at least n readings arrived."""
        async with asyncio.timeout(timeout):
            while len(self.readings) < n:
                self.changed.clear()
                await self.changed.wait()
        return self.readings


async def until(condition: Callable[[], bool], timeout: float) -> None:
    """Poll a source attribute until it holds, or fail after `timeout` seconds."""
    async with asyncio.timeout(timeout):
        while not condition():  # noqa: ASYNC110 - a plain attribute has no event to await
            await asyncio.sleep(0.02)


# --- pure policy --------------------------------------------------------------------------------

@pytest.mark.parametrize(("counters", "fresh", "lost"), [
    ([1, 2, 3], [True, True, True], 0),
    ([1, 1, 2, 2], [True, False, True, False], 0),
    ([1, 4], [True, True], 2),
    ([65535, 0, 1], [True, True, True], 0),  # wrap
    ([5, 3, 5], [True, True, False], 0),  # a late report is fresh, its repeat is not
])
def test_send_counter_dedup(counters: list[int], fresh: list[bool], lost: int) -> None:
    track = SensorTrack()
    assert [track.admit(report(counter=c)) for c in counters] == fresh
    assert track.counters["lost"] == lost
    assert track.counters["duplicates"] == fresh.count(False)


def test_repeat_with_other_rssi_is_a_duplicate_but_new_content_is_not() -> None:
    track = SensorTrack()
    assert track.admit(report(counter=9, rssi=-90))
    assert not track.admit(report(counter=9, rssi=-60))  # concentrator rewrote the RSSI
    assert track.admit(report(counter=1, msg_type=MessageType.STARTUP))  # power loss: restart
    assert track.admit(report(counter=2, occupied=False))
    assert track.counters["restarts"] == 1


def test_reports_by_exception_send_what_moved_and_everything_hourly() -> None:
    reg = SensorRegistry("pk-", 3600, PARKING_DEADBANDS)
    hb = MessageType.HEARTBEAT

    def sent(mono_s: float, **kw: Any) -> dict[str, Any]:
        r = reg.reading(report(**kw), 1_700_000_000_000 + int(mono_s * 1000), int(mono_s * 1000))
        assert r is not None and r.device == f"pk-{kw.get('sid', 1001)}"
        return dict(r.values)

    every = set(report_values(report()))
    assert set(sent(0, counter=1, msg_type=hb)) == every  # first report since start: all
    # jitter inside the deadbands: only the counter moved
    assert sent(600, counter=2, msg_type=hb, mag=(354, -197, 706), rssi=-92,
                temperature=21.8, battery=3540) == {"send_counter": 2}
    # a car: occupancy, report type and the field's z axis
    assert sent(700, counter=3, occupied=False, mag=(352, -199, 410)) == {
        "send_counter": 3, "occupied": False, "report_type": 1, "mag_z": 410}
    # drift is measured from the value last sent, so it is sent once it adds up
    assert sent(1300, counter=4, msg_type=hb, occupied=False, mag=(361, -199, 410),
                temperature=22.1) == {"send_counter": 4, "report_type": 2, "mag_x": 361,
                                      "temperature": 22.1}
    full = sent(3600, counter=5, msg_type=hb, occupied=False, mag=(361, -199, 410))
    assert set(full) == every and full["occupied"] is False  # the hourly full report
    assert sent(3700, sid=1002, counter=1, msg_type=hb).keys() == every  # another sensor
    # a node that restarted sends every value again
    assert set(sent(3800, counter=1, msg_type=MessageType.STARTUP, occupied=False,
                    mag=(361, -199, 410))) == every
    plain = SensorRegistry("pk-")  # full_every 0: every value of every report
    for n in (1, 2):
        r = plain.reading(report(counter=n, msg_type=hb), 0, n)
        assert r is not None and set(r.values) == every


def test_report_values_leave_out_unavailable_fields() -> None:
    values = report_values(report(rssi=None, battery=None))
    assert "rssi" not in values and "battery_mv" not in values
    assert values["occupied"] is True and values["mag_z"] == 710
    assert values["report_type"] == 1 and values["temperature"] == 21.5


@pytest.mark.parametrize(("baud", "idle"), [(9600, 0.05), (1200, 10 * 20 / 1200), (300, 0.6667)])
def test_idle_gap_scales_with_baud_rate(baud: int, idle: float) -> None:
    assert LineTiming.for_line(baud).idle_s == pytest.approx(idle, abs=1e-3)
    assert LineTiming.for_line(baud).backoff(10) == 30.0


# --- serial reader on a pty ---------------------------------------------------------------------

@pytest.fixture
async def line(tmp_path: Path) -> AsyncIterator[tuple[PtyLink, Path]]:
    """A pty pair with the gateway end linked at a stable path."""
    link = PtyLink().open()
    path = tmp_path / "ttyPARK"
    link.link(path, end="b")
    try:
        yield link, path
    finally:
        link.close()


async def start_serial(path: Path) -> tuple[ParkingSerialSource, Collected, asyncio.Task[None]]:
    """A running serial source on `path`."""
    sink = Collected()
    cfg = ParkingSerialBus(name="conc1", type="parking-serial", port=str(path))
    source = ParkingSerialSource(cfg, [], sink)
    task = asyncio.create_task(source.run())
    for _ in range(100):
        if source.line_open:
            break
        await asyncio.sleep(0.02)
    return source, sink, task


async def stop(task: asyncio.Task[None]) -> None:
    """Cancel a source task and wait for it."""
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task


async def test_reader_survives_garbage_split_frames_and_repeats(
        line: tuple[PtyLink, Path]) -> None:
    link, path = line
    source, sink, task = await start_serial(path)
    try:
        f1, f2 = encode_frame(report(1001, 1)), encode_frame(report(1002, 1, occupied=False))
        link.inject("a>b", b"\x00\xffnoise" + f1[:10])
        await asyncio.sleep(0.01)
        link.inject("a>b", f1[10:] + f1 + b"\xa5\x5a\x40")  # repeat + a false header
        link.inject("a>b", f2)  # swallowed by the false header until the line goes idle
        readings = await sink.wait_for(2)
        assert [r.device for r in readings] == ["pk-1001", "pk-1002"]
        assert readings[0].values["occupied"] is True
        assert readings[1].values["occupied"] is False
        assert source.counters["duplicates"] == 1
        assert source.counters["err_bad_sync"] >= 1
        assert source.counters["err_truncated"] == 1
    finally:
        await stop(task)


async def test_reader_reopens_when_the_port_vanishes_and_returns(
        line: tuple[PtyLink, Path]) -> None:
    link, path = line
    source, sink, task = await start_serial(path)
    try:
        link.inject("a>b", encode_frame(report(1001, 1)))
        await sink.wait_for(1)
        link.close()
        path.unlink()  # the USB adapter is unplugged
        await until(lambda: not source.line_open, 5)
        await until(lambda: source.counters["open_failures"] >= 1, 5)  # reopen tried, failed
        link2 = PtyLink().open()
        link2.link(path, end="b")
        try:
            await until(lambda: source.line_open, 10)
            link2.inject("a>b", encode_frame(report(1001, 2, occupied=False)))
            readings = await sink.wait_for(2)
            assert readings[1].values["occupied"] is False
            assert source.counters["opens"] == 2 and source.counters["line_lost"] == 1
        finally:
            link2.close()
    finally:
        await stop(task)


async def test_reader_waits_for_a_port_that_is_not_there_yet(tmp_path: Path) -> None:
    path = tmp_path / "ttyLATE"
    source, sink, task = await start_serial(path)
    try:
        assert not source.line_open
        with PtyLink() as link:
            link.link(path, end="b")
            await until(lambda: source.line_open, 10)
            link.inject("a>b", encode_frame(report(7, 1)))
            assert (await sink.wait_for(1))[0].device == "pk-7"
    finally:
        await stop(task)


# --- CoAP endpoint on real UDP ------------------------------------------------------------------

def free_udp_port() -> int:
    """A UDP port nobody is bound to right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
async def endpoint() -> AsyncIterator[tuple[CoapSource, Collected, int]]:
    """A CoAP source on loopback with a 10-minute heartbeat."""
    port = free_udp_port()
    sink = Collected()
    cfg = CoapBus(name="nb", type="coap", host="127.0.0.1", port=port, heartbeat=600)
    source = CoapSource(cfg, [], sink)
    task = asyncio.create_task(source.run())
    for _ in range(100):
        if source.bound:
            break
        await asyncio.sleep(0.02)
    try:
        yield source, sink, port
    finally:
        await stop(task)


async def post(port: int, payload: bytes, fmt: int | None) -> aiocoap.Message:
    """A confirmable POST /p/r from an aiocoap client."""
    ctx = await aiocoap.Context.create_client_context(transports=["udp6"])
    try:
        msg = aiocoap.Message(code=aiocoap.POST, uri=f"coap://127.0.0.1:{port}/p/r",
                              payload=payload)
        if fmt is not None:
            msg.opt.content_format = fmt
        return await ctx.request(msg).response
    finally:
        await ctx.shutdown()


async def test_coap_body_and_cbor_reports_get_the_config(
        endpoint: tuple[CoapSource, Collected, int]) -> None:
    _, sink, port = endpoint
    resp = await post(port, encode_body(report(2001, 1)), 42)
    assert resp.code == aiocoap.CHANGED
    assert decode_config(resp.payload) == 600
    resp = await post(port, encode_cbor(report(2002, 5, occupied=False)), 60)
    assert resp.code == aiocoap.CHANGED
    readings = await sink.wait_for(2)
    assert [(r.device, r.values["occupied"]) for r in readings] == [("pk-2001", True),
                                                                    ("pk-2002", False)]


async def test_coap_rejects_bad_payloads_with_a_reason(
        endpoint: tuple[CoapSource, Collected, int]) -> None:
    source, sink, port = endpoint
    resp = await post(port, b"\x01\x02", 42)
    assert resp.code == aiocoap.BAD_REQUEST and resp.payload.startswith(b"truncated")
    resp = await post(port, b"\xff\xff", 60)
    assert resp.code == aiocoap.BAD_REQUEST and resp.payload.startswith(b"bad_cbor")
    resp = await post(port, encode_body(report()), 50)
    assert resp.code == aiocoap.UNSUPPORTED_CONTENT_FORMAT
    assert source.counters["rejected"] == 3 and source.counters["rejected_bad_cbor"] == 1
    assert sink.readings == []
    resp = await post(port, encode_body(report()), 42)  # the endpoint still works
    assert resp.code == aiocoap.CHANGED


async def test_coap_retry_with_a_new_message_id_is_dropped_by_send_counter(
        endpoint: tuple[CoapSource, Collected, int]) -> None:
    source, sink, port = endpoint
    for _ in range(2):  # the node retries an unanswered report at its next cycle
        assert (await post(port, encode_body(report(2003, 40)), 42)).code == aiocoap.CHANGED
    await post(port, encode_body(report(2003, 41, occupied=False)), 42)
    readings = await sink.wait_for(2)
    assert len(readings) == 2 and source.counters["duplicates"] == 1


async def test_aiocoap_deduplicates_a_retransmitted_datagram(
        endpoint: tuple[CoapSource, Collected, int]) -> None:
    source, sink, port = endpoint
    coap = node_coap()
    datagram = coap.encode_post(0x1234, b"\x01\x02\x03\x04", ("p", "r"), 42,
                                     encode_body(report(2004, 1)))
    loop = asyncio.get_running_loop()
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.setblocking(False)
    try:
        answers = []
        for _ in range(2):  # the ACK was lost: the node sends the very same datagram again
            await loop.sock_sendto(sock, datagram, ("127.0.0.1", port))
            async with asyncio.timeout(5):
                answers.append(await loop.sock_recv(sock, 256))
    finally:
        sock.close()
    assert answers[0] == answers[1]
    parsed = coap.parse(answers[0])
    assert parsed is not None
    mtype, code, mid, _token, payload = parsed
    assert (mtype, code, mid) == (coap.TYPE_ACK, coap.CODE_CHANGED, 0x1234)
    assert decode_config(payload) == 600
    assert source.counters["requests"] == 1  # the repeat never reached the handler
    assert len(await sink.wait_for(1)) == 1


def coap_client() -> str | None:
    """libcoap's command-line client, under any of its Debian names."""
    names = ("coap-client", "coap-client-notls", "coap-client-openssl", "coap-client-gnutls")
    return next((p for n in names if (p := shutil.which(n))), None)


@pytest.mark.skipif(coap_client() is None, reason="libcoap3-bin (coap-client) not installed")
async def test_libcoap_client_interoperates(endpoint: tuple[CoapSource, Collected, int],
                                            tmp_path: Path) -> None:
    _, sink, port = endpoint
    body = tmp_path / "payload.bin"
    body.write_bytes(encode_body(report(2005, 3)))
    out = tmp_path / "response.bin"
    proc = await asyncio.create_subprocess_exec(
        str(coap_client()), "-m", "post", "-t", "42", "-f", str(body), "-o", str(out),
        "-B", "5", f"coap://127.0.0.1:{port}/p/r",
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT)
    stdout, _ = await asyncio.wait_for(proc.communicate(), 15)
    assert proc.returncode == 0, stdout
    assert decode_config(out.read_bytes()) == 600
    assert (await sink.wait_for(1))[0].device == "pk-2005"
    assert struct.unpack(">BI", out.read_bytes()) == (1, 600)


# --- datagrams that are not CoAP ------------------------------------------------------------------

def test_noise_log_logs_a_burst_once_then_a_summary_per_interval() -> None:
    from edge.parking_source import NoiseLog

    noise = NoiseLog(interval=60)
    assert [noise.hit(t) for t in (0, 1, 2, 30)] == [True, False, False, False]
    assert (noise.due(59), noise.due(60), noise.due(61)) == (0, 3, 0)
    assert noise.hit(70) is False and noise.due(119) == 0 and noise.due(120) == 1
    assert noise.hit(500) is True  # quiet for a while: a new burst is logged again
    assert noise.total == 6


def not_coap(i: int) -> bytes:
    """A datagram aiocoap cannot parse: version 2, or a Uri-Path that is not UTF-8 (the
    latter escapes aiocoap's own handling as a UnicodeDecodeError)."""
    if i % 28 == 0:
        return bytes([0x40, 0x02]) + struct.pack("!H", i) + bytes([0xB2, 0xFF, 0xFE])
    return bytes([0x80, 0x01]) + struct.pack("!H", i) + b"junk"


async def test_datagrams_that_are_not_coap_are_counted_and_logged_once(
        endpoint: tuple[CoapSource, Collected, int], caplog: pytest.LogCaptureFixture) -> None:
    source, _, port = endpoint
    loop = asyncio.get_running_loop()
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.setblocking(False)
    caplog.clear()
    try:
        with caplog.at_level(logging.INFO):
            for i in range(311):
                await loop.sock_sendto(sock, not_coap(i), ("127.0.0.1", port))
                await asyncio.sleep(0.001)  # let the server read: a full UDP buffer drops
            await until(lambda: source.counters["unparsable_datagrams"] == 311, 10)
            resp = await post(port, encode_body(report(2005, 1)), 42)  # still serving
    finally:
        sock.close()
    assert resp.code == aiocoap.CHANGED
    lines = [f"{r.levelname} {r.name}: {r.getMessage()}" for r in caplog.records]
    assert len(lines) == 1, lines
    assert lines[0].startswith("WARNING edge.parking_source: bus nb: ignoring datagrams that"
                               " are not CoAP (first: ")
    assert sum(len(line) for line in lines) < 400
    assert source.counters["ignored_messages"] == 0


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=80), st.sampled_from([42, 60]))
def test_any_report_the_endpoint_accepts_is_a_reading_the_collector_accepts(
        payload: bytes, fmt: int) -> None:
    from devices import contract
    from edge.parking_source import decode_post

    try:
        report = decode_post(fmt, payload)
    except (ParkingFrameError, ValueError):
        return
    reading = Reading(f"pk-{report.sensor_id}", 1_700_000_000_000, report_values(report))
    assert contract.reading_problem(reading) is None
