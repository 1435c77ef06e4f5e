"""End to end push: lift simulator (trapped passenger) → gateway process → Mosquitto → collector
process (alarms, incidents, escalation, notify queue) → a real webhook receiver (HMAC checked),
a real SMTP server (aiosmtpd) and a fake Aliyun SMS gateway (signature recomputed) as the
fallback when nobody acknowledges.

Scenario times in the simulator count from its first read, i.e. from when the gateway starts
polling; the lift rules are shortened (trapped after 3 s) so each case runs in seconds.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from citygate.receivers import Push, Receivers
from citygate.rig import Broker, free_port, gateway_toml, http_json, port_open, tcp_bus, wait_for
from collector.alarms import hash_token

pytestmark = pytest.mark.hil

HOOK_SECRET = "whsec-hil-" + os.urandom(8).hex()
SMS_SECRET = "sms-hil-" + os.urandom(8).hex()
CREW_TOKEN = "crew-wang-" + os.urandom(8).hex()
OPS_TOKEN = "ops-room-" + os.urandom(8).hex()
PUBLIC_URL = "https://citygate.test"
LIFT_RULES = ('trapped_after = "3s", presence_debounce = "1s", presence_release = "2s", '
              "top_floor = 18, bottom_floor = 1, rated_speed = 1.0")
KIND = "trapped_passenger"


@pytest.fixture
def receivers(tmp_path: Path) -> Iterator[Receivers]:
    """The department's webhook endpoint and mail server, on local ports."""
    with Receivers(secret=HOOK_SECRET, sms_secret=SMS_SECRET,
                   directory=tmp_path / "pushes") as rx:
        yield rx


def collector_config(rx: Receivers, supervisor_after: str = "4s") -> dict[str, Any]:
    """Trapped passengers go to the lift crew: webhook + e-mail at once; a supervisor and an
    SMS to the on-call crew when nobody acknowledges."""
    hook = {"type": "webhook", "secret": HOOK_SECRET, "timeout": "2s"}
    return {
        "public_url": PUBLIC_URL,
        "notify": {"retry_base": "1s", "retry_cap": "2s", "channels": {
            "crew-hook": {**hook, "url": rx.webhook_url("crew")},
            "crew-mail": {"type": "email", "host": "127.0.0.1", "port": rx.smtp_port,
                          "starttls": False, "from": "CityGate <citygate@city.test>",
                          "to": ["lift-crew@city.test"]},
            "supervisor-hook": {**hook, "url": rx.webhook_url("supervisor")},
            "crew-sms": {"type": "sms", "provider": "aliyun", "url": rx.sms_url("aliyun"),
                         "access_key_id": rx.sms_key_id, "access_key_secret": SMS_SECRET,
                         "sign_name": "CityGate", "template": "SMS_100001", "timeout": "2s",
                         "params": ["title", "site", "trapped_for", "link"]}}},
        "alarms": {
            "group_wait": "0s",
            "sites": {"tower-a": {"name": "Tower A", "devices": ["lift-01", "lift-02"]}},
            "units": {"lift-crew": {
                "name": "Lift maintenance",
                "members": [{"name": "Wang Wei", "phone": "13800000001",
                             "email": "wang@city.test", "token_hash": hash_token(CREW_TOKEN)}],
                "escalation": [{"after": "0s", "channels": ["crew-hook", "crew-mail"]},
                               {"after": supervisor_after,
                                "channels": ["supervisor-hook", "crew-sms"]}]}},
            "routes": [{"kinds": [KIND], "unit": "lift-crew"}],
            "ops": [{"name": "ops-room", "token_hash": hash_token(OPS_TOKEN)}]},
    }


def start_lifts(tmp_path: Path, broker: Broker, procs: Any, *scenarios: str) -> None:
    """A static two-lift simulator playing `scenarios`, and a gateway polling it every second."""
    port = free_port()
    procs.start("sim-lifts", "sim", "elevators", "--tcp", f"127.0.0.1:{port}", "--units", "1-2",
                "--static", *(a for s in scenarios for a in ("--scenario", s)))
    wait_for(lambda: port_open(port), 15, "the lift simulator")
    cfg = tmp_path / "gw-lifts.toml"
    cfg.write_text(gateway_toml("gw-lifts", tmp_path / "gw-lifts", broker.url, tcp_bus(port),
                                [("lift-01", 1), ("lift-02", 2)], device_rules=LIFT_RULES))
    procs.start("gw-lifts", "edge", "run", "--config", str(cfg))


def incidents(base: str) -> list[dict[str, Any]]:
    """Trapped-passenger incidents, oldest first (as ops sees them)."""
    got = http_json(f"{base}/api/v1/incidents", token=OPS_TOKEN)
    return sorted((i for i in got if i["kind"] == KIND), key=lambda i: i["id"])


