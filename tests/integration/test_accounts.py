"""Users, tokens, login limits and team quotas on the real platform: the real ``paas`` CLI
logs users in and out, tokens expire, are scoped and revoked, guessed passwords are stopped
(the counters live in the platform's Redis), quotas refuse with their numbers, and two teams
each run an app called ``api`` on routes of their own."""

from __future__ import annotations

import json
import shutil
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import redis
import requests

from launcher.sandbox import Sandbox, paas_command
from tests.integration.runtime_helpers import wait_for
from tests.integration.test_tenancy import tiny_package

pytestmark = pytest.mark.usefixtures("dump_logs_on_failure")
FIXTURE = Path(__file__).parents[1] / "fixtures" / "procfile-only"
T1, T2, TQ = "acct-t1", "acct-t2", "acct-q"  # two teams with an `api` each; a quota team
SOLO, TWO, DEV, QDEV = "acct-solo", "acct-two", "acct-dev", "acct-qdev"
PASSWORD = "correct horse battery"
EXPIRED = "the token has expired: log in again with 'paas login'"
REVOKED = "the token is not valid (it was revoked, or never issued)"


@dataclass
class User:
    name: str
    home: Path  # the PAAS_HOME of this user's CLI

    def cli(self, platform: Sandbox, *args: str, stdin: str | None = None,
            ) -> subprocess.CompletedProcess[str]:
        return subprocess.run([paas_command(), *args],
                              env={**platform.cli_env(), "PAAS_HOME": str(self.home)},
                              input=stdin, capture_output=True, text=True, timeout=600)


def api(platform: Sandbox, token: str | None, method: str, path: str, team: str | None = None,
        **kw: Any) -> requests.Response:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    if team:
        headers["X-Paas-Team"] = team
    return requests.request(method, f"{platform.settings.api_url}/v1{path}", headers=headers,
                            timeout=30, **kw)


def admin(platform: Sandbox, method: str, path: str, team: str | None = None,
          **kw: Any) -> requests.Response:
    return api(platform, platform.token, method, path, team, **kw)


def login(platform: Sandbox, username: str, password: str = PASSWORD) -> requests.Response:
    return api(platform, None, "POST", "/login",
               json={"username": username, "password": password})


def token_of(platform: Sandbox, username: str) -> str:
    r = login(platform, username)
    assert r.status_code == 201, r.text
    return r.json()["token"]


def clear_login_failures(platform: Sandbox) -> None:
    client = redis.Redis.from_url(platform.settings.redis_url)
    try:
        for key in client.scan_iter("paas:login-failures:*"):
            client.delete(key)
    finally:
        client.close()


def app_folder(root: Path, text: str) -> Path:
    """The Procfile-only app, answering /hello.txt with ``text``."""
    folder = root / text.replace(" ", "-")
    shutil.copytree(FIXTURE, folder)
    (folder / "hello.txt").write_text(text + "\n")
    return folder


