"""Thin senders for each channel type: render, send once, report success or a DeliveryError."""

from __future__ import annotations

import asyncio
import smtplib
import ssl
import uuid
from email.utils import parseaddr
from typing import Any
from urllib.parse import urlencode, urlsplit

import httpx
import orjson

from collector.clock import iso_seconds
from collector.mqtt_link import ConnectRefused, LinkError, LinkSettings, MqttLink
from collector.notify import render, signing
from collector.notify.config import (
    Channel,
    DingTalkChannel,
    EmailChannel,
    MqttChannel,
    SmsChannel,
    WebhookChannel,
    WeComChannel,
)
from collector.notify.model import Notice
from collector.notify.redact import redact

# Robot error codes that mean "too fast": DingTalk blocks the robot for 10 minutes.
DINGTALK_THROTTLED = {130101: 600.0, 130102: 600.0}
WECOM_THROTTLED = {45009: 60.0}
RETRYABLE_HTTP = {408, 425, 429}
# SMS provider codes that mean "too fast" (retry later) or "try again" (their side).
SMS_THROTTLED = ("isv.BUSINESS_LIMIT_CONTROL", "Throttling", "LimitExceeded",
                 "RequestLimitExceeded")
SMS_TRANSIENT = ("isp.", "InternalError", "ServiceUnavailable",
                 "FailedOperation.InsufficientBalance", "isv.AMOUNT_NOT_ENOUGH")


class DeliveryError(Exception):
    """One delivery attempt failed; the message is already redacted."""

    def __init__(self, channel: str, message: str, *, status: int | None = None,
                 retryable: bool = True, retry_after: float | None = None,
                 throttled: bool = False, hint: str = "") -> None:
        self.channel, self.status = channel, status
        self.retryable, self.retry_after, self.throttled = retryable, retry_after, throttled
        self.hint = hint
        super().__init__(redact(f"{channel}: {message}" + (f" — {hint}" if hint else "")))


