"""SMS channel: the providers' published signature vectors, and delivery through the dispatcher
to local fake gateways (citygate/receivers.py) that recompute and check each signature."""

from __future__ import annotations

import asyncio
import hashlib
import logging
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from citygate.receivers import Receivers
from collector.config import CollectorConfigError
from collector.features import open_store
from collector.notify import render, signing
from collector.notify.config import load_notify_config
from collector.notify.dispatcher import Dispatcher
from collector.notify.model import Fact, Notice
from collector.notify.queue import NotifyQueue
from collector.store import now_ms

pytestmark = pytest.mark.timeout(60)

KEY_ID, SECRET = "LTAI-test-id", "sms-secret-7f3a9c2e"


# --- known-answer vectors ------------------------------------------------------------------

def test_aliyun_rpc_signature_matches_the_published_example() -> None:
    # Aliyun SMS "signature" example (testId / testSecret, 2017-07-12T02:42:19Z).
    params = {"AccessKeyId": "testId", "Action": "SendSms", "Format": "XML",
              "RegionId": "cn-hangzhou", "SignName": "阿里云短信测试专用",
              "SignatureMethod": "HMAC-SHA1", "SignatureVersion": "1.0",
              "Version": "2017-05-25", "SignatureNonce": "45e25e9b-0a6f-4070-8c85-2956eda1b466",
              "TemplateCode": "SMS_71390007", "Timestamp": "2017-07-12T02:42:19Z",
              "PhoneNumbers": "15300000001", "TemplateParam": '{"customer":"test"}',
              "OutId": "123"}
    assert signing.aliyun_string_to_sign("GET", params).startswith(
        "GET&%2F&AccessKeyId%3DtestId%26Action%3DSendSms%26Format%3DXML%26OutId%3D123%26"
        "PhoneNumbers%3D15300000001%26RegionId%3Dcn-hangzhou%26SignName%3D%25E9%2598%25BF")
    assert signing.aliyun_signature("testSecret", "GET", params) == "zJDF+Lrzhj/ThnlvIToysFRq6t4="
    assert signing.verify_aliyun("testSecret", "GET",
                                 {**params, "Signature": "zJDF+Lrzhj/ThnlvIToysFRq6t4="})
    assert signing.aliyun_percent("a b*c~d+") == "a%20b%2Ac~d%2B"


@pytest.mark.parametrize(("secret_key", "expected"), [
    ("Gu5t9xGARNpq86cd98joQYCN3*******",
     "2230eefd229f582d8b1b891af7107b91597240707d778ab3738f756258d7652c"),
    ("Gu5t9xGARNpq86cd98joQYCN3EXAMPLE",
     "72e494ea809ad7a8c8f7a4507b9bddcbaa8e581f516e8da2f66e2c5a96525168"),
])
def test_tc3_signature_matches_the_published_example(secret_key: str, expected: str) -> None:
    # Tencent Cloud API 3.0 "Signature v3" example: CVM DescribeInstances at 1551113065.
    payload = (b'{"Limit": 1, "Filters": [{"Values": ["\\u672a\\u547d\\u540d"], '
               b'"Name": "instance-name"}]}')
    canonical = signing.tc3_canonical_request("cvm.tencentcloudapi.com", payload)
    assert hashlib.sha256(payload).hexdigest() == \
        "35e9c5b0e3ae67532d3c9f17ead6c90222632e5b1ff7f6e89887f1398934f064"
    assert hashlib.sha256(canonical.encode()).hexdigest() == \
        "5ffe6a04c0664d6b969fab9a13bdab201d63ee709638e2749d62a09ca18d7031"
    assert signing.tc3_signature(secret_key, "cvm", 1551113065, canonical) == expected
    auth = signing.tc3_authorization("AKIDz8krbsJ5yKBZQpn74WFkmLPx3EXAMPLE", secret_key,
                                     service="cvm", host="cvm.tencentcloudapi.com",
                                     timestamp=1551113065, payload=payload)
    assert auth == ("TC3-HMAC-SHA256 Credential=AKIDz8krbsJ5yKBZQpn74WFkmLPx3EXAMPLE/2019-02-25/"
                    f"cvm/tc3_request, SignedHeaders=content-type;host, Signature={expected}")


# --- delivery to the fake gateways ---------------------------------------------------------

@pytest.fixture
def receivers() -> Iterator[Receivers]:
    with Receivers(sms_key_id=KEY_ID, sms_secret=SECRET) as rx:
        yield rx


@pytest.fixture
def queue(tmp_path: Path) -> Iterator[NotifyQueue]:
    store = open_store(f"sqlite:///{tmp_path / 'n.db'}")
    yield NotifyQueue(store)
    store.close()


def trapped_notice(opened_ms: int) -> Notice:
    return Notice(
        key="incident-7", title="[CRITICAL] trapped passenger — lift-3 at Jinshui Rd 12",
        text="- incident: #7", severity="critical", link="https://cg.test/crew#incident-7",
        created_ms=opened_ms, mention_phones=("13800000001",),
        facts=(Fact("address", "Address", "12 Jinshui Rd, Building 2, entrance B"),
               Fact("floor", "Floor", "7"),
               Fact("contact", "Site contact", "Mr Zhao 13900000002", href="tel:13900000002"),
               Fact("trapped_for", "Trapped for", since_ms=opened_ms)))