@pytest.fixture(scope="module")
def people(platform: Sandbox,
           tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    """Teams T1, T2, TQ; SOLO (manager of T1 only), TWO (developer of T2 only), DEV
    (developer of both), QDEV (developer of TQ): each with a password and a CLI home aimed
    at the platform. Everything made here (and the apps of these teams) goes at the end."""
    root = tmp_path_factory.mktemp("accounts")
    for team in (T1, T2, TQ):
        r = admin(platform, "POST", "/teams", json={"name": team})
        assert r.status_code == 201, r.text
    made = {}
    for name, roles in ((SOLO, {T1: "manager"}), (TWO, {T2: "developer"}),
                        (DEV, {T1: "developer", T2: "developer"}), (QDEV, {TQ: "developer"})):
        r = admin(platform, "POST", "/users", json={"username": name, "password": PASSWORD})
        assert r.status_code == 201, r.text
        for team, role in roles.items():
            r = admin(platform, "PUT", f"/teams/{team}/members/{name}", json={"role": role})
            assert r.status_code == 200, r.text
        home = root / name
        home.mkdir()
        made[name] = User(name, home)
        target = made[name].cli(platform, "target", platform.settings.api_url)
        assert target.returncode == 0, target.stderr
    yield type("People", (), {"root": root, **{n.removeprefix("acct-"): u
                                                 for n, u in made.items()}})
    clear_login_failures(platform)
    for team in (T1, T2, TQ):
        listed = admin(platform, "GET", "/apps", team=team).json().get("apps") or []
        for app in listed:
            if app.get("team", team) == team:
                admin(platform, "DELETE", f"/apps/{app['name']}", team=team)
    for name in (*made, "acct-pw", "acct-rl"):
        admin(platform, "DELETE", f"/users/{name}")
    for team in (T1, T2, TQ):
        r = admin(platform, "DELETE", f"/teams/{team}")
        assert r.status_code == 200, r.text


# -- logging in and out with the CLI --------------------------------------------------------

def test_the_cli_logs_in_shows_who_and_the_teams_and_logout_revokes_the_token(
        platform: Sandbox, people: Any) -> None:
    solo = people.solo
    shown = solo.cli(platform, "login", "--username", SOLO, "--password-stdin",
                     stdin=PASSWORD + "\n")
    assert shown.returncode == 0, shown.stdout + shown.stderr
    assert f"Logged in as {SOLO}" in shown.stdout and f"new apps go to team {T1}" in shown.stdout
    token = json.loads((solo.home / "config").read_text())["token"]
    assert token.startswith("paas_")
    shown = solo.cli(platform, "whoami")
    assert shown.returncode == 0, shown.stderr
    assert SOLO in shown.stdout and T1 in shown.stdout and T2 not in shown.stdout
    shown = solo.cli(platform, "teams")
    assert shown.returncode == 0, shown.stderr
    assert T1 in shown.stdout and "manager" in shown.stdout and T2 not in shown.stdout
    assert api(platform, token, "GET", "/whoami").json()["user"] == SOLO
    shown = solo.cli(platform, "logout")
    assert shown.returncode == 0 and "Logged out" in shown.stdout
    r = api(platform, token, "GET", "/whoami")
    assert r.status_code == 401 and REVOKED in r.json()["error"]
    shown = solo.cli(platform, "whoami")
    assert shown.returncode == 1
    # A wrong password: the CLI says so and keeps no token.
    shown = solo.cli(platform, "login", "--username", SOLO, "--password-stdin",
                     stdin="not the password\n")
    assert shown.returncode == 1 and "the username or password is wrong" in shown.stderr
    clear_login_failures(platform)


# -- tokens: expiry, scope, revocation ---------------------------------------------------

def test_a_token_that_expires_in_two_seconds_works_then_is_refused_saying_so(
        platform: Sandbox, people: Any) -> None:
    login_token = token_of(platform, SOLO)
    r = api(platform, login_token, "POST", "/tokens", json={"name": "acct-short",
                                                           "scope": "read", "expires_in": 2})
    assert r.status_code == 201, r.text
    short = r.json()["token"]
    assert r.json()["expires_at"] is not None
    assert api(platform, short, "GET", "/apps").status_code == 200
    time.sleep(3.2)
    r = api(platform, short, "GET", "/apps")
    assert r.status_code == 401 and r.json()["error"].startswith(EXPIRED), r.text
    assert api(platform, login_token, "DELETE", "/tokens/acct-short").status_code == 200
    api(platform, login_token, "POST", "/logout")


def test_a_tokens_scope_caps_what_it_may_do(platform: Sandbox, people: Any) -> None:
    login_token = token_of(platform, SOLO)  # scope admin: SOLO manages T1
    tokens = {}
    for scope in ("read", "deploy"):
        r = api(platform, login_token, "POST", "/tokens",
                json={"name": f"acct-{scope}", "scope": scope})
        assert r.status_code == 201, r.text
        tokens[scope] = r.json()["token"]
    read, deploy = tokens["read"], tokens["deploy"]
    assert api(platform, read, "GET", "/apps").status_code == 200
    assert api(platform, read, "GET", f"/teams/{T1}").status_code == 200
    sentence = ("this token's scope 'read' does not allow this (it needs 'deploy'): create "
                "one with 'paas create-token NAME --scope deploy'.")
    for method, path, body in (("POST", "/apps/acct-x/processes/web/scale", {"instances": 1}),
                               ("PATCH", "/apps/acct-x/env", {"set": {"A": "1"}}),
                               ("DELETE", "/apps/acct-x", None)):
        r = api(platform, read, method, path, json=body)
        assert r.status_code == 403 and r.json()["error"] == sentence, (method, r.text)
    # deploy may push, scale and delete apps...
    r = api(platform, deploy, "POST", "/apps/acct-scope/push",
            files={"package": ("app.tar.gz", tiny_package())},
            data={"options": json.dumps({"no_route": True, "instances": 0})})
    assert r.status_code == 201, r.text
    assert wait_for(lambda: api(platform, read, "GET", "/apps/acct-scope").json()["processes"],
                    timeout=180), "the build of acct-scope did not finish"
    r = api(platform, read, "POST", "/apps/acct-scope/processes/web/scale",
            json={"memory_mb": 128})
    assert r.status_code == 403 and r.json()["error"] == sentence
    r = api(platform, deploy, "POST", "/apps/acct-scope/processes/web/scale",
            json={"memory_mb": 128})
    assert r.status_code == 200, r.text
    assert r.json()["processes"][0]["memory_mb"] == 128
    assert api(platform, deploy, "DELETE", "/apps/acct-scope").status_code == 200
    # ...but not manage the team's members nor make itself an admin-scope token.
    r = api(platform, deploy, "PUT", f"/teams/{T1}/members/{TWO}", json={"role": "viewer"})
    assert r.status_code == 403 and r.json()["error"] == (
        "this token's scope 'deploy' does not allow this (it needs 'admin'): create one with "
        "'paas create-token NAME --scope admin'.")
    r = api(platform, deploy, "POST", "/tokens", json={"name": "acct-wider", "scope": "admin"})
    assert r.status_code == 400 and r.json()["error"] == (
        "this token's scope is 'deploy': it cannot make a token with the wider scope 'admin'.")
    members = api(platform, read, "GET", f"/teams/{T1}/members").json()["members"]
    assert TWO not in {m["username"] for m in members}
    # The admin-scope login token of the same manager may add the member: the scope was
    # what stopped the deploy token.
    r = api(platform, login_token, "PUT", f"/teams/{T1}/members/{TWO}", json={"role": "viewer"})
    assert r.status_code == 200, r.text
    assert api(platform, login_token, "DELETE", f"/teams/{T1}/members/{TWO}").status_code \
        == 200
    # Revocation is at once.
    assert api(platform, deploy, "GET", "/whoami").status_code == 200
    r = api(platform, login_token, "DELETE", "/tokens/acct-deploy")
    assert r.status_code == 200 and r.json() == {"revoked": "acct-deploy"}
    r = api(platform, deploy, "GET", "/whoami")
    assert r.status_code == 401 and REVOKED in r.json()["error"]
    names = {t["name"] for t in api(platform, login_token, "GET", "/tokens").json()["tokens"]}
    assert "acct-read" in names and "acct-deploy" not in names
    api(platform, login_token, "DELETE", "/tokens/acct-read")
    api(platform, login_token, "POST", "/logout")


def test_a_password_change_revokes_the_users_other_login_tokens(
        platform: Sandbox, people: Any) -> None:
    r = admin(platform, "POST", "/users", json={"username": "acct-pw", "password": PASSWORD})
    assert r.status_code == 201, r.text
    first, second = token_of(platform, "acct-pw"), token_of(platform, "acct-pw")
    made = api(platform, first, "POST", "/tokens", json={"name": "acct-ci", "scope": "read"})
    assert made.status_code == 201
    r = api(platform, first, "PUT", "/user/password",
            json={"current_password": "wrong password", "new_password": "a new password"})
    assert r.status_code == 401 and r.json()["error"] == "the current password is wrong."
    r = api(platform, first, "PUT", "/user/password",
            json={"current_password": PASSWORD, "new_password": "a new password"})
    assert r.status_code == 200 and r.json() == {"changed": True}
    assert api(platform, first, "GET", "/whoami").status_code == 200  # the caller's own
    r = api(platform, second, "GET", "/whoami")
    assert r.status_code == 401 and REVOKED in r.json()["error"]
    assert api(platform, made.json()["token"], "GET", "/whoami").status_code == 200  # an API one
    assert login(platform, "acct-pw").status_code == 401
    assert login(platform, "acct-pw", "a new password").status_code == 201
    clear_login_failures(platform)


# -- login limits (counters in Redis) -------------------------------------------------------

def test_five_wrong_passwords_stop_the_user_even_with_the_right_one(
        platform: Sandbox, people: Any) -> None:
    clear_login_failures(platform)
    try:
        r = admin(platform, "POST", "/users", json={"username": "acct-rl", "password": PASSWORD})
        assert r.status_code == 201, r.text
        for _ in range(5):
            r = login(platform, "acct-rl", "a wrong password")
            assert r.status_code == 401 and r.json()["error"] == \
                "the username or password is wrong."
        r = login(platform, "acct-rl")
        assert r.status_code == 429, r.text
        assert 0 < int(r.headers["Retry-After"]) <= 60
        assert r.json()["error"].startswith("too many failed logins for 'acct-rl': wait ")
        assert "s and try again" in r.json()["error"]
        assert login(platform, SOLO).status_code == 201  # another user is not stopped
    finally:
        clear_login_failures(platform)
    assert login(platform, "acct-rl").status_code == 201


def test_twenty_failures_from_one_address_stop_a_fresh_username(
        platform: Sandbox, people: Any) -> None:
    clear_login_failures(platform)
    try:
        for n in range(20):  # four each for five names: no name reaches its own cap of five
            r = login(platform, f"acct-guess{n % 5}", "a wrong password")
            assert r.status_code == 401, (n, r.text)
        r = login(platform, "acct-fresh", "a wrong password")
        assert r.status_code == 429, r.text
        assert r.json()["error"].startswith("too many failed logins from your address: wait ")
        assert int(r.headers["Retry-After"]) > 0
        r = login(platform, SOLO)  # the right password of a real user too, from here
        assert r.status_code == 429
    finally:
        clear_login_failures(platform)
    assert login(platform, SOLO).status_code == 201


# -- quotas ----------------------------------------------------------------------------------

def test_quotas_refuse_with_their_numbers_in_the_api_and_the_cli(
        platform: Sandbox, people: Any) -> None:
    r = admin(platform, "PUT", f"/teams/{TQ}/quota",
              json={"apps": 1, "memory_mb": 512, "instances": 2, "routes": 2})
    assert r.status_code == 200, r.text
    assert r.json()["quota"] == {"apps": 1, "memory_mb": 512, "instances": 2, "routes": 2,
                                      "tasks": None, "services": None}
    qdev = people.qdev
    assert qdev.cli(platform, "login", "--username", QDEV, "--password-stdin",
                    stdin=PASSWORD + "\n").returncode == 0
    folder = app_folder(people.root, "quota app")
    pushed = qdev.cli(platform, "push", "acct-qa", "-p", str(folder), "-m", "128M")
    assert pushed.returncode == 0, pushed.stdout + pushed.stderr
    token = token_of(platform, QDEV)
    # A second app.
    r = api(platform, token, "POST", "/apps/acct-qb/push",
            files={"package": ("app.tar.gz", tiny_package())}, data={"options": "{}"})
    assert r.status_code == 422, r.text
    assert r.json()["detail"] == {"quota": "apps", "used": 1, "asked": 1, "allowed": 1}
    assert r.json()["error"].startswith(f"team '{TQ}' is over its apps quota: it uses 1, "
                                        "this asks 1 more, and 1 is allowed;")
    shown = qdev.cli(platform, "push", "acct-qb", "-p", str(folder))
    assert shown.returncode == 1 and f"team '{TQ}' is over its apps quota" in shown.stderr
    # Instances: 1 of 2; three asks two more.
    r = api(platform, token, "POST", "/apps/acct-qa/processes/web/scale", json={"instances": 3})
    assert r.status_code == 422 and r.json()["detail"] == {
        "quota": "instances", "used": 1, "asked": 2, "allowed": 2}, r.text
    shown = qdev.cli(platform, "scale", "acct-qa", "-i", "3")
    assert shown.returncode == 1 and "over its instances quota: it uses 1, this asks 2 more, " \
        "and 2 is allowed" in shown.stderr
    # Memory: 128 of 512 MiB; 1024 asks 896 more.
    r = api(platform, token, "POST", "/apps/acct-qa/processes/web/scale",
            json={"memory_mb": 1024})
    assert r.status_code == 422 and r.json()["detail"] == {
        "quota": "memory_mb", "used": 128, "asked": 896, "allowed": 512}, r.text
    assert "over its memory quota: it uses 128 MiB, this asks 896 MiB more, and 512 MiB is " \
        "allowed" in r.json()["error"]
    shown = qdev.cli(platform, "scale", "acct-qa", "-m", "1G")
    assert shown.returncode == 1 and "over its memory quota" in shown.stderr
    # Nothing changed, and the team page shows usage against quota.
    app = api(platform, token, "GET", "/apps/acct-qa").json()
    web = next(p for p in app["processes"] if p["type"] == "web")
    assert (web["instances"], web["memory_mb"]) == (1, 128)
    team = api(platform, token, "GET", f"/teams/{TQ}").json()
    assert team["usage"] == {"memory_mb": 128, "instances": 1, "apps": 1, "routes": 1,
                                  "tasks": 0, "services": 0}
    shown = qdev.cli(platform, "team", TQ)
    assert shown.returncode == 0, shown.stderr
    text = " ".join(shown.stdout.split())
    for words in ("memory 128 MiB of 512 MiB", "instances 1 of 2", "apps 1 of 1",
                  "routes 1 of 2", "tasks 0 of unlimited", f"{QDEV} developer"):
        assert words in text, (words, shown.stdout)
    # One-off tasks: a quota of none running.
    assert admin(platform, "PUT", f"/teams/{TQ}/quota", json={"tasks": 0}).status_code == 200
    shown = qdev.cli(platform, "run", "acct-qa", "--", "echo", "hi")
    assert shown.returncode == 1, shown.stdout + shown.stderr
    assert f"team '{TQ}' is over its running tasks quota: it uses 0, this asks 1 more, and 0 " \
        "is allowed" in shown.stderr
    assert "hi" not in shown.stdout
    api(platform, token, "POST", "/logout")


# -- two teams, one app name -----------------------------------------------------------------

def test_two_teams_each_run_an_app_called_api_on_their_own_route(
        platform: Sandbox, people: Any) -> None:
    dev, two = people.dev, people.two
    shown = dev.cli(platform, "login", "--username", DEV, "--password-stdin",
                    stdin=PASSWORD + "\n")
    assert shown.returncode == 0, shown.stdout + shown.stderr
    assert "pick the team new apps go to with 'paas target --team T'" in shown.stdout
    shown = two.cli(platform, "login", "--username", TWO, "--password-stdin",
                    stdin=PASSWORD + "\n")
    assert shown.returncode == 0, shown.stdout + shown.stderr
    # T1's api by DEV (a member of both), T2's by TWO (T2's only member).
    for who, team in ((dev, T1), (two, T2)):
        assert who.cli(platform, "target", "--team", team).returncode == 0
        pushed = who.cli(platform, "push", "api", "-p",
                         str(app_folder(people.root, f"api of {team}")))
        assert pushed.returncode == 0, pushed.stdout + pushed.stderr
    hosts = {T1: f"api.{platform.settings.domain}", T2: f"api-{T2}.{platform.settings.domain}"}
    for team, host in hosts.items():
        r = platform.router_get(host, "/hello.txt")
        assert r.status_code == 200 and r.text == f"api of {team}\n", (host, r.status_code)
    # Each team's member sees its own `api` only.
    seen = {}
    for user, team in ((SOLO, T1), (TWO, T2)):
        token = token_of(platform, user)
        apps = [a for a in api(platform, token, "GET", "/apps").json()["apps"]
                if a["name"] == "api"]
        assert len(apps) == 1 and apps[0]["team"] == team, apps
        shown = api(platform, token, "GET", "/apps/api").json()
        assert shown["routes"] == [hosts[team]], shown
        seen[team] = shown["guid"]
        api(platform, token, "POST", "/logout")
    assert seen[T1] != seen[T2]
    # A member of both teams without a target team must pick one.
    token = token_of(platform, DEV)
    r = api(platform, token, "GET", "/apps/api")
    assert r.status_code == 400 and r.json()["error"] == (
        f"there are apps named 'api' in teams {T1}, {T2}: pick the team with "
        "'paas target --team TEAM'."), r.text
    r = api(platform, token, "POST", "/apps/acct-new/push",
            files={"package": ("app.tar.gz", tiny_package())}, data={"options": "{}"})
    assert r.status_code == 400 and r.json()["error"] == (
        f"you belong to teams {T1}, {T2}: pick the one to act in with "
        "'paas target --team TEAM'."), r.text
    assert dev.cli(platform, "target", "--team", T2).returncode == 0
    shown = dev.cli(platform, "app", "api")
    assert shown.returncode == 0 and f"api-{T2}" in shown.stdout, shown.stdout + shown.stderr
    r = api(platform, token, "GET", "/apps/api", team=T2)
    assert r.status_code == 200 and r.json()["guid"] == seen[T2]
    api(platform, token, "POST", "/logout")
    for host in hosts.values():  # nothing above changed either app
        assert platform.router_get(host, "/hello.txt").status_code == 200


def test_a_push_to_the_targeted_team_makes_its_app_when_another_team_has_the_name(
        platform: Sandbox, people: Any) -> None:
    token = token_of(platform, DEV)
    try:
        made = {}
        for team in (T1, T2):
            r = api(platform, token, "POST", "/apps/acct-dup/push", team=team,
                    files={"package": ("app.tar.gz", tiny_package())},
                    data={"options": json.dumps({"no_route": True})})
            assert r.status_code == 201, r.text
            made[team] = r.json()["app"]
        assert made[T2]["team"] == T2 and made[T1]["guid"] != made[T2]["guid"], made
    finally:
        for team in (T1, T2):
            api(platform, token, "DELETE", "/apps/acct-dup", team=team)
        api(platform, token, "POST", "/logout")
