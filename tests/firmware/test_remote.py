"""Node firmware: commands from the CoAP reply (firmware/remote.py) against the shared vectors
of tests/devices/test_parking_commands.py and the detector they reconfigure."""

from __future__ import annotations

import sys
from pathlib import Path

from devices import parking
from tests.devices.test_parking_commands import (
    ACK,
    ACK_SETTINGS,
    CONFIGURE_REPLY,
    RECALIBRATE_REPLY,
)

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "firmware"))

import codec
import detector
import remote

SAMPLE = (250, -120, 700, 180)  # x, y, z mG, 0.1 degC


def node() -> remote.Remote:
    return remote.Remote(detector.Detector(), 1800)


def reply(command: parking.NodeCommand) -> bytes:
    return parking.config_response(1800, command)


def test_firmware_tables_match_the_gateway() -> None:
    assert {code: (low, high) for code, low, high in parking.SETTINGS.values()} == \
        codec.SETTING_BOUNDS
    assert (codec.OP_CONFIGURE, codec.OP_RECALIBRATE) == (parking.OP_CONFIGURE,
                                                          parking.OP_RECALIBRATE)
    assert codec.ACK_MARK == parking.ACK_MARK and codec.MAX_SETTINGS == parking.MAX_SETTINGS
    names = {"ok": codec.RESULT_OK, "bad_setting": codec.RESULT_BAD_SETTING,
             "inconsistent": codec.RESULT_INCONSISTENT,
             "unsupported_operation": codec.RESULT_UNSUPPORTED}
    assert {code: name for name, code in names.items()} == parking.ACK_RESULTS


def test_shared_vectors() -> None:
    assert codec.decode_command(CONFIGURE_REPLY) == (1, 0x1A2B3C4D, [(1, 900), (2, 80)])
    assert codec.decode_command(RECALIBRATE_REPLY) == (2, 7, [])
    assert codec.decode_command(parking.config_response(1800)) is None
    assert codec.decode_config(CONFIGURE_REPLY) == 1800
    assert codec.encode_ack(0x1A2B3C4D, 0, list(ACK_SETTINGS)) == ACK
    for bad in (CONFIGURE_REPLY[:-1], CONFIGURE_REPLY + b"\x00", b"\x02" + CONFIGURE_REPLY[1:],
                CONFIGURE_REPLY[:6] + b"\x00\x00\x00\x00" + CONFIGURE_REPLY[10:]):
        assert codec.decode_command(bad) is None  # ignored, never half applied


def test_configure_applies_the_settings_and_acks_them() -> None:
    r = node()
    assert r.handle(CONFIGURE_REPLY, SAMPLE)
    assert r.heartbeat_s == 900 and r.det.enter_mg == 80 and r.heartbeat_fixed
    ack = parking.decode_ack(r.ack)
    assert ack == parking.CommandAck(0x1A2B3C4D, 0, ACK_SETTINGS)
    r.bus_heartbeat(1800)  # the bus default in later replies no longer applies
    assert r.heartbeat_s == 900


def test_a_repeated_tag_is_acked_again_but_not_applied_twice() -> None:
    r = node()
    for value in range(5):
        r.det.update(SAMPLE[0], SAMPLE[1], SAMPLE[2] + value, SAMPLE[3])
    wire = reply(parking.NodeCommand(parking.OP_RECALIBRATE, 42))
    assert r.handle(wire, SAMPLE)
    first = r.det.baseline()
    assert first == SAMPLE[:3]
    r.ack = b""  # delivered
    assert not r.handle(wire, (0, 0, 0, 180))  # the same command again (a re-delivery)
    assert r.det.baseline() == first
    assert parking.decode_ack(r.ack).tag == 42


def test_recalibrate_frees_a_bay_stuck_occupied() -> None:
    det = detector.Detector()
    det.calibrate(0, 0, 0, 200)
    plate = (300, 0, 300)  # a steel plate laid over the sensor: looks like a car for ever
    for _ in range(5):
        det.update(*plate, 200)
    assert det.occupied
    r = remote.Remote(det, 1800)
    r.handle(reply(parking.NodeCommand(parking.OP_RECALIBRATE, 9)), (*plate, 200))
    assert not det.occupied and det.baseline() == plate
    for _ in range(10):
        assert det.update(*plate, 200) == detector.EVENT_NONE
    assert parking.decode_ack(r.ack).result == 0


def test_refused_settings_change_nothing_and_say_why() -> None:
    r = node()
    before = r.settings()
    r.handle(reply(parking.NodeCommand(1, 5, ((3, 70),))), SAMPLE)  # leave above enter
    assert parking.decode_ack(r.ack).result == codec.RESULT_INCONSISTENT
    r.handle(reply(parking.NodeCommand(1, 6, ((9, 1),))), SAMPLE)  # a setting it lacks
    assert parking.decode_ack(r.ack).result == codec.RESULT_BAD_SETTING
    r.handle(reply(parking.NodeCommand(1, 7, ((1, 10),))), SAMPLE)  # below its bounds
    assert parking.decode_ack(r.ack).result == codec.RESULT_BAD_SETTING
    assert r.settings() == before and not r.heartbeat_fixed


def test_settings_survive_a_restart_through_the_snapshot() -> None:
    r = node()
    r.handle(reply(parking.NodeCommand(1, 77, ((4, 5), (6, 20)))), SAMPLE)
    again = node()
    assert again.restore(r.snapshot())
    assert again.settings() == r.settings() and again.last_tag == 77
    assert again.det.enter_samples == 5 and again.det.settle_mg == 20
    again.handle(reply(parking.NodeCommand(1, 77, ((4, 9),))), SAMPLE)
    assert again.det.enter_samples == 5  # a repeat after the restart is not applied
    assert not node().restore(b"CGR1" + bytes(10))
    assert not node().restore(r.snapshot()[:-1])
