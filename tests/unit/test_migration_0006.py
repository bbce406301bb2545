"""Migration 0006 (users) on a database of before: every token keeps its powers as a user of
its own, no row hanging off a copied table is lost (SQLite copies a table to alter it, and a
dropped table's ON DELETE CASCADE would take processes, routes and memberships with it), and
the downgrade and a second upgrade work."""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from alembic import command
from sqlalchemy import create_engine, text
from sqlalchemy.engine import Engine

from contracts.secretbox import ensure_key
from contracts.settings import Settings, load
from controller.admin import alembic_config, secure_data_dir
from controller.app import create_app
from tests.unit.fakes import FakeCelery, FakeRedis

NOW = "2026-12-01 10:00:00.000000"
SECRETS = {"admin": "paas_old-admin-secret", "ci-a": "paas_old-ci-of-a", "ci-b": "paas_old-ci-of-b"}
# (team, app, process types with instances x memory, hostname)
APPS = [("default", "adm", {"web": (1, 256)}, "adm"),
        ("a", "web", {"web": (2, 512), "worker": (1, 128)}, "web"),
        ("b", "api", {"web": (3, 256)}, "api")]


def _rows(engine: Engine, sql: str) -> list[tuple]:
    with engine.connect() as conn:
        return [tuple(r) for r in conn.execute(text(sql))]


def _counts(engine: Engine) -> dict[str, int]:
    return {table: _rows(engine, f"SELECT COUNT(*) FROM {table}")[0][0]
            for table in ("teams", "apps", "processes", "routes", "domains", "events", "tokens")}


def _seed(engine: Engine) -> None:
    """The database of a platform before users: teams, apps with processes and routes, a
    private domain, events, an admin token and a token called ci in each of two teams."""
    with engine.begin() as conn:
        run = conn.execute
        for n, team in enumerate(("default", "a", "b"), start=1):
            run(text("INSERT INTO teams (id, guid, name, created_at) VALUES (:i, :g, :n, :t)"),
                {"i": n, "g": f"team-{team}", "n": team, "t": NOW})
        run(text("INSERT INTO domains (guid, name, team_id, created_at) "
                 "VALUES ('dom-a', 'a.test', 2, :t)"), {"t": NOW})
        localhost = conn.execute(text("SELECT id FROM domains WHERE name = 'localhost'")).scalar()
        for n, (team, app, processes, host) in enumerate(APPS, start=1):
            team_id = ("default", "a", "b").index(team) + 1
            run(text("INSERT INTO apps (id, guid, name, team_id, state, created_at, updated_at) "
                     "VALUES (:i, :g, :n, :team, 'STARTED', :t, :t)"),
                {"i": n, "g": f"app-{app}", "n": app, "team": team_id, "t": NOW})
            for type_, (instances, memory) in processes.items():
                run(text("INSERT INTO processes (app_id, type, instances, memory_mb) "
                         "VALUES (:a, :ty, :i, :m)"),
                    {"a": n, "ty": type_, "i": instances, "m": memory})
            run(text("INSERT INTO routes (guid, domain_id, hostname, path, app_id, team_id, "
                     "balance, https_redirect, created_at) VALUES (:g, :d, :h, '', :a, :team, "
                     "'round-robin', 0, :t)"),
                {"g": f"route-{app}", "d": localhost, "h": host, "a": n, "team": team_id,
                 "t": NOW})
            run(text("INSERT INTO events (team_id, app_guid, app_name, actor, type, data, "
                     "created_at) VALUES (:team, :g, :n, 'ci', 'app.pushed', '{}', :t)"),
                {"team": team_id, "g": f"app-{app}", "n": app, "t": NOW})
        for name, role, team_id in (("admin", "admin", 1), ("ci", "developer", 2),
                                    ("ci", "developer", 3)):
            secret = SECRETS["admin" if role == "admin" else f"ci-{'ab'[team_id - 2]}"]
            run(text("INSERT INTO tokens (name, token_hash, role, team_id, created_at) "
                     "VALUES (:n, :h, :r, :team, :t)"),
                {"n": name, "h": hashlib.sha256(secret.encode()).hexdigest(), "r": role,
                 "team": team_id, "t": NOW})


@pytest.fixture
def old(tmp_path: Path) -> Iterator[tuple[Settings, Any, Engine]]:
    """Settings, the alembic config and an engine of a database seeded at revision 0005."""
    settings = load(env={}, data_dir=str(tmp_path), router_port=8080)
    secure_data_dir(settings)
    ensure_key(settings)
    cfg = alembic_config(settings)
    command.upgrade(cfg, "0005")
    engine = create_engine(settings.sqlalchemy_url)
    _seed(engine)
    yield settings, cfg, engine
    engine.dispose()


def _client(settings: Settings, secret: str) -> Any:
    app = create_app(settings, TESTING=True, REDIS=FakeRedis(), CELERY=FakeCelery())
    client = app.test_client()
    client.environ_base["HTTP_AUTHORIZATION"] = f"Bearer {secret}"
    client.paas_app = app
    return client


