"""Delivery over real transports: a local HTTP receiver, aiosmtpd SMTP and a private Mosquitto."""

from __future__ import annotations

import asyncio
import json
import logging
import socket
import subprocess
import threading
import time
from collections import deque
from collections.abc import Awaitable, Callable, Iterator
from email import message_from_bytes, policy
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import paho.mqtt.client as mqtt
import pytest
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import AuthResult, Envelope, LoginPassword

from citygate.broker import mosquitto_binary, mosquitto_config
from collector.features import open_store
from collector.notify import signing
from collector.notify.config import NotifyConfig, load_notify_config
from collector.notify.dispatcher import Dispatcher
from collector.notify.model import Notice
from collector.notify.queue import NotifyQueue
from collector.store import Store, now_ms

pytestmark = pytest.mark.timeout(90)

DD_TOKEN, DD_SECRET = "tok-dd-0a1b2c3d", "SECdd-5e6f7a8b9c"
WC_KEY, HOOK_SECRET = "key-wc-11223344", "whsec-55667788"
SMTP_PASSWORD, MQTT_PASSWORD = "pw-smtp-99aabb", "pw-mqtt-ccddee"
SECRETS = (DD_TOKEN, DD_SECRET, WC_KEY, HOOK_SECRET, SMTP_PASSWORD, MQTT_PASSWORD)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def notice(key: str = "inc-1", severity: str = "critical", **kw: Any) -> Notice:
    base: dict[str, Any] = {
        "key": key, "title": f"[{severity.upper()}] Trapped passenger — {key}",
        "text": "Car stopped between floors 3 and 4.", "severity": severity,
        "link": f"https://citygate.example/incidents/{key}", "created_ms": now_ms(),
        "mention_phones": ("13800000001",), "emails": ("oncall@example.org",)}
    base.update(kw)
    return Notice(**base)


async def until(pred: Callable[[], bool], what: str, timeout: float = 20.0) -> None:
    """Wait for a condition with a deadline."""
    deadline = time.monotonic() + timeout
    while not pred():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.02)


def run(coro: Awaitable[None]) -> None:
    asyncio.run(asyncio.wait_for(coro, 60))


# --- fakes that are real servers ------------------------------------------------------------

class Receiver:
    """An HTTP server that records requests and answers as told: ok, a status, or hang."""

    def __init__(self) -> None:
        self.requests: list[dict[str, Any]] = []
        self.plan: deque[int | str | dict[str, Any]] = deque()
        self.release = threading.Event()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                receiver.requests.append({"path": self.path, "headers": dict(self.headers),
                                          "body": body})
                action = receiver.plan.popleft() if receiver.plan else {"errcode": 0}
                if action == "hang":
                    receiver.release.wait(10)
                    return
                status = action if isinstance(action, int) else 200
                data = json.dumps(action if isinstance(action, dict) else {}).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.base = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def json(self, i: int) -> Any:
        return json.loads(self.requests[i]["body"])


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    r = Receiver()
    r.thread.start()
    yield r
    r.release.set()
    r.server.shutdown()
    r.server.server_close()


class Mailbox:
    """aiosmtpd handler that keeps every message."""

    def __init__(self) -> None:
        self.messages: list[Envelope] = []

    async def handle_DATA(self, _server: Any, _session: Any, envelope: Envelope) -> str:
        self.messages.append(envelope)
        return "250 OK"


def _authenticate(_server: Any, _session: Any, _envelope: Any, mechanism: str,
                  data: Any) -> AuthResult:
    ok = isinstance(data, LoginPassword) and data.password == SMTP_PASSWORD.encode()
    return AuthResult(success=ok)


@pytest.fixture
def smtp() -> Iterator[tuple[Mailbox, int]]:
    box = Mailbox()
    port = free_port()
    ctl = Controller(box, hostname="127.0.0.1", port=port, authenticator=_authenticate,
                     auth_require_tls=False)
    ctl.start()
    yield box, port
    ctl.stop()


