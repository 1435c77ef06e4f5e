"""Push channel configuration: the `[notify]` section of collector.toml, secrets as SecretStr."""

from __future__ import annotations

import os
import re
from typing import Annotated, Any, Literal
from urllib.parse import parse_qs, urlsplit

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)

from collector.config import CollectorConfigError
from collector.notify.redact import redact
from devices.durations import parse_duration

Duration = Annotated[float, BeforeValidator(parse_duration), Field(ge=0)]
CHANNEL_NAME_RE = re.compile(r"^[a-z0-9][a-z0-9_.-]{0,63}$")
CREW_RE = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
ENV_PREFIX = "env:"


def _from_env(value: Any) -> Any:
    """A secret written as "env:NAME" is read from the collector's environment at load."""
    if isinstance(value, str) and value.startswith(ENV_PREFIX):
        name = value.removeprefix(ENV_PREFIX)
        if name not in os.environ:
            raise ValueError(f"environment variable {name} is not set")
        return os.environ[name]
    return value


EnvSecret = Annotated[SecretStr, BeforeValidator(_from_env)]


def _http_url(value: SecretStr, *, need: str | None = None) -> SecretStr:
    """Check an http(s) URL held as a secret, optionally requiring a query parameter."""
    parts = urlsplit(value.get_secret_value())
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise ValueError("must be an http(s):// URL")
    if need and not parse_qs(parts.query).get(need):
        raise ValueError(f"must contain the robot's `{need}=` query parameter "
                         "(copy the whole webhook URL from the group's robot settings)")
    return value


