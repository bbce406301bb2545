"""What the review of issue 13 found, each fixed and kept so: quotas held at release and on
rollback, tokens that cannot outlive or outrank their maker, the last manager, teams that
hold domains, guesses sent at once."""

from __future__ import annotations

import datetime as dt
from typing import Any

from sqlalchemy import select

from contracts.messages import StageResult
from controller import ratelimit
from controller.models import Build, BuildState, Token
from tests.unit.test_accounts import bearer, login, token_of, user
from tests.unit.test_controller_api import _settle, package, push
from tests.unit.test_runtime_api import released


def _ok(build: dict[str, Any]) -> StageResult:
    return StageResult(ok=True, droplet_digest=build["guid"].replace("-", "") * 2,
                       droplet_path="d.json", image=f"img:{build['guid'][:6]}",
                       buildpack="procfile", process_types={"web": "serve"})


def test_pushes_staged_at_once_are_held_to_the_quota_when_released(env: Any) -> None:
    assert env.client.put("/v1/teams/default/quota", json={"instances": 2}).status_code == 200
    first = push(env.client, "one", package(), {"instances": 2}).json["build"]
    second = push(env.client, "two", package(), {"instances": 2}).json["build"]  # 0 used yet
    _settle(env, first["guid"], _ok(first))
    _settle(env, second["guid"], _ok(second))
    with env.app.extensions["paas.sessionmaker"]() as session:
        states = {b.guid: b.state for b in session.scalars(select(Build))}
    assert states == {first["guid"]: BuildState.SUCCEEDED}  # two's first build: no app left
    [failed] = env.client.get("/v1/events?type=build.failed").json["events"]
    assert failed["app"] == "two" and failed["data"]["error"].startswith(
        "the build was not released: team 'default' is over its instances quota: it uses 2")
    assert env.client.get("/v1/teams/default").json["usage"]["instances"] == 2


def test_a_rollback_that_starts_a_stopped_app_is_held_to_the_quota(env: Any) -> None:
    released(env)
    released(env)
    assert env.client.post("/v1/apps/myapp/stop").status_code == 200
    env.client.put("/v1/teams/default/quota", json={"instances": 0})
    r = env.client.post("/v1/apps/myapp/rollback", json={"version": 1})
    assert r.status_code == 422 and r.json["detail"]["quota"] == "instances", r.json
    assert env.client.get("/v1/apps/myapp").json["state"] == "STOPPED"


def test_a_token_outlives_not_the_token_that_made_it(env: Any) -> None:
    user(env, "ann", {"a": "developer"})
    short = login(env, "ann", expires_in=60).json["token"]
    made = env.client.post("/v1/tokens", json={"name": "ci", "scope": "deploy",
                                                "expires_in": None}, headers=bearer(short))
    assert made.status_code == 201 and made.json["expires_at"] is not None
    ends = dt.datetime.fromisoformat(made.json["expires_at"])
    assert ends <= dt.datetime.now(dt.UTC) + dt.timedelta(seconds=61)


def test_a_narrow_token_cannot_revoke_a_wider_one_but_its_own_kind(env: Any) -> None:
    user(env, "bob", {"a": "developer"})
    full = token_of(env, "bob")
    read = env.client.post("/v1/tokens", json={"name": "r", "scope": "read"},
                           headers=bearer(full)).json["token"]
    env.client.post("/v1/tokens", json={"name": "r2", "scope": "read"}, headers=bearer(full))
    with env.app.extensions["paas.sessionmaker"]() as session:
        login_name = session.scalar(select(Token.name).where(Token.kind == "login",
                                                             Token.name.like("login %")))
    r = env.client.delete(f"/v1/tokens/{login_name}", headers=bearer(read))
    assert r.status_code == 403 and "may not revoke" in r.json["error"]
    assert env.client.delete("/v1/tokens/r2", headers=bearer(read)).status_code == 200
    r = env.client.post("/v1/tokens", json={"name": "a/b"}, headers=bearer(full))
    assert r.status_code == 400 and "without '/'" in r.json["error"]


def test_the_last_manager_cannot_step_down(env: Any) -> None:
    user(env, "mia", {"a": "manager"})
    r = env.client.put("/v1/teams/a/members/mia", json={"role": "viewer"},
                       headers=bearer(token_of(env, "mia")))
    assert r.status_code == 409 and "last manager" in r.json["error"]
    user(env, "max", {"a": "developer"})
    mia = token_of(env, "mia")
    assert env.client.put("/v1/teams/a/members/max", json={"role": "manager"},
                          headers=bearer(mia)).status_code == 200
    assert env.client.put("/v1/teams/a/members/mia", json={"role": "viewer"},
                          headers=bearer(mia)).status_code == 200


def test_a_team_with_domains_and_the_default_team_are_not_deleted(env: Any) -> None:
    r = env.client.delete("/v1/teams/default")
    assert r.status_code == 409 and "cannot be deleted" in r.json["error"]
    env.client.post("/v1/teams", json={"name": "t"})
    assert env.client.post("/v1/domains", json={"name": "t.example.com"},
                           headers={"X-Paas-Team": "t"}).status_code == 201
    r = env.client.delete("/v1/teams/t")
    assert r.status_code == 409 and "t.example.com" in r.json["error"]


def test_guesses_are_counted_before_their_passwords_are_checked(env: Any) -> None:
    user(env, "gus", {"a": "developer"})
    settings = env.settings
    for _ in range(settings.login_failures_per_user):  # as if sent at once: none checked yet
        ratelimit.take_login_attempt(env.redis, settings, "gus", "10.9.9.9")
    r = login(env, "gus")
    assert r.status_code == 429 and "too many failed logins for 'gus'" in r.json["error"]


def test_a_good_login_is_taken_back_and_password_guesses_count(env: Any) -> None:
    user(env, "hal", {"a": "developer"})
    for _ in range(env.settings.login_failures_per_user + 2):
        assert login(env, "hal").status_code == 201  # successes never lock anyone out
    token = token_of(env, "hal")
    for _ in range(env.settings.login_failures_per_user):
        r = env.client.put("/v1/user/password", headers=bearer(token),
                           json={"current_password": "wrong guess", "new_password": "x" * 9})
        assert r.status_code == 401
    r = env.client.put("/v1/user/password", headers=bearer(token),
                       json={"current_password": "wrong guess", "new_password": "x" * 9})
    assert r.status_code == 429