@pytest.fixture
def broker(tmp_path: Path) -> Iterator[int]:
    binary = mosquitto_binary()
    if binary is None:
        pytest.skip("mosquitto is not installed")
    port = free_port()
    conf = mosquitto_config(port, tmp_path / "mosquitto")
    proc = subprocess.Popen([binary, "-c", str(conf)], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 10
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            break
        except OSError:
            if time.monotonic() > deadline or proc.poll() is not None:
                proc.kill()
                raise
            time.sleep(0.05)  # the broker is starting; retried until the deadline
    yield port
    proc.terminate()
    proc.wait(10)


class Subscriber:
    """A paho client collecting messages of one topic."""

    def __init__(self, port: int, topic: str) -> None:
        self.messages: list[tuple[str, bytes]] = []
        self.ready = threading.Event()
        self.client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="test-sub")
        self.client.on_connect = lambda c, *_: c.subscribe(topic, qos=1)
        self.client.on_subscribe = lambda *_: self.ready.set()
        self.client.on_message = lambda _c, _u, m: self.messages.append((m.topic, bytes(m.payload)))
        self.client.connect("127.0.0.1", port)
        self.client.loop_start()
        assert self.ready.wait(10)

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


@pytest.fixture
def store(store: Store) -> Store:
    """conftest's store (SQLite and PostgreSQL): Store.open created the notify tables."""
    return store


def robot(receiver: Receiver, **extra: Any) -> dict[str, Any]:
    return {"type": "dingtalk", "url": f"{receiver.base}/robot/send?access_token={DD_TOKEN}",
            "secret": DD_SECRET, "timeout": "2s", **extra}


def config(channels: dict[str, Any], **extra: Any) -> NotifyConfig:
    return load_notify_config({"channels": channels, "retry_base": "50ms", "retry_cap": "200ms",
                               "poll": "100ms", **extra})


# --- tests ----------------------------------------------------------------------------------

