"""Local push receivers for the demo, HIL tests and benchmarks: a webhook endpoint, SMTP and
SMS gateways (Aliyun SMS, Tencent Cloud SMS, a generic HTTP one).

They stand in for a department's webhook, mail server and SMS provider. Every push is recorded
(in memory, and as a file when a directory is given) and shown on a small page at the
receiver's `/`, with `/pushes.json` for programs. Webhook signatures (X-CityGate-Signature,
HMAC-SHA256 over the raw body) are checked when a secret is set; a push with a bad signature is
answered 401. The SMS gateways recompute the provider's signature (Aliyun RPC HMAC-SHA1, Tencent
TC3-HMAC-SHA256) with `sms_secret` and answer as the provider does: success, or its signature
error code.

    receivers = Receivers(secret="whsec-...", directory=Path("var/demo/pushes")).start()
    receivers.webhook_url("crew")   # http://127.0.0.1:PORT/hook/crew
    receivers.sms_url("aliyun")     # http://127.0.0.1:PORT/sms/aliyun (also tencent, http)
    receivers.smtp_port             # for an `email` channel with starttls = false
    receivers.stop()
"""

from __future__ import annotations

import html
import json
import logging
import threading
import time
from dataclasses import asdict, dataclass, field
from email import message_from_bytes, policy
from email.message import EmailMessage
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl

from aiosmtpd.controller import Controller
from aiosmtpd.smtp import Envelope

from citygate.rig import free_port
from collector.notify.signing import (
    SIGNATURE_HEADER,
    verify_aliyun,
    verify_tc3,
    verify_webhook,
)

log = logging.getLogger(__name__)
PAGE_REFRESH_S = 3


@dataclass(frozen=True, slots=True)
class Push:
    """One push as received: which channel, when, the answer given and what it said."""

    seq: int
    channel: str  # "webhook:<name>", "email" or "sms:<provider>"
    received: float  # epoch seconds
    monotonic: float  # time.monotonic() at receipt (same clock as other local processes)
    status: int  # what the receiver answered (2xx: delivered)
    verified: bool | None  # signature valid; None when no secret is configured
    key: str  # the notice key, e.g. "incident-3"
    title: str
    link: str
    body: dict[str, Any] = field(default_factory=dict)  # webhook JSON, or e-mail headers/text

    @property
    def delivered(self) -> bool:
        """True when the receiver accepted the push."""
        return 200 <= self.status < 300


