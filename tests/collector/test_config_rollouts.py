"""Config rollouts at the collector: selection, per-gateway configs, staging, revert, refusals."""

from __future__ import annotations

import tomllib
from typing import Any

import orjson
import pytest

from collector.registry import repo
from collector.registry.rollouts import canary_count, merge
from collector.updates.service import Target, next_step
from devices.contract import ReplyMessage
from tests.collector.registry_fixtures import Hub, hub

__all__ = ["hub"]

BASE = """schema_version = 1

[gateway]
id = "{gw}"
site = "{site}"
data_dir = "/var/lib/citygate"

[uplink]
brokers = ["mqtts://127.0.0.1:8883"]

[[buses]]
name = "lifts"
type = "modbus-tcp"
host = "10.0.0.9"
port = 502

[[devices]]
id = "lift-{gw}"
bus = "lifts"
profile = "elevator-gbt24476"
unit = 1
"""


class Channel:
    """Records the commands it is asked to send; the broker may be down."""

    def __init__(self) -> None:
        self.sent: list[tuple[str, dict[str, Any]]] = []
        self.up = True

    def send(self, gateway: str, name: str, payload: bytes) -> bool:
        if self.up:
            self.sent.append((gateway, orjson.loads(payload)))
        return self.up

    def to(self, gateway: str) -> list[dict[str, Any]]:
        return [c for g, c in self.sent if g == gateway]


@pytest.fixture
def fleet(hub: Hub) -> tuple[Hub, Channel]:
    """Five gateways with known configs: g1-g3 at s1 (district north), g4-g5 at s2 (south)."""
    ch = Channel()
    hub.registry.rollouts.channel = ch
    admin = hub.as_("admin")
    for site, district in (("s1", "north"), ("s2", "south")):
        assert hub.client.put(f"/api/v1/sites/{site}", headers=admin,
                              json={"district": district}).status_code == 204
    for i, site in enumerate(("s1", "s1", "s1", "s2", "s2"), start=1):
        gw = f"g{i}"
        assert hub.client.post("/api/v1/gateways", headers=admin,
                               json={"site": site, "id": gw}).status_code == 201
        repo.store_config(hub.registry.engine, gw, BASE.format(gw=gw, site=site))
    return hub, ch


def start(hub: Hub, **body: Any) -> Any:
    return hub.client.post("/api/v1/config/rollouts", headers=hub.as_("technician"), json=body)


def answer(hub: Hub, gw: str, push_id: str, status: str, **detail: Any) -> None:
    hub.registry.on_reply(ReplyMessage(v=1, gateway=gw, command="config", id=push_id,
                                       ok=status in ("applied", "confirmed"),
                                       detail={"status": status, **detail}))
    hub.registry.rollouts.step()


def confirm(hub: Hub, ch: Channel, gw: str) -> None:
    push_id = ch.to(gw)[-1]["id"]
    answer(hub, gw, push_id, "applied", watching=[f"lift-{gw}"])
    answer(hub, gw, push_id, "confirmed", devices=[f"lift-{gw}"])


def state(hub: Hub, rid: str) -> dict[str, Any]:
    got: dict[str, Any] = hub.client.get(f"/api/v1/config/rollouts/{rid}",
                                         headers=hub.as_("reader")).json()
    return got


def by_gw(status: dict[str, Any]) -> dict[str, str]:
    return {g["gateway_id"]: g["status"] for g in status["gateways"]}


# --- staging decisions ----------------------------------------------------------------------

def test_next_step_waits_for_confirmed_canaries_and_halts_over_the_threshold() -> None:
    ok = ("confirmed",)
    t = [Target("a", 0, "applied"), Target("b", 1, "pending"), Target("c", 1, "pending")]
    assert next_step(t, succeeded=ok) == ([], "canary")  # applied is not enough
    t[0] = Target("a", 0, "confirmed")
    assert next_step(t, succeeded=ok) == (["b", "c"], "rolling")
    t[1] = Target("b", 1, "rolled_back")
    assert next_step(t, succeeded=ok, max_failures=1) == (["c"], "rolling")
    assert next_step(t, succeeded=ok, max_failures=0) == ([], "halted")
    assert next_step(t, succeeded=ok) == (["c"], "rolling")  # updates: the rest never halts
    assert next_step([Target("a", 0, "refused")], succeeded=ok) == ([], "halted")
    assert next_step([Target("a", 0, "applied")]) == ([], "done")  # the updates' default


def test_canary_count_and_merge() -> None:
    assert canary_count(10, None, None) == 1
    assert canary_count(10, 3, None) == 3 and canary_count(2, 5, None) == 2
    assert canary_count(10, None, 25) == 3 and canary_count(3, None, 1) == 1
    assert merge({"a": {"x": 1, "y": 2}, "l": [1]}, {"a": {"y": 3}, "l": [2]}) == {
        "a": {"x": 1, "y": 3}, "l": [2]}


# --- rollouts through the API ---------------------------------------------------------------