def test_delivers_to_every_channel_type(store: Store, receiver: Receiver,
                                        smtp: tuple[Mailbox, int], broker: int,
                                        caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    box, smtp_port = smtp
    cfg = config({
        "hook": {"type": "webhook", "url": f"{receiver.base}/hook", "secret": HOOK_SECRET},
        "ops-dingtalk": robot(receiver),
        "ops-wecom": {"type": "wecom", "url": f"{receiver.base}/wecom?key={WC_KEY}"},
        "mail": {"type": "email", "host": "127.0.0.1", "port": smtp_port, "starttls": False,
                 "username": "citygate", "password": SMTP_PASSWORD,
                 "from": "CityGate <citygate@example.org>", "to": ["crew@example.org"]},
        "crew-north": {"type": "mqtt", "broker": f"mqtt://127.0.0.1:{broker}", "crew": "north",
                       "username": "notify", "password": MQTT_PASSWORD},
    })
    sub = Subscriber(broker, "citygate/v1/_crew/+/notices")
    queue = NotifyQueue(store)

    async def scenario() -> None:
        async with Dispatcher(queue, cfg):
            ids = {ch: queue.enqueue(ch, notice(f"inc-{ch}")) for ch in cfg.channels}
            await until(lambda: queue.counts()["sent"] == 5, "all five delivered")
        for ch, nid in ids.items():
            attempts = queue.attempts(nid)
            assert [a["ok"] for a in attempts] == [True], ch

    try:
        run(scenario())
    finally:
        sub.close()
    by_path = {urlsplit(r["path"]).path: r for r in receiver.requests}
    hook = by_path["/hook"]
    assert signing.verify_webhook(HOOK_SECRET, hook["body"],
                                  hook["headers"][signing.SIGNATURE_HEADER])
    assert json.loads(hook["body"])["key"] == "inc-hook"
    assert hook["headers"][signing.TIMESTAMP_HEADER] == str(json.loads(hook["body"])["sent_ms"])
    dd = by_path["/robot/send"]
    q = parse_qs(urlsplit(dd["path"]).query)
    assert q["access_token"] == [DD_TOKEN]
    assert abs(int(q["timestamp"][0]) - now_ms()) < 3_600_000
    expected_sign = signing.dingtalk_sign(DD_SECRET, int(q["timestamp"][0]))
    assert q["sign"] == [parse_qs(f"s={expected_sign}")["s"][0]]
    dd_body = json.loads(dd["body"])
    assert dd_body["msgtype"] == "markdown" and dd_body["at"]["atMobiles"] == ["13800000001"]
    wc_body = json.loads(by_path["/wecom"]["body"])  # a mention makes "auto" choose text
    assert wc_body["text"]["mentioned_mobile_list"] == ["13800000001"]
    assert len(box.messages) == 1
    env = box.messages[0]
    assert sorted(env.rcpt_tos) == ["crew@example.org", "oncall@example.org"]
    assert env.mail_from == "citygate@example.org"
    mail = message_from_bytes(env.original_content or b"", policy=policy.default)
    assert mail["Subject"] == "[CRITICAL] Trapped passenger — inc-mail"
    assert mail.get_content_type() == "multipart/alternative"
    assert [(t, json.loads(p)["key"]) for t, p in sub.messages] == [
        ("citygate/v1/_crew/north/notices", "inc-crew-north")]
    assert_no_secrets(caplog, queue)


def assert_no_secrets(caplog: pytest.LogCaptureFixture, queue: NotifyQueue) -> None:
    rows = queue.list(limit=1000)
    stored = json.dumps([*rows, *(queue.attempts(r["id"]) for r in rows)], default=str)
    for secret in SECRETS:
        assert secret not in caplog.text, secret
        assert secret not in stored, secret


def test_failing_receiver_is_retried_and_every_attempt_recorded(
        store: Store, receiver: Receiver, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    receiver.plan.extend([500, "hang", 503])
    cfg = config({"ops-dingtalk": robot(receiver, timeout="300ms")})
    queue = NotifyQueue(store)

    async def scenario() -> None:
        async with Dispatcher(queue, cfg):
            nid = queue.enqueue("ops-dingtalk", notice())
            await until(lambda: (queue.get(nid) or {}).get("state") == "sent", "delivery")
        attempts = queue.attempts(nid)
        assert [(a["ok"], a["status"]) for a in attempts] == [
            (False, 500), (False, None), (False, 503), (True, 200)]
        assert "HTTP 500" in attempts[0]["error"]
        assert "no response within 0.3 s" in attempts[1]["error"]
        row = queue.get(nid)
        assert row is not None and row["attempts"] == 4 and row["sent_at"] is not None

    run(scenario())
    assert len(receiver.requests) == 4
    assert "channel ops-dingtalk failing" in caplog.text  # one warning when it starts failing
    assert caplog.text.count("failing, will retry") == 1
    assert "access_token=***" in caplog.text  # httpx logged the URL, redacted
    assert_no_secrets(caplog, queue)


def test_robot_error_fails_permanently_and_expiry(store: Store, receiver: Receiver) -> None:
    receiver.plan.append({"errcode": 310000, "errmsg": "sign not match"})
    cfg = config({"ops-dingtalk": robot(receiver),
                  "dead": {"type": "webhook", "url": "http://127.0.0.1:9/none", "timeout": "1s"}})
    queue = NotifyQueue(store)

    async def scenario() -> None:
        async with Dispatcher(queue, cfg):
            bad = queue.enqueue("ops-dingtalk", notice())
            late = queue.enqueue("dead", notice("inc-2"), ttl_s=0.5)
            await until(lambda: (queue.get(bad) or {}).get("state") == "failed", "failed")
            await until(lambda: (queue.get(late) or {}).get("state") == "expired", "expired")
        assert len(queue.attempts(bad)) == 1
        assert "310000" in queue.attempts(bad)[0]["error"]
        assert len(queue.attempts(late)) >= 1

    run(scenario())


def test_rate_limit_folds_the_rest_into_one_digest(store: Store, receiver: Receiver) -> None:
    # burst 2, then ~2 tokens/s: the first two go at once, the digest half a second later
    cfg = config({"ops-dingtalk": robot(receiver, rate_per_minute=120, burst=2)})
    queue = NotifyQueue(store)
    severities = ["minor", "critical", "info", "major", "critical", "warning"]
    ids = [queue.enqueue("ops-dingtalk", notice(f"inc-{i}", s))
           for i, s in enumerate(severities)]

    async def scenario() -> None:
        async with Dispatcher(queue, cfg):
            await until(lambda: len(receiver.requests) == 3 and queue.counts()["sent"] == 3,
                        "two notices and one digest")
            digested = queue.list(state="digested")
            assert len(digested) == 4
            digest_ids = {r["digest_id"] for r in digested}
            assert len(digest_ids) == 1
            digest = queue.get(digest_ids.pop())
            assert digest is not None and digest["state"] == "sent"
            assert digest["kind"] == "digest"

    run(scenario())
    firsts = [receiver.json(i)["markdown"]["title"] for i in range(2)]
    assert firsts == ["[CRITICAL] Trapped passenger — inc-1",
                      "[CRITICAL] Trapped passenger — inc-4"]
    text = receiver.json(2)["markdown"]["text"]
    assert "4 more incidents: [MAJOR]" in text
    for i in (0, 2, 3, 5):
        assert f"https://citygate.example/incidents/inc-{i}" in text
    assert {r["id"] for r in queue.list(state="sent")} >= {ids[1], ids[4]}


def test_queued_notice_survives_restart(store: Store, receiver: Receiver) -> None:
    receiver.plan.append("hang")
    cfg = config({"ops-dingtalk": robot(receiver, timeout="30s")})
    queue = NotifyQueue(store)

    async def first_run() -> int:
        async with Dispatcher(queue, cfg):
            nid = queue.enqueue("ops-dingtalk", notice())
            await until(lambda: len(receiver.requests) == 1, "the send in flight")
        return nid  # stopped mid-send: nothing recorded, the row is handed back

    holder: list[int] = []
    run(_collect(first_run(), holder))
    nid = holder[0]
    row = queue.get(nid)
    assert row is not None and row["state"] == "queued" and queue.attempts(nid) == []
    url = store.engine.url.render_as_string(hide_password=False)
    store.close()

    reopened = open_store(url)
    try:
        queue2 = NotifyQueue(reopened)

        async def second_run() -> None:
            async with Dispatcher(queue2, cfg):
                await until(lambda: (queue2.get(nid) or {}).get("state") == "sent", "redelivery")

        run(second_run())
        assert [a["ok"] for a in queue2.attempts(nid)] == [True]
        assert len(receiver.requests) == 2
    finally:
        reopened.close()


def test_row_leased_by_a_crashed_dispatcher_is_retried(store: Store, receiver: Receiver) -> None:
    cfg = config({"ops-dingtalk": robot(receiver)})
    queue = NotifyQueue(store)
    nid = queue.enqueue("ops-dingtalk", notice())
    [(_, _, seen)] = queue.due(now_ms())
    assert queue.claim([(nid, seen)], now_ms() + 700) == [nid]  # the crashed one's lease

    async def scenario() -> None:
        async with Dispatcher(queue, cfg):
            t0 = time.monotonic()
            await until(lambda: (queue.get(nid) or {}).get("state") == "sent", "after lease")
            assert time.monotonic() - t0 > 0.3  # not before the lease ran out

    run(scenario())
    assert len(receiver.requests) == 1


async def _collect(coro: Awaitable[int], out: list[int]) -> None:
    out.append(await coro)