class _Channel(BaseModel):
    """What every channel has: rate limit, digest behaviour and delivery timeout."""

    model_config = ConfigDict(extra="forbid", frozen=True, hide_input_in_errors=True)

    rate_per_minute: float | None = Field(default=None, gt=0)  # None: unlimited
    burst: int | None = Field(default=None, ge=1)  # bucket size; default rate_per_minute / 2
    digest: bool = True  # fold notices held back by the rate limit into one digest message
    digest_max_items: int = Field(default=20, ge=1, le=200)
    timeout: Duration = 10.0

    def bucket(self) -> tuple[int, float] | None:
        """Token bucket (capacity, refill per second), or None when unlimited.

        The providers state their limit as "N per minute" over any window; a bucket of
        capacity B refilling at (N - B)/min admits at most B + (N - B) = N in any 60 s.
        """
        if self.rate_per_minute is None:
            return None
        rate = self.rate_per_minute
        burst = self.burst if self.burst is not None else max(1, int(rate // 2))
        burst = min(burst, max(1, int(rate)))
        return burst, max(rate - burst, rate / 100) / 60.0

    def secrets(self) -> list[str]:
        """Every secret value of this channel, for log redaction."""
        out: list[str] = []
        for name in type(self).model_fields:
            value = getattr(self, name)
            if isinstance(value, SecretStr):
                raw = value.get_secret_value()
                out.append(raw)
                for vals in parse_qs(urlsplit(raw).query).values():
                    out.extend(vals)
        return [s for s in out if s]

    def describe(self) -> dict[str, Any]:
        """Settings safe to show in the API: secrets masked, URLs redacted."""
        out: dict[str, Any] = {}
        for name in type(self).model_fields:
            value = getattr(self, name)
            if isinstance(value, SecretStr):
                raw = value.get_secret_value()
                out[name] = redact(raw) if "://" in raw else "***"
            else:
                out[name] = value
        return out


class WebhookChannel(_Channel):
    """A generic JSON webhook, HMAC-SHA256 signed over the raw body when `secret` is set."""

    type: Literal["webhook"]
    url: SecretStr
    secret: SecretStr | None = None

    @field_validator("url")
    @classmethod
    def _url(cls, v: SecretStr) -> SecretStr:
        return _http_url(v)


class DingTalkChannel(_Channel):
    """A DingTalk custom robot (markdown; signed mode when `secret` is set)."""

    type: Literal["dingtalk"]
    url: SecretStr
    secret: SecretStr | None = None
    rate_per_minute: float | None = Field(default=20, gt=0)

    @field_validator("url")
    @classmethod
    def _url(cls, v: SecretStr) -> SecretStr:
        return _http_url(v, need="access_token")


class WeComChannel(_Channel):
    """A WeCom (企业微信) group robot; the `key=` in its URL is a bearer secret."""

    type: Literal["wecom"]
    url: SecretStr
    # WeCom honours mentioned_mobile_list only in text messages. "auto": markdown (title,
    # severity colour, link) unless the notice @-mentions someone, then text with the list.
    msgtype: Literal["auto", "markdown", "text"] = "auto"
    rate_per_minute: float | None = Field(default=20, gt=0)

    @field_validator("url")
    @classmethod
    def _url(cls, v: SecretStr) -> SecretStr:
        return _http_url(v, need="key")


class EmailChannel(_Channel):
    """SMTP e-mail: multipart plain text + simple HTML."""

    model_config = ConfigDict(extra="forbid", frozen=True, hide_input_in_errors=True,
                              populate_by_name=True)

    type: Literal["email"]
    host: str
    port: int = Field(default=587, ge=1, le=65535)
    starttls: bool = True
    ssl: bool = False  # implicit TLS (port 465); excludes starttls
    username: str | None = None
    password: SecretStr | None = None
    sender: str = Field(alias="from")
    to: list[str] = Field(default_factory=list)
    rate_per_minute: float | None = Field(default=30, gt=0)

    @field_validator("to")
    @classmethod
    def _addresses(cls, v: list[str]) -> list[str]:
        bad = [a for a in v if "@" not in a]
        if bad:
            raise ValueError(f"not e-mail addresses: {bad}")
        return v


class MqttChannel(_Channel):
    """Publish to a crew's topic (QoS 1) for the crew app and field terminals."""

    type: Literal["mqtt"]
    broker: str = "mqtt://127.0.0.1:1883"  # mqtt:// or mqtts://, no credentials here
    username: str | None = None
    password: SecretStr | None = None
    crew: str
    topic: str | None = None  # default citygate/v1/_crew/<crew>/notices
    ca_file: str | None = None

    @field_validator("broker")
    @classmethod
    def _broker(cls, v: str) -> str:
        parts = urlsplit(v)
        if parts.scheme not in ("mqtt", "mqtts") or not parts.hostname:
            raise ValueError("must be mqtt://host:port or mqtts://host:port")
        if parts.password or parts.username:
            raise ValueError("put credentials in `username` / `password`, not in the URL")
        return v

    @field_validator("crew")
    @classmethod
    def _crew(cls, v: str) -> str:
        if not CREW_RE.fullmatch(v):
            raise ValueError("crew ids are letters, digits, '_' and '-' (used in the topic)")
        return v

    def topic_name(self) -> str:
        """The topic notices are published on."""
        return self.topic or f"citygate/v1/_crew/{self.crew}/notices"


SMS_ENDPOINTS = {"aliyun": "https://dysmsapi.aliyuncs.com/",
                 "tencent": "https://sms.tencentcloudapi.com/"}
SMS_REGIONS = {"aliyun": "cn-hangzhou", "tencent": "ap-guangzhou"}


class SmsChannel(_Channel):
    """Text messages through an SMS gateway: Aliyun SMS, Tencent Cloud SMS, or a generic one.

    The providers send pre-approved templates: `template` (Aliyun TemplateCode / Tencent
    TemplateId) is filled with `params`, taken from the notice by name (title, severity, link,
    key, and its facts: address, floor, contact, trapped_for...). `http` POSTs a signed JSON
    {"to", "text", ...} like a webhook. Recipients are `to` plus the notice's on-call phones.
    Secrets may be given as "env:NAME".
    """

    type: Literal["sms"]
    provider: Literal["aliyun", "tencent", "http"]
    url: EnvSecret | None = None  # default: the provider's public endpoint
    access_key_id: str = ""  # Aliyun AccessKeyId / Tencent SecretId
    access_key_secret: EnvSecret | None = None  # Aliyun AccessKeySecret / Tencent SecretKey /
    # the HMAC secret of the http gateway
    sign_name: str = ""  # the approved signature (签名)
    template: str = ""
    sdk_app_id: str = ""  # Tencent SmsSdkAppId
    region: str = ""  # default cn-hangzhou (Aliyun), ap-guangzhou (Tencent)
    params: tuple[str, ...] = ("title", "address", "link")
    param_max_chars: int | None = Field(default=None, ge=1, le=500)
    to: list[str] = Field(default_factory=list)

    @field_validator("url")
    @classmethod
    def _url(cls, v: SecretStr | None) -> SecretStr | None:
        return None if v is None else _http_url(v)

    @field_validator("to")
    @classmethod
    def _phones(cls, v: list[str]) -> list[str]:
        bad = [p for p in v if not re.fullmatch(r"\+?[0-9]{5,20}", p)]
        if bad:
            raise ValueError(f"not phone numbers: {bad}")
        return v

    @model_validator(mode="after")
    def _complete(self) -> SmsChannel:
        need = {"aliyun": ("access_key_id", "access_key_secret", "sign_name", "template"),
                "tencent": ("access_key_id", "access_key_secret", "sign_name", "template",
                            "sdk_app_id"),
                "http": ("url",)}[self.provider]
        missing = [n for n in need if not getattr(self, n)]
        if missing:
            raise ValueError(f"provider {self.provider!r} needs {', '.join(missing)}")
        return self

    def endpoint(self) -> str:
        """Where requests go."""
        return self.url.get_secret_value() if self.url else SMS_ENDPOINTS[self.provider]

    def region_name(self) -> str:
        """The provider region."""
        return self.region or SMS_REGIONS.get(self.provider, "")


Channel = Annotated[WebhookChannel | DingTalkChannel | WeComChannel | EmailChannel | MqttChannel
                    | SmsChannel, Field(discriminator="type")]


class NotifyConfig(BaseModel):
    """The `[notify]` section: channels by name plus retry and polling policy."""

    model_config = ConfigDict(extra="forbid", frozen=True, hide_input_in_errors=True)

    channels: dict[str, Channel] = Field(default_factory=dict)
    retry_base: Duration = 5.0  # first retry after ~5 s, doubling
    retry_cap: Duration = 600.0  # never wait longer than 10 min between attempts
    default_ttl: Duration = 86400.0  # a notice not delivered within a day expires
    poll: Duration = Field(default=1.0, gt=0)  # fallback poll of the queue (other writers)

    @field_validator("channels")
    @classmethod
    def _names(cls, v: dict[str, Any]) -> dict[str, Any]:
        bad = [n for n in v if not CHANNEL_NAME_RE.fullmatch(n)]
        if bad:
            raise ValueError(f"channel names {bad}: use lower-case letters, digits, '_.-'")
        return v

    def secrets(self) -> list[str]:
        """Every secret of every channel, for log redaction."""
        return [s for ch in self.channels.values() for s in ch.secrets()]

    def describe(self) -> dict[str, dict[str, Any]]:
        """Channels as safe-to-show dicts (API output)."""
        return {name: ch.describe() for name, ch in self.channels.items()}


def load_notify_config(section: dict[str, Any], *, source: str = "collector.toml") -> NotifyConfig:
    """Validate the raw `[notify]` table; errors name the key and never echo the value."""
    try:
        return NotifyConfig.model_validate(section)
    except ValidationError as exc:
        lines = []
        for err in exc.errors(include_input=False, include_url=False):
            loc = ".".join(str(p) for p in ("notify", *err["loc"]))
            lines.append(f"{source}: {loc}: {redact(err['msg'])}")
        raise CollectorConfigError("\n".join(lines)) from None
