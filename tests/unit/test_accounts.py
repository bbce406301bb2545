"""The account endpoints with the Flask test client: logging in and out, whoami, users, teams,
members and tokens, and the sentence of every refusal a user can cause."""

from __future__ import annotations

import datetime as dt
from typing import Any

import pytest
from sqlalchemy import select

from controller.models import Token
from tests.unit.test_tenancy import push_as

PASSWORD = "correct horse battery"
REVOKED = ("the token is not valid (it was revoked, or never issued): log in again with "
           "'paas login' (or use a token from 'paas create-token').")
EXPIRED = ("the token has expired: log in again with 'paas login' (or use a token from "
           "'paas create-token').")
WRONG = "the username or password is wrong."


def bearer(secret: str, team: str | None = None) -> dict[str, str]:
    headers = {"Authorization": f"Bearer {secret}"}
    if team:
        headers["X-Paas-Team"] = team
    return headers


def user(env: Any, name: str, teams: dict[str, str] | None = None, admin: bool = False) -> None:
    """Make user ``name`` (password PASSWORD) with ``teams`` {team: role} (made if missing)."""
    r = env.client.post("/v1/users", json={"username": name, "password": PASSWORD,
                                           "admin": admin})
    assert r.status_code == 201, r.json
    for team, role in (teams or {}).items():
        env.client.post("/v1/teams", json={"name": team})
        r = env.client.put(f"/v1/teams/{team}/members/{name}", json={"role": role})
        assert r.status_code == 200, r.json


def login(env: Any, name: str, password: str = PASSWORD, **extra: object) -> Any:
    return env.client.post("/v1/login", json={"username": name, "password": password, **extra},
                           headers={"Authorization": ""})


def token_of(env: Any, name: str) -> str:
    r = login(env, name)
    assert r.status_code == 201, r.json
    return r.json["token"]


# -- logging in and out --------------------------------------------------------------------

def test_login_gives_a_token_of_the_user_and_logout_revokes_it(env: Any) -> None:
    user(env, "alice", {"a": "developer"})
    r = login(env, "alice")
    assert r.status_code == 201, r.json
    body = r.json
    assert body["token"].startswith("paas_") and body["scope"] == "admin"
    assert body["name"].startswith("login ") and body["expires_at"] is not None
    assert body["user"] == {"username": "alice", "admin": False}
    who = env.client.get("/v1/whoami", headers=bearer(body["token"])).json
    assert who == {"name": "alice", "user": "alice", "admin": False, "role": "user",
                   "token": {"name": body["name"], "scope": "admin",
                             "expires_at": body["expires_at"]},
                   "teams": [{"name": "a", "role": "developer"}], "team": "a"}
    r = env.client.post("/v1/logout", headers=bearer(body["token"]))
    assert r.status_code == 200 and r.json == {"revoked": body["name"]}
    r = env.client.get("/v1/whoami", headers=bearer(body["token"]))
    assert r.status_code == 401 and r.json["error"] == REVOKED


def test_a_wrong_password_and_an_unknown_user_get_the_same_sentence(env: Any) -> None:
    user(env, "alice")
    for name, password in (("alice", "not the password"), ("nobody", PASSWORD)):
        r = login(env, name, password)
        assert r.status_code == 401 and r.json["error"] == WRONG
    for body in ({}, {"username": "alice"}, {"username": 3, "password": PASSWORD},
                 {"username": "", "password": PASSWORD}):
        r = env.client.post("/v1/login", json=body, headers={"Authorization": ""})
        assert r.status_code == 400 and r.json["error"] == \
            "give a username and a password (text).", body


def test_a_user_without_a_password_cannot_log_in_with_one(env: Any) -> None:
    assert env.client.post("/v1/users", json={"username": "robot"}).status_code == 201
    assert login(env, "robot", "").status_code in (400, 401)
    r = login(env, "robot", "anything at all")
    assert r.status_code == 401 and r.json["error"] == WRONG


def test_a_login_token_may_end_sooner_but_not_later_than_the_login_ttl(env: Any) -> None:
    user(env, "alice")
    now = dt.datetime.now(dt.UTC)
    soon = dt.datetime.fromisoformat(login(env, "alice", expires_in=60).json["expires_at"])
    assert dt.timedelta(seconds=50) < soon - now < dt.timedelta(seconds=70)
    late = dt.datetime.fromisoformat(
        login(env, "alice", expires_in=5 * 365 * 86400).json["expires_at"])
    ttl = dt.timedelta(seconds=env.settings.login_token_ttl)
    assert ttl - dt.timedelta(minutes=1) < late - now < ttl + dt.timedelta(minutes=1)


