"""Registry REST API: sites, gateway identities, zero-touch claims, commissioning, remote config.

Every endpoint names the roles it admits (collector.auth.require); the claim endpoint is
authenticated by the one-time provisioning token in its body instead.
"""

from __future__ import annotations

import secrets
from typing import Annotated, Any

import orjson
from fastapi import APIRouter, Depends, HTTPException, Query, Request, Response
from fastapi import Path as FastPath
from pydantic import BaseModel, Field

from collector.auth import Principal, Role, require
from collector.params import (
    NO_NUL,
    TIME_MAX_MS,
    TIME_MIN_MS,
    GatewayIdPath,
    Name,
    SiteIdPath,
    Text,
    invalid,
)
from collector.registry import repo
from collector.registry.models import (
    CommissioningRunOut,
    IssuedOut,
    ProvisionTokenOut,
    PushOut,
    RegisteredGatewayOut,
    RegistrationOut,
    RegistrySiteOut,
    ReplyOut,
    StoredOut,
)
from collector.registry.service import Registry
from devices.contract import GATEWAY_ID_RE

A, T, C, R = Role.ADMIN, Role.TECHNICIAN, Role.CREW, Role.READER
router = APIRouter(prefix="/api/v1", tags=["registry"])


def get_registry(request: Request) -> Registry:
    """The registry attached to the app."""
    registry: Registry = request.app.state.registry
    return registry


RegistryDep = Annotated[Registry, Depends(get_registry)]
SiteId = Annotated[str, FastPath(min_length=1, max_length=100, pattern=r"^[^\x00-\x1f\x7f/]+$",
                                  description="a registry site id")]
Admin = Annotated[Principal, Depends(require(A))]
Technician = Annotated[Principal, Depends(require(T))]
Crew = Annotated[Principal, Depends(require(T, C))]
Anyone = Annotated[Principal, Depends(require(T, C, R))]


class SiteIn(BaseModel):
    """A site: where gateways are installed."""

    name: Text = ""
    lat: float | None = Field(default=None, ge=-90, le=90)
    lon: float | None = Field(default=None, ge=-180, le=180)
    district: Text = ""
    responsible_unit: Text = ""


class GatewayIn(BaseModel):
    """A request for a new gateway identity."""

    site: Name
    id: Name | None = None


class ClaimIn(BaseModel):
    """A zero-touch claim: a provisioning token and, optionally, the id the gateway wants."""

    token: Name
    gateway_id: Name | None = None


class RunIn(BaseModel):
    """One commissioning run as uploaded by the provisioning tool."""

    run_id: str = Field(min_length=8, max_length=64, pattern=r"^[A-Za-z0-9_.:-]+$")
    ts: int = Field(ge=TIME_MIN_MS, le=TIME_MAX_MS)
    technician: Text = ""
    results: list[dict[str, Any]]
    config_toml: Text = ""


class ConfigIn(BaseModel):
    """A config to send to a gateway."""

    config_toml: Annotated[str, Field(max_length=1_000_000, pattern=NO_NUL)]
    wait_s: float = Field(default=0.0, ge=0, le=120)


# Answers of the routes that talk to a gateway through the broker.
BROKER_AWAY: dict[int | str, dict[str, Any]] = {
    503: {"description": "the collector is not connected to the broker right now"}}
NO_ANSWER: dict[int | str, dict[str, Any]] = {
    504: {"description": "the gateway did not answer in time"}}


def _gw(gateway_id: str) -> str:
    if not GATEWAY_ID_RE.fullmatch(gateway_id):
        raise invalid("path", "gateway_id", "not a valid gateway id", gateway_id)
    return gateway_id


def _call(fn: Any, *args: Any, **kwargs: Any) -> Any:
    try:
        return fn(*args, **kwargs)
    except repo.RegistryError as exc:
        raise HTTPException(exc.status, exc.detail) from None


# --- sites and identities ---------------------------------------------------------------------

