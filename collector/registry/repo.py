"""Registry persistence: sites, gateway identities, provisioning tokens, commissioning, pushes."""

from __future__ import annotations

import secrets
import tomllib
from dataclasses import dataclass
from typing import Any

import orjson
import sqlalchemy as sa

from collector.auth import hash_token
from collector.clock import now_ms
from collector.registry import tables as t
from collector.registry.mqtt_auth import collector_namespace, hash_password, new_password
from devices.contract import DEVICE_ID_RE, GATEWAY_ID_RE

RESERVED_IDS = frozenset({"admin"})  # and the collector's client-id namespace


def _reserved(gateway_id: str) -> bool:
    """A gateway id is its MQTT client id: it may not be one the collector's connections use."""
    return gateway_id in RESERVED_IDS or collector_namespace(gateway_id)


class RegistryError(ValueError):
    """A registry request that cannot be done; `status` is the HTTP status to answer with."""

    def __init__(self, status: int, detail: str) -> None:
        super().__init__(detail)
        self.status = status
        self.detail = detail


@dataclass(frozen=True, slots=True)
class Identity:
    """A new gateway identity; `password` exists only here, never in the database."""

    gateway_id: str
    site_id: str
    password: str


def upsert_site(engine: sa.Engine, site: dict[str, Any]) -> None:
    """Create or update a site."""
    with engine.begin() as conn:
        exists = conn.execute(sa.select(t.sites.c.site_id)
                              .where(t.sites.c.site_id == site["site_id"])).first()
        if exists:
            conn.execute(sa.update(t.sites).where(t.sites.c.site_id == site["site_id"])
                         .values(**site))
        else:
            conn.execute(sa.insert(t.sites).values(**site, created=now_ms()))


def sites(engine: sa.Engine) -> list[dict[str, Any]]:
    """Every site."""
    with engine.connect() as conn:
        return [dict(r._mapping) for r in conn.execute(sa.select(t.sites)
                                                       .order_by(t.sites.c.site_id))]


def site(engine: sa.Engine, site_id: str) -> dict[str, Any] | None:
    """One site, or None."""
    with engine.connect() as conn:
        row = conn.execute(sa.select(t.sites).where(t.sites.c.site_id == site_id)).first()
    return dict(row._mapping) if row else None


def _new_gateway_id(conn: sa.Connection, site_id: str) -> str:
    base = "".join(c if c.isalnum() or c in "-_" else "-" for c in site_id.lower())[:40]
    while True:
        candidate = f"{base}-{secrets.token_hex(3)}".lstrip("-_")
        if _reserved(candidate):
            candidate = f"gw-{candidate}"
        if not conn.execute(sa.select(t.gateways.c.gateway_id)
                            .where(t.gateways.c.gateway_id == candidate)).first():
            return candidate


def create_gateway(engine: sa.Engine, site_id: str, gateway_id: str | None,
                   created_by: str) -> Identity:
    """Register a gateway with fresh MQTT credentials (409 when the id is taken)."""
    with engine.begin() as conn:
        return _create_gateway(conn, site_id, gateway_id, created_by)


def _create_gateway(conn: sa.Connection, site_id: str, gateway_id: str | None,
                    created_by: str) -> Identity:
    if gateway_id is not None and (not GATEWAY_ID_RE.fullmatch(gateway_id)
                                   or _reserved(gateway_id)):
        raise RegistryError(422, f"{gateway_id!r} cannot be a gateway id: use lower-case "
                                 "letters, digits, '-' and '_', not starting with 'citygate' "
                                 "or 'collector' (the collector's client ids)")
    password = new_password()
    if not conn.execute(sa.select(t.sites.c.site_id).where(t.sites.c.site_id == site_id)
                        ).first():
        raise RegistryError(404, f"no site {site_id!r}: create it first (POST /api/v1/sites)")
    gid = gateway_id or _new_gateway_id(conn, site_id)
    if conn.execute(sa.select(t.gateways.c.gateway_id)
                    .where(t.gateways.c.gateway_id == gid)).first():
        raise RegistryError(409, f"gateway {gid!r} already exists: pick another id, or "
                                 "rotate its credentials (POST .../credentials)")
    conn.execute(sa.insert(t.gateways).values(
        gateway_id=gid, site_id=site_id, mqtt_hash=hash_password(password),
        created=now_ms(), created_by=created_by))
    return Identity(gid, site_id, password)