def test_five_failed_logins_of_a_user_give_a_429_with_retry_after(env: Any) -> None:
    user(env, "alice")
    for _ in range(env.settings.login_failures_per_user):
        assert login(env, "alice", "a wrong password").status_code == 401
    r = login(env, "alice")  # the right password: refused all the same
    assert r.status_code == 429
    assert int(r.headers["Retry-After"]) > 0
    assert r.json["error"].startswith("too many failed logins for 'alice': wait ")
    user(env, "bob")
    assert login(env, "bob").status_code == 201  # another name still may


# -- whoami and the team a request means ---------------------------------------------------

def test_whoami_of_a_member_of_two_teams_names_no_team_until_one_is_picked(env: Any) -> None:
    user(env, "alice", {"a": "viewer", "b": "manager"})
    secret = token_of(env, "alice")
    who = env.client.get("/v1/whoami", headers=bearer(secret)).json
    assert who["teams"] == [{"name": "a", "role": "viewer"}, {"name": "b", "role": "manager"}]
    assert who["team"] is None
    assert env.client.get("/v1/whoami", headers=bearer(secret, "b")).json["team"] == "b"


def test_a_team_the_caller_is_not_in_is_a_404_as_one_that_does_not_exist(env: Any) -> None:
    user(env, "alice", {"a": "developer"})
    env.client.post("/v1/teams", json={"name": "b"})
    secret = token_of(env, "alice")
    answers = []
    for team in ("b", "nosuch"):
        r = env.client.get("/v1/apps", headers=bearer(secret, team))
        assert r.status_code == 404
        answers.append(r.json["error"].replace(team, "T"))
        r = env.client.get(f"/v1/teams/{team}", headers=bearer(secret))
        assert r.status_code == 404 and r.json["error"] == \
            f"there is no team named {team!r}: 'paas teams' lists yours."
    assert answers[0] == answers[1] == ("there is no team named 'T': 'paas teams' lists yours "
                                        "('paas target --team TEAM' picks one).")
    # A platform admin may name any team.
    assert env.client.get("/v1/apps", headers={"X-Paas-Team": "b"}).status_code == 200


def test_a_member_of_two_teams_must_pick_the_team_of_a_new_app(env: Any) -> None:
    user(env, "alice", {"a": "developer", "b": "developer"})
    secret = token_of(env, "alice")
    r = push_as(env, bearer(secret), "web")
    assert r.status_code == 400 and r.json["error"] == (
        "you belong to teams a, b: pick the one to act in with 'paas target --team TEAM'.")
    assert push_as(env, bearer(secret, "a"), "web").status_code == 201
    user(env, "carol", {"b": "developer"})  # b's own web
    assert push_as(env, bearer(token_of(env, "carol")), "web").status_code == 201
    r = env.client.get("/v1/apps/web", headers=bearer(secret))
    assert r.status_code == 400 and r.json["error"] == (
        "there are apps named 'web' in teams a, b: pick the team with "
        "'paas target --team TEAM'.")
    guids = {t: env.client.get("/v1/apps/web", headers=bearer(secret, t)).json["guid"]
             for t in ("a", "b")}
    assert guids["a"] != guids["b"]


def test_a_push_to_the_named_team_makes_its_own_app_when_another_team_has_the_name(
        env: Any) -> None:
    user(env, "alice", {"a": "developer", "b": "developer"})
    secret = token_of(env, "alice")
    assert push_as(env, bearer(secret, "b"), "web").status_code == 201
    # 'paas target --team a; paas push web': a new app of team a, not team b's web.
    r = push_as(env, bearer(secret, "a"), "web")
    assert r.status_code == 201 and r.json["app"]["team"] == "a", r.json
    listed = env.client.get("/v1/apps", headers=bearer(secret, "a")).json["apps"]
    assert [a["team"] for a in listed] == ["a"]


def test_a_viewer_is_told_which_role_to_ask_for(env: Any) -> None:
    user(env, "alice", {"a": "viewer"})
    r = push_as(env, bearer(token_of(env, "alice")), "web")
    assert r.status_code == 403 and r.json["error"] == (
        "your role 'viewer' in team 'a' may not change the team's apps: ask a manager of the "
        "team for the developer role.")


# -- passwords -----------------------------------------------------------------------------