@router.get("/sites", response_model=list[RegistrySiteOut])
def list_sites(reg: RegistryDep, _who: Anyone) -> list[dict[str, Any]]:
    """Every site with its location, district and responsible unit."""
    return repo.sites(reg.engine)


@router.put("/sites/{site_id}", status_code=204)
def put_site(site_id: SiteId, body: SiteIn, reg: RegistryDep, _who: Admin) -> None:
    """Create or update a site."""
    repo.upsert_site(reg.engine, {"site_id": site_id, **body.model_dump()})


@router.post("/gateways", status_code=201, response_model=IssuedOut)
def new_gateway(body: GatewayIn, reg: RegistryDep, who: Technician) -> dict[str, Any]:
    """Create a gateway identity with MQTT credentials (the password is shown only here)."""
    ident = _call(repo.create_gateway, reg.engine, body.site, body.id, who.name)
    return reg.issue(ident)


@router.get("/registry/gateways", response_model=list[RegisteredGatewayOut])
def registered(reg: RegistryDep, _who: Crew,
               site: Annotated[str | None, Query(max_length=100, description="only this "
                                                 "site's gateways")] = None,
               ) -> list[dict[str, Any]]:
    """Registered gateways (no credentials)."""
    return [_public(g) for g in repo.gateways(reg.engine, site)]


def _public(g: dict[str, Any]) -> dict[str, Any]:
    out = {k: v for k, v in g.items() if k not in ("mqtt_hash", "config_toml")}
    out["commissioning"] = orjson.loads(g["commissioning"])
    return out


@router.get("/gateways/{gateway_id}/registration", response_model=RegistrationOut)
def registration(gateway_id: GatewayIdPath, reg: RegistryDep, _who: Crew) -> dict[str, Any]:
    """One gateway's registration, last commissioning results and registered devices."""
    g = _public(_call(repo.gateway, reg.engine, _gw(gateway_id)))
    g["devices"] = repo.devices(reg.engine, gateway_id)
    return g


@router.post("/gateways/{gateway_id}/credentials", response_model=IssuedOut)
def rotate(gateway_id: GatewayIdPath, reg: RegistryDep, _who: Admin) -> dict[str, Any]:
    """Issue new MQTT credentials for a gateway (the old password stops working)."""
    return reg.issue(_call(repo.rotate_credentials, reg.engine, _gw(gateway_id)))


@router.delete("/gateways/{gateway_id}/credentials", status_code=204)
def revoke(gateway_id: GatewayIdPath, reg: RegistryDep, _who: Admin) -> None:
    """Revoke a gateway's MQTT credentials."""
    _call(repo.revoke_gateway, reg.engine, _gw(gateway_id))
    reg.sync_broker()


@router.post("/sites/{site_id}/provision-tokens", status_code=201, response_model=ProvisionTokenOut)
def provision_token(site_id: SiteIdPath, reg: RegistryDep, who: Technician) -> dict[str, Any]:
    """A one-time, expiring token with which a gateway at this site can claim an identity."""
    token, expires = _call(repo.create_provision_token, reg.engine, site_id,
                           reg.settings.provision_ttl_s, who.name)
    return {"token": token, "site_id": site_id, "expires": expires}


@router.post("/provision/claim", status_code=201, response_model=IssuedOut)
def claim(body: ClaimIn, reg: RegistryDep) -> dict[str, Any]:
    """Exchange a provisioning token for the gateway's id, MQTT credentials and config."""
    return reg.issue(_call(repo.claim, reg.engine, body.token, body.gateway_id))


# --- commissioning ------------------------------------------------------------------------------

@router.post("/gateways/{gateway_id}/commissioning", response_model=StoredOut)
def upload_run(gateway_id: GatewayIdPath, body: RunIn, reg: RegistryDep, response: Response,
               _who: Technician) -> dict[str, Any]:
    """Store a commissioning run (a repeated upload of the same run is accepted once)."""
    fresh = _call(repo.record_commissioning, reg.engine, _gw(gateway_id), body.model_dump())
    response.status_code = 201 if fresh else 200
    return {"stored": fresh}


