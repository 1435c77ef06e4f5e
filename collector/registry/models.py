"""Public models of the registry and access API answers (typed for OpenAPI).

`extra="allow"` keeps a column added later visible before its model names it.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field


class _Out(BaseModel):
    model_config = ConfigDict(extra="allow")


class RegistrySiteOut(_Out):
    """A registry site: where its gateways are and who answers for it."""

    site_id: str
    name: str
    lat: float | None
    lon: float | None
    district: str
    responsible_unit: str
    created: int = Field(description="epoch ms")


class RegisteredGatewayOut(_Out):
    """A registered gateway (never its credentials)."""

    gateway_id: str
    site_id: str
    created: int = Field(description="epoch ms")
    created_by: str
    revoked: bool
    config_version: int
    commissioned_at: int | None
    commissioning: Any = Field(description="the last commissioning results")


class CommissioningRunOut(_Out):
    """One commissioning run uploaded by a technician's tool."""

    id: int
    gateway_id: str
    ts: int = Field(description="when the checks ran (technician's clock), epoch ms")
    received: int
    technician: str
    passed: bool
    results: list[Any] = Field(description="the checks and their outcomes")
    run_id: str


class TokenOut(_Out):
    """An API token's name and scope (the secret is never stored)."""

    name: str
    role: str
    unit: str | None
    member: str | None
    created: int
    revoked: bool
    rate_per_min: int | None


class MqttCredentialsOut(_Out):
    """How a gateway logs in to the broker (the password is shown only in this answer)."""

    username: str
    password: str
    brokers: list[str]


class IssuedOut(_Out):
    """What a new (or re-keyed) gateway receives: identity, credentials, CA and config."""

    gateway_id: str
    site_id: str
    mqtt: MqttCredentialsOut
    ca_pem: str | None = Field(description="the broker's CA certificate (PEM), if TLS")
    config_toml: str = Field(description="the gateway's starting config")


class RegistrationOut(RegisteredGatewayOut):
    """A gateway's registration with its registered devices."""

    devices: list[dict[str, Any]] = Field(description="bus, profile and unit of each device")


class ProvisionTokenOut(_Out):
    """A one-time token a technician's tool exchanges for a gateway identity."""

    token: str
    site_id: str
    expires: int = Field(description="epoch ms")


class StoredOut(_Out):
    """Whether an upload was new (false: the same run was stored before)."""

    stored: bool


class ReplyOut(_Out):
    """A gateway's answer to a command."""

    gateway: str
    command: str
    id: str
    ok: bool
    detail: dict[str, Any]


class PushOut(_Out):
    """A config push and what the gateway did with it."""

    push_id: str
    gateway_id: str
    version: int
    sent: int | None
    status: str = Field(description="sent, applied, confirmed, refused or rolled_back")
    detail: Any


class WhoAmIOut(_Out):
    """The calling token."""

    name: str
    role: str
    unit: str | None
    member: str | None
    rate_per_min: int | None


class NewTokenOut(_Out):
    """A new token; `token` is its secret, shown only now."""

    name: str
    role: str
    unit: str | None
    member: str | None
    token: str


class MqttVerdictOut(_Out):
    """The broker auth plugin's answer (EMQX / mosquitto-go-auth HTTP format)."""

    result: str = Field(description="allow or deny")
    is_superuser: bool | None = None


class SigninLinkOut(_Out):
    """A one-time sign-in link for a crew member, with its QR code."""

    url: str
    qr_svg: str = Field(description="inline SVG of the link's QR code")
    expires: str | None
    code_expires: int
    member: str | None
    unit: str | None
    token_name: str


class SigninTokenOut(_Out):
    """The crew token a sign-in code was exchanged for."""

    token: str
    token_name: str
    role: str
    unit: str | None
    member: str | None