def incident_of(base: str, device: str) -> dict[str, Any] | None:
    """The one trapped-passenger incident of a device, once it exists."""
    found = [i for i in incidents(base) if i["device"] == device]
    assert len(found) <= 1, found
    return found[0] if found else None


def pushes_for(rx: Receivers, channel: str, incident_id: int, *,
               delivered: bool | None = True) -> list[Push]:
    """Pushes about one incident on one receiver channel."""
    return [p for p in rx.pushes(channel, delivered=delivered)
            if p.key == f"incident-{incident_id}"]


def ack(base: str, incident_id: int, token: str = CREW_TOKEN) -> dict[str, Any]:
    """Acknowledge as crew member Wang Wei."""
    result: dict[str, Any] = http_json(f"{base}/api/v1/incidents/{incident_id}/ack",
                                       method="POST", body={"note": "on my way"},
                                       token=token)
    return result


def signed_in_crew_token(base: str) -> str:
    """What Wang Wei's phone gets from a one-time sign-in link the operations room made."""
    link = http_json(f"{base}/api/v1/signin-links", method="POST", token=OPS_TOKEN,
                     body={"member": "Wang Wei", "unit": "lift-crew", "ttl": "5min"})
    assert link["url"].startswith(f"{PUBLIC_URL}/signin/") and link["qr_svg"].startswith("<svg")
    code = link["url"].rsplit("/", 1)[1]
    got = http_json(f"{base}/api/v1/signin/{code}", method="POST")
    assert (got["role"], got["unit"], got["member"]) == ("crew", "lift-crew", "Wang Wei")
    return str(got["token"])


def test_trapped_passenger_pages_crew_by_webhook_and_email_then_escalates(
        tmp_path: Path, broker: Broker, procs: Any, receivers: Receivers) -> None:
    _, base = procs.collector(broker, config=collector_config(receivers))
    start_lifts(tmp_path, broker, procs, f"{KIND}@2:unit=1:for=60")

    hook = wait_for(lambda: receivers.pushes("webhook:crew", delivered=True), 45,
                    "the crew webhook push")[0]
    inc = wait_for(lambda: incident_of(base, "lift-01"), 10, "the incident")
    n = inc["id"]
    assert (inc["unit"], inc["site"], inc["state"]) == ("lift-crew", "tower-a", "open")
    assert hook.verified is True and hook.status == 200
    assert hook.key == f"incident-{n}"
    assert hook.link == f"{PUBLIC_URL}/crew#incident-{n}"
    assert hook.title == "[CRITICAL] trapped passenger — lift-01 at Tower A"
    assert "- device: lift-01 (gateway gw-lifts)" in hook.body["text"]
    assert hook.body["mention_phones"] == ["13800000001"]
    facts = {f["key"]: f["value"] for f in hook.body["facts"]}
    assert facts["site"] == "Tower A" and re.fullmatch(r"00:0\d", facts["trapped_for"])

    mail = wait_for(lambda: receivers.pushes("email"), 20, "the crew e-mail")[0]
    assert (mail.key, mail.title, mail.link) == (hook.key, hook.title, hook.link)
    assert sorted(mail.body["to"]) == ["lift-crew@city.test", "wang@city.test"]

    # Nobody acknowledged: stage 2 pages the supervisor, once.
    sup = wait_for(lambda: pushes_for(receivers, "webhook:supervisor", n), 20,
                   "the escalation to the supervisor")
    assert len(sup) == 1 and sup[0].verified is True
    assert "escalation stage 2: not acknowledged yet" in sup[0].body["text"]
    assert sup[0].link == f"{PUBLIC_URL}/crew#incident-{n}"
    assert len(pushes_for(receivers, "webhook:crew", n)) == 1
    # ... and the on-call crew gets an SMS through the provider's signed API.
    sms = wait_for(lambda: pushes_for(receivers, "sms:aliyun", n), 20, "the fallback SMS")
    assert len(sms) == 1 and sms[0].verified is True
    assert sms[0].body["to"] == ["13800000001"] and sms[0].link == hook.link
    assert sms[0].body["params"]["title"] == hook.title
    assert re.fullmatch(r"00:\d\d", sms[0].body["params"]["trapped_for"])
    assert receivers.pushes(delivered=False) == []

    acked = ack(base, n, signed_in_crew_token(base))
    assert (acked["state"], acked["acknowledged_by"]) == ("acknowledged", "Wang Wei")
    assert [i["id"] for i in incidents(base)] == [n]


