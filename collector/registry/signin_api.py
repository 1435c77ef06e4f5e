"""One-time crew sign-in links: ops create a link (and its QR code) for a member; the phone
that opens it exchanges the code, once, for a fresh crew API token.

The code is 32 random bytes, shown once (in the URL) and stored as its SHA-256. Opening the link
(`GET /signin/{code}`) only serves the page: chat apps and mail scanners fetch links ahead of
people, so the code is spent by the page's `POST /api/v1/signin/{code}` alone. Spending it and
storing the token are one transaction (a failure leaves the code unused), and the conditional
UPDATE makes a second use fail even when two phones race. Failed exchanges are limited per
client address.
"""

from __future__ import annotations

import hashlib
import logging
import re
import secrets
import threading
import time
from collections import deque
from collections.abc import Callable
from typing import Annotated, Any

import segno
import sqlalchemy as sa
from fastapi import APIRouter, Depends, HTTPException, Path, Request
from fastapi.responses import HTMLResponse
from pydantic import BaseModel, Field, field_validator

from collector import auth
from collector.alarms.api import Principal, get_principal
from collector.auth_tables import signin_codes
from collector.clock import iso_seconds
from collector.pages import page
from collector.registry.models import SigninLinkOut, SigninTokenOut
from devices.durations import parse_duration

log = logging.getLogger(__name__)
router = APIRouter(prefix="/api/v1", tags=["access"])
pages = APIRouter(include_in_schema=False)

DEFAULT_TTL_S = 15 * 60
MIN_TTL_S, MAX_TTL_S = 30, 7 * 86_400
MAX_FAILURES, FAILURE_WINDOW_S = 10, 600.0
AGAIN = "ask the operations room for a new one"