def test_a_group_rollout_goes_to_the_canary_first_then_the_rest(
        fleet: tuple[Hub, Channel]) -> None:
    hub, ch = fleet
    r = start(hub, group="north", patch_toml='[uplink]\nhealth_interval = "9s"\n',
              device_grace_s=30)
    assert r.status_code == 201, r.text
    rid = r.json()["rollout_id"]
    assert r.json()["stage"] == "canary"
    assert [g for g, _ in ch.sent] == ["g1"]
    cmd = ch.to("g1")[0]
    sent = tomllib.loads(cmd["toml"])
    assert sent["uplink"]["health_interval"] == "9s" and sent["gateway"]["id"] == "g1"
    assert sent["devices"][0]["id"] == "lift-g1" and cmd["device_grace_s"] == 30
    assert cmd["version"] == 2
    answer(hub, "g1", cmd["id"], "applied", watching=["lift-g1"])
    assert by_gw(state(hub, rid)) == {"g1": "applied", "g2": "pending", "g3": "pending"}
    assert [g for g, _ in ch.sent] == ["g1"]  # applied is not yet healthy
    answer(hub, "g1", cmd["id"], "confirmed", devices=["lift-g1"])
    assert sorted(g for g, _ in ch.sent) == ["g1", "g2", "g3"]
    assert state(hub, rid)["stage"] == "rolling"
    confirm(hub, ch, "g2")
    confirm(hub, ch, "g3")
    done = state(hub, rid)
    assert done["stage"] == "done" and done["summary"] == {"confirmed": 3}
    reg = repo.gateway(hub.registry.engine, "g2")
    assert 'health_interval = "9s"' in reg["config_toml"] and reg["config_version"] == 2
    assert "g4" not in by_gw(done)


def test_a_canary_whose_devices_went_silent_halts_the_rollout(
        fleet: tuple[Hub, Channel]) -> None:
    hub, ch = fleet
    rid = start(hub, site="s1", patch_toml="[gateway]\nname = \"x\"\n").json()["rollout_id"]
    cmd = ch.to("g1")[0]
    answer(hub, "g1", cmd["id"], "applied", watching=["lift-g1"])
    answer(hub, "g1", cmd["id"], "rolled_back", reason="devices_silent", devices=["lift-g1"])
    s = state(hub, rid)
    assert s["stage"] == "halted"
    assert by_gw(s) == {"g1": "rolled_back", "g2": "skipped", "g3": "skipped"}
    g1 = next(g for g in s["gateways"] if g["gateway_id"] == "g1")
    assert g1["detail"]["reason"] == "devices_silent" and g1["detail"]["devices"] == ["lift-g1"]
    assert [g for g, _ in ch.sent] == ["g1"]
    assert repo.gateway(hub.registry.engine, "g1")["config_version"] == 1  # not taken


def test_the_rest_goes_in_batches_and_halts_past_max_failures(
        fleet: tuple[Hub, Channel]) -> None:
    hub, ch = fleet
    rid = start(hub, all=True, patch_toml="[uplink]\nhealth_interval = \"7s\"\n",
                batch=2, max_failures=0).json()["rollout_id"]
    confirm(hub, ch, "g1")
    assert sorted(g for g, _ in ch.sent) == ["g1", "g2", "g3"]  # 2 in flight at a time
    answer(hub, "g2", ch.to("g2")[0]["id"], "refused", reason="bogus")
    s = state(hub, rid)
    assert s["stage"] == "halted" and by_gw(s)["g4"] == "skipped" and by_gw(s)["g5"] == "skipped"
    assert s["failed"] == 1


def test_canaries_by_percentage_and_a_broker_outage_retries(
        fleet: tuple[Hub, Channel]) -> None:
    hub, ch = fleet
    ch.up = False
    rid = start(hub, all=True, canary_percent=40,
                patch_toml="[uplink]\nhealth_interval = \"7s\"\n").json()["rollout_id"]
    s = state(hub, rid)
    assert s["canaries"] == 2 and by_gw(s)["g1"] == "pending"
    ch.up = True
    hub.registry.rollouts.step()
    assert sorted(g for g, _ in ch.sent) == ["g1", "g2"]