@pytest.mark.slow
def test_acknowledgement_stops_the_escalation(
        tmp_path: Path, broker: Broker, procs: Any, receivers: Receivers) -> None:
    # lift-01 is trapped 2 s before lift-02, so its stage 2 would fall due no later than
    # lift-02's: once lift-02's supervisor page is in, lift-01's would have been sent too.
    _, base = procs.collector(broker, config=collector_config(receivers, supervisor_after="8s"))
    start_lifts(tmp_path, broker, procs, f"{KIND}@2:unit=1:for=60", f"{KIND}@4:unit=2:for=60")

    first = wait_for(lambda: incident_of(base, "lift-01"), 45, "lift-01's incident")
    wait_for(lambda: pushes_for(receivers, "webhook:crew", first["id"]), 10, "lift-01's page")
    acked = ack(base, first["id"])
    assert acked["state"] == "acknowledged"
    second = wait_for(lambda: incident_of(base, "lift-02"), 20, "lift-02's incident")
    wait_for(lambda: pushes_for(receivers, "webhook:supervisor", second["id"]), 30,
             "the escalation of the unacknowledged lift-02")
    wait_for(lambda: pushes_for(receivers, "sms:aliyun", second["id"]), 10,
             "the SMS about the unacknowledged lift-02")

    assert pushes_for(receivers, "webhook:supervisor", first["id"]) == []
    assert pushes_for(receivers, "sms:aliyun", first["id"]) == []
    assert len(pushes_for(receivers, "sms:aliyun", second["id"])) == 1
    assert len(pushes_for(receivers, "webhook:crew", first["id"])) == 1
    after = http_json(f"{base}/api/v1/incidents/{first['id']}", token=CREW_TOKEN)
    assert (after["state"], after["escalation_stages_sent"]) == ("acknowledged", 1)


@pytest.mark.slow
def test_a_flapping_fault_makes_one_incident_and_one_page(
        tmp_path: Path, broker: Broker, procs: Any, receivers: Receivers) -> None:
    _, base = procs.collector(broker, config=collector_config(receivers,
                                                              supervisor_after="10min"))
    start_lifts(tmp_path, broker, procs, *(f"{KIND}@{at}:unit=1:for=8" for at in (2, 18, 34)))

    def third_occurrence() -> dict[str, Any] | None:
        inc = incident_of(base, "lift-01")
        return inc if inc and inc["occurrences"] >= 3 else None

    inc = wait_for(third_occurrence, 90, "three occurrences of the trapped passenger")
    assert inc["occurrences"] == 3
    assert [(i["device"], i["occurrences"]) for i in incidents(base)] == [("lift-01", 3)]
    assert len(pushes_for(receivers, "webhook:crew", inc["id"])) == 1
    assert len(pushes_for(receivers, "email", inc["id"])) == 1
    history = http_json(f"{base}/api/v1/incidents/{inc['id']}", token=OPS_TOKEN)["history"]
    # cleared between the flaps: a trapped passenger waits for a person, never auto-resolved
    assert [h["event"] for h in history].count("device_cleared") >= 2
    assert [h["to"] for h in history].count("resolved") == 0


@pytest.mark.slow
def test_a_push_pending_across_a_collector_restart_is_delivered_after_it(
        tmp_path: Path, broker: Broker, procs: Any, receivers: Receivers) -> None:
    receivers.failing = 503  # the department's endpoint is down
    collector, base = procs.collector(broker, config=collector_config(
        receivers, supervisor_after="10min"))
    start_lifts(tmp_path, broker, procs, f"{KIND}@2:unit=1:for=120")

    inc = wait_for(lambda: incident_of(base, "lift-01"), 45, "the incident")
    wait_for(lambda: pushes_for(receivers, "webhook:crew", inc["id"], delivered=False), 15,
             "a failed delivery attempt")
    collector.stop()  # SIGTERM (the notice waits in the collector's SQLite queue)
    assert not collector.alive
    failed = len(pushes_for(receivers, "webhook:crew", inc["id"], delivered=False))
    receivers.failing = None  # the endpoint is back while the collector is down

    collector.start()
    wait_for(lambda: pushes_for(receivers, "webhook:crew", inc["id"]), 30,
             "the pending push after the restart")
    got = pushes_for(receivers, "webhook:crew", inc["id"])
    assert len(got) == 1 and got[0].verified is True
    assert got[0].link == f"{PUBLIC_URL}/crew#incident-{inc['id']}"
    assert got[0].monotonic > max(p.monotonic for p in pushes_for(
        receivers, "webhook:crew", inc["id"], delivered=False))
    assert failed >= 1
    assert [i["id"] for i in incidents(base)] == [inc["id"]]  # the restart opened no new one
