"""REST API of config rollouts: push a config (or a patch) to many gateways in stages, follow
it per gateway, and revert it. Technicians start and revert; crews and readers may look."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends, HTTPException
from fastapi import Path as FastPath
from pydantic import BaseModel, ConfigDict, Field

from collector.auth import Principal, Role, require
from collector.params import NO_NUL
from collector.registry import repo
from collector.registry.api import get_registry
from collector.registry.rollouts import ConfigRollouts, RolloutError, Selector, valid_gateway_ids
from collector.registry.service import Registry

router = APIRouter(prefix="/api/v1/config", tags=["registry"])
Technician = Annotated[Principal, Depends(require(Role.TECHNICIAN))]
Anyone = Annotated[Principal, Depends(require(Role.TECHNICIAN, Role.CREW, Role.READER))]
RolloutId = Annotated[str, FastPath(max_length=64, pattern=r"^[A-Za-z0-9_.:-]+$",
                                    description="a config rollout's id")]
Toml = Annotated[str, Field(max_length=2_000_000, pattern=NO_NUL)]  # the service says 256 KiB


def get_rollouts(reg: Annotated[Registry, Depends(get_registry)]) -> ConfigRollouts:
    """The config rollouts of the registry attached to the app."""
    return reg.rollouts


Rollouts = Annotated[ConfigRollouts, Depends(get_rollouts)]


class RolloutIn(BaseModel):
    """A config rollout: what (a whole config or a patch), to whom, and how carefully."""

    config_toml: Toml | None = Field(default=None, description="a whole gateway config; each "
                                     "gateway gets it with its own [gateway] id and site")
    patch_toml: Toml | None = Field(default=None, description="tables merged into each "
                                    "gateway's config as the registry knows it")
    gateways: list[Annotated[str, Field(max_length=100)]] = Field(default_factory=list,
                                                                   max_length=10_000)
    group: Annotated[str, Field(min_length=1, max_length=100, pattern=NO_NUL)] | None = Field(
        default=None, description="the district of the gateways' sites")
    site: Annotated[str, Field(min_length=1, max_length=100, pattern=NO_NUL)] | None = None
    all: bool = False
    canaries: int | None = Field(default=None, ge=1, le=10_000,
                                 description="the first N gateways go first (default 1)")
    canary_percent: float | None = Field(default=None, gt=0, le=100,
                                         description="or this share of them, rounded up")
    batch: int = Field(default=10, ge=1, le=10_000,
                       description="gateways of the rest wave in flight at once")
    max_failures: int = Field(default=0, ge=0, le=10_000,
                              description="failures in the rest wave tolerated before a halt")
    deadline_s: float = Field(default=900.0, ge=5, le=86400,
                              description="per gateway, from the command to `confirmed`")
    device_grace_s: float | None = Field(default=None, ge=0.5, le=3600,
                                         description="how long devices may stay silent after "
                                                     "the change (default: the gateway's)")


class RolloutGatewayOut(BaseModel):
    """One gateway of a rollout."""

    model_config = ConfigDict(extra="allow")

    gateway_id: str
    stage: str = Field(description="canary or rest")
    status: str = Field(description="pending, sent, applied, confirmed, refused, rolled_back, "
                                    "failed, timeout or skipped")
    detail: Any = Field(description="the gateway's last answer: reason, devices, version")


class RolloutOut(BaseModel):
    """A config rollout, its stage and per-gateway states."""

    model_config = ConfigDict(extra="allow")

    rollout_id: str
    kind: str = Field(description="push or revert")
    stage: str = Field(description="canary, rolling, done or halted")
    summary: dict[str, int]
    gateways: list[RolloutGatewayOut]


class RolloutsOut(BaseModel):
    """The latest rollouts (without their gateways) and the refusal counters."""

    rollouts: list[dict[str, Any]]
    counters: dict[str, int]


def _http(exc: repo.RegistryError) -> HTTPException:
    return HTTPException(exc.status, exc.detail)


@router.post("/rollouts", status_code=201, response_model=RolloutOut)
def start(body: RolloutIn, rollouts: Rollouts, who: Technician) -> dict[str, Any]:
    """Start a staged config rollout: canaries first, the rest once they are confirmed."""
    try:
        ids = valid_gateway_ids(body.gateways)
    except RolloutError as exc:
        rollouts.count(exc.counter)
        raise _http(exc) from None
    sel = Selector(gateways=ids, group=body.group, site=body.site, all=body.all)
    try:
        return rollouts.start(sel, config_toml=body.config_toml, patch_toml=body.patch_toml,
                              canaries=body.canaries, canary_percent=body.canary_percent,
                              batch=body.batch, max_failures=body.max_failures,
                              deadline_s=body.deadline_s, device_grace_s=body.device_grace_s,
                              by=who.name)
    except repo.RegistryError as exc:  # RolloutError included, counted by the service
        raise _http(exc) from None


@router.get("/rollouts", response_model=RolloutsOut)
def list_rollouts(rollouts: Rollouts, _who: Anyone) -> dict[str, Any]:
    """The latest 100 rollouts, newest first, and how many requests were refused and why."""
    return {"rollouts": rollouts.latest(), "counters": dict(rollouts.counters)}


@router.get("/rollouts/{rollout_id}", response_model=RolloutOut)
def status(rollout_id: RolloutId, rollouts: Rollouts, _who: Anyone) -> dict[str, Any]:
    """A rollout's stage and each gateway's state."""
    try:
        return rollouts.status(rollout_id)
    except RolloutError as exc:
        raise _http(exc) from None


@router.post("/rollouts/{rollout_id}/revert", status_code=201, response_model=RolloutOut)
def revert(rollout_id: RolloutId, rollouts: Rollouts, who: Technician) -> dict[str, Any]:
    """Send back, to every gateway this rollout changed, the config it ran before."""
    try:
        return rollouts.revert(rollout_id, by=who.name)
    except RolloutError as exc:
        raise _http(exc) from None
