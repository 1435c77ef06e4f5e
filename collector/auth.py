"""API security: bearer tokens with roles, stored hashed, checked in constant time, rate-limited.

Roles: admin (everything; acts as ops on incidents), technician (provisioning and
commissioning), ops (the operations room: reads gateways and devices; every unit's incidents,
silences, sign-in links for crews), crew (a maintenance crew member: scoped to one unit and
named by `member`; reads gateways, devices and their unit's incidents and acts on them), reader
(downstream city systems: read data, one token per system, each with its own rate limit).
`broker` is a service role used only by the MQTT auth/ACL hooks a scale-out broker (EMQX)
calls.

Tokens live in the database, so issuing and revoking them takes effect at once, without a
restart. The last valid admin token cannot be revoked or replaced by another role
(`LastAdminToken`), so the API always keeps an administrator.

Bootstrapping: if CITYGATE_ADMIN_TOKEN is set, that value is (re)registered as the admin token
named "bootstrap" at start; otherwise, when no admin token exists yet, the collector creates one
and writes it to a 0600 file (default `<db dir>/admin-token`), logging only the file's path.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import os
import secrets
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any

import sqlalchemy as sa
from fastapi import Depends, HTTPException, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from collector.auth_tables import api_tokens
from collector.clock import now_ms

log = logging.getLogger(__name__)

ADMIN_TOKEN_ENV = "CITYGATE_ADMIN_TOKEN"
TOKEN_PREFIX = "cg_"


class Role(StrEnum):
    """What a token may do."""

    ADMIN = "admin"
    TECHNICIAN = "technician"
    OPS = "ops"
    CREW = "crew"
    READER = "reader"
    BROKER = "broker"


@dataclass(frozen=True, slots=True)
class Principal:
    """Who is calling: the token's name (never its secret), role, rate limit, crew scope."""

    name: str
    role: Role
    rate_per_min: int | None = None
    unit: str | None = None  # role crew: the one unit it belongs to
    member: str | None = None  # role crew: the member's name


class LastAdminToken(Exception):
    """Revoking or replacing this token would leave no valid admin token."""

    def __init__(self, name: str) -> None:
        self.name = name
        super().__init__(f"{name!r} is the last valid admin token; create another admin token "
                         "before revoking or replacing this one")


def new_token() -> str:
    """A fresh random token (32 bytes of entropy, URL-safe)."""
    return TOKEN_PREFIX + secrets.token_urlsafe(32)


def hash_token(token: str) -> str:
    """SHA-256 hex digest of a token: what is stored (tokens are random, so no salt is needed)."""
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


def token_matches(token: str, stored_hash: str) -> bool:
    """Compare a presented token with a stored hash in constant time."""
    return hmac.compare_digest(hash_token(token), stored_hash)


# --- persistence ----------------------------------------------------------------------------------

def _lock_tokens(conn: sa.Connection) -> None:
    """Serialise token changes across collectors (PostgreSQL), for the last-admin check."""
    if conn.dialect.name == "postgresql":
        conn.execute(sa.text("SELECT pg_advisory_xact_lock(7212052)"))


def _is_last_admin(conn: sa.Connection, name: str) -> bool:
    """True when `name` is a valid admin token and no other valid admin token exists."""
    valid_admins = conn.scalars(sa.select(api_tokens.c.name).where(
        api_tokens.c.role == Role.ADMIN.value, api_tokens.c.revoked.is_(False))).all()
    return list(valid_admins) == [name]


def create_token(engine: sa.Engine, name: str, role: Role, *,
                 rate_per_min: int | None = None, token: str | None = None,
                 unit: str | None = None, member: str | None = None) -> str:
    """Store a new token (replacing one of the same name) and return its secret, shown once."""
    with engine.begin() as conn:
        return insert_token(conn, name, role, rate_per_min=rate_per_min, token=token,
                            unit=unit, member=member)


def insert_token(conn: sa.Connection, name: str, role: Role, *,
                 rate_per_min: int | None = None, token: str | None = None,
                 unit: str | None = None, member: str | None = None) -> str:
    """`create_token` inside the caller's transaction (e.g. with a sign-in code's use)."""
    secret = token or new_token()
    _lock_tokens(conn)
    if role is not Role.ADMIN and _is_last_admin(conn, name):
        raise LastAdminToken(name)
    conn.execute(sa.delete(api_tokens).where(api_tokens.c.name == name))
    conn.execute(sa.insert(api_tokens).values(
        name=name, role=role.value, token_hash=hash_token(secret), created=now_ms(),
        revoked=False, rate_per_min=rate_per_min, unit=unit, member=member))
    scope = f" for {member!r} of unit {unit!r}" if unit else ""
    log.info("API token %r created with role %s%s", name, role.value, scope)
    return secret


def revoke_token(engine: sa.Engine, name: str) -> bool:
    """Revoke a token by name; False when there is none; LastAdminToken for the last admin."""
    other = api_tokens.alias("other")
    other_admins = sa.select(sa.func.count()).select_from(other).where(
        other.c.role == Role.ADMIN.value, other.c.revoked.is_(False),
        other.c.name != name).scalar_subquery()
    with engine.begin() as conn:
        _lock_tokens(conn)
        # One statement, so two admins revoking each other at once cannot both succeed.
        n = conn.execute(sa.update(api_tokens).where(
            api_tokens.c.name == name,
            sa.or_(api_tokens.c.role != Role.ADMIN.value, api_tokens.c.revoked.is_(True),
                   other_admins > 0)).values(revoked=True)).rowcount
        if not n and _is_last_admin(conn, name):
            raise LastAdminToken(name)
    if n:
        log.info("API token %r revoked", name)
    return bool(n)


