"""Unit tests of push notifications: signing, redaction, policy, rendering, config, queue."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import logging
import tomllib
from email.message import EmailMessage
from urllib.parse import parse_qs, quote_plus, urlsplit

import httpx
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from collector.config import CollectorConfig, CollectorConfigError
from collector.migrations import migrate
from collector.notify import render, signing
from collector.notify.config import NotifyConfig, load_notify_config
from collector.notify.model import Notice
from collector.notify.policy import (
    Due,
    Plan,
    TokenBucket,
    backoff_s,
    compose_digest,
    plan_channel,
    restored_bucket,
)
from collector.notify.queue import MIGRATIONS, NotifyQueue
from collector.notify.redact import MASK, RedactingFilter, redact
from collector.notify.transports import (
    DINGTALK_THROTTLED,
    WECOM_THROTTLED,
    DeliveryError,
    _robot_result,
)
from collector.store import Store

SECRET = "SEC1a2b3c4d5e6f"
TS = 1700000000000
# Computed outside Python: printf '1700000000000\nSEC1a2b3c4d5e6f' |
#   openssl dgst -sha256 -hmac SEC1a2b3c4d5e6f -binary | base64, then URL-encoded by hand.
SIGN_LITERAL = "N9s2CwS7bFAU7qpIxzX4iFCc3iK1A77kKPKYt%2FD%2B2ZI%3D"


def notice(key: str = "inc-1", severity: str = "critical", **kw: object) -> Notice:
    base: dict[str, object] = {
        "key": key, "title": f"[{severity.upper()}] Trapped passenger — lift-t03",
        "text": "Car stopped between floors 3 and 4.\n\nDoor zone: no.",
        "severity": severity, "link": f"https://citygate.example/incidents/{key}",
        "created_ms": TS}
    base.update(kw)
    return Notice(**base)  # type: ignore[arg-type]


# --- signing --------------------------------------------------------------------------------

def test_dingtalk_sign_matches_documented_formula_and_literal() -> None:
    string_to_sign = f"{TS}\n{SECRET}".encode()
    mac = hmac.new(SECRET.encode(), string_to_sign, digestmod=hashlib.sha256).digest()
    expected = quote_plus(base64.b64encode(mac))
    assert signing.dingtalk_sign(SECRET, TS) == expected == SIGN_LITERAL


def test_dingtalk_url_signed_and_unsigned() -> None:
    url = "https://oapi.dingtalk.com/robot/send?access_token=abc123"
    assert signing.dingtalk_url(url, None, TS) == url
    signed = signing.dingtalk_url(url, SECRET, TS)
    assert signed == f"{url}&timestamp={TS}&sign={SIGN_LITERAL}"
    q = parse_qs(urlsplit(signed).query)  # decoding gives back the raw base64
    assert q["sign"] == ["N9s2CwS7bFAU7qpIxzX4iFCc3iK1A77kKPKYt/D+2ZI="]
    assert q["access_token"] == ["abc123"]


def test_webhook_signature_literal_and_verify() -> None:
    body = b'{"title":"x"}'
    # printf '{"title":"x"}' | openssl dgst -sha256 -hmac whsec-test -hex
    literal = "sha256=79e288b79982a34842e4207a161af7ff86b7a43d806cb9e0351f16e7b330fb67"
    assert signing.webhook_signature("whsec-test", body) == literal
    headers = signing.webhook_headers("whsec-test", body, TS)
    assert headers[signing.SIGNATURE_HEADER] == literal
    assert headers[signing.TIMESTAMP_HEADER] == str(TS)
    assert signing.verify_webhook("whsec-test", body, literal)
    assert not signing.verify_webhook("whsec-test", body + b" ", literal)
    assert signing.SIGNATURE_HEADER not in signing.webhook_headers(None, body, TS)


# --- redaction ------------------------------------------------------------------------------

@pytest.mark.parametrize(("text", "expected"), [
    ("POST https://oapi.dingtalk.com/robot/send?access_token=abc123&timestamp=1&sign=x%2By",
     "POST https://oapi.dingtalk.com/robot/send?access_token=***&timestamp=1&sign=***"),
    ("https://qyapi.weixin.qq.com/cgi-bin/webhook/send?key=693a91f6-7xxx-4bc4 failed",
     "https://qyapi.weixin.qq.com/cgi-bin/webhook/send?key=*** failed"),
    ("mqtt://crew:hunter22@broker:1883", "mqtt://crew:***@broker:1883"),
    ("https://h/p?a=1&Secret=s3&b=2", "https://h/p?a=1&Secret=***&b=2"),
    # percent-encoded inside another URL: masks to the end rather than guess where it stops
    ("nested%3Faccess_token%3Dtok%26x%3D1 ok", "nested%3Faccess_token%3D*** ok"),
    ("https://h/p?monkey=banana", "https://h/p?monkey=banana"),  # only whole parameter names
    ("no secrets here", "no secrets here"),
])
def test_redact_table(text: str, expected: str) -> None:
    assert redact(text) == expected


def test_redact_literal_secrets_and_filter() -> None:
    assert redact("sign failed for SECabcdef", ["SECabcdef"]) == f"sign failed for {MASK}"
    assert redact("ab", ["ab"]) == "ab"  # too short to be a secret; masking would mangle text
    record = logging.LogRecord("httpx", logging.INFO, __file__, 1, "HTTP Request: POST %s",
                               ("https://x/send?access_token=tok123",), None)
    assert RedactingFilter(["tok123"]).filter(record)
    assert record.getMessage() == "HTTP Request: POST https://x/send?access_token=***"


def test_delivery_error_message_is_redacted() -> None:
    exc = DeliveryError("ops", "ConnectError for https://x/send?key=k-123 refused")
    assert "k-123" not in str(exc)
    assert "key=***" in str(exc)


# --- config ---------------------------------------------------------------------------------

ROBOT = "https://oapi.dingtalk.com/robot/send?access_token=tok-dd-1234"
WECOM = "https://qyapi.weixin.qq.com/cgi-bin/webhook/send?key=key-wc-5678"


def full_config() -> NotifyConfig:
    return load_notify_config({"channels": {
        "ops-dingtalk": {"type": "dingtalk", "url": ROBOT, "secret": "SECdd-secret"},
        "ops-wecom": {"type": "wecom", "url": WECOM},
        "hook": {"type": "webhook", "url": "https://h.example/in", "secret": "whsec-9999"},
        "mail": {"type": "email", "host": "smtp.example", "from": "citygate@example.org",
                 "to": ["crew@example.org"], "username": "cg", "password": "pw-smtp-777"},
        "crew-north": {"type": "mqtt", "crew": "north", "password": "pw-mqtt-888",
                       "username": "notify"},
    }, "retry_base": "2s", "retry_cap": "10min"})


def test_config_defaults_and_no_secrets_in_repr_or_describe() -> None:
    cfg = full_config()
    assert cfg.retry_base == 2.0 and cfg.retry_cap == 600.0
    assert cfg.channels["ops-dingtalk"].rate_per_minute == 20
    assert cfg.channels["ops-wecom"].rate_per_minute == 20
    assert cfg.channels["hook"].rate_per_minute is None
    shown = repr(cfg) + str(cfg) + json.dumps(cfg.describe()) + cfg.model_dump_json()
    for secret in ("tok-dd-1234", "SECdd-secret", "key-wc-5678", "whsec-9999", "pw-smtp-777",
                   "pw-mqtt-888"):
        assert secret not in shown
        assert secret in cfg.secrets()
    assert cfg.describe()["ops-dingtalk"]["url"].endswith("access_token=***")
    mqtt_cfg = cfg.channels["crew-north"]
    assert mqtt_cfg.type == "mqtt"
    assert mqtt_cfg.topic_name() == "citygate/v1/_crew/north/notices"


@pytest.mark.parametrize(("section", "key", "fragment"), [
    ({"channels": {"x": {"type": "dingtalk", "url": "https://o/robot/send?foo=tok-leak-1"}}},
     "notify.channels.x.dingtalk.url", "access_token"),
    ({"channels": {"x": {"type": "wecom", "url": "ftp://tok-leak-1"}}},
     "notify.channels.x.wecom.url", "http"),
    ({"channels": {"x": {"type": "pager", "url": "tok-leak-1"}}}, "notify.channels.x", "type"),
    ({"channels": {"Bad Name": {"type": "webhook", "url": "https://h"}}}, "notify.channels",
     "lower-case"),
    ({"channels": {"m": {"type": "mqtt", "crew": "n", "broker": "mqtt://u:tok-leak-1@h"}}},
     "notify.channels.m.mqtt.broker", "username"),
])
def test_config_errors_name_the_key_and_hide_the_value(section: dict[str, object], key: str,
                                                      fragment: str) -> None:
    with pytest.raises(CollectorConfigError) as err:
        load_notify_config(section)
    message = str(err.value)
    assert f"collector.toml: {key}" in message
    assert fragment in message
    assert "tok-leak-1" not in message


@given(rate=st.integers(2, 120), times=st.lists(st.floats(0, 300), max_size=300))
@settings(max_examples=150, deadline=None)
def test_default_bucket_never_exceeds_the_provider_window(rate: int, times: list[float]) -> None:
    cfg = load_notify_config({"channels": {"r": {
        "type": "dingtalk", "url": ROBOT, "rate_per_minute": rate}}}).channels["r"]
    shape = cfg.bucket()
    assert shape is not None
    bucket = TokenBucket(*shape)
    sent = [t for t in sorted(times) if bucket.take(t)]
    for i, start in enumerate(sent):  # every 60 s window starting at a send
        assert sum(1 for t in sent[i:] if t < start + 60.0) <= rate


# --- policy ---------------------------------------------------------------------------------

@pytest.mark.parametrize(("attempt", "rand", "expected"), [
    (1, 0.0, 2.5), (1, 0.999999, 5.0), (2, 0.0, 5.0), (3, 0.5, 15.0), (20, 0.0, 300.0),
    (20, 0.999999, 600.0), (0, 0.0, 2.5),
])
def test_backoff_table(attempt: int, rand: float, expected: float) -> None:
    assert backoff_s(attempt, base=5.0, cap=600.0, rand=rand) == pytest.approx(expected, rel=1e-5)


@given(attempt=st.integers(1, 60), rand=st.floats(0, 1, exclude_max=True))
def test_backoff_bounds(attempt: int, rand: float) -> None:
    d = backoff_s(attempt, base=5.0, cap=600.0, rand=rand)
    ceiling = min(600.0, 5.0 * 2 ** (attempt - 1))
    assert ceiling / 2 <= d < ceiling + 1e-9


def test_token_bucket_table() -> None:
    b = TokenBucket(capacity=2, per_s=1.0)
    assert [b.take(0.0), b.take(0.0), b.take(0.0)] == [True, True, False]
    assert b.wait_s(0.0) == pytest.approx(1.0)
    assert b.take(1.0) and not b.take(1.0)
    assert b.available(100.0) == 2  # capped at capacity
    b.block(100.0, 600.0)
    assert b.available(200.0) == 0 and b.wait_s(200.0) == pytest.approx(500.0)
    assert b.available(700.0) == 2


def test_restored_bucket_counts_last_minute() -> None:
    assert restored_bucket(10, 0.1, 0.0, [1.0, 5.0, 59.0, 61.0, 300.0]).available(0.0) == 7
    assert restored_bucket(2, 0.1, 0.0, [1.0, 2.0, 3.0]).available(0.0) == 0


@pytest.mark.parametrize(("due", "tokens", "digest", "pending", "plan"), [
    ([Due(1, "info"), Due(2, "critical")], None, True, False, Plan(send=(2, 1))),
    ([Due(1, "info"), Due(2, "critical"), Due(3, "major")], 1, True, False,
     Plan(send=(2,), fold=(3, 1))),
    ([Due(1, "info"), Due(2, "major")], 1, True, False, Plan(send=(2,))),  # lone one waits
    ([Due(1, "info"), Due(9, "info", is_digest=True)], 0, True, True, Plan(fold=(1,))),
    ([Due(1, "info"), Due(9, "info", is_digest=True)], 1, True, True, Plan(send=(9,), fold=(1,))),
    ([Due(1, "info"), Due(2, "info"), Due(3, "info")], 0, False, False, Plan()),
    ([Due(1, "minor"), Due(2, "critical")], 5, True, False, Plan(send=(2, 1))),
])
def test_plan_channel_table(due: list[Due], tokens: int | None, digest: bool, pending: bool,
                            plan: Plan) -> None:
    assert plan_channel(due, tokens, digest=digest, pending_digest=pending) == plan


def test_compose_digest_lists_every_link_most_severe_first() -> None:
    members = [notice(f"inc-{i}", sev, mention_phones=(f"1380000000{i}",))
               for i, sev in enumerate(["minor", "critical", "major", "critical", "info"])]
    d = compose_digest(members, key="digest:ops:1", created_ms=TS + 5)
    assert d.title.startswith("5 more incidents (2 critical): [CRITICAL]")
    assert d.severity == "critical" and d.key == "digest:ops:1" and d.created_ms == TS + 5
    for m in members:
        assert f"[open]({m.link})" in d.text
    assert d.text.index("inc-1") < d.text.index("inc-2") < d.text.index("inc-0")
    assert len(d.mention_phones) == 5
    short = compose_digest(members, key="k", created_ms=0, max_items=2, link="https://cg/inc")
    assert "… and 3 more" in short.text and short.link == "https://cg/inc"
    assert compose_digest(members[:1], key="k", created_ms=0).title.startswith("1 more incident:")
    with pytest.raises(ValueError, match="at least one"):
        compose_digest([], key="k", created_ms=0)


# --- rendering ------------------------------------------------------------------------------

def test_render_dingtalk_markdown_with_mentions() -> None:
    body = render.dingtalk_body(notice(mention_phones=("13800000001", "13900000002")))
    assert body["msgtype"] == "markdown"
    assert body["at"] == {"atMobiles": ["13800000001", "13900000002"], "isAtAll": False}
    text = body["markdown"]["text"]
    assert "@13800000001 @13900000002" in text  # DingTalk only notifies mentions in the text
    assert "(https://citygate.example/incidents/inc-1)" in text
    assert body["markdown"]["title"].startswith("[CRITICAL]")
    assert render.dingtalk_body(notice())["at"] == {"atMobiles": [], "isAtAll": False}


def test_render_wecom_markdown_text_and_auto() -> None:
    n = notice(mention_phones=("13800000001",))
    md = render.wecom_body(n, "markdown")
    assert md["msgtype"] == "markdown" and "mentioned_mobile_list" not in json.dumps(md)
    assert '<font color="warning">critical</font>' in md["markdown"]["content"]
    txt = render.wecom_body(n, "text")
    assert txt["text"]["mentioned_mobile_list"] == ["13800000001"]
    assert txt["text"]["content"].endswith(n.link)
    assert render.wecom_msgtype(n, "auto") == "text"
    assert render.wecom_msgtype(notice(), "auto") == "markdown"
    assert render.wecom_msgtype(n, "markdown") == "markdown"
    big = render.wecom_body(notice(text="字" * 5000), "markdown")["markdown"]["content"]
    assert len(big.encode()) <= render.WECOM_MARKDOWN_MAX_BYTES and big.endswith(")")


def test_render_email_multipart() -> None:
    n = notice(text="Line <1>\nline 2\n\nPara 2", emails=("oncall@example.org",
                                                          "crew@example.org"))
    msg = render.email_message(n, "citygate@example.org", ["crew@example.org"])
    assert isinstance(msg, EmailMessage) and msg.is_multipart()
    assert msg["To"] == "crew@example.org, oncall@example.org"
    plain = msg.get_body(("plain",))
    html_part = msg.get_body(("html",))
    assert plain is not None and html_part is not None
    assert n.link in plain.get_content()
    html_text = html_part.get_content()
    assert "Line &lt;1&gt;<br>line 2</p><p>Para 2</p>" in html_text
    assert f'<a href="{n.link}">' in html_text


def test_render_webhook_and_mqtt_json_round_trip() -> None:
    n = notice(mention_phones=("1",))
    doc = json.loads(render.webhook_body(n, 42, TS + 1))
    assert doc["v"] == 1 and doc["id"] == 42 and doc["sent_ms"] == TS + 1
    assert doc["key"] == n.key and doc["link"] == n.link and doc["mention_phones"] == ["1"]
    assert json.loads(render.mqtt_payload(n, 42, TS + 1)) == doc
    assert render.notice_from_json(render.notice_to_json(n)) == n


@pytest.mark.parametrize(("text", "limit", "expected"), [
    ("abc", 10, "abc"), ("abcdef", 4, "a…"),  # the marker itself is 3 bytes
    ("字字字", 7, "字…"), ("", 0, ""),
])
def test_clip_table(text: str, limit: int, expected: str) -> None:
    assert render.clip(text, limit, marker="…") == expected


# --- queue ----------------------------------------------------------------------------------

@pytest.fixture
def store(store: Store) -> Store:
    """conftest's store (SQLite and PostgreSQL): Store.open created the notify tables."""
    assert migrate(store.engine, [MIGRATIONS]) == []
    return store