def test_a_password_change_needs_the_current_one_and_revokes_other_logins(env: Any) -> None:
    user(env, "alice")
    first, second = token_of(env, "alice"), token_of(env, "alice")
    api = env.client.post("/v1/tokens", json={"name": "ci"}, headers=bearer(first)).json["token"]
    r = env.client.put("/v1/user/password", headers=bearer(first),
                       json={"current_password": "wrong one", "new_password": "a new secret"})
    assert r.status_code == 401 and r.json["error"] == "the current password is wrong."
    r = env.client.put("/v1/user/password", headers=bearer(first),
                       json={"current_password": PASSWORD, "new_password": "short"})
    assert r.status_code == 400 and r.json["error"] == \
        "the new password must be a string of 8 to 128 characters."
    r = env.client.put("/v1/user/password", headers=bearer(first),
                       json={"current_password": PASSWORD, "new_password": "a new secret"})
    assert r.status_code == 200 and r.json == {"changed": True}
    assert env.client.get("/v1/whoami", headers=bearer(first)).status_code == 200
    assert env.client.get("/v1/whoami", headers=bearer(second)).json["error"] == REVOKED
    assert env.client.get("/v1/whoami", headers=bearer(api)).status_code == 200
    assert login(env, "alice").status_code == 401
    assert login(env, "alice", "a new secret").status_code == 201


def test_an_admin_sets_a_password_and_the_users_logins_end(env: Any) -> None:
    user(env, "alice")
    secret = token_of(env, "alice")
    r = env.client.put("/v1/users/alice/password", json={"password": "x"})
    assert r.status_code == 400 and "8 to 128 characters" in r.json["error"]
    assert env.client.put("/v1/users/alice/password",
                          json={"password": "another secret"}).json == {"changed": True}
    assert env.client.get("/v1/whoami", headers=bearer(secret)).status_code == 401
    assert login(env, "alice", "another secret").status_code == 201
    r = env.client.put("/v1/users/nobody/password", json={"password": "another secret"})
    assert r.status_code == 404 and r.json["error"] == \
        "there is no user named 'nobody': 'paas users' lists them."


# -- users ---------------------------------------------------------------------------------

@pytest.mark.parametrize("name", ["Alice", "-alice", "", "a" * 64, "al ice", "al/ice", 7])
def test_a_bad_username_is_refused_with_the_rule(env: Any, name: Any) -> None:
    r = env.client.post("/v1/users", json={"username": name, "password": PASSWORD})
    assert r.status_code == 400 and r.json["error"] == (
        f"{name!r} is not a valid user name: use 1 to 63 lower-case letters, digits, dots, "
        "hyphens and underscores, starting with a letter or digit.")


@pytest.mark.parametrize("password", ["short", "x" * 129, 12345678])
def test_a_password_out_of_bounds_is_refused(env: Any, password: Any) -> None:
    r = env.client.post("/v1/users", json={"username": "alice", "password": password})
    assert r.status_code == 400 and r.json["error"] == \
        "the password must be a string of 8 to 128 characters."
    assert env.client.get("/v1/users").json["users"][-1]["username"] != "alice"


def test_users_are_made_listed_and_deleted_with_their_tokens(env: Any) -> None:
    user(env, "alice", {"a": "developer"})
    r = env.client.post("/v1/users", json={"username": "alice", "password": PASSWORD})
    assert r.status_code == 409 and r.json["error"] == \
        "there is already a user named 'alice': pick another name."
    r = env.client.post("/v1/users", json={"username": "bob", "admin": "yes"})
    assert r.status_code == 400 and r.json["error"] == "admin must be true or false."
    listed = {u["username"]: u for u in env.client.get("/v1/users").json["users"]}
    assert listed["alice"]["teams"] == [{"name": "a", "role": "developer"}]
    assert listed["alice"]["admin"] is False and listed["admin"]["admin"] is True
    secret = token_of(env, "alice")
    r = env.client.get("/v1/users", headers=bearer(secret))
    assert r.status_code == 403 and r.json["error"] == "only platform admins may do this: ask one."
    assert env.client.delete("/v1/users/alice").json == {"deleted": "alice"}
    assert env.client.get("/v1/whoami", headers=bearer(secret)).status_code == 401
    r = env.client.delete("/v1/users/alice")
    assert r.status_code == 404 and "there is no user named 'alice'" in r.json["error"]
    with env.app.extensions["paas.sessionmaker"]() as session:
        assert all(t.user.username == "admin" for t in session.scalars(select(Token)))