class Transports:
    """Senders for every channel type, sharing one HTTP client."""

    def __init__(self, http: httpx.AsyncClient, clock_ms: Any) -> None:
        self.http = http
        self.clock_ms = clock_ms  # () -> epoch ms: DingTalk timestamps, webhook timestamps

    async def send(self, name: str, cfg: Channel, notice: Notice,
                   notification_id: int) -> int | None:
        """Deliver one notice on channel `name`; return a status code or raise DeliveryError."""
        if isinstance(cfg, WebhookChannel):
            return await self._webhook(name, cfg, notice, notification_id)
        if isinstance(cfg, DingTalkChannel):
            return await self._dingtalk(name, cfg, notice)
        if isinstance(cfg, WeComChannel):
            return await self._wecom(name, cfg, notice)
        if isinstance(cfg, EmailChannel):
            return await _to_thread(send_email, name, cfg, notice, self.clock_ms())
        if isinstance(cfg, SmsChannel):
            return await self._sms(name, cfg, notice, notification_id)
        return await publish_mqtt(name, cfg, notice, notification_id, self.clock_ms())

    async def _webhook(self, name: str, cfg: WebhookChannel, notice: Notice, nid: int) -> int:
        ts = self.clock_ms()
        body = render.webhook_body(notice, nid, ts)
        secret = cfg.secret.get_secret_value() if cfg.secret else None
        resp = await self._post(name, cfg.url.get_secret_value(), body,
                                signing.webhook_headers(secret, body, ts), cfg.timeout)
        return resp.status_code

    async def _dingtalk(self, name: str, cfg: DingTalkChannel, notice: Notice) -> int:
        secret = cfg.secret.get_secret_value() if cfg.secret else None
        url = signing.dingtalk_url(cfg.url.get_secret_value(), secret, self.clock_ms())
        body = orjson.dumps(render.dingtalk_body(notice, self.clock_ms()))
        resp = await self._post(name, url, body, {"Content-Type": "application/json"},
                                cfg.timeout)
        _robot_result(name, resp, DINGTALK_THROTTLED,
                      "check the robot's secret, security keywords and IP allow-list; "
                      "signed requests need the collector clock within 1 h")
        return resp.status_code

    async def _wecom(self, name: str, cfg: WeComChannel, notice: Notice) -> int:
        body = orjson.dumps(render.wecom_body(notice, render.wecom_msgtype(notice, cfg.msgtype),
                                              self.clock_ms()))
        resp = await self._post(name, cfg.url.get_secret_value(), body,
                                {"Content-Type": "application/json"}, cfg.timeout)
        _robot_result(name, resp, WECOM_THROTTLED,
                      "check the robot's webhook key (the robot may have been removed)")
        return resp.status_code

    async def _sms(self, name: str, cfg: SmsChannel, notice: Notice, nid: int) -> int:
        now = self.clock_ms()
        phones = sms_recipients(cfg.to, notice)
        if not phones:
            raise DeliveryError(name, "no recipients", retryable=False,
                                hint="set `to` or give the unit's on-call members phones")
        secret = cfg.access_key_secret.get_secret_value() if cfg.access_key_secret else ""
        url = cfg.endpoint()
        if cfg.provider == "http":
            body = orjson.dumps({"v": 1, "id": nid, "sent_ms": now, "to": phones,
                                 "text": render.sms_text(notice, now), "key": notice.key,
                                 "link": notice.link})
            resp = await self._post(name, url, body,
                                    signing.webhook_headers(secret or None, body, now),
                                    cfg.timeout)
            return resp.status_code
        params = render.sms_params(notice, now, cfg.params, cfg.param_max_chars)
        if cfg.provider == "aliyun":
            query = signing.aliyun_signed(secret, "POST", signing.aliyun_sms_params(
                cfg.access_key_id, phones=phones, sign_name=cfg.sign_name,
                template_code=cfg.template, template_param=orjson.dumps(params).decode(),
                timestamp=iso_seconds(now),
                nonce=uuid.uuid4().hex, region=cfg.region_name()))
            resp = await self._post(name, url, urlencode(query).encode(),
                                    {"Content-Type": "application/x-www-form-urlencoded"},
                                    cfg.timeout, accept_error=True)
            _aliyun_result(name, resp)
            return resp.status_code
        body = orjson.dumps({"PhoneNumberSet": [e164(p) for p in phones],
                             "SmsSdkAppId": cfg.sdk_app_id, "SignName": cfg.sign_name,
                             "TemplateId": cfg.template,
                             "TemplateParamSet": [params[n] for n in cfg.params]})
        ts = now // 1000
        host = urlsplit(url).netloc
        headers = {"Content-Type": signing.JSON_UTF8, "X-TC-Action": "SendSms",
                   "X-TC-Version": signing.TENCENT_SMS_VERSION, "X-TC-Timestamp": str(ts),
                   "X-TC-Region": cfg.region_name(),
                   "Authorization": signing.tc3_authorization(
                       cfg.access_key_id, secret, service="sms", host=host, timestamp=ts,
                       payload=body)}
        resp = await self._post(name, url, body, headers, cfg.timeout)
        _tencent_result(name, resp)
        return resp.status_code

    async def _post(self, name: str, url: str, body: bytes, headers: dict[str, str],
                    timeout_s: float, *, accept_error: bool = False) -> httpx.Response:
        try:
            resp = await self.http.post(url, content=body, headers=headers, timeout=timeout_s)
        except httpx.TimeoutException:
            raise DeliveryError(name, f"no response within {timeout_s:g} s") from None
        except httpx.HTTPError as exc:
            raise DeliveryError(name, f"{type(exc).__name__}: {exc}") from None
        if resp.is_success or (accept_error and resp.status_code < 500 and _is_json(resp)):
            return resp
        retry_after = _retry_after(resp.headers.get("Retry-After"))
        retryable = resp.status_code >= 500 or resp.status_code in RETRYABLE_HTTP
        raise DeliveryError(name, f"HTTP {resp.status_code} {resp.reason_phrase}",
                            status=resp.status_code, retryable=retryable,
                            retry_after=retry_after, throttled=resp.status_code == 429)


def _retry_after(value: str | None) -> float | None:
    """Seconds from a Retry-After header (the delta-seconds form only)."""
    try:
        return max(0.0, float(value)) if value else None
    except ValueError:
        return None


def _is_json(resp: httpx.Response) -> bool:
    return "json" in resp.headers.get("content-type", "")


def sms_recipients(to: list[str], notice: Notice) -> list[str]:
    """Configured numbers plus the notice's on-call phones, without duplicates."""
    return list(dict.fromkeys([*to, *notice.mention_phones]))


def e164(phone: str) -> str:
    """Tencent wants E.164: a mainland mobile number without a prefix gets +86."""
    if phone.startswith("+"):
        return phone
    return f"+86{phone}" if len(phone) == 11 and phone.startswith("1") else f"+{phone}"


def _sms_error(name: str, code: str, message: str, status: int) -> DeliveryError:
    text = f"SMS provider error {code}: {message}"
    if code.startswith(SMS_THROTTLED):
        return DeliveryError(name, text, status=status, throttled=True, retry_after=60.0)
    if code.startswith(SMS_TRANSIENT):
        return DeliveryError(name, text, status=status)
    return DeliveryError(name, text, status=status, retryable=False,
                         hint="check the access key, signature name, template and its params")


def _aliyun_result(name: str, resp: httpx.Response) -> None:
    """Aliyun answers {"Code": "OK", ...}; anything else (also on HTTP 4xx) is an error."""
    try:
        doc = resp.json()
        code = str(doc.get("Code", ""))
    except (ValueError, AttributeError):
        raise DeliveryError(name, "SMS gateway answered with something that is not JSON",
                            status=resp.status_code) from None
    if code != "OK":
        raise _sms_error(name, code, str(doc.get("Message", "")), resp.status_code)


