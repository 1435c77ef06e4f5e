"""Pushes carry the facts: address, floor, contact (tap-to-call), map, the /crew link and the
running time counted at send time, on every channel; missing facts are simply left out."""

from __future__ import annotations

import json
from email import message_from_bytes, policy
from email.message import EmailMessage
from typing import Any

from collector.notify import render
from collector.notify.facts import incident_facts
from collector.notify.model import Fact, Notice
from tests.collector.test_alarms_engine import Rig, rig, store

__all__ = ["rig", "store"]

OPENED = 1_767_225_600_000  # 2026-01-01T00:00:00Z
SENT = OPENED + 135_000  # 2 min 15 s later
LINK = "https://cg.test/crew#incident-42"

VIEW: dict[str, Any] = {  # the incident's public shape (incidents API)
    "id": 42, "kind": "trapped_passenger", "site": "jinshui-12", "opened_at": OPENED,
    "life_safety": True, "trapped_since": "2026-01-01T00:00:00.000Z",
    "site_info": {"id": "jinshui-12", "name": "Jinshui Rd 12 tower",
                  "address": "12 Jinshui Road", "building": "Tower A",
                  "entrance": "North lobby", "lat": 34.7597, "lon": 113.6651,
                  "contact": {"name": "Ms Zhang", "phone": "0371-60000001"}},
    "lift": {"floor": 7, "door": "closed"},
    "assignee": {"name": "Wang Wei", "phone": "13800000001", "unit": "lift-crew"},
}


def notice(facts: tuple[Fact, ...]) -> Notice:
    return Notice(key="incident-42", title="[CRITICAL] trapped passenger — lift-1 at Jinshui",
                  text="- incident: #42 (open)", severity="critical", link=LINK,
                  created_ms=OPENED, facts=facts)


def test_incident_facts_from_the_public_shape() -> None:
    facts = {f.key: f for f in incident_facts(VIEW)}
    assert list(facts) == ["site", "address", "map", "floor", "contact", "assignee",
                           "trapped_for"]
    assert facts["address"].value == "12 Jinshui Road, Tower A, North lobby"
    assert facts["floor"].value == "7 (door closed)"
    assert (facts["contact"].value, facts["contact"].href) == \
        ("Ms Zhang, 0371-60000001", "tel:037160000001")
    assert facts["assignee"].href == "tel:13800000001"
    assert facts["map"].href.startswith("https://uri.amap.com/marker?position=113.665100%2C"
                                        "34.759700&")
    assert "coordinate=wgs84" in facts["map"].href
    assert facts["trapped_for"].since_ms == OPENED and facts["trapped_for"].label == "Trapped for"


def test_missing_fields_are_left_out_not_an_error() -> None:
    row = {"id": 3, "kind": "door_fault", "site": "plant-7", "opened_at": OPENED,
           "site_info": {"address": "", "contact": None, "lat": None}, "lift": None}
    facts = incident_facts(row)
    assert [(f.key, f.label, f.value) for f in facts] == [("site", "Site", "plant-7"),
                                                          ("open_for", "Open for", "")]
    assert incident_facts({}) == ()


def test_every_channel_renders_the_facts_with_the_time_at_sending() -> None:
    n = notice(incident_facts(VIEW))
    ding = render.dingtalk_body(n, SENT)["markdown"]["text"]
    assert "- **Address**: 12 Jinshui Road, Tower A, North lobby" in ding
    assert "- **Floor**: 7 (door closed)" in ding
    assert "- **Site contact**: [Ms Zhang, 0371-60000001](tel:037160000001)" in ding
    assert "- **Trapped for**: 02:15" in ding
    assert ding.index("Trapped for") < ding.index("- incident: #42")  # facts come first
    assert f"[Acknowledge in CityGate]({LINK})" in ding
    wecom = render.wecom_body(n, "markdown", SENT)["markdown"]["content"]
    assert "- **Trapped for**: 02:15" in wecom and "(tel:037160000001)" in wecom
    text = render.wecom_body(n, "text", SENT)["text"]["content"]
    assert "Floor: 7 (door closed)\n" in text and "Trapped for: 02:15" in text
    assert "Map: 34.75970, 113.66510 https://uri.amap.com/marker?" in text
    assert text.endswith(f"Acknowledge in CityGate: {LINK}")
    hook = json.loads(render.webhook_body(n, 5, SENT))
    assert {f["key"]: f["value"] for f in hook["facts"]}["trapped_for"] == "02:15"
    assert hook["link"] == LINK
    mail = message_from_bytes(render.email_message(n, "cg@x.test", ["a@x.test"], SENT)
                              .as_bytes(), policy=policy.default)
    assert isinstance(mail, EmailMessage)
    plain = mail.get_body(preferencelist=("plain",))
    html = mail.get_body(preferencelist=("html",))
    assert plain is not None and html is not None
    assert "Trapped for: 02:15\n" in plain.get_content()
    assert '<a href="tel:037160000001">Ms Zhang, 0371-60000001</a>' in html.get_content()
    later = render.dingtalk_body(n, SENT + 3_600_000)["markdown"]["text"]
    assert "- **Trapped for**: 1:02:15" in later


def test_facts_survive_the_queue_and_old_rows_still_load() -> None:
    n = notice(incident_facts(VIEW))
    assert render.notice_from_json(render.notice_to_json(n)) == n
    old = json.loads(render.notice_to_json(n))
    del old["facts"]
    assert render.notice_from_json(json.dumps(old)).facts == ()


def test_the_engine_pages_with_the_facts_it_has(rig: Rig) -> None:
    rig.events("gw-a", ("lift-1", "trapped_passenger", "raise"), severity="critical")
    channel, sent = rig.notify.sent[0]
    assert channel == "dingtalk-north"
    facts = {f.key: f for f in sent.facts}
    assert facts["site"].value == "Jinshui Rd 12"  # the site's name from the config, not its id
    assert facts["trapped_for"].since_ms == rig.clock.now
    assert sent.link == "https://cg.test/crew#incident-1"