@dataclass
class Receivers:
    """A webhook receiver and an SMTP server on local ports, recording every push they get."""

    secret: str | None = None
    directory: Path | None = None
    host: str = "127.0.0.1"
    http_port: int = 0
    smtp_port: int = 0
    failing: int | None = None  # answer webhooks with this HTTP status instead of 200
    sms_key_id: str = "LTAI-citygate-test"  # the AccessKeyId / SecretId the SMS fakes expect
    sms_secret: str | None = None  # their AccessKeySecret / SecretKey (None: accept any)
    _pushes: list[Push] = field(default_factory=list)
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _http: ThreadingHTTPServer | None = None
    _http_thread: threading.Thread | None = None
    _smtp: Controller | None = None

    # --- lifecycle -----------------------------------------------------------------------------

    def start(self) -> Receivers:
        """Open both servers (the HTTP one on a free port unless one was given)."""
        if self.directory is not None:
            self.directory.mkdir(parents=True, exist_ok=True)
        self._http = ThreadingHTTPServer((self.host, self.http_port), _handler(self))
        self._http.daemon_threads = True
        self.http_port = int(self._http.server_address[1])
        self._http_thread = threading.Thread(target=self._http.serve_forever,
                                             name="webhook-receiver", daemon=True)
        self._http_thread.start()
        try:
            self.smtp_port = self.smtp_port or free_port()
            self._smtp = Controller(_Mailbox(self), hostname=self.host, port=self.smtp_port)
            self._smtp.start()
        except BaseException:
            self.stop()
            raise
        log.info("receivers: webhooks at %s/hook/<name>, SMTP at %s:%d, page at %s/",
                 self.base, self.host, self.smtp_port, self.base)
        return self

    def stop(self) -> None:
        """Close both servers (idempotent)."""
        http, self._http = self._http, None
        if http is not None:
            http.shutdown()
            http.server_close()
        smtp, self._smtp = self._smtp, None
        if smtp is not None:
            smtp.stop()

    def __enter__(self) -> Receivers:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # --- addresses and results -------------------------------------------------------------------

    @property
    def base(self) -> str:
        """http://HOST:PORT of the webhook receiver and its page."""
        return f"http://{self.host}:{self.http_port}"

    def webhook_url(self, name: str) -> str:
        """The URL a webhook channel called `name` should post to."""
        return f"{self.base}/hook/{name}"

    def sms_url(self, provider: str) -> str:
        """The endpoint an `sms` channel of `provider` (aliyun, tencent, http) should use."""
        return f"{self.base}/sms/{provider}"

    def pushes(self, channel: str | None = None, *, delivered: bool | None = None) -> list[Push]:
        """Pushes received so far, oldest first, optionally of one channel / delivery outcome."""
        with self._lock:
            out = list(self._pushes)
        return [p for p in out if (channel is None or p.channel == channel)
                and (delivered is None or p.delivered == delivered)]

    def counts(self) -> dict[str, int]:
        """Delivered pushes per channel."""
        out: dict[str, int] = {}
        for p in self.pushes(delivered=True):
            out[p.channel] = out.get(p.channel, 0) + 1
        return out

    # --- recording -----------------------------------------------------------------------------

    def record(self, channel: str, status: int, verified: bool | None,
               body: dict[str, Any], raw: bytes, suffix: str) -> Push:
        """Keep one push (and write it to the directory); return it."""
        with self._lock:
            push = Push(len(self._pushes) + 1, channel, time.time(), time.monotonic(), status,
                        verified, str(body.get("key", "")), str(body.get("title", "")),
                        str(body.get("link", "")), body)
            self._pushes.append(push)
        if self.directory is not None:
            name = f"{push.seq:04d}-{channel.replace(':', '-')}-{status}.{suffix}"
            (self.directory / name).write_bytes(raw)
        log.info("receivers: %s %s (%d) %s", channel, push.key, status, push.title)
        return push

    def page(self) -> str:
        """The HTML page listing every push, newest first."""
        rows = "".join(
            f"<tr><td>{p.seq}</td><td>{time.strftime('%H:%M:%S', time.localtime(p.received))}"
            f"</td><td>{html.escape(p.channel)}</td><td>{p.status}</td>"
            f"<td>{_signature_cell(p.verified)}</td><td>{html.escape(p.title)}</td>"
            f"<td><a href=\"{html.escape(p.link, quote=True)}\">{html.escape(p.link)}</a></td></tr>"
            for p in reversed(self.pushes()))
        return (f"<!doctype html><html><head><meta charset=utf-8>"
                f"<meta http-equiv=refresh content={PAGE_REFRESH_S}>"
                "<title>CityGate demo — received pushes</title><style>body{font-family:sans-serif}"
                "td,th{padding:2px 8px;text-align:left}</style></head><body>"
                f"<h2>Pushes received ({len(self.pushes(delivered=True))} delivered)</h2>"
                "<p>Webhooks and e-mails the collector sent to this machine's local receivers. "
                "<a href=/pushes.json>JSON</a></p><table><tr><th>#</th><th>time</th>"
                "<th>channel</th><th>answer</th><th>signature</th><th>title</th><th>link</th></tr>"
                f"{rows}</table></body></html>")


def _signature_cell(verified: bool | None) -> str:
    return {True: "valid", False: "INVALID", None: "—"}[verified]


def _sms_push(to: list[str], values: list[str], named: dict[str, str] | None,
              text: str = "") -> dict[str, Any]:
    """What an SMS carried, in the recorded push's terms (title, link, key)."""
    link = (named or {}).get("link") or next((v for v in values if v.startswith("http")), "")
    if not link and text:
        link = next((w for w in reversed(text.split()) if w.startswith("http")), "")
    title = (named or {}).get("title") or (values[0] if values else text)
    key = link.rsplit("#", 1)[1] if "#" in link else ""
    return {"key": key, "title": title, "link": link, "to": to, "params": named or values,
            "text": text}


def _aliyun_sms(rx: Receivers, raw: bytes) -> tuple[int, bool | None, dict[str, Any], bytes]:
    params = dict(parse_qsl(raw.decode(), keep_blank_values=True))
    ok = None if rx.sms_secret is None else (
        params.get("AccessKeyId") == rx.sms_key_id
        and verify_aliyun(rx.sms_secret, "POST", params))
    try:
        named = json.loads(params.get("TemplateParam", "{}"))
    except ValueError:
        named = {}
    body = _sms_push(params.get("PhoneNumbers", "").split(","), [], named)
    body["sign_name"], body["template"] = params.get("SignName"), params.get("TemplateCode")
    answer = {"Code": "OK", "Message": "OK", "BizId": "900000000000000000^0",
              "RequestId": "00000000-0000-4000-8000-000000000000"} if ok is not False else {
        "Code": "SignatureDoesNotMatch", "Message": "Specified signature is not matched "
        "with our calculation."}
    return (200 if ok is not False else 400), ok, body, json.dumps(answer).encode()


