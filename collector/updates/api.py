"""REST API of agent updates: upload bundles, start rollouts, see results, download bundles.

Release managers (admin) upload and roll out; anyone with a read role sees versions and
results; a gateway downloads with the one-time token it was offered on `cmd/update` (the
broker's ACL lets only the collector publish on a gateway's command topic, so the token reaches
only that gateway; the bundle itself is verified on the gateway against the release key).
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends, HTTPException, Path, Request, Response
from pydantic import BaseModel, ConfigDict, Field

from collector.auth import Principal, Role, require
from collector.params import binary_response
from collector.updates.service import UpdateError, UpdateService


class BundleOut(BaseModel):
    """A stored update bundle."""

    model_config = ConfigDict(extra="allow")

    version: str
    sha256: str
    size: int


class RolloutStartedOut(BaseModel):
    """A rollout started: its id and the gateways it targets."""

    rollout_id: str
    gateways: list[str]


class UpdatesOverviewOut(BaseModel):
    """Bundles, rollouts (with their targets) and each gateway's latest update."""

    bundles: list[BundleOut]
    rollouts: list[dict[str, Any]]
    gateways: dict[str, UpdateTargetOut]


class UpdateTargetOut(BaseModel):
    """An update offered to one gateway in a rollout, and its result."""

    model_config = ConfigDict(extra="allow")

    rollout_id: str
    gateway_id: str
    wave: int = Field(description="0: canary, 1: the rest")
    status: str = Field(description="pending, sent, applied, refused, failed, rolled_back, "
                                    "timeout or skipped")
    sent: int | None
    finished: int | None
    detail: Any

router = APIRouter(prefix="/api/v1/updates", tags=["updates"])
MAX_BUNDLE = 200 * 1024 * 1024


def get_updates(request: Request) -> UpdateService:
    """The update service attached to the app."""
    service: UpdateService = request.app.state.updates
    return service


Updates = Annotated[UpdateService, Depends(get_updates)]
Admin = Annotated[Principal, Depends(require(Role.ADMIN))]
Reader = Annotated[Principal, Depends(require(Role.TECHNICIAN, Role.CREW, Role.READER))]


class RolloutIn(BaseModel):
    """Offer a version to some gateways, or to every gateway of a site."""

    version: str
    gateways: list[str] = Field(default_factory=list)
    site: str | None = None
    canaries: int = Field(default=1, ge=1)
    deadline_s: float = Field(default=600.0, gt=0, le=86400)


def _http(exc: UpdateError) -> HTTPException:
    return HTTPException(exc.status, exc.detail)


@router.get("", response_model=UpdatesOverviewOut)
def overview(updates: Updates, _who: Reader) -> dict[str, Any]:
    """Bundles, rollouts and each gateway's latest update result."""
    return updates.overview()


@router.get("/gateways/{gateway}", response_model=list[UpdateTargetOut])
def gateway_updates(gateway: Annotated[str, Path(description="a gateway id")], updates: Updates,
                    _who: Reader) -> list[dict[str, Any]]:
    """Every update offered to one gateway and its result."""
    return updates.gateway(gateway)


@router.post("/bundles", status_code=201, response_model=BundleOut)
async def upload(request: Request, updates: Updates, who: Admin) -> dict[str, Any]:
    """Upload a signed bundle (the raw .tar.gz as the request body)."""
    body = await request.body()
    if len(body) > MAX_BUNDLE:
        raise HTTPException(413, f"bundle larger than {MAX_BUNDLE} bytes")
    try:
        return updates.add_bundle(body, who.name)
    except UpdateError as exc:
        raise _http(exc) from None


@router.post("/rollouts", status_code=201, response_model=RolloutStartedOut)
def rollout(spec: RolloutIn, updates: Updates, who: Admin, request: Request) -> dict[str, Any]:
    """Start a staged rollout: canaries first, the rest only when every canary applied it."""
    gateways = list(spec.gateways)
    if spec.site:
        gateways += _site_gateways(request, spec.site)
    try:
        rid = updates.start_rollout(spec.version, gateways, canaries=spec.canaries,
                                    deadline_s=spec.deadline_s, by=who.name)
    except UpdateError as exc:
        raise _http(exc) from None
    return {"rollout_id": rid, "gateways": gateways}


@router.get("/bundles/{version}/download", response_class=Response,
            responses=binary_response("application/gzip", "the signed update bundle"))
def download(version: Annotated[str, Path(max_length=64, description="bundle version")],
             request: Request, updates: Updates) -> Response:
    """The bundle, for a gateway presenting its one-time download token."""
    auth = request.headers.get("authorization", "")
    token = auth[7:] if auth.lower().startswith("bearer ") else ""
    try:
        body = updates.download(version, token)
    except UpdateError as exc:
        raise _http(exc) from None
    return Response(body, media_type="application/gzip")


def _site_gateways(request: Request, site: str) -> list[str]:
    import sqlalchemy as sa

    from collector.registry import tables as reg

    engine = request.app.state.store.engine
    with engine.connect() as conn:
        return [r[0] for r in conn.execute(sa.select(reg.gateways.c.gateway_id).where(
            reg.gateways.c.site_id == site, reg.gateways.c.revoked.is_(False)))]
