"""Migration 53 upgrades an existing API token table in place, and the last admin token stays
(SQLite and PostgreSQL)."""

from __future__ import annotations

import pytest
import sqlalchemy as sa

from collector import auth, migrations, schema
from collector.auth_tables import AUTH
from collector.store import Store


def test_an_older_token_table_gains_unit_and_member(store: Store) -> None:
    engine = store.engine
    with engine.begin() as conn:  # back to the table as version 52 made it, with one token
        conn.execute(sa.text("DROP TABLE signin_codes"))
        conn.execute(sa.text("DROP TABLE api_tokens"))
        conn.execute(sa.text(
            "CREATE TABLE api_tokens (name TEXT PRIMARY KEY, role TEXT NOT NULL, "
            "token_hash TEXT NOT NULL UNIQUE, created BIGINT NOT NULL, "
            "revoked BOOLEAN NOT NULL DEFAULT false, rate_per_min INTEGER)"))
        conn.execute(sa.text("INSERT INTO api_tokens VALUES ('root', 'admin', :h, 1, false, "
                             "NULL)"), {"h": auth.hash_token("cg_old-admin")})
        done = schema.feature_migrations
        conn.execute(sa.delete(done).where(done.c.feature == "auth", done.c.version == 53))
    assert migrations.migrate(engine, [AUTH]) == [("auth", 53)]
    old = auth.lookup(engine, "cg_old-admin")
    assert old is not None and (old.role, old.unit, old.member) == (auth.Role.ADMIN, None, None)
    secret = auth.create_token(engine, "li", auth.Role.CREW, unit="crew-north", member="Li Wei")
    who = auth.lookup(engine, secret)
    assert who is not None and (who.unit, who.member) == ("crew-north", "Li Wei")
    assert migrations.migrate(engine, [AUTH]) == []
    with pytest.raises(auth.LastAdminToken):  # the upgraded table keeps its last admin
        auth.revoke_token(engine, "root")
    auth.create_token(engine, "root-2", auth.Role.ADMIN)
    assert auth.revoke_token(engine, "root")
    with pytest.raises(auth.LastAdminToken):
        auth.revoke_token(engine, "root-2")