def rotate_credentials(engine: sa.Engine, gateway_id: str) -> Identity:
    """Give a gateway a new MQTT password (the old one stops working at the broker's reload)."""
    gw = gateway(engine, gateway_id)
    password = new_password()
    with engine.begin() as conn:
        conn.execute(sa.update(t.gateways).where(t.gateways.c.gateway_id == gateway_id)
                     .values(mqtt_hash=hash_password(password), revoked=False))
    return Identity(gateway_id, gw["site_id"], password)


def revoke_gateway(engine: sa.Engine, gateway_id: str) -> None:
    """Revoke a gateway's credentials."""
    gateway(engine, gateway_id)
    with engine.begin() as conn:
        conn.execute(sa.update(t.gateways).where(t.gateways.c.gateway_id == gateway_id)
                     .values(revoked=True))


def gateway(engine: sa.Engine, gateway_id: str) -> dict[str, Any]:
    """A registered gateway (404 RegistryError when unknown)."""
    with engine.connect() as conn:
        row = conn.execute(sa.select(t.gateways)
                           .where(t.gateways.c.gateway_id == gateway_id)).first()
    if row is None:
        raise RegistryError(404, f"no registered gateway {gateway_id!r}")
    return dict(row._mapping)


def gateways(engine: sa.Engine, site_id: str | None = None) -> list[dict[str, Any]]:
    """Registered gateways, optionally of one site."""
    q = sa.select(t.gateways).order_by(t.gateways.c.gateway_id)
    if site_id is not None:
        q = q.where(t.gateways.c.site_id == site_id)
    with engine.connect() as conn:
        return [dict(r._mapping) for r in conn.execute(q)]


def mqtt_hashes(engine: sa.Engine) -> dict[str, str]:
    """gateway id -> MQTT password hash of every gateway not revoked (for the broker files)."""
    with engine.connect() as conn:
        rows = conn.execute(sa.select(t.gateways.c.gateway_id, t.gateways.c.mqtt_hash)
                            .where(t.gateways.c.revoked.is_(False)))
        return {r.gateway_id: r.mqtt_hash for r in rows}


# --- devices from an uploaded config ------------------------------------------------------------

def devices_of_config(config_toml: str) -> list[dict[str, Any]]:
    """The [[devices]] of a gateway config (the gateway validates the rest with its schema)."""
    try:
        doc = tomllib.loads(config_toml)
    except tomllib.TOMLDecodeError as exc:
        raise RegistryError(422, f"config is not valid TOML: {exc}") from None
    out = []
    for i, d in enumerate(doc.get("devices", [])):
        if not isinstance(d, dict) or not DEVICE_ID_RE.fullmatch(str(d.get("id", ""))):
            raise RegistryError(422, f"devices[{i}].id: missing or not a valid device id")
        out.append({"device_id": d["id"], "bus": str(d.get("bus", "")),
                    "profile": str(d.get("profile", "")), "unit": d.get("unit")})
    return out


def store_config(engine: sa.Engine, gateway_id: str, config_toml: str,
                 version: int | None = None) -> int:
    """Record a gateway's config and its devices; return the config version."""
    found = devices_of_config(config_toml)
    gw = gateway(engine, gateway_id)
    new_version = version if version is not None else gw["config_version"] + 1
    with engine.begin() as conn:
        conn.execute(sa.update(t.gateways).where(t.gateways.c.gateway_id == gateway_id)
                     .values(config_toml=config_toml, config_version=new_version))
        conn.execute(sa.delete(t.devices).where(t.devices.c.gateway_id == gateway_id))
        if found:
            conn.execute(sa.insert(t.devices), [{"gateway_id": gateway_id, **d} for d in found])
    return int(new_version)


def devices(engine: sa.Engine, gateway_id: str) -> list[dict[str, Any]]:
    """The devices registered behind a gateway."""
    with engine.connect() as conn:
        return [dict(r._mapping) for r in conn.execute(
            sa.select(t.devices).where(t.devices.c.gateway_id == gateway_id)
            .order_by(t.devices.c.device_id))]


# --- provisioning tokens --------------------------------------------------------------------------

def create_provision_token(engine: sa.Engine, site_id: str, ttl_s: float,
                           created_by: str) -> tuple[str, int]:
    """A one-time token for zero-touch provisioning at a site; return (token, expires ms)."""
    if site(engine, site_id) is None:
        raise RegistryError(404, f"no site {site_id!r}")
    token = "cgp_" + secrets.token_urlsafe(32)
    expires = now_ms() + int(ttl_s * 1000)
    with engine.begin() as conn:
        conn.execute(sa.insert(t.provision_tokens).values(
            token_hash=hash_token(token), site_id=site_id, created=now_ms(),
            created_by=created_by, expires=expires))
    return token, expires