def _tencent_sms(rx: Receivers, raw: bytes,
                 headers: Any) -> tuple[int, bool | None, dict[str, Any], bytes]:
    ok = None if rx.sms_secret is None else verify_tc3(
        rx.sms_key_id, rx.sms_secret, headers.get("Authorization", ""), service="sms",
        host=headers.get("Host", ""), timestamp=int(headers.get("X-TC-Timestamp", "0") or 0),
        payload=raw, content_type=headers.get("Content-Type", ""))
    try:
        doc = json.loads(raw)
    except ValueError:
        doc = {}
    body = _sms_push(list(doc.get("PhoneNumberSet", [])),
                     [str(v) for v in doc.get("TemplateParamSet", [])], None)
    body["sign_name"], body["template"] = doc.get("SignName"), doc.get("TemplateId")
    request_id = "00000000-0000-4000-8000-000000000000"
    answer: dict[str, Any] = {"Response": {"SendStatusSet": [
        {"PhoneNumber": p, "Code": "Ok", "Message": "send success", "SerialNo": "1"}
        for p in body["to"]], "RequestId": request_id}} if ok is not False else {
        "Response": {"Error": {"Code": "AuthFailure.SignatureFailure",
                               "Message": "The provided credentials could not be validated."},
                     "RequestId": request_id}}
    return 200, ok, body, json.dumps(answer).encode()


def _http_sms(rx: Receivers, raw: bytes,
              headers: Any) -> tuple[int, bool | None, dict[str, Any], bytes]:
    ok = None if rx.sms_secret is None else verify_webhook(
        rx.sms_secret, raw, headers.get(SIGNATURE_HEADER, ""))
    try:
        doc = json.loads(raw)
    except ValueError:
        doc = {}
    body = _sms_push(list(doc.get("to", [])), [], None, str(doc.get("text", "")))
    return (401 if ok is False else 200), ok, body, b'{"ok": true}' if ok is not False \
        else b'{"ok": false}'


def _handler(receivers: Receivers) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            raw = self.rfile.read(int(self.headers.get("Content-Length", 0)))
            path = self.path.split("?")[0]
            if path.startswith("/sms/"):
                self._sms(path.removeprefix("/sms/").strip("/"), raw)
                return
            name = path.removeprefix("/hook/").strip("/") or "default"
            verified = None
            if receivers.secret:
                verified = verify_webhook(receivers.secret, raw,
                                          self.headers.get(SIGNATURE_HEADER, ""))
            status = 401 if verified is False else (receivers.failing or 200)
            try:
                body = json.loads(raw)
            except ValueError:
                body = {"raw": raw.decode(errors="replace")}
            receivers.record(f"webhook:{name}", status, verified,
                             body if isinstance(body, dict) else {"raw": body}, raw, "json")
            self._answer(status, b'{"ok": true}' if status < 300 else b'{"ok": false}',
                         "application/json")

        def _sms(self, provider: str, raw: bytes) -> None:
            if provider == "aliyun":
                status, ok, body, answer = _aliyun_sms(receivers, raw)
            elif provider == "tencent":
                status, ok, body, answer = _tencent_sms(receivers, raw, self.headers)
            else:
                status, ok, body, answer = _http_sms(receivers, raw, self.headers)
            # Tencent answers a bad signature with HTTP 200 and an error: record it as refused.
            recorded = 401 if ok is False and status < 400 else status
            receivers.record(f"sms:{provider}", recorded, ok, body, raw, "sms")
            self._answer(status, answer, "application/json")

        def do_GET(self) -> None:
            if self.path.startswith("/pushes.json"):
                data = json.dumps([asdict(p) for p in receivers.pushes()]).encode()
                self._answer(200, data, "application/json")
            else:
                self._answer(200, receivers.page().encode(), "text/html; charset=utf-8")

        def _answer(self, status: int, data: bytes, content_type: str) -> None:
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, format: str, *args: Any) -> None:
            del format, args  # every push is logged by `record`

    return Handler


class _Mailbox:
    """aiosmtpd handler: every message becomes a recorded push."""

    def __init__(self, receivers: Receivers) -> None:
        self.receivers = receivers

    async def handle_DATA(self, _server: Any, _session: Any, envelope: Envelope) -> str:
        raw = envelope.original_content or envelope.content or b""
        raw = raw if isinstance(raw, bytes) else raw.encode()
        msg = message_from_bytes(raw, policy=policy.default)
        text = ""
        if isinstance(msg, EmailMessage):
            part = msg.get_body(preferencelist=("plain",))
            text = part.get_content() if part is not None else ""
        link = next((w for w in reversed(text.split()) if w.startswith("http")), "")  # ack line
        self.receivers.record("email", 250, None, {
            "key": msg.get("X-CityGate-Key", ""), "title": msg.get("Subject", ""),
            "link": link, "from": envelope.mail_from, "to": list(envelope.rcpt_tos),
            "text": text}, raw, "eml")
        return "250 OK"
