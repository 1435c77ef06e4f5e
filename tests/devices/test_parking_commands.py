"""Parking node commands: the one check of their arguments, and the bytes that carry them (the
command after the config in the CoAP reply, the ack after the next report body)."""

from __future__ import annotations

from typing import Any

import pytest

from devices.commands import OPS, PARKING_NODE, ArgsRefused, DeviceCommand, check_args
from devices.parking import (
    SETTINGS,
    CommandAck,
    MessageType,
    NodeCommand,
    ParkingFrameError,
    SensorReport,
    config_response,
    decode_cbor,
    decode_coap_body,
    decode_config,
    decode_node_command,
    encode_body,
    encode_cbor,
    encode_coap_body,
    response_command,
)
from devices.parking_commands import (
    NODE_REFUSALS,
    NodeCommandRefused,
    check_node_command,
    command_tag,
    node_command,
)

# Shared vectors (tests/firmware/test_remote.py checks the firmware against the same bytes).
CONFIGURE_REPLY = bytes.fromhex("01 00 00 07 08 01 1a 2b 3c 4d 02 01 00 00 03 84 02 00 00 00 50")
RECALIBRATE_REPLY = bytes.fromhex("01 00 00 07 08 02 00 00 00 07 00")
ACK = bytes.fromhex("ac 1a 2b 3c 4d 00 06 01 00 00 03 84 02 00 00 00 50 03 00 00 00 23"
                    " 04 00 00 00 03 05 00 00 00 03 06 00 00 00 0e")
ACK_SETTINGS = ((1, 900), (2, 80), (3, 35), (4, 3), (5, 3), (6, 14))


def report(ack: CommandAck | None = None) -> SensorReport:
    return SensorReport(sensor_id=1001, msg_type=MessageType.HEARTBEAT, occupied=False,
                        mag=(211, -151, 409), baseline=(210, -150, 410), battery_mv=3600,
                        send_counter=5, ack=ack)


def test_the_ops_are_carried_out_by_parking_nodes_with_the_same_check() -> None:
    assert OPS["configure"].kinds == OPS["recalibrate"].kinds == {PARKING_NODE}
    assert check_args("configure", PARKING_NODE, {"heartbeat_s": 900}) == {"heartbeat_s": 900}
    with pytest.raises(ArgsRefused) as refused:
        check_args("configure", PARKING_NODE, {"heartbeat_s": 5})
    assert refused.value.reason == "out_of_range"
    with pytest.raises(ArgsRefused) as refused:
        check_args("recalibrate", "dust_monitor", {})
    assert refused.value.reason == "unsupported_operation"


def test_configure_takes_known_settings_within_bounds() -> None:
    assert check_node_command("configure", {"heartbeat_s": 900, "enter_mg": 80}) == {
        "heartbeat_s": 900, "enter_mg": 80}
    every = {name: low for name, (_, low, _) in SETTINGS.items()} | {"enter_mg": 50}
    assert check_node_command("configure", every) == every
    assert check_node_command("recalibrate", {}) == {}


@pytest.mark.parametrize(("op", "args", "reason"), [
    ("configure", {}, "no_settings"),
    ("configure", {"heartbeat_s": 59}, "out_of_range"),
    ("configure", {"heartbeat_s": 86_401}, "out_of_range"),
    ("configure", {"enter_samples": -1}, "out_of_range"),
    ("configure", {"enter_mg": 2**63}, "out_of_range"),
    ("configure", {"heartbeat_s": 900.5}, "bad_value"),
    ("configure", {"heartbeat_s": "900"}, "bad_value"),
    ("configure", {"heartbeat_s": True}, "bad_value"),
    ("configure", {"heartbeat_s": None}, "bad_value"),
    ("configure", {"heartbeat_s": [900]}, "bad_value"),
    ("configure", {"wifi_password": 1}, "unknown_setting"),
    ("configure", {"x" * 10_000: 1}, "unknown_setting"),
    ("configure", {"enter_mg": 40, "leave_mg": 40}, "inconsistent"),
    ("configure", [("heartbeat_s", 900)], "bad_value"),
    ("recalibrate", {"baseline": [0, 0, 0]}, "unexpected_args"),
    ("reboot", {}, "unsupported_operation"),
    ("write", {"point": "x", "value": 1}, "unsupported_operation"),
])
def test_hostile_or_wrong_args_are_refused_with_a_stable_reason(op: str, args: Any,
                                                                reason: str) -> None:
    with pytest.raises(NodeCommandRefused) as err:
        check_node_command(op, args)
    assert err.value.reason == reason and reason in NODE_REFUSALS
    assert len(str(err.value)) < 300  # bounded, even for a huge setting name


