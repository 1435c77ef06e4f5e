"""API tokens: hashing, constant-time checks, roles, rate limits and the admin bootstrap."""

from __future__ import annotations

import logging
import stat
from pathlib import Path

import pytest
import sqlalchemy as sa

from collector import auth
from collector.auth import RateLimiter, Role
from collector.auth_tables import metadata


@pytest.fixture
def engine(tmp_path: Path) -> sa.Engine:
    e = sa.create_engine(f"sqlite:///{tmp_path / 'a.sqlite'}")
    metadata.create_all(e)
    return e


def test_tokens_are_random_and_stored_only_as_sha256(engine: sa.Engine) -> None:
    a, b = auth.new_token(), auth.new_token()
    assert a != b and len(a) > 40 and a.startswith("cg_")
    secret = auth.create_token(engine, "traffic-bureau", Role.READER, rate_per_min=60)
    with engine.connect() as conn:
        stored = conn.execute(sa.text("SELECT * FROM api_tokens")).mappings().one()
    assert secret not in str(dict(stored))
    assert stored["token_hash"] == auth.hash_token(secret)
    assert auth.token_matches(secret, stored["token_hash"])
    assert not auth.token_matches(secret + "x", stored["token_hash"])


def test_lookup_knows_role_and_rejects_unknown_or_revoked(engine: sa.Engine) -> None:
    secret = auth.create_token(engine, "tech-li", Role.TECHNICIAN)
    who = auth.lookup(engine, secret)
    assert who is not None and who.role is Role.TECHNICIAN and who.name == "tech-li"
    assert auth.lookup(engine, "cg_nope") is None
    assert auth.revoke_token(engine, "tech-li")
    assert auth.lookup(engine, secret) is None
    assert not auth.revoke_token(engine, "nobody")


def test_creating_a_token_logs_its_name_never_its_secret(
        engine: sa.Engine, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    secret = auth.create_token(engine, "crew-7", Role.CREW)
    assert "crew-7" in caplog.text
    assert secret not in caplog.text


def test_rate_limiter_allows_the_rate_and_says_how_long_to_wait() -> None:
    now = [0.0]
    limiter = RateLimiter(clock=lambda: now[0])
    assert all(limiter.allow("sys", 60) == 0 for _ in range(60))
    wait = limiter.allow("sys", 60)
    assert 0.9 < wait <= 1.0
    assert limiter.allow("other", 60) == 0  # buckets are per token
    now[0] += 1.0
    assert limiter.allow("sys", 60) == 0
    assert limiter.allow("sys", 60) > 0


def test_bootstrap_from_env_registers_that_token(engine: sa.Engine, tmp_path: Path) -> None:
    written = auth.bootstrap_admin(engine, tmp_path / "admin-token",
                                   env={auth.ADMIN_TOKEN_ENV: "cg_from-env"})
    assert written is None
    who = auth.lookup(engine, "cg_from-env")
    assert who is not None and who.role is Role.ADMIN


def test_bootstrap_writes_a_private_file_once(engine: sa.Engine, tmp_path: Path,
                                              caplog: pytest.LogCaptureFixture) -> None:
    path = tmp_path / "state" / "admin-token"
    assert auth.bootstrap_admin(engine, path, env={}) == path
    secret = path.read_text().strip()
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    who = auth.lookup(engine, secret)
    assert who is not None and who.role is Role.ADMIN
    assert secret not in caplog.text
    assert auth.bootstrap_admin(engine, path, env={}) is None  # an admin exists: no new one
    assert path.read_text().strip() == secret