def test_silence_past_the_deadline_is_a_timeout(fleet: tuple[Hub, Channel],
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    from collector.registry import rollouts

    hub, _ = fleet
    rid = start(hub, gateways=["g4"], deadline_s=5,
                patch_toml="[uplink]\nhealth_interval = \"7s\"\n").json()["rollout_id"]
    later = rollouts.now_ms() + 6000
    monkeypatch.setattr(rollouts, "now_ms", lambda: later)
    hub.registry.rollouts.step()
    s = state(hub, rid)
    assert by_gw(s) == {"g4": "timeout"} and s["stage"] == "halted"


def test_a_whole_config_gets_each_gateways_own_id_and_site(fleet: tuple[Hub, Channel]) -> None:
    hub, ch = fleet
    whole = BASE.format(gw="template", site="nowhere").replace("lift-template", "lift-x")
    r = start(hub, gateways=["g4", "g5"], config_toml=whole, canaries=2)
    assert r.status_code == 201, r.text
    for gw in ("g4", "g5"):
        doc = tomllib.loads(ch.to(gw)[0]["toml"])
        assert doc["gateway"] == {"id": gw, "site": "s2", "data_dir": "/var/lib/citygate"}


def test_revert_sends_back_what_each_changed_gateway_ran(fleet: tuple[Hub, Channel]) -> None:
    hub, ch = fleet
    before = {g: repo.gateway(hub.registry.engine, g)["config_toml"] for g in ("g1", "g2", "g3")}
    rid = start(hub, group="north", patch_toml="[uplink]\nhealth_interval = \"9s\"\n",
                max_failures=5).json()["rollout_id"]
    confirm(hub, ch, "g1")
    confirm(hub, ch, "g2")
    answer(hub, "g3", ch.to("g3")[0]["id"], "rolled_back", reason="uplink_lost")
    assert state(hub, rid)["stage"] == "done"
    r = hub.client.post(f"/api/v1/config/rollouts/{rid}/revert", headers=hub.as_("technician"))
    assert r.status_code == 201, r.text
    rev = r.json()
    assert rev["kind"] == "revert" and rev["reverts"] == rid
    assert sorted(by_gw(rev)) == ["g1", "g2"]  # g3 rolled back by itself
    for gw in ("g1", "g2"):
        assert ch.to(gw)[-1]["toml"] == before[gw]
        confirm(hub, ch, gw)
    assert state(hub, rev["rollout_id"])["stage"] == "done"
    assert repo.gateway(hub.registry.engine, "g1")["config_toml"] == before["g1"]
    listed = hub.client.get("/api/v1/config/rollouts", headers=hub.as_("reader")).json()
    assert {x["rollout_id"] for x in listed["rollouts"]} == {rev["rollout_id"], rid}


@pytest.mark.parametrize(("body", "status", "counter", "words"), [
    ({"group": "atlantis", "patch_toml": "[uplink]\n"}, 404, "refused_unknown_group",
     "unknown group"),
    ({"gateways": ["g9"], "patch_toml": "[uplink]\n"}, 404, "refused_unknown_gateway",
     "unknown or revoked"),
    ({"all": True, "patch_toml": "[uplink\n"}, 422, "refused_invalid_toml", "not valid TOML"),
    ({"all": True, "config_toml": "#" * 300_000}, 413, "refused_oversize", "at most"),
    ({"all": True, "site": "s1", "patch_toml": "[uplink]\n"}, 422, "refused_request",
     "exactly one"),
    ({"all": True}, 422, "refused_request", "either config_toml"),
    ({"gateways": ["bad id!"], "patch_toml": "[uplink]\n"}, 422, "refused_request",
     "not a valid gateway id"),
    ({"all": True, "config_toml": "schema_version = 1\n"}, 422, "refused_invalid_toml",
     "[gateway]"),
])
def test_hostile_requests_are_refused_clearly_and_counted(
        fleet: tuple[Hub, Channel], body: dict[str, Any], status: int, counter: str,
        words: str) -> None:
    hub, ch = fleet
    r = start(hub, **body)
    assert r.status_code == status, r.text
    assert words in str(r.json()["detail"])
    counters = hub.client.get("/api/v1/config/rollouts", headers=hub.as_("reader")).json()
    assert counters["counters"][counter] == 1 and counters["rollouts"] == []
    assert ch.sent == []


def test_a_patch_needs_a_known_config_and_roles_are_checked(hub: Hub) -> None:
    hub.registry.rollouts.channel = Channel()
    admin = hub.as_("admin")
    hub.client.put("/api/v1/sites/s1", headers=admin, json={})
    hub.client.post("/api/v1/gateways", headers=admin, json={"site": "s1", "id": "fresh"})
    r = start(hub, gateways=["fresh"], patch_toml="[uplink]\n")
    assert r.status_code == 409 and "push a whole config" in str(r.json()["detail"])
    r = hub.client.post("/api/v1/config/rollouts", headers=hub.as_("reader"),
                        json={"all": True, "patch_toml": "[uplink]\n"})
    assert r.status_code == 403
    assert hub.client.get("/api/v1/config/rollouts/cfg-nope",
                          headers=hub.as_("reader")).status_code == 404
    assert hub.client.post("/api/v1/config/rollouts/cfg-nope/revert",
                           headers=hub.as_("technician")).status_code == 404


def test_reverting_a_running_rollout_halts_it_first(fleet: tuple[Hub, Channel]) -> None:
    hub, ch = fleet
    rid = start(hub, group="north", patch_toml="[uplink]\nhealth_interval = \"9s\"\n",
                batch=1).json()["rollout_id"]
    confirm(hub, ch, "g1")
    assert by_gw(state(hub, rid)) == {"g1": "confirmed", "g2": "sent", "g3": "pending"}
    rev = hub.client.post(f"/api/v1/config/rollouts/{rid}/revert",
                          headers=hub.as_("technician")).json()
    assert sorted(by_gw(rev)) == ["g1", "g2"]  # g2 may yet apply it: it gets the old one after
    s = state(hub, rid)
    assert s["stage"] == "halted" and by_gw(s)["g3"] == "skipped"
    hub.registry.rollouts.step()
    assert [g for g, _ in ch.sent].count("g3") == 0