@router.get("/gateways/{gateway_id}/commissioning", response_model=list[CommissioningRunOut])
def runs(gateway_id: GatewayIdPath, reg: RegistryDep, _who: Crew) -> list[dict[str, Any]]:
    """Every commissioning run of a gateway, newest first."""
    _call(repo.gateway, reg.engine, _gw(gateway_id))
    return repo.commissioning_runs(reg.engine, gateway_id)


# --- commands: echo, replies, remote config ------------------------------------------------

def _channel(reg: Registry) -> Any:
    if reg.commands is None or not reg.commands.connected.is_set():
        raise HTTPException(503, "the collector is not connected to the broker right now")
    return reg.commands


@router.get("/gateways/{gateway_id}/replies/{reply_id}", responses=BROKER_AWAY,
            response_model=ReplyOut)
def reply(gateway_id: GatewayIdPath,
          reply_id: Annotated[str, FastPath(max_length=64, description="the id the command "
                                                                       "was sent with")],
          reg: RegistryDep,
          _who: Technician) -> dict[str, Any]:
    """A reply the gateway published recently (404 while it has not arrived)."""
    got = _channel(reg).reply(_gw(gateway_id), reply_id)
    if got is None:
        raise HTTPException(404, f"no reply {reply_id!r} from {gateway_id!r} (yet)")
    return dict(got.model_dump())


@router.post("/gateways/{gateway_id}/echo", responses={**BROKER_AWAY, **NO_ANSWER},
             response_model=ReplyOut)
def echo(gateway_id: GatewayIdPath, reg: RegistryDep, _who: Technician,
         wait_s: Annotated[float, Query(ge=0, le=120, description="seconds to wait for the "
                                                                  "reply")] = 10.0,
         ) -> dict[str, Any]:
    """Send cmd/echo to a running gateway and wait for its reply."""
    ch = _channel(reg)
    nonce = secrets.token_hex(8)
    ch.send(_gw(gateway_id), "echo", orjson.dumps({"id": nonce}))
    got = ch.wait(gateway_id, nonce, min(wait_s, 60.0))
    if got is None:
        raise HTTPException(504, f"{gateway_id} did not answer within {wait_s:g}s: is its agent "
                                 "running and online?")
    return dict(got.model_dump())


@router.post("/gateways/{gateway_id}/config", status_code=202, responses=BROKER_AWAY,
             response_model=PushOut)
def push_config(gateway_id: GatewayIdPath, body: ConfigIn, reg: RegistryDep,
                _who: Technician) -> dict[str, Any]:
    """Send a new config over cmd/config; wait up to wait_s for the gateway's verdict."""
    gw = _call(repo.gateway, reg.engine, _gw(gateway_id))
    _call(repo.devices_of_config, body.config_toml)
    ch = _channel(reg)
    push_id = secrets.token_hex(8)
    version = gw["config_version"] + 1
    repo.record_push(reg.engine, push_id, gateway_id, version, body.config_toml)
    ch.send(gateway_id, "config", orjson.dumps({"id": push_id, "version": version,
                                                "toml": body.config_toml}))
    if body.wait_s > 0:
        ch.wait(gateway_id, push_id, body.wait_s)
    return _call(push_status, gateway_id, push_id, reg)


def push_status(gateway_id: str, push_id: str, reg: Registry) -> dict[str, Any]:
    """The state of one config push."""
    p = repo.push(reg.engine, push_id)
    if p is None or p["gateway_id"] != gateway_id:
        raise repo.RegistryError(404, f"no config push {push_id!r} to {gateway_id!r}")
    return {k: p[k] for k in ("push_id", "gateway_id", "version", "sent", "status", "detail")}


@router.get("/gateways/{gateway_id}/config/{push_id}", response_model=PushOut)
def get_push(gateway_id: GatewayIdPath,
             push_id: Annotated[str, FastPath(max_length=64, description="the push's id")],
             reg: RegistryDep,
             _who: Technician) -> dict[str, Any]:
    """Whether a config push was applied, refused or rolled back."""
    return dict(_call(push_status, _gw(gateway_id), push_id, reg))
