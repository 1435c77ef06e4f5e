"""The one migration runner: per-feature versions, idempotent, SQLite and PostgreSQL, two
collectors starting together, and databases made by the former global-version runner."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import sqlalchemy as sa

from collector import auth, schema
from collector.auth_tables import AUTH
from collector.core_tables import CORE
from collector.features import schema as composed
from collector.migrations import MigrationSet, applied_versions, creates, migrate
from collector.store import make_engine

ALL = composed()
EVERY_STEP = {(s.feature, v) for s in ALL for v, _, _ in s.steps}
LEGACY_LAST = 64  # the global-version runner's last version


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """An empty database on each backend."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'hub.sqlite'}"
    return str(request.getfixturevalue("pg_url"))


@pytest.fixture
def engine(url: str) -> Iterator[sa.Engine]:
    e = make_engine(url)
    yield e
    e.dispose()


def legacy_migrate(engine: sa.Engine, up_to: int) -> None:
    """What the former runner did: every step by one global version (the ranges of today's
    sets, as far as its last version), recorded in `schema_migrations`."""
    assert up_to <= LEGACY_LAST, "the global runner never had versions past its range"
    steps = sorted((v, name, apply) for s in ALL for v, name, apply in s.steps if v <= up_to)
    with engine.begin() as conn:
        schema.metadata.create_all(conn, tables=[schema.schema_migrations])
        for version, name, apply in steps:
            apply(conn)
            conn.execute(sa.insert(schema.schema_migrations).values(
                version=version, name=name, applied_at=1))


def test_a_fresh_database_gets_every_step_once(engine: sa.Engine) -> None:
    applied = migrate(engine, ALL)
    assert len(applied) == len(EVERY_STEP) and set(applied) == EVERY_STEP
    assert applied[:4] == [("core", 1), ("core", 2), ("core", 3), ("core", 4)]  # core first
    assert migrate(engine, ALL) == []
    assert applied_versions(engine) == EVERY_STEP
    auth.create_token(engine, "root", auth.Role.ADMIN)  # the tables are there and usable


def test_the_ingest_feed_tables_are_migrated_with_the_rest(engine: sa.Engine) -> None:
    migrate(engine, ALL)
    assert ("ingest_feed", 90) in applied_versions(engine)
    # PostgreSQL only: with one SQLite writer there are no workers to feed.
    assert sa.inspect(engine).has_table("ingest_feed") == (engine.dialect.name == "postgresql")


@pytest.mark.postgres
def test_feed_tables_made_before_the_runner_are_adopted(pg_url: str) -> None:
    from collector.feed import _DDL, ensure_feed

    engine = make_engine(pg_url)
    try:
        migrate(engine, [CORE])
        with engine.begin() as conn:  # what collectors did before the feed had a migration
            for ddl in _DDL:
                conn.execute(sa.text(ddl))
            conn.execute(sa.text("UPDATE ingest_feed_cursor SET last_id = 7"))
        ensure_feed(engine)
        with engine.connect() as conn:
            assert conn.execute(sa.text("SELECT last_id FROM ingest_feed_cursor")).scalar() == 7
        assert ("ingest_feed", 90) in applied_versions(engine)
    finally:
        engine.dispose()


def test_versions_count_per_feature(engine: sa.Engine) -> None:
    table = sa.Table("probe", sa.MetaData(), sa.Column("id", sa.Integer, primary_key=True))
    mine = MigrationSet("probe", [(1, "probe: a table", creates(table.metadata, table))])
    migrate(engine, [CORE])
    assert migrate(engine, [CORE, mine]) == [("probe", 1)]  # version 1 of core is another step
    assert sa.inspect(engine).has_table("probe")


def test_a_database_of_the_global_version_runner_upgrades_in_place(engine: sa.Engine) -> None:
    legacy_migrate(engine, up_to=52)  # made before crew tokens (53) and agent updates (60)
    with engine.begin() as conn:
        conn.execute(sa.text("INSERT INTO api_tokens (name, role, token_hash, created, revoked) "
                             "VALUES ('root', 'admin', :h, 1, false)"),
                     {"h": auth.hash_token("cg_old")})
    applied = migrate(engine, ALL)
    # Every step the old database lacks, in the runner's order (the sets', then by version):
    # two of the global runner's own range, and every step of the features that came after it.
    assert applied == [(s.feature, v) for s in ALL for v, _, _ in s.steps if v > 52]
    assert [a for a in applied if a[1] <= LEGACY_LAST] == [("auth", 53), ("updates", 60)]
    assert {f for f, v in applied if v > LEGACY_LAST} == \
        {s.feature for s in ALL if max(v for v, _, _ in s.steps) > LEGACY_LAST}
    assert applied_versions(engine) == EVERY_STEP
    old = auth.lookup(engine, "cg_old")  # the token table gained its columns, rows kept
    assert old is not None and (old.role, old.unit) == (auth.Role.ADMIN, None)
    assert migrate(engine, ALL) == []


def test_a_fully_migrated_legacy_database_applies_only_the_newer_features(
        engine: sa.Engine) -> None:
    legacy_migrate(engine, up_to=LEGACY_LAST)
    applied = migrate(engine, ALL)
    assert applied == [(s.feature, v) for s in ALL for v, _, _ in s.steps if v > LEGACY_LAST]
    assert applied_versions(engine) == EVERY_STEP
    assert migrate(engine, ALL) == []


def test_a_migration_set_must_be_ordered_and_sets_named_once() -> None:
    noop: Callable[[sa.Connection], None] = lambda conn: None  # noqa: E731
    with pytest.raises(ValueError, match="unique and ascending"):
        MigrationSet("x", [(2, "b", noop), (1, "a", noop)])
    with pytest.raises(ValueError, match="share a name"):
        migrate(sa.create_engine("sqlite://"), [CORE, MigrationSet("core", [])])


@pytest.mark.postgres
def test_a_failing_step_leaves_nothing_behind_on_postgresql(pg_url: str) -> None:
    engine = make_engine(pg_url)
    table = sa.Table("half", sa.MetaData(), sa.Column("id", sa.Integer, primary_key=True))

    def broken(conn: sa.Connection) -> None:
        table.metadata.create_all(conn)
        raise RuntimeError("step 2 of probe is broken")

    bad = MigrationSet("probe", [(1, "probe: a table, then a failure", broken)])
    with pytest.raises(RuntimeError):
        migrate(engine, [CORE, AUTH, bad])
    assert applied_versions(engine) == set()
    assert not sa.inspect(engine).has_table("half")
    engine.dispose()


@pytest.mark.postgres
def test_two_collectors_starting_together_take_turns(pg_url: str) -> None:
    engines = [make_engine(pg_url) for _ in range(2)]
    start = threading.Barrier(2)
    results: list[list[tuple[str, int]]] = [[], []]
    errors: list[BaseException] = []

    def run(i: int) -> None:
        start.wait(timeout=10)
        try:
            results[i] = migrate(engines[i], ALL)
        except BaseException as exc:  # reported below, not lost in the thread
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert errors == []
    assert sorted(map(len, results)) == [0, len(EVERY_STEP)]  # one applied all, one none
    with engines[0].connect() as conn:
        rows = conn.execute(sa.text("SELECT count(*) FROM feature_migrations")).scalar_one()
    assert rows == len(EVERY_STEP)
    for e in engines:
        e.dispose()