def claim(engine: sa.Engine, token: str, gateway_id: str | None) -> Identity:
    """Exchange a provisioning token (once, before it expires) for a new gateway identity.

    The token is spent in the transaction that creates the gateway: a claim that fails (an id
    taken or refused) leaves the token usable for a corrected claim.
    """
    digest = hash_token(token)
    now = now_ms()
    with engine.begin() as conn:
        # The conditional update is the one-time guarantee, also with concurrent claims: the
        # row stays locked until this transaction commits or rolls back.
        won = conn.execute(sa.update(t.provision_tokens).where(
            t.provision_tokens.c.token_hash == digest, t.provision_tokens.c.used_at.is_(None),
            t.provision_tokens.c.expires > now).values(used_at=now)).rowcount
        row = conn.execute(sa.select(t.provision_tokens)
                           .where(t.provision_tokens.c.token_hash == digest)).first()
        if not won or row is None:
            raise RegistryError(403, "this provisioning token is unknown, used or expired: "
                                     "ask for a new one (citygate provision token --site SITE)")
        ident = _create_gateway(conn, row.site_id, gateway_id,
                                created_by=f"claim:{row.created_by}")
        conn.execute(sa.update(t.provision_tokens).where(
            t.provision_tokens.c.token_hash == digest).values(gateway_id=ident.gateway_id))
    return ident


# --- commissioning and config pushes --------------------------------------------------------

def record_commissioning(engine: sa.Engine, gateway_id: str, run: dict[str, Any]) -> bool:
    """Store one commissioning run (idempotent on run id); return False for a repeat upload."""
    gateway(engine, gateway_id)
    results = run["results"]
    passed = all(r.get("status") != "FAIL" for r in results)
    with engine.begin() as conn:
        if conn.execute(sa.select(t.commissioning.c.id).where(
                t.commissioning.c.gateway_id == gateway_id,
                t.commissioning.c.run_id == run["run_id"])).first():
            return False
        conn.execute(sa.insert(t.commissioning).values(
            gateway_id=gateway_id, ts=run["ts"], received=now_ms(),
            technician=run.get("technician", ""), passed=passed,
            results=orjson.dumps(results).decode(), run_id=run["run_id"]))
        conn.execute(sa.update(t.gateways).where(t.gateways.c.gateway_id == gateway_id).values(
            commissioned_at=run["ts"] if passed else None,
            commissioning=orjson.dumps({"passed": passed, "ts": run["ts"],
                                        "results": results}).decode()))
    if run.get("config_toml"):
        store_config(engine, gateway_id, run["config_toml"])
    return True


def commissioning_runs(engine: sa.Engine, gateway_id: str) -> list[dict[str, Any]]:
    """Every commissioning run of a gateway, newest first."""
    with engine.connect() as conn:
        rows = conn.execute(sa.select(t.commissioning)
                            .where(t.commissioning.c.gateway_id == gateway_id)
                            .order_by(t.commissioning.c.ts.desc()))
        return [{**dict(r._mapping), "results": orjson.loads(r.results)} for r in rows]


def record_push(engine: sa.Engine, push_id: str, gateway_id: str, version: int,
                config_toml: str) -> None:
    """Remember a config sent to a gateway."""
    with engine.begin() as conn:
        conn.execute(sa.insert(t.config_pushes).values(
            push_id=push_id, gateway_id=gateway_id, version=version, sent=now_ms(),
            status="sent", config_toml=config_toml))


def finish_push(engine: sa.Engine, push_id: str, status: str, detail: dict[str, Any]) -> None:
    """Record a gateway's answer to a config push."""
    with engine.begin() as conn:
        conn.execute(sa.update(t.config_pushes).where(t.config_pushes.c.push_id == push_id)
                     .values(status=status, detail=orjson.dumps(detail).decode()))


def push(engine: sa.Engine, push_id: str) -> dict[str, Any] | None:
    """One config push, or None."""
    with engine.connect() as conn:
        row = conn.execute(sa.select(t.config_pushes)
                           .where(t.config_pushes.c.push_id == push_id)).first()
    return {**dict(row._mapping), "detail": orjson.loads(row.detail)} if row else None