def _powers(settings: Settings) -> dict[str, dict[str, Any]]:
    """What each old token may see and do now."""
    seen = {}
    for who, secret in SECRETS.items():
        client = _client(settings, secret)
        try:
            whoami = client.get("/v1/whoami")
            assert whoami.status_code == 200, (who, whoami.json)
            apps = client.get("/v1/apps")
            assert apps.status_code == 200, (who, apps.json)
            seen[who] = {
                "admin": whoami.json["admin"], "teams": whoami.json["teams"],
                "scope": whoami.json["token"]["scope"],
                "apps": sorted(a["name"] for a in apps.json["apps"]),
                "users": client.get("/v1/users").status_code,
                "env of own": [client.get(f"/v1/apps/{a['name']}/env").status_code
                               for a in apps.json["apps"]],
                "others": sorted({client.get(f"/v1/apps/{app}").status_code
                                  for _, app, _, _ in APPS
                                  if app not in [a["name"] for a in apps.json["apps"]]}),
            }
        finally:
            client.paas_app.extensions["paas.engine"].dispose()
    return seen


EXPECTED = {
    "admin": {"admin": True, "teams": [], "scope": "admin", "apps": ["adm", "api", "web"],
              "users": 200, "env of own": [200, 200, 200], "others": []},
    "ci-a": {"admin": False, "teams": [{"name": "a", "role": "developer"}], "scope": "admin",
             "apps": ["web"], "users": 403, "env of own": [200], "others": [404]},
    "ci-b": {"admin": False, "teams": [{"name": "b", "role": "developer"}], "scope": "admin",
             "apps": ["api"], "users": 403, "env of own": [200], "others": [404]},
}


def test_each_old_token_keeps_its_powers_as_a_user_of_its_own(old: Any) -> None:
    settings, cfg, engine = old
    before = _counts(engine)
    command.upgrade(cfg, "head")
    assert _powers(settings) == EXPECTED
    users = _rows(engine, "SELECT username, is_admin, password_hash FROM users ORDER BY id")
    assert users == [("admin", 1, None), ("ci", 0, None), ("ci-2", 0, None)]
    assert _counts(engine) == before


def test_no_row_is_lost_when_tables_are_copied(old: Any) -> None:
    settings, cfg, engine = old
    processes = "SELECT app_id, type, instances, memory_mb FROM processes ORDER BY id"
    routes = "SELECT guid, app_id, team_id, hostname FROM routes ORDER BY id"
    events = "SELECT team_id, app_name FROM events ORDER BY id"
    domains = "SELECT name, team_id FROM domains ORDER BY id"
    kept = {q: _rows(engine, q) for q in (processes, routes, events, domains)}
    before = _counts(engine)
    command.upgrade(cfg, "head")
    assert {q: _rows(engine, q) for q in kept} == kept
    assert _counts(engine) == before
    assert _rows(engine, "SELECT COUNT(*) FROM memberships") == [(2,)]
    teams = _rows(engine, "SELECT name, viewer_logs, quota_memory_mb, quota_apps FROM teams "
                          "ORDER BY id")
    assert teams == [("default", 1, None, None), ("a", 1, None, None), ("b", 1, None, None)]
    assert _rows(engine, "PRAGMA foreign_key_check") == []


def test_the_downgrade_and_a_second_upgrade_keep_every_token_and_row(old: Any) -> None:
    settings, cfg, engine = old
    before = _counts(engine)
    tokens = "SELECT name, token_hash, role, team_id FROM tokens ORDER BY id"
    as_before = _rows(engine, tokens)
    command.upgrade(cfg, "head")
    command.downgrade(cfg, "0005")
    assert _rows(engine, tokens) == as_before
    assert _counts(engine) == before
    names = {r[0] for r in _rows(engine, "SELECT name FROM sqlite_master WHERE type='table'")}
    assert not names & {"users", "memberships"}
    assert _rows(engine, "PRAGMA foreign_key_check") == []
    command.upgrade(cfg, "head")
    assert _counts(engine) == before
    assert _powers(settings) == EXPECTED


def test_app_names_repeat_across_teams_only_after_the_upgrade(old: Any) -> None:
    settings, cfg, engine = old
    insert = text("INSERT INTO apps (guid, name, team_id, state, created_at, updated_at) "
                  "VALUES (:g, 'api', :team, 'STARTED', :t, :t)")
    from sqlalchemy.exc import IntegrityError

    with pytest.raises(IntegrityError), engine.begin() as conn:
        conn.execute(insert, {"g": "app-api-2", "team": 2, "t": NOW})
    command.upgrade(cfg, "head")
    with engine.begin() as conn:
        conn.execute(insert, {"g": "app-api-2", "team": 2, "t": NOW})
    with pytest.raises(IntegrityError), engine.begin() as conn:
        conn.execute(insert, {"g": "app-api-3", "team": 2, "t": NOW})