class FailureLimiter:
    """At most `max_failures` failed attempts per key in any `window_s` seconds."""

    def __init__(self, max_failures: int = MAX_FAILURES, window_s: float = FAILURE_WINDOW_S,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.max_failures, self.window_s, self._clock = max_failures, window_s, clock
        self._failures: dict[str, deque[float]] = {}
        self._lock = threading.Lock()

    def retry_after(self, key: str) -> float:
        """0 when `key` may try now, else the seconds until its oldest failure ages out."""
        now = self._clock()
        with self._lock:
            q = self._failures.get(key)
            while q and q[0] <= now - self.window_s:
                q.popleft()
            if not q:
                self._failures.pop(key, None)
                return 0.0
            return q[0] + self.window_s - now if len(q) >= self.max_failures else 0.0

    def failed(self, key: str) -> bool:
        """Count one failed attempt of `key`; True when this one reached the limit."""
        with self._lock:
            q = self._failures.setdefault(key, deque())
            q.append(self._clock())
            return len(q) == self.max_failures


class SigninLinkIn(BaseModel):
    """Who the link signs in: a member of a unit; how long it stays valid."""

    member: str = Field(min_length=1, max_length=100)
    unit: str = Field(min_length=1, max_length=100)
    ttl: str | float = Field(default=DEFAULT_TTL_S, description='e.g. "15min"; 30 s to 7 d')
    name: str | None = Field(default=None, min_length=1, max_length=100,
                             pattern=r"^[A-Za-z0-9_.:@-]+$",
                             description="the token's name; default crew.<unit>.<member>")

    @field_validator("ttl")
    @classmethod
    def _ttl(cls, v: str | float) -> float:
        seconds = parse_duration(v)
        if not MIN_TTL_S <= seconds <= MAX_TTL_S:
            raise ValueError(f"ttl must be between {MIN_TTL_S} s and 7 days")
        return seconds


def slug(text: str) -> str:
    """A token-name-safe form of a member or unit name (a short hash when nothing is left)."""
    s = re.sub(r"[^a-z0-9_-]+", "-", text.lower()).strip("-")
    return s[:40] or hashlib.sha256(text.encode()).hexdigest()[:10]


def default_token_name(unit: str, member: str) -> str:
    """One token per member and unit: a new sign-in replaces the previous phone's token."""
    return f"crew.{slug(unit)}.{slug(member)}"


def known_units(request: Request) -> set[str] | None:
    """The units of the alarms configuration, or None when incidents are not served."""
    desk = getattr(request.app.state, "alarms", None)
    return None if desk is None else set(desk.engine.cfg.units)


def check_unit(request: Request, unit: str) -> None:
    """422 unless `unit` is a configured unit (when the collector serves incidents)."""
    units = known_units(request)
    if units is not None and unit not in units:
        raise HTTPException(422, f"unit {unit!r} is not defined under [alarms.units] "
                                 f"(known: {sorted(units)})")


def _ops(who: Annotated[Principal, Depends(get_principal)]) -> Principal:
    if who.role != "ops":
        raise HTTPException(403, "only ops or admin tokens may create sign-in links")
    return who


def _failures(request: Request) -> FailureLimiter:
    limiter: FailureLimiter | None = getattr(request.app.state, "signin_failures", None)
    if limiter is None:
        limiter = request.app.state.signin_failures = FailureLimiter()
    return limiter


@router.post("/signin-links", status_code=201, response_model=SigninLinkOut)
def create_signin_link(body: SigninLinkIn, request: Request,
                       who: Annotated[Principal, Depends(_ops)]) -> dict[str, Any]:
    """A one-time link (and QR code) that signs `member` of `unit` in on their phone."""
    check_unit(request, body.unit)
    desk = request.app.state.alarms
    code = secrets.token_urlsafe(32)
    now = auth.now_ms()
    expires = now + int(float(body.ttl) * 1000)
    name = body.name or default_token_name(body.unit, body.member)
    with request.app.state.store.engine.begin() as conn:
        conn.execute(sa.insert(signin_codes).values(
            code_hash=auth.hash_token(code), unit=body.unit, member=body.member,
            token_name=name, created=now, created_by=who.name, expires=expires))
    log.info("sign-in link for %r of unit %r made by %r, valid until %s", body.member,
             body.unit, who.name, iso_seconds(expires))
    url = f"{desk.engine.public_url.rstrip('/')}/signin/{code}"
    return {"url": url, "qr_svg": segno.make(url, error="m").svg_inline(scale=4),
            "expires": iso_seconds(expires), "code_expires": expires, "member": body.member,
            "unit": body.unit, "token_name": name}


@router.post("/signin/{code}", response_model=SigninTokenOut)
def exchange_signin_code(code: Annotated[str, Path(max_length=128, description="the one-time "
                                                  "sign-in code from the link")],
                         request: Request) -> dict[str, Any]:
    """Spend a sign-in code (once, before it expires) for a fresh crew token."""
    limiter = _failures(request)
    client = request.client.host if request.client else "?"
    wait = limiter.retry_after(client)
    if wait > 0:
        raise HTTPException(429, "too many failed sign-in attempts from this address; "
                                 f"try again in {max(1, round(wait))} s",
                            headers={"Retry-After": str(max(1, round(wait)))})
    try:
        return _exchange(request.app.state.store.engine, code)
    except HTTPException as exc:
        if exc.status_code in (404, 410) and limiter.failed(client):
            log.warning("sign-in: %d failed attempts from %s; refusing it for a while",
                        limiter.max_failures, client)
        raise


def _exchange(engine: sa.Engine, code: str) -> dict[str, Any]:
    digest, now = auth.hash_token(code), auth.now_ms()
    with engine.begin() as conn:
        spent = conn.execute(sa.update(signin_codes).where(
            signin_codes.c.code_hash == digest, signin_codes.c.used_at.is_(None),
            signin_codes.c.expires > now).values(used_at=now)).rowcount
        row = conn.execute(sa.select(signin_codes)
                           .where(signin_codes.c.code_hash == digest)).first()
        if row is None:
            raise HTTPException(404, f"unknown sign-in link — {AGAIN}")
        if not spent:
            if row.used_at is not None or row.expires > now:
                raise HTTPException(410, f"this sign-in link has already been used — {AGAIN}")
            raise HTTPException(410, f"this sign-in link expired at {iso_seconds(row.expires)} — "
                                     f"{AGAIN}")
        try:
            token = auth.insert_token(conn, row.token_name, auth.Role.CREW, unit=row.unit,
                                      member=row.member)
        except auth.LastAdminToken as exc:
            raise HTTPException(409, str(exc)) from None
    return {"token": token, "token_name": row.token_name, "role": auth.Role.CREW.value,
            "unit": row.unit, "member": row.member}


@pages.get("/signin/{code}", response_class=HTMLResponse)
def signin_page(code: str) -> HTMLResponse:
    """The page a sign-in link opens; it spends the code with a POST (never this GET)."""
    del code  # read by the page's script from its own URL
    return page("signin.html", cache="no-store")