def test_queue_enqueue_list_fold_and_requeue(store: Store) -> None:
    q = NotifyQueue(store)
    woken: list[int] = []
    q.subscribe(lambda: woken.append(1))
    ids = [q.enqueue("ops", notice(f"inc-{i}", "major")) for i in range(3)]
    assert woken == [1, 1, 1]
    rows = q.list(state="queued")
    assert [r["id"] for r in rows] == ids[::-1]
    assert rows[0]["notice"]["key"] == "inc-2" and rows[0]["attempts"] == 0
    digest_id = q.fold("ops", ids[:2], now=rows[0]["created"] + 1, max_items=20)
    assert digest_id is not None
    folded = q.list(state="digested")
    assert {r["id"] for r in folded} == set(ids[:2])
    assert all(r["digest_id"] == digest_id for r in folded)
    digest = q.get(digest_id)
    assert digest is not None and digest["kind"] == "digest"
    assert digest["notice"]["title"].startswith("2 more incidents")
    # a second fold merges into the same pending digest
    assert q.fold("ops", ids[2:], now=rows[0]["created"] + 2, max_items=20) == digest_id
    merged = q.get(digest_id)
    assert merged is not None and merged["notice"]["title"].startswith("3 more incidents")
    now = rows[0]["created"] + 3
    q.record(digest_id, at=now, ok=False, status=400, error="HTTP 400 ?key=k-1",
             duration_ms=5, state="failed", next_attempt_at=now)
    assert q.attempts(digest_id)[0]["error"] == "HTTP 400 ?key=***"
    assert q.requeue(digest_id) and not q.requeue(digest_id)
    assert q.counts()["queued"] == 1 and q.counts()["digested"] == 3


