"""Parking node commands at the collector, through the REST API: configure / recalibrate are
checked by the same function as at the gateway, recorded, sent and followed like writes."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from collector import schema
from collector.features import open_store
from devices.commands import parse_command
from tests.collector.test_device_commands import T0, Rig


@pytest.fixture
def rig(tmp_path: Path) -> Iterator[Rig]:
    store = open_store(f"sqlite:///{tmp_path / 'hub.db'}")
    rig = Rig(store)
    with store.engine.begin() as conn:  # a node as ingest records it: no profile
        conn.execute(sa.insert(schema.devices).values(device_id="pk-1001", gateway_id="gw-1",
                                                      kind="unknown", profile=""))
    yield rig
    store.close()


def test_configure_is_sent_with_its_checked_args_and_shows_the_nodes_ack(rig: Rig) -> None:
    status, out = rig.post("ops", "pk-1001", op="configure",
                           args={"heartbeat_s": 900, "enter_mg": 80}, ttl_s=3600)
    assert status == 202 and out["status"] == "sent", out
    assert out["op"] == "configure" and out["args"] == {"heartbeat_s": 900, "enter_mg": 80}
    ((gateway, name, payload),) = rig.channel.sent
    cmd = parse_command(payload)
    assert (gateway, name, cmd.op, cmd.args) == ("gw-1", "device", "configure",
                                                 {"heartbeat_s": 900, "enter_mg": 80})
    assert cmd.expires == T0 + 3_600_000
    acked = {"settings": {"heartbeat_s": 900, "enter_mg": 80, "leave_mg": 35}}
    rig.reply(cmd.id, {"cv": 1, "status": "accepted", "at": T0 + 10})
    rig.reply(cmd.id, {"cv": 1, "status": "done", "at": T0 + 60_000, "value": acked})
    _, shown = rig.get("ops", f"/api/v1/commands/{cmd.id}")
    assert isinstance(shown, dict)
    assert (shown["status"], shown["value_read_back"]) == ("done", acked)
    status, out = rig.post("ops", "pk-1001", op="recalibrate")
    assert status == 202 and parse_command(rig.channel.sent[-1][2]).args == {}


@pytest.mark.parametrize(("device", "body", "code", "reason"), [
    ("pk-1001", {"op": "configure", "args": {"heartbeat_s": 5}}, 422, "out_of_range"),
    ("pk-1001", {"op": "configure", "args": {"heartbeat_s": "1800"}}, 422, "bad_value"),
    ("pk-1001", {"op": "configure", "args": {"enter_mg": 40, "leave_mg": 45}}, 422,
     "inconsistent"),
    ("pk-1001", {"op": "configure", "args": {"firmware_url": 1}}, 422, "unknown_setting"),
    ("pk-1001", {"op": "configure"}, 422, "no_settings"),
    ("pk-1001", {"op": "recalibrate", "args": {"x": 1}}, 422, "unexpected_args"),
    ("pk-1001", {"op": "configure", "point": "home_floor", "value": 1, "args": {
        "heartbeat_s": 900}}, 422, "bad_args"),
    ("pk-1001", {"point": "home_floor", "value": 1}, 422, "unknown_profile"),
    ("lift-a1", {"op": "recalibrate"}, 422, "unsupported_operation"),
    ("lift-a1", {"point": "home_floor", "value": 1, "args": {"a": 1}}, 422, "bad_args"),
    ("pk-9", {"op": "recalibrate"}, 404, "unknown_device"),
])
def test_hostile_or_misdirected_node_commands_are_refused_with_reasons_and_counted(
        rig: Rig, device: str, body: dict[str, Any], code: int, reason: str) -> None:
    status, out = rig.post("ops", device, **body)
    assert status == code and out["detail"]["reason"] == reason, out  # type: ignore[index]
    assert rig.channel.sent == []
    _, stats = rig.get("ops", "/api/v1/commands/stats")
    assert stats["counters"]["refused"] == 1  # type: ignore[index]


def test_too_many_args_or_an_unknown_op_never_reach_the_service(rig: Rig) -> None:
    many = {f"s{i}": 1 for i in range(17)}
    assert rig.post("ops", "pk-1001", op="configure", args=many)[0] == 422
    assert rig.post("ops", "pk-1001", op="reboot")[0] == 422
    assert rig.channel.sent == []


def test_crews_command_only_nodes_of_their_unit(rig: Rig) -> None:
    status, out = rig.post("a", "pk-1001", op="recalibrate")
    assert status == 403, out
    assert rig.post("reader", "pk-1001", op="recalibrate")[0] == 403


def test_the_cli_reads_name_value_args_and_shows_what_the_node_acknowledged() -> None:
    from citygate.command_cli import _line, parse_arg
    from citygate.rest_cli import CliError

    assert parse_arg("heartbeat_s=900") == ("heartbeat_s", 900)
    assert parse_arg("enter_mg=eighty") == ("enter_mg", "eighty")  # the collector refuses it
    for bad in ("heartbeat_s", "=5"):
        with pytest.raises(CliError):
            parse_arg(bad)
    line = _line({"id": "c-1", "device": "pk-1", "op": "configure", "args": {"enter_mg": 80},
                  "status": "done", "value_read_back": {"settings": {"enter_mg": 80}},
                  "reason": "", "message": ""})
    assert line == 'c-1  pk-1  configure(enter_mg=80)  done  (answered ' \
                   '{"settings": {"enter_mg": 80}})'