def _tencent_result(name: str, resp: httpx.Response) -> None:
    """Tencent answers 200 with Response.Error, or a SendStatusSet of per-number codes."""
    try:
        doc = resp.json()["Response"]
        error = doc.get("Error")
        statuses = list(doc.get("SendStatusSet") or [])
    except (ValueError, KeyError, TypeError, AttributeError):
        raise DeliveryError(name, "SMS gateway answered with something unexpected",
                            status=resp.status_code) from None
    if error:
        raise _sms_error(name, str(error.get("Code", "")), str(error.get("Message", "")),
                         resp.status_code)
    if statuses and not any(s.get("Code") == "Ok" for s in statuses):
        first = statuses[0]
        raise _sms_error(name, str(first.get("Code", "")), str(first.get("Message", "")),
                         resp.status_code)


def _robot_result(name: str, resp: httpx.Response, throttled: dict[int, float],
                  hint: str) -> None:
    """Robots answer HTTP 200 with {"errcode": n}; raise unless n == 0."""
    try:
        doc = resp.json()
        code = int(doc.get("errcode", 0))
    except (ValueError, TypeError, AttributeError):
        raise DeliveryError(name, "robot answered with something that is not JSON",
                            status=resp.status_code) from None
    if code == 0:
        return
    message = f"robot error {code}: {doc.get('errmsg', '')}"
    if code in throttled:
        raise DeliveryError(name, message, status=code, throttled=True,
                            retry_after=throttled[code])
    raise DeliveryError(name, message, status=code, retryable=False, hint=hint)


async def _to_thread(fn: Any, *args: Any) -> int | None:
    result: int | None = await asyncio.to_thread(fn, *args)
    return result


def send_email(name: str, cfg: EmailChannel, notice: Notice, sent_ms: int | None = None) -> int:
    """Send one e-mail over SMTP (blocking; run in a thread); return the reply code."""
    msg = render.email_message(notice, cfg.sender, cfg.to, sent_ms)
    rcpts = render.email_recipients(cfg.to, notice)
    if not rcpts:
        raise DeliveryError(name, "no recipients", retryable=False,
                            hint="set `to` or give the notice on-call e-mail addresses")
    password = cfg.password.get_secret_value() if cfg.password else None
    try:
        if cfg.ssl:
            smtp: smtplib.SMTP = smtplib.SMTP_SSL(cfg.host, cfg.port, timeout=cfg.timeout,
                                                  context=ssl.create_default_context())
        else:
            smtp = smtplib.SMTP(cfg.host, cfg.port, timeout=cfg.timeout)
        with smtp:
            if cfg.starttls and not cfg.ssl:
                smtp.starttls(context=ssl.create_default_context())
            if cfg.username:
                smtp.login(cfg.username, password or "")
            smtp.send_message(msg, from_addr=parseaddr(cfg.sender)[1], to_addrs=rcpts)
    except smtplib.SMTPRecipientsRefused as exc:
        raise DeliveryError(name, f"all recipients refused: {sorted(exc.recipients)}",
                            retryable=False) from None
    except smtplib.SMTPResponseException as exc:
        text = exc.smtp_error.decode(errors="replace") if isinstance(exc.smtp_error, bytes) \
            else str(exc.smtp_error)
        raise DeliveryError(name, f"SMTP {exc.smtp_code} {text}", status=exc.smtp_code,
                            retryable=exc.smtp_code < 500) from None
    except (OSError, smtplib.SMTPException) as exc:
        raise DeliveryError(name, f"SMTP {type(exc).__name__}: {exc}") from None
    return 250


async def publish_mqtt(name: str, cfg: MqttChannel, notice: Notice, nid: int,
                       sent_ms: int) -> int:
    """Publish one notice at QoS 1 and return once the broker acknowledged it (PUBACK).

    One short connection per notice: notices are rare and a connection per send has no
    state to go stale; the PUBACK is the only success signal.
    """
    link = MqttLink(LinkSettings.from_url(
        cfg.broker, username=cfg.username,
        password=cfg.password.get_secret_value() if cfg.password else None,
        client_id=f"citygate-notify-{uuid.uuid4().hex[:12]}", ca_file=cfg.ca_file,
        connect_timeout=cfg.timeout))
    payload = render.mqtt_payload(notice, nid, sent_ms)
    stage = "CONNACK"
    try:
        async with link.connect_once(cfg.timeout):
            stage = "PUBACK"
            await link.publish(cfg.topic_name(), payload, qos=1, timeout=cfg.timeout)
    except ConnectRefused as exc:  # credentials are not transient; other refusals may be
        raise DeliveryError(name, str(exc), status=exc.code, retryable=not exc.bad_credentials,
                            hint="check the channel's username and password") from None
    except TimeoutError:
        raise DeliveryError(name, f"no {stage} within {cfg.timeout:g} s") from None
    except (OSError, ValueError, LinkError) as exc:
        raise DeliveryError(name, f"MQTT {type(exc).__name__}: {exc}") from None
    return 0