# --- robot answers and the documented TOML example ------------------------------------------

@pytest.mark.parametrize(("status", "doc", "retryable", "throttled", "retry_after"), [
    (200, {"errcode": 130101, "errmsg": "send too fast"}, True, True, 600.0),
    (200, {"errcode": 310000, "errmsg": "sign not match"}, False, False, None),
    (200, {"errcode": 45009, "errmsg": "api freq out of limit"}, True, True, 60.0),
])
def test_robot_answers_are_classified(status: int, doc: dict[str, object], retryable: bool,
                                      throttled: bool, retry_after: float | None) -> None:
    resp = httpx.Response(status, json=doc)
    with pytest.raises(DeliveryError) as err:
        _robot_result("ops", resp, DINGTALK_THROTTLED | WECOM_THROTTLED, "hint")
    assert (err.value.retryable, err.value.throttled) == (retryable, throttled)
    assert err.value.retry_after == retry_after
    assert err.value.status == doc["errcode"]
    _robot_result("ops", httpx.Response(200, json={"errcode": 0, "errmsg": "ok"}), {}, "")


TOML_EXAMPLE = """
public_url = "https://citygate.example"

[notify]
retry_base = "5s"
retry_cap = "10min"
default_ttl = "1d"

[notify.channels.ops-dingtalk]
type = "dingtalk"
url = "https://oapi.dingtalk.com/robot/send?access_token=0123456789abcdef"
secret = "SEC0123456789abcdef"       # signed mode; omit for keyword/IP-only robots
rate_per_minute = 20                 # the robot's limit; bucket = 10 burst + 10/min
digest = true

[notify.channels.ops-wecom]
type = "wecom"
url = "https://qyapi.weixin.qq.com/cgi-bin/webhook/send?key=693a91f6-0000-0000-0000-000000000000"
msgtype = "auto"                     # markdown, or text when someone must be @-mentioned

[notify.channels.tickets]
type = "webhook"
url = "https://tickets.example/hooks/citygate"
secret = "whsec-0123456789"
timeout = "5s"

[notify.channels.oncall-mail]
type = "email"
host = "smtp.example.org"
port = 587
starttls = true
username = "citygate"
password = "app-password"
from = "CityGate <citygate@example.org>"
to = ["lift-crew@example.org"]

[notify.channels.crew-north]
type = "mqtt"
broker = "mqtts://broker.example:8883"
username = "citygate-notify"
password = "mqtt-password"
crew = "north"                       # topic citygate/v1/_crew/north/notices, QoS 1
"""


def test_documented_toml_example_is_valid() -> None:
    top = CollectorConfig.model_validate(tomllib.loads(TOML_EXAMPLE))
    cfg = load_notify_config(top.notify)
    assert set(cfg.channels) == {"ops-dingtalk", "ops-wecom", "tickets", "oncall-mail",
                                 "crew-north"}
    assert cfg.channels["ops-dingtalk"].bucket() == (10, 10 / 60)
    assert cfg.channels["tickets"].bucket() is None