def channel(rx: Receivers, provider: str, secret: str = SECRET) -> dict[str, Any]:
    base: dict[str, Any] = {"type": "sms", "provider": provider, "url": rx.sms_url(provider),
                            "access_key_id": KEY_ID, "access_key_secret": secret,
                            "sign_name": "CityGate", "template": "SMS_0001",
                            "params": ["title", "address", "floor", "trapped_for", "link"],
                            "to": ["13800000009"]}
    if provider == "tencent":
        base |= {"sdk_app_id": "1400000001", "template": "100001"}
    return base


def deliver(queue: NotifyQueue, cfg: dict[str, Any], notice: Notice,
            wait_for: Any) -> dict[str, Any]:
    """Enqueue one notice on channel `sms`, run the dispatcher until `wait_for()`; the row."""
    config = load_notify_config({"retry_base": "60s", "channels": {"sms": cfg}})

    async def go() -> None:
        async with Dispatcher(queue, config):
            queue.enqueue("sms", notice)
            deadline = time.monotonic() + 20
            while not wait_for():
                assert time.monotonic() < deadline, "no delivery outcome in 20 s"
                await asyncio.sleep(0.02)

    asyncio.run(go())
    return queue.list()[0]


@pytest.mark.parametrize("provider", ["aliyun", "tencent", "http"])
def test_sms_reaches_the_gateway_with_a_valid_signature_and_the_facts(
        receivers: Receivers, queue: NotifyQueue, provider: str,
        caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    opened = now_ms() - 135_000  # trapped for 2:15 when sent
    row = deliver(queue, channel(receivers, provider), trapped_notice(opened),
                  lambda: queue.list()[0]["state"] != "queued")
    assert row["state"] == "sent", row
    [push] = receivers.pushes(f"sms:{provider}")
    assert push.verified is True and push.delivered
    assert push.key == "incident-7" and push.link == "https://cg.test/crew#incident-7"
    to = push.body["to"]
    if provider == "tencent":
        assert to == ["+8613800000009", "+8613800000001"]
        values = push.body["params"]
        assert values[:3] == ["[CRITICAL] trapped passenger — lift-3 at Jinshui Rd 12",
                              "12 Jinshui Rd, Building 2, entrance B", "7"]
        assert values[3] in ("02:15", "02:16") and values[4] == push.link
    elif provider == "aliyun":
        assert to == ["13800000009", "13800000001"]
        named = push.body["params"]
        assert (named["floor"], named["address"]) == ("7", "12 Jinshui Rd, Building 2, entrance B")
        assert named["trapped_for"] in ("02:15", "02:16")
    else:
        text = push.body["text"]
        assert "Floor: 7" in text and "Site contact: Mr Zhao 13900000002" in text
        assert "Trapped for: 02:1" in text and text.endswith(push.link)
    assert SECRET not in caplog.text


@pytest.mark.parametrize("provider", ["aliyun", "tencent", "http"])
def test_a_wrong_secret_is_refused_by_the_gateway_and_not_retried(
        receivers: Receivers, queue: NotifyQueue, provider: str,
        caplog: pytest.LogCaptureFixture) -> None:
    wrong = "not-the-secret-1234"
    row = deliver(queue, channel(receivers, provider, wrong), trapped_notice(now_ms()),
                  lambda: queue.list()[0]["state"] != "queued"
                  or queue.list()[0]["attempts"] > 0)
    [push] = receivers.pushes(f"sms:{provider}")
    assert push.verified is False and not push.delivered
    if provider == "http":  # a 401 from a generic gateway is retried like a webhook's
        assert row["attempts"] == 1
    else:
        assert row["state"] == "failed" and row["attempts"] == 1
        code = "SignatureDoesNotMatch" if provider == "aliyun" else "AuthFailure.SignatureFailure"
        assert code in row["last_error"]
    assert wrong not in caplog.text and wrong not in str(row)


def test_sms_config_names_what_is_missing_and_reads_secrets_from_env(
        monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(CollectorConfigError, match="needs access_key_id, access_key_secret"):
        load_notify_config({"channels": {"s": {"type": "sms", "provider": "aliyun"}}})
    with pytest.raises(CollectorConfigError, match=r"needs .*sdk_app_id"):
        load_notify_config({"channels": {"s": {
            "type": "sms", "provider": "tencent", "access_key_id": "x",
            "access_key_secret": "y", "sign_name": "z", "template": "1"}}})
    with pytest.raises(CollectorConfigError, match="CG_SMS_SECRET is not set"):
        load_notify_config({"channels": {"s": {
            "type": "sms", "provider": "http", "url": "https://sms.example/send",
            "access_key_secret": "env:CG_SMS_SECRET"}}})
    monkeypatch.setenv("CG_SMS_SECRET", "from-env-secret-42")
    cfg = load_notify_config({"channels": {"s": {
        "type": "sms", "provider": "aliyun", "access_key_id": "LTAI", "sign_name": "CityGate",
        "template": "SMS_1", "access_key_secret": "env:CG_SMS_SECRET"}}})
    assert "from-env-secret-42" in cfg.secrets()
    assert "from-env-secret-42" not in str(cfg.describe())
    assert cfg.channels["s"].endpoint() == "https://dysmsapi.aliyuncs.com/"  # type: ignore[union-attr]


def test_sms_params_fill_missing_facts_and_clip() -> None:
    n = trapped_notice(1_000_000)
    bare = Notice(key="k", title="t", text="", severity="major", link="https://l", created_ms=0)
    assert render.sms_params(bare, 0, ("title", "address", "link")) == \
        {"title": "t", "address": "-", "link": "https://l"}
    assert render.sms_params(n, 1_000_000 + 3_725_000, ("trapped_for", "address"), 10) == \
        {"trapped_for": "1:02:05", "address": "12 Jinshui"}