def test_the_last_platform_admin_cannot_be_deleted(env: Any) -> None:
    r = env.client.delete("/v1/users/admin")
    assert r.status_code == 409 and r.json["error"] == (
        "'admin' is the last platform admin: make another admin first ('paas create-user NAME "
        "--admin').")
    user(env, "root", admin=True)
    assert env.client.delete("/v1/users/admin").status_code == 200
    assert env.client.get("/v1/whoami").status_code == 401  # its token went with it
    r = env.client.delete("/v1/users/root", headers=bearer(token_of(env, "root")))
    assert r.status_code == 409 and "'root' is the last platform admin" in r.json["error"]


# -- teams and members ---------------------------------------------------------------------

def test_teams_are_made_shown_changed_and_deleted(env: Any) -> None:
    r = env.client.post("/v1/teams", json={"name": "a", "viewer_logs": False})
    assert r.status_code == 201 and r.json["viewer_logs"] is False
    r = env.client.post("/v1/teams", json={"name": "a"})
    assert r.status_code == 409 and r.json["error"] == \
        "there is already a team named 'a': pick another name."
    r = env.client.post("/v1/teams", json={"name": "Bad_Name"})
    assert r.status_code == 400 and r.json["error"].startswith(
        "'Bad_Name' is not a valid team name: use 1 to 63 lower-case letters")
    user(env, "alice", {"a": "manager"})
    shown = env.client.get("/v1/teams/a").json
    assert shown["quota"] == dict.fromkeys(
        ("memory_mb", "instances", "apps", "routes", "tasks", "services"))
    assert shown["usage"] == dict.fromkeys(shown["quota"], 0)
    assert shown["members"] == [{"username": "alice", "role": "manager"}]
    secret = token_of(env, "alice")
    r = env.client.patch("/v1/teams/a", json={}, headers=bearer(secret))
    assert r.status_code == 400 and "viewer_logs" in r.json["error"]
    r = env.client.patch("/v1/teams/a", json={"viewer_logs": True}, headers=bearer(secret))
    assert r.status_code == 200 and r.json["viewer_logs"] is True
    assert env.client.get("/v1/teams", headers=bearer(secret)).json["teams"] == [
        {"name": "a", "viewer_logs": True, "created_at": shown["created_at"], "role": "manager",
         "apps": 0}]
    assert push_as(env, bearer(secret), "web").status_code == 201
    r = env.client.delete("/v1/teams/a")
    assert r.status_code == 409 and r.json["error"].startswith(
        "team 'a' still has 1 app(s): delete them first")
    assert env.client.delete("/v1/apps/web", headers=bearer(secret)).status_code == 200
    assert env.client.delete("/v1/teams/a").json == {"deleted": "a"}
    assert env.client.get("/v1/teams", headers=bearer(secret)).json["teams"] == []


def test_members_are_added_with_a_known_role_and_listed(env: Any) -> None:
    user(env, "alice", {"a": "manager"})
    user(env, "bob")
    secret = token_of(env, "alice")
    r = env.client.put("/v1/teams/a/members/bob", json={"role": "owner"}, headers=bearer(secret))
    assert r.status_code == 400 and r.json["error"] == \
        "'owner' is not a role: use one of viewer, developer, manager."
    r = env.client.put("/v1/teams/a/members/nobody", json={"role": "viewer"},
                       headers=bearer(secret))
    assert r.status_code == 404 and "there is no user named 'nobody'" in r.json["error"]
    r = env.client.put("/v1/teams/a/members/bob", json={"role": "viewer"}, headers=bearer(secret))
    assert r.status_code == 200 and r.json == {"member": {"username": "bob", "role": "viewer"}}
    bob = token_of(env, "bob")
    assert env.client.get("/v1/teams/a/members", headers=bearer(bob)).json["members"] == [
        {"username": "alice", "role": "manager"}, {"username": "bob", "role": "viewer"}]
    r = env.client.put("/v1/teams/a/members/bob", json={"role": "manager"}, headers=bearer(bob))
    assert r.status_code == 403 and r.json["error"] == (
        "your role 'viewer' in team 'a' may not manage the team's members: ask a manager of "
        "the team for the manager role.")
    r = env.client.delete("/v1/teams/a/members/admin", headers=bearer(secret))
    assert r.status_code == 404 and r.json["error"] == \
        "'admin' is not a member of team 'a': 'paas members a' lists them."


def test_the_last_manager_cannot_be_removed_by_a_manager_but_by_an_admin(env: Any) -> None:
    user(env, "alice", {"a": "manager"})
    secret = token_of(env, "alice")
    r = env.client.delete("/v1/teams/a/members/alice", headers=bearer(secret))
    assert r.status_code == 409 and r.json["error"] == \
        "'alice' is the last manager of team 'a': make another member manager first."
    assert env.client.get("/v1/teams/a/members").json["members"] == [
        {"username": "alice", "role": "manager"}]
    user(env, "bob", {"a": "manager"})
    assert env.client.delete("/v1/teams/a/members/alice",
                             headers=bearer(secret)).json == {"removed": "alice"}
    assert env.client.delete("/v1/teams/a/members/bob").json == {"removed": "bob"}  # admin


