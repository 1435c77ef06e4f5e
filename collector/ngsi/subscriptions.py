"""NGSI-LD Subscription registration for webhook deliveries (POST/GET/DELETE /subscriptions).

A subscription belongs to the token that made it: each downstream system sees and removes only
its own (an administrator sees all of them).
"""

from __future__ import annotations

import secrets
import uuid
from typing import Annotated, Any

import orjson
import sqlalchemy as sa
from fastapi import APIRouter, Body, Depends, Path, Request
from fastapi.responses import Response
from pydantic import BaseModel, ConfigDict, Field

from collector.auth import Principal, Role, authenticate
from collector.clock import now_ms
from collector.ngsi import model
from collector.ngsi.api import NgsiError, bad_request, get_source
from collector.ngsi.egress import EgressPolicy, EgressRefused
from collector.ngsi.tables import ngsi_subscriptions

SubId = Annotated[str, Path(max_length=300, description="the subscription's URN")]


class SubscriptionOut(BaseModel):
    """An NGSI-LD Subscription as stored (its secret is never returned again)."""

    model_config = ConfigDict(extra="allow")

    id: str
    type: str = Field(description="Subscription")


class SubscriptionCreatedOut(BaseModel):
    """The new subscription's id and the HMAC secret of its notifications (shown once)."""

    id: str
    secret: str = Field(description="key of the X-CityGate-Signature HMAC; store it now")

router = APIRouter(prefix="/ngsi-ld/v1", tags=["NGSI-LD"])
Caller = Annotated[Principal, Depends(authenticate)]


def _visible(who: Principal) -> Any:
    """The subscriptions this caller may see: its own, or all for an administrator."""
    t = ngsi_subscriptions
    return sa.true() if who.role is Role.ADMIN else t.c.owner == who.name


def validate_subscription(body: dict[str, Any], egress: EgressPolicy) -> dict[str, Any]:
    """Check the supported Subscription shape and its endpoint; return it with an id."""
    if body.get("type") != "Subscription":
        raise bad_request("type must be 'Subscription'")
    entities = body.get("entities") or []
    if not entities or not all(isinstance(e, dict) and e.get("type") in model.ENTITY_TYPES
                               for e in entities):
        raise bad_request(f"entities must list {{'type': ...}} of {', '.join(model.ENTITY_TYPES)}")
    uri = ((body.get("notification") or {}).get("endpoint") or {}).get("uri", "")
    if not isinstance(uri, str) or not uri.startswith(("http://", "https://")):
        raise bad_request("notification.endpoint.uri must be an http(s) URL")
    try:
        egress.check(uri)
    except EgressRefused as exc:
        raise bad_request(f"notification.endpoint.uri: {exc}") from None
    watched = body.get("watchedAttributes")
    if watched is not None and not (isinstance(watched, list) and
                                    all(isinstance(w, str) for w in watched)):
        raise bad_request("watchedAttributes must be a list of attribute names")
    if body.get("q"):
        try:
            model.parse_q(body["q"])
        except model.QueryError as exc:
            raise bad_request(str(exc)) from None
    sub_id = body.get("id") or f"urn:ngsi-ld:Subscription:{uuid.uuid4()}"
    if model.split_urn(sub_id) is None:
        raise bad_request("id must be a URN")
    return {**body, "id": sub_id}


@router.post("/subscriptions", status_code=201, response_model=None, responses={201: {
    "model": SubscriptionCreatedOut, "description": "created; the secret is shown only now"}})
def create_subscription(request: Request, who: Caller,
                        body: Annotated[dict[str, Any], Body()]) -> Response:
    """Register a webhook; the HMAC secret for X-CityGate-Signature is returned once."""
    sub = validate_subscription(body, getattr(request.app.state, "ngsi_egress", EgressPolicy()))
    secret = secrets.token_urlsafe(32)
    engine = get_source(request).store.engine
    with engine.begin() as conn:
        if conn.execute(sa.select(ngsi_subscriptions.c.id).where(
                ngsi_subscriptions.c.id == sub["id"])).first():
            raise NgsiError(409, "AlreadyExists", f"subscription {sub['id']!r} exists")
        conn.execute(sa.insert(ngsi_subscriptions).values(
            id=sub["id"], body=orjson.dumps(sub).decode(), secret=secret, owner=who.name,
            created=now_ms(), active=True))
    return Response(orjson.dumps({"id": sub["id"], "secret": secret}), status_code=201,
                    media_type="application/json",
                    headers={"Location": f"/ngsi-ld/v1/subscriptions/{sub['id']}"})


@router.get("/subscriptions", response_model=None, responses={200: {
    "model": list[SubscriptionOut], "description": "the caller's subscriptions"}})
def list_subscriptions(request: Request, who: Caller) -> Response:
    """The caller's subscriptions (without secrets)."""
    engine = get_source(request).store.engine
    with engine.connect() as conn:
        rows = conn.execute(sa.select(ngsi_subscriptions.c.body).where(_visible(who))
                            .order_by(ngsi_subscriptions.c.created)).all()
    return Response(b"[" + b",".join(r.body.encode() for r in rows) + b"]",
                    media_type="application/json")


@router.get("/subscriptions/{sub_id}", response_model=None, responses={200: {
    "model": SubscriptionOut, "description": "the subscription (without its secret)"}})
def get_subscription(request: Request, sub_id: SubId, who: Caller) -> Response:
    """One of the caller's subscriptions."""
    engine = get_source(request).store.engine
    with engine.connect() as conn:
        row = conn.execute(sa.select(ngsi_subscriptions.c.body).where(
            ngsi_subscriptions.c.id == sub_id, _visible(who))).first()
    if row is None:
        raise NgsiError(404, "ResourceNotFound", f"no subscription {sub_id!r}")
    return Response(row.body.encode(), media_type="application/json")


@router.delete("/subscriptions/{sub_id}", status_code=204)
def delete_subscription(request: Request, sub_id: SubId, who: Caller) -> Response:
    """Remove one of the caller's subscriptions; the worker drops its queued deliveries."""
    engine = get_source(request).store.engine
    with engine.begin() as conn:
        n = conn.execute(sa.delete(ngsi_subscriptions).where(
            ngsi_subscriptions.c.id == sub_id, _visible(who))).rowcount
    if not n:
        raise NgsiError(404, "ResourceNotFound", f"no subscription {sub_id!r}")
    return Response(status_code=204)
