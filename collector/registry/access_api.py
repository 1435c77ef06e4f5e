"""API tokens (admin), `whoami`, and the MQTT auth/ACL hooks a scale-out broker (EMQX) calls."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, HTTPException
from pydantic import BaseModel, Field

from collector import auth
from collector.auth import Principal, Role, require
from collector.registry.api import RegistryDep

router = APIRouter(prefix="/api/v1", tags=["access"])
Admin = Annotated[Principal, Depends(require(Role.ADMIN))]
Broker = Annotated[Principal, Depends(require(Role.BROKER))]
AnyRole = Annotated[Principal, Depends(auth.authenticate)]


class TokenIn(BaseModel):
    """A new API token: a name saying whose it is, a role, and (for systems) a rate limit."""

    name: str = Field(min_length=1, max_length=100, pattern=r"^[A-Za-z0-9_.:@-]+$")
    role: Role
    rate_per_min: int | None = Field(default=None, ge=1, le=100_000)


@router.get("/whoami")
def whoami(who: AnyRole) -> dict[str, Any]:
    """The name and role of the calling token."""
    return {"name": who.name, "role": who.role.value, "rate_per_min": who.rate_per_min}


@router.get("/tokens")
def tokens(reg: RegistryDep, _who: Admin) -> list[dict[str, Any]]:
    """Every API token (names and roles; secrets are never stored)."""
    return auth.list_tokens(reg.engine)


@router.post("/tokens", status_code=201)
def new_token(body: TokenIn, reg: RegistryDep, _who: Admin) -> dict[str, Any]:
    """Create (or replace) a token; its secret is in this answer and nowhere else."""
    secret = auth.create_token(reg.engine, body.name, body.role,
                               rate_per_min=body.rate_per_min)
    return {"name": body.name, "role": body.role.value, "token": secret}


@router.delete("/tokens/{name}", status_code=204)
def revoke_token(name: str, reg: RegistryDep, _who: Admin) -> None:
    """Revoke a token."""
    if not auth.revoke_token(reg.engine, name):
        raise HTTPException(404, f"no token named {name!r}")


# --- EMQX HTTP authentication / authorization ----------------------------------------------

class MqttAuthIn(BaseModel):
    """EMQX HTTP authenticator request (body template: username, password, clientid)."""

    username: str = ""
    password: str = ""
    clientid: str = ""


class MqttAclIn(BaseModel):
    """EMQX HTTP authorizer request (body template: username, topic, action, clientid)."""

    username: str = ""
    topic: str
    action: Literal["publish", "subscribe", "all"]
    clientid: str = ""


@router.post("/mqtt/auth")
def mqtt_auth(body: MqttAuthIn, reg: RegistryDep, _who: Broker) -> dict[str, Any]:
    """Allow a broker connection when the password matches and the client id is the user's."""
    ok = reg.mqtt_authenticate(body.username, body.password, body.clientid)
    return {"result": "allow" if ok else "deny", "is_superuser": False}


@router.post("/mqtt/acl")
def mqtt_acl(body: MqttAclIn, reg: RegistryDep, _who: Broker) -> dict[str, Any]:
    """Allow a publish/subscribe when the registry's topic policy permits it."""
    ok = reg.mqtt_authorize(body.username, body.clientid, body.topic, body.action)
    return {"result": "allow" if ok else "deny"}