def test_the_wire_command_is_the_checked_args_under_a_stable_tag() -> None:
    cmd = DeviceCommand("c-1", "ops:k1", "p-1001", "configure",
                        {"heartbeat_s": 900, "enter_mg": 80}, "ops", 1, 2)
    wire = node_command(cmd)
    assert wire == NodeCommand(1, command_tag("ops:k1"), ((1, 900), (2, 80)))
    assert command_tag("ops:k1") == command_tag("ops:k1") != 0
    with pytest.raises(NodeCommandRefused):
        node_command(DeviceCommand("c-2", "k2", "p-1", "configure", {"enter_mg": 1}, "o", 1, 2))


def test_command_in_the_reply_vectors() -> None:
    configure = NodeCommand(1, 0x1A2B3C4D, ((1, 900), (2, 80)))
    assert config_response(1800, configure) == CONFIGURE_REPLY
    assert config_response(1800, NodeCommand(2, 7)) == RECALIBRATE_REPLY
    assert response_command(CONFIGURE_REPLY) == configure
    assert response_command(config_response(1800)) is None
    assert decode_config(CONFIGURE_REPLY) == 1800  # an older node reads the config only
    assert len(config_response(86_400, NodeCommand(1, 1, tuple(
        (c, 1) for c in range(1, 9))))) == 51  # the largest reply


@pytest.mark.parametrize("block", [
    b"", b"\x01\x00\x00\x00", b"\x09\x00\x00\x00\x01\x00",  # short, unknown op
    b"\x01\x00\x00\x00\x00\x00",  # tag 0
    b"\x01\x00\x00\x00\x01\x02\x01\x00\x00\x00\x01",  # says two settings, carries one
    b"\x01\x00\x00\x00\x01\x09" + b"\x01\x00\x00\x00\x01" * 9,  # too many settings
])
def test_malformed_command_blocks_are_refused(block: bytes) -> None:
    with pytest.raises(ParkingFrameError):
        decode_node_command(block)


def test_ack_after_the_report_body_vectors() -> None:
    ack = CommandAck(0x1A2B3C4D, 0, ACK_SETTINGS)
    payload = encode_coap_body(report(ack))
    assert payload == encode_body(report()) + ACK
    decoded = decode_coap_body(payload)
    assert decoded == report(ack)
    assert decoded.ack is not None and decoded.ack.named_settings()["heartbeat_s"] == 900
    assert decode_coap_body(encode_body(report())).ack is None
    assert decode_cbor(encode_cbor(report(ack))) == report(ack)


@pytest.mark.parametrize("tail", [b"\x00", b"\xac\x00\x00", ACK + b"\x00", ACK[:-1],
                                  b"\xac\x00\x00\x00\x01\x00\x09" + b"\x01\x00\x00\x00\x01" * 9])
def test_malformed_acks_are_bad_fields(tail: bytes) -> None:
    with pytest.raises(ParkingFrameError) as err:
        decode_coap_body(encode_body(report()) + tail)
    assert err.value.reason == "bad_field"


@pytest.mark.parametrize("value", [[1, 0], [1, 0, [1]], [-1, 0, []], [1, 256, []],
                                   [1, 0, [1, 2**32]], "ack", [1, 0, [300, 1]]])
def test_malformed_cbor_acks_are_bad_fields(value: object) -> None:
    import cbor2

    doc = cbor2.loads(encode_cbor(report())) | {"a": value}
    with pytest.raises(ParkingFrameError) as err:
        decode_cbor(cbor2.dumps(doc))
    assert err.value.reason == "bad_field"
