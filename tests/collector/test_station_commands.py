"""HJ 212 station operations through the collector's REST API: the operation table's checks
at issue (same function as the gateway's), the wire command, and the station's answer."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import sqlalchemy as sa

from collector import schema
from collector.features import open_store
from devices.commands import parse_command
from tests.collector.test_device_commands import T0, Rig

HOUR = 3_600_000


@pytest.fixture
def rig(tmp_path: Path) -> Iterator[Rig]:
    store = open_store(f"sqlite:///{tmp_path / 'hub.db'}")
    rig = Rig(store)
    with store.engine.begin() as conn:
        conn.execute(sa.insert(schema.devices).values(
            device_id="dust-1", gateway_id="gw-1", kind="dust_monitor", profile="dust-hj212"))
    yield rig
    store.close()


def test_a_history_request_is_checked_sent_canonical_and_shows_the_station_answer(
        rig: Rig) -> None:
    status, out = rig.post("ops", "dust-1", op="request_history", ttl_s=120,
                           args={"cn": 2051, "begin": "2025-11-17T16:00:00Z",
                                 "end": T0 - 3 * 86_400_000})
    assert status == 202, out
    assert out["status"] == "sent" and out["op"] == "request_history"
    begin = 1_763_395_200_000
    assert out["args"] == {"cn": "2051", "begin": begin, "end": T0 - 3 * 86_400_000}
    cmd = parse_command(rig.channel.sent[-1][2])
    assert (cmd.op, cmd.args) == ("request_history", out["args"])
    rig.reply(str(out["id"]), {"cv": 1, "status": "done", "at": T0,
                               "value": {"frames": 12, "exe_rtn": 1, "cn": "2051"}})
    _, shown = rig.get("ops", f"/api/v1/commands/{out['id']}")
    assert shown["status"] == "done"  # type: ignore[index]
    assert shown["value_read_back"] == {"frames": 12, "exe_rtn": 1, "cn": "2051"}  # type: ignore[index]
    assert shown["audit"][0]["detail"]["args"] == out["args"]  # type: ignore[index]
    _, listed = rig.get("ops", "/api/v1/devices/dust-1/commands")
    assert [(c["op"], c["args"]) for c in listed] == [  # type: ignore[attr-defined]
        ("request_history", out["args"])]


@pytest.mark.parametrize(("body", "reason", "says"), [
    ({"op": "request_history", "args": {"cn": "2051", "begin": T0, "end": T0 + 8 * 24 * HOUR}},
     "bad_args", "at most 7 days"),
    ({"op": "request_history", "args": {"cn": "9999", "begin": T0, "end": T0}},
     "bad_args", "cn must be one of"),
    ({"op": "request_history", "args": {"cn": "2051", "begin": "soon", "end": T0}},
     "bad_args", "neither epoch milliseconds"),
    ({"op": "read_params", "args": {"params": ["password"]}}, "bad_args", "params must"),
    ({"op": "set_time", "point": "pm10", "value": 1}, "bad_args", "takes args"),
    ({"op": "reboot", "args": {}}, "unsupported_operation", "is not one of"),
    ({"op": "write", "point": "pm10", "value": 1}, "unknown_point", ""),
])
def test_hostile_or_misplaced_operations_are_refused_with_a_reason(
        rig: Rig, body: dict[str, object], reason: str, says: str) -> None:
    status, out = rig.post("ops", "dust-1", **body)
    assert status == 422, out
    assert out["detail"]["reason"] == reason  # type: ignore[index]
    assert says in out["detail"]["message"]  # type: ignore[index]
    assert not rig.channel.sent
    _, stats = rig.get("ops", "/api/v1/commands/stats")
    assert stats["counters"]["refused"] == 1  # type: ignore[index]


def test_station_operations_do_not_apply_to_lifts_and_crews_stay_in_scope(rig: Rig) -> None:
    status, out = rig.post("ops", "lift-a1", op="set_time", args={})
    assert status == 422 and out["detail"]["reason"] == "unsupported_operation"  # type: ignore[index]
    assert "does not apply to a elevator" in out["detail"]["message"]  # type: ignore[index]
    status, out = rig.post("a", "dust-1", op="read_params", args={})
    assert status == 403, out  # the dust site is not lift company A's
    status, out = rig.post("ops", "dust-1", op="read_params")  # args default to {}
    assert status == 202 and out["args"] == {"params": ["rtd_interval", "time"]}
    status, out = rig.post("ops", "lift-a1", op="write", args={"point": "home_floor",
                                                              "value": 4})
    assert status == 202 and out["point"] == "home_floor" and out["value_written"] == 4