# -- tokens --------------------------------------------------------------------------------

def test_tokens_are_made_listed_and_revoked(env: Any) -> None:
    user(env, "alice", {"a": "developer"})
    secret = token_of(env, "alice")
    r = env.client.post("/v1/tokens", json={"name": "ci"}, headers=bearer(secret))
    # Made with a login's token, it ends when that login does (a token made with a token that
    # never expires may never expire either).
    assert r.status_code == 201 and r.json["scope"] == "deploy" and r.json["expires_at"]
    ci = r.json["token"]
    r = env.client.post("/v1/tokens", json={"name": "ci", "scope": "read"},
                        headers=bearer(secret))
    assert r.status_code == 409 and r.json["error"] == (
        "you already have a token named 'ci': revoke it first ('paas revoke-token ci') or "
        "pick another name.")
    r = env.client.post("/v1/tokens", json={"name": "x", "scope": "root"},
                        headers=bearer(secret))
    assert r.status_code == 400 and r.json["error"] == \
        "'root' is not a token scope: use one of read, deploy, admin."
    r = env.client.post("/v1/tokens", json={"name": "x", "expires_in": 0},
                        headers=bearer(secret))
    assert r.status_code == 400 and r.json["error"].startswith("expires_in must be a number")
    listed = env.client.get("/v1/tokens", headers=bearer(ci)).json["tokens"]
    assert [(t["name"], t["kind"], t["current"]) for t in listed][1:] == [("ci", "api", True)]
    assert listed[0]["kind"] == "login" and listed[0]["current"] is False
    r = env.client.post("/v1/tokens", json={"name": "wider", "scope": "admin"},
                        headers=bearer(ci))
    assert r.status_code == 400 and r.json["error"] == (
        "this token's scope is 'deploy': it cannot make a token with the wider scope 'admin'.")
    assert env.client.post("/v1/tokens", json={"name": "ro", "scope": "read"},
                           headers=bearer(ci)).status_code == 201
    r = env.client.delete("/v1/tokens/nosuch", headers=bearer(secret))
    assert r.status_code == 404 and r.json["error"] == \
        "you have no token named 'nosuch': 'paas tokens' lists yours."
    r = env.client.delete("/v1/tokens/ci", headers=bearer(env.token))  # the admin has none
    assert r.status_code == 404
    assert env.client.delete("/v1/tokens/ci", headers=bearer(secret)).json == {"revoked": "ci"}
    r = env.client.get("/v1/whoami", headers=bearer(ci))
    assert r.status_code == 401 and r.json["error"] == REVOKED


def test_a_read_token_reads_but_may_not_change(env: Any) -> None:
    user(env, "alice", {"a": "developer"})
    secret = token_of(env, "alice")
    assert push_as(env, bearer(secret), "web").status_code == 201
    read = env.client.post("/v1/tokens", json={"name": "ro", "scope": "read"},
                           headers=bearer(secret)).json["token"]
    assert env.client.get("/v1/apps/web", headers=bearer(read)).status_code == 200
    r = env.client.delete("/v1/apps/web", headers=bearer(read))
    assert r.status_code == 403 and r.json["error"] == (
        "this token's scope 'read' does not allow this (it needs 'deploy'): create one with "
        "'paas create-token NAME --scope deploy'.")
    assert env.client.get("/v1/apps/web/env", headers=bearer(read)).status_code == 403


def test_an_expired_token_is_refused_saying_so(env: Any) -> None:
    user(env, "alice", {"a": "developer"})
    secret = token_of(env, "alice")
    r = env.client.post("/v1/tokens", json={"name": "soon", "expires_in": 3600},
                        headers=bearer(secret))
    soon = r.json["token"]
    assert env.client.get("/v1/whoami", headers=bearer(soon)).status_code == 200
    with env.app.extensions["paas.sessionmaker"]() as session:
        token = session.scalar(select(Token).where(Token.name == "soon"))
        token.expires_at = dt.datetime.now(dt.UTC) - dt.timedelta(seconds=1)
        session.commit()
    r = env.client.get("/v1/whoami", headers=bearer(soon))
    assert r.status_code == 401 and r.json["error"] == EXPIRED
    assert env.client.get("/v1/whoami", headers=bearer(secret)).status_code == 200