def list_tokens(engine: sa.Engine) -> list[dict[str, Any]]:
    """Every token without its hash."""
    cols = [api_tokens.c.name, api_tokens.c.role, api_tokens.c.unit, api_tokens.c.member,
            api_tokens.c.created, api_tokens.c.revoked, api_tokens.c.rate_per_min]
    with engine.connect() as conn:
        return [dict(r._mapping) for r in conn.execute(sa.select(*cols)
                                                       .order_by(api_tokens.c.name))]


def lookup(engine: sa.Engine, token: str) -> Principal | None:
    """The principal of a presented token, or None for unknown or revoked tokens."""
    digest = hash_token(token)
    with engine.connect() as conn:
        row = conn.execute(sa.select(api_tokens).where(api_tokens.c.token_hash == digest)).first()
    if row is None or row.revoked or not hmac.compare_digest(row.token_hash, digest):
        return None
    return Principal(row.name, Role(row.role), row.rate_per_min, row.unit, row.member)


def bootstrap_admin(engine: sa.Engine, token_file: Path,
                    env: dict[str, str] | None = None) -> Path | None:
    """Make sure an admin can log in; return the file an admin token was written to, if any."""
    env = dict(os.environ) if env is None else env
    given = env.get(ADMIN_TOKEN_ENV, "").strip()
    if given:
        create_token(engine, "bootstrap", Role.ADMIN, token=given)
        return None
    with engine.connect() as conn:
        has_admin = conn.execute(sa.select(sa.func.count()).select_from(api_tokens).where(
            api_tokens.c.role == Role.ADMIN.value, api_tokens.c.revoked.is_(False))).scalar()
    if has_admin:
        return None
    secret = create_token(engine, "bootstrap", Role.ADMIN)
    token_file.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(token_file, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        f.write(secret + "\n")
    log.warning("first start: admin token written to %s (readable by this user only)",
                token_file)
    return token_file


# --- rate limiting -------------------------------------------------------------------------------

class RateLimiter:
    """Token bucket per principal: `rate_per_min` requests a minute, bursts up to that many."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._buckets: dict[str, tuple[float, float]] = {}  # name -> (tokens, last time)
        self._lock = threading.Lock()

    def allow(self, name: str, rate_per_min: int) -> float:
        """Take one request; return 0 when allowed, else seconds until the next is allowed."""
        now = self._clock()
        with self._lock:
            tokens, last = self._buckets.get(name, (float(rate_per_min), now))
            tokens = min(float(rate_per_min), tokens + (now - last) * rate_per_min / 60.0)
            if tokens >= 1.0:
                self._buckets[name] = (tokens - 1.0, now)
                return 0.0
            self._buckets[name] = (tokens, now)
            return (1.0 - tokens) * 60.0 / rate_per_min


# --- FastAPI dependencies ------------------------------------------------------------------------

_bearer = HTTPBearer(auto_error=False)
Credentials = Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)]


def _limiter(request: Request) -> RateLimiter:
    limiter: RateLimiter | None = getattr(request.app.state, "rate_limiter", None)
    if limiter is None:
        limiter = request.app.state.rate_limiter = RateLimiter()
    return limiter


def presented_token(request: Request) -> str:
    """The bearer token of a request: the Authorization header, else `?token=`."""
    header = request.headers.get("authorization", "")
    scheme, _, value = header.partition(" ")
    if scheme.lower() == "bearer" and value.strip():
        return value.strip()
    return request.query_params.get("token", "")  # EventSource and pages cannot set headers


def admit(request: Request, who: Principal) -> Principal:
    """Apply the principal's rate limit to this request (429 when exceeded)."""
    if who.rate_per_min:
        wait = _limiter(request).allow(who.name, who.rate_per_min)
        if wait > 0:
            raise HTTPException(429, f"rate limit of {who.rate_per_min}/min for {who.name!r}",
                                headers={"Retry-After": str(max(1, round(wait)))})
    return who


def authenticate(request: Request, _creds: Credentials) -> Principal:
    """The caller of this request, from its bearer token (401 when absent or unknown)."""
    presented = presented_token(request)
    if not presented:
        raise HTTPException(401, "this endpoint needs a token: send 'Authorization: Bearer "
                                 "<token>'", headers={"WWW-Authenticate": "Bearer"})
    who = lookup(request.app.state.store.engine, presented)
    if who is None:
        raise HTTPException(401, "unknown or revoked token — ask an administrator for a new one",
                            headers={"WWW-Authenticate": "Bearer"})
    return admit(request, who)


def require(*roles: Role | str) -> Callable[..., Principal]:
    """A dependency that admits only tokens of these roles (admin is always admitted)."""
    allowed = {Role(r) for r in roles} | {Role.ADMIN}

    def check(who: Annotated[Principal, Depends(authenticate)]) -> Principal:
        if who.role not in allowed:
            raise HTTPException(403, f"role {who.role.value!r} may not do this; needs one of "
                                     f"{', '.join(sorted(r.value for r in allowed))}")
        return who

    return check
