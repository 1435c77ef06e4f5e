"""API tokens (admin), `whoami`, and the MQTT auth/ACL hooks a scale-out broker (EMQX) calls."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, HTTPException, Path, Request
from pydantic import BaseModel, Field, model_validator

from collector import auth
from collector.auth import Principal, Role, require
from collector.registry.api import RegistryDep
from collector.registry.models import MqttVerdictOut, NewTokenOut, TokenOut, WhoAmIOut
from collector.registry.signin_api import check_unit

router = APIRouter(prefix="/api/v1", tags=["access"])
Admin = Annotated[Principal, Depends(require(Role.ADMIN))]
Broker = Annotated[Principal, Depends(require(Role.BROKER))]
AnyRole = Annotated[Principal, Depends(auth.authenticate)]


TOKEN_NAME = r"^[A-Za-z0-9_.:@-]+$"


class TokenIn(BaseModel):
    """A new API token: a name saying whose it is, a role, and (for systems) a rate limit.

    Crew tokens are scoped to one unit and name the member they belong to (default: `name`).
    """

    name: str = Field(min_length=1, max_length=100, pattern=TOKEN_NAME)
    role: Role
    rate_per_min: int | None = Field(default=None, ge=1, le=100_000)
    unit: str | None = Field(default=None, min_length=1, max_length=100)
    member: str | None = Field(default=None, min_length=1, max_length=100)

    @model_validator(mode="after")
    def _crew_scope(self) -> TokenIn:
        if self.role is Role.CREW:
            if not self.unit:
                raise ValueError("a crew token needs `unit`: the unit whose incidents it sees")
            if self.member is None:
                self.member = self.name
        elif self.unit is not None or self.member is not None:
            raise ValueError(f"`unit` and `member` are for crew tokens, not role "
                             f"{self.role.value!r}")
        return self


@router.get("/whoami", response_model=WhoAmIOut)
def whoami(who: AnyRole) -> dict[str, Any]:
    """The name, role and (crew) scope of the calling token."""
    return {"name": who.name, "role": who.role.value, "unit": who.unit, "member": who.member,
            "rate_per_min": who.rate_per_min}


@router.get("/tokens", response_model=list[TokenOut])
def tokens(reg: RegistryDep, _who: Admin) -> list[dict[str, Any]]:
    """Every API token (names and roles; secrets are never stored)."""
    return auth.list_tokens(reg.engine)


@router.post("/tokens", status_code=201, response_model=NewTokenOut)
def new_token(body: TokenIn, request: Request, reg: RegistryDep, _who: Admin) -> dict[str, Any]:
    """Create (or replace) a token; its secret is in this answer and nowhere else."""
    if body.unit is not None:
        check_unit(request, body.unit)
    try:
        secret = auth.create_token(reg.engine, body.name, body.role,
                                   rate_per_min=body.rate_per_min, unit=body.unit,
                                   member=body.member)
    except auth.LastAdminToken as exc:
        raise HTTPException(409, str(exc)) from None
    return {"name": body.name, "role": body.role.value, "unit": body.unit,
            "member": body.member, "token": secret}


@router.delete("/tokens/{name}", status_code=204)
def revoke_token(name: Annotated[str, Path(max_length=128, description="the token's name")],
                 reg: RegistryDep, _who: Admin) -> None:
    """Revoke a token (409 for the last valid admin token)."""
    try:
        found = auth.revoke_token(reg.engine, name)
    except auth.LastAdminToken as exc:
        raise HTTPException(409, str(exc)) from None
    if not found:
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


@router.post("/mqtt/auth", response_model=MqttVerdictOut)
def mqtt_auth(body: MqttAuthIn, reg: RegistryDep, _who: Broker) -> dict[str, Any]:
    """Allow a broker connection when the password matches and the client id is the user's."""
    ok = reg.mqtt_authenticate(body.username, body.password, body.clientid)
    return {"result": "allow" if ok else "deny", "is_superuser": False}


@router.post("/mqtt/acl", response_model=MqttVerdictOut)
def mqtt_acl(body: MqttAclIn, reg: RegistryDep, _who: Broker) -> dict[str, Any]:
    """Allow a publish/subscribe when the registry's topic policy permits it."""
    ok = reg.mqtt_authorize(body.username, body.clientid, body.topic, body.action)
    return {"result": "allow" if ok else "deny"}
