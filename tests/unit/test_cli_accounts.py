"""paas login, logout, teams, members, quotas and tokens against a fake API on 127.0.0.1 that
records every request and answers with the contract's JSON."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import click
import pytest
from click.testing import CliRunner, Result

from cli.accounts import parse_expires
from cli.main import main

ALICE_TEAMS = [{"name": "a", "role": "developer"}, {"name": "b", "role": "viewer"}]


@dataclass
class Seen:
    method: str
    path: str
    query: dict[str, list[str]]
    headers: dict[str, str]
    body: Any


@dataclass
class FakeApi:
    """Canned answers by (method, path); every request is kept in ``seen``."""

    url: str = ""
    answers: dict[tuple[str, str], tuple[int, Any]] = field(default_factory=dict)
    seen: list[Seen] = field(default_factory=list)

    def answer(self, method: str, path: str, body: Any, status: int = 200) -> None:
        self.answers[(method, f"/v1{path}")] = (status, body)

    def requests_to(self, method: str, path: str) -> list[Seen]:
        return [s for s in self.seen if (s.method, s.path) == (method, f"/v1{path}")]

    def only(self, method: str, path: str) -> Seen:
        found = self.requests_to(method, path)
        assert len(found) == 1, [(s.method, s.path) for s in self.seen]
        return found[0]


def _handler(api: FakeApi) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def _serve(self) -> None:
            parts = urlsplit(self.path)
            length = int(self.headers.get("Content-Length") or 0)
            raw = self.rfile.read(length) if length else b""
            api.seen.append(Seen(self.command, parts.path, parse_qs(parts.query),
                                 dict(self.headers.items()), json.loads(raw) if raw else None))
            status, body = api.answers.get(
                (self.command, parts.path),
                (404, {"error": f"the fake has no answer for {self.command} {parts.path}."}))
            data = json.dumps(body).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            if status == 429:
                self.send_header("Retry-After", "30")
            self.end_headers()
            self.wfile.write(data)

        do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = _serve

        def log_message(self, *args: object) -> None:
            pass

    return Handler


@pytest.fixture
def api() -> Iterator[FakeApi]:
    fake = FakeApi()
    server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(fake))
    fake.url = f"http://127.0.0.1:{server.server_address[1]}"
    fake.answer("GET", "/info", {"name": "paas", "domain": "localhost"})
    thread = threading.Thread(target=server.serve_forever, args=(0.02,), daemon=True)
    thread.start()
    yield fake
    server.shutdown()
    server.server_close()


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    folder = tmp_path / "home"
    folder.mkdir()
    monkeypatch.setenv("PAAS_HOME", str(folder))
    return folder


def _config(home: Path) -> dict[str, Any]:
    return json.loads((home / "config").read_text())


def _write_config(home: Path, **values: Any) -> None:
    (home / "config").write_text(json.dumps(values))


def paas(*args: str, stdin: str | None = None) -> Result:
    return CliRunner().invoke(main, list(args), input=stdin)


def _login_answers(api: FakeApi, teams: list[dict[str, str]], admin: bool = False) -> None:
    api.answer("POST", "/login", {"token": "paas_new", "name": "login-1", "scope": "admin",
                                  "expires_at": None,
                                  "user": {"username": "alice", "admin": admin}}, 201)
    api.answer("GET", "/whoami", {"name": "alice", "user": "alice", "admin": admin,
                                  "role": "user", "teams": teams, "team": None,
                                  "token": {"name": "login-1", "scope": "admin",
                                            "expires_at": None}})
    api.answer("POST", "/logout", {"revoked": "login-1"})


# -- login ------------------------------------------------------------------------------------
def test_login_with_password_stdin_saves_the_token_and_the_only_team(api: FakeApi, home: Path):
    _write_config(home, target=api.url)
    _login_answers(api, [{"name": "a", "role": "developer"}])
    result = paas("login", "--username", "alice", "--password-stdin", stdin="s3cret pw\n")
    assert result.exit_code == 0, result.output
    assert result.output.strip() == ("Logged in as alice (teams: a (developer)); new apps go "
                                     "to team a.")
    sent = api.only("POST", "/login")
    assert sent.body == {"username": "alice", "password": "s3cret pw"}
    assert "Authorization" not in sent.headers  # the old token is not sent to log in
    assert api.only("GET", "/whoami").headers["Authorization"] == "Bearer paas_new"
    saved = _config(home)
    assert (saved["token"], saved["team"], saved["target"]) == ("paas_new", "a", api.url)


def test_login_with_several_teams_says_how_to_pick_one(api: FakeApi, home: Path):
    _write_config(home, target=api.url)
    _login_answers(api, ALICE_TEAMS)
    result = paas("login", "-u", "alice", "--password-stdin", stdin="pw-pw-pw\n")
    assert result.exit_code == 0, result.output
    assert "teams: a (developer), b (viewer)" in result.output
    assert "pick the team new apps go to with 'paas target --team T'" in result.output
    assert _config(home)["team"] is None


def test_login_with_team_checks_it_and_saves_it(api: FakeApi, home: Path):
    _write_config(home, target=api.url)
    _login_answers(api, ALICE_TEAMS)
    api.answer("GET", "/teams/b", {"name": "b", "members": []})
    result = paas("login", "-u", "alice", "--password-stdin", "--team", "b", stdin="pw-pw-pw\n")
    assert result.exit_code == 0, result.output
    assert result.output.strip().endswith("new apps go to team b.")
    assert api.only("GET", "/teams/b").headers["Authorization"] == "Bearer paas_new"
    assert _config(home)["team"] == "b"


def test_login_to_a_team_that_is_not_yours_fails_and_revokes_the_new_token(
        api: FakeApi, home: Path):
    _write_config(home, target=api.url, token="old", team="a")
    _login_answers(api, ALICE_TEAMS)
    api.answer("GET", "/teams/x", {"error": "there is no team named 'x': 'paas teams' lists "
                                            "yours."}, 404)
    result = paas("login", "-u", "alice", "--password-stdin", "--team", "x", stdin="pw-pw-pw\n")
    assert result.exit_code == 1
    assert "there is no team named 'x': 'paas teams' lists yours." in result.output
    assert api.only("POST", "/logout").headers["Authorization"] == "Bearer paas_new"
    assert _config(home) == {"target": api.url, "token": "old", "team": "a"}  # untouched


def test_interactive_login_prompts_and_hides_the_password(api: FakeApi, home: Path):
    _write_config(home, target=api.url)
    _login_answers(api, [{"name": "a", "role": "manager"}])
    result = paas("login", stdin="alice\nhidden-pw\n")
    assert result.exit_code == 0, result.output
    assert "Username: alice" in result.output
    assert "Password: \n" in result.output  # typed, not echoed
    assert "hidden-pw" not in result.output
    assert api.only("POST", "/login").body == {"username": "alice", "password": "hidden-pw"}


def test_wrong_password_is_a_sentence_and_saves_nothing(api: FakeApi, home: Path):
    _write_config(home, target=api.url)
    api.answer("POST", "/login", {"error": "the username or password is wrong."}, 401)
    result = paas("login", "-u", "alice", "--password-stdin", stdin="nope-nope\n")
    assert result.exit_code == 1
    assert "Error: login failed: the username or password is wrong." in result.output
    assert "not logged in" not in result.output
    assert _config(home) == {"target": api.url}


def test_login_rate_limit_shows_the_wait(api: FakeApi, home: Path):
    _write_config(home, target=api.url)
    api.answer("POST", "/login", {"error": "too many login attempts for 'alice': wait 30 s and "
                                           "try again."}, 429)
    result = paas("login", "-u", "alice", "--password-stdin", stdin="pw-pw-pw\n")
    assert result.exit_code == 1
    assert "too many login attempts for 'alice': wait 30 s and try again." in result.output


def test_password_stdin_without_a_password_is_refused(api: FakeApi, home: Path):
    _write_config(home, target=api.url)
    result = paas("login", "-u", "alice", "--password-stdin", stdin="")
    assert result.exit_code == 1 and "expects the password on stdin" in result.output
    assert api.seen == []


def test_login_with_a_token_keeps_working(api: FakeApi, home: Path):
    _write_config(home, target=api.url)
    _login_answers(api, [{"name": "a", "role": "developer"}])
    result = paas("login", "--token", " paas_ci \n")
    assert result.exit_code == 0, result.output
    assert api.only("GET", "/whoami").headers["Authorization"] == "Bearer paas_ci"
    assert api.requests_to("POST", "/login") == []
    assert (_config(home)["token"], _config(home)["team"]) == ("paas_ci", "a")


# -- logout, target --team ------------------------------------------------------------------
def test_logout_revokes_the_token_and_forgets_it(api: FakeApi, home: Path):
    _write_config(home, target=api.url, token="paas_t", team="a")
    api.answer("POST", "/logout", {"revoked": "login-1"})
    result = paas("logout")
    assert result.exit_code == 0 and result.output.strip() == "Logged out."
    assert api.only("POST", "/logout").headers["Authorization"] == "Bearer paas_t"
    assert _config(home)["token"] is None and _config(home)["target"] == api.url


def test_logout_with_a_dead_token_still_forgets_it(api: FakeApi, home: Path):
    _write_config(home, target=api.url, token="paas_dead")
    api.answer("POST", "/logout", {"error": "this token has expired."}, 401)
    result = paas("logout")
    assert result.exit_code == 0 and "Logged out." in result.output
    assert _config(home)["token"] is None


def test_target_team_is_checked_saved_and_sent_from_then_on(api: FakeApi, home: Path):
    _write_config(home, target=api.url, token="paas_t", team="gone")
    api.answer("GET", "/teams/b", {"name": "b"})
    api.answer("GET", "/apps", {"apps": []})
    result = paas("target", "--team", "b")
    assert result.exit_code == 0 and "New apps go to team b." in result.output
    assert "X-Paas-Team" not in api.only("GET", "/teams/b").headers  # not the stale team
    assert _config(home)["team"] == "b"
    assert paas("apps").exit_code == 0
    assert api.only("GET", "/apps").headers["X-Paas-Team"] == "b"


def test_target_unknown_team_keeps_the_old_one(api: FakeApi, home: Path):
    _write_config(home, target=api.url, token="paas_t", team="a")
    api.answer("GET", "/teams/x", {"error": "there is no team named 'x': 'paas teams' lists "
                                            "yours."}, 404)
    result = paas("target", "--team", "x")
    assert result.exit_code == 1 and "there is no team named 'x'" in result.output
    assert _config(home)["team"] == "a"


def test_a_new_target_forgets_the_token_and_team_of_the_old(api: FakeApi, home: Path):
    _write_config(home, target="http://127.0.0.1:9", token="paas_t", team="a")
    result = paas("target", api.url)
    assert result.exit_code == 0, result.output
    assert _config(home) | {"warned_plain_http": []} == {
        "target": api.url, "token": None, "team": None, "warned_plain_http": []}


# -- teams, members, quotas -----------------------------------------------------------------
def test_team_shows_usage_against_quota_and_members(api: FakeApi, home: Path):
    _write_config(home, target=api.url, token="paas_t")
    api.answer("GET", "/teams/a", {
        "name": "a", "viewer_logs": False,
        "quota": {"memory_mb": 4096, "instances": 10, "apps": None, "routes": 5, "tasks": None,
                  "services": None},
        "usage": {"memory_mb": 3072, "instances": 3, "apps": 2, "routes": 5, "tasks": 0,
                  "services": 0},
        "members": [{"username": "alice", "role": "manager"}]})
    result = paas("team", "a")
    assert result.exit_code == 0, result.output
    lines = [" ".join(line.split()) for line in result.output.splitlines()]
    for expected in ("memory 3 GiB of 4 GiB", "instances 3 of 10", "apps 2 of unlimited",
                     "routes 5 of 5", "services 0 of unlimited", "alice manager"):
        assert expected in lines, result.output
    assert "viewers may not read logs" in result.output


def test_set_quota_sends_sizes_numbers_and_unlimited(api: FakeApi, home: Path):
    _write_config(home, target=api.url, token="paas_t")
    api.answer("PUT", "/teams/a/quota", {"team": {"name": "a", "quota": {
        "memory_mb": 4096, "instances": None, "apps": 3, "routes": None, "tasks": None,
        "services": None}}})
    result = paas("set-quota", "a", "--memory", "4G", "--apps", "3", "--instances", "unlimited")
    assert result.exit_code == 0, result.output
    assert api.only("PUT", "/teams/a/quota").body == {"memory_mb": 4096, "instances": None,
                                                      "apps": 3}
    assert "memory 4 GiB" in result.output and "apps 3" in result.output


@pytest.mark.parametrize("args, words", [
    (["--apps", "three"], "'three' is not a number"),
    (["--memory", "lots"], "'lots' is not a memory size"),
    ([], "nothing to change"),
])
def test_set_quota_refuses_bad_values_before_asking(api: FakeApi, home: Path, args: list[str],
                                                    words: str):
    _write_config(home, target=api.url, token="paas_t")
    result = paas("set-quota", "a", *args)
    assert result.exit_code == 2 and words in result.output
    assert api.seen == []


def test_add_member_sends_the_role(api: FakeApi, home: Path):
    _write_config(home, target=api.url, token="paas_t", team="a")
    api.answer("PUT", "/teams/a/members/bob", {"member": {"username": "bob",
                                                          "role": "developer"}})
    result = paas("add-member", "a", "bob", "--role", "developer")
    assert result.exit_code == 0 and "bob is a developer of team a." in result.output
    assert api.only("PUT", "/teams/a/members/bob").body == {"role": "developer"}
    bad = paas("add-member", "a", "bob", "--role", "owner")
    assert bad.exit_code == 2 and "'owner' is not one of" in bad.output


def test_remove_member_needs_confirmation_or_force(api: FakeApi, home: Path):
    _write_config(home, target=api.url, token="paas_t")
    api.answer("DELETE", "/teams/a/members/bob", {"removed": "bob"})
    refused = paas("remove-member", "a", "bob")
    assert refused.exit_code == 1 and "needs confirmation: pass -f" in refused.output
    assert api.seen == []
    done = paas("remove-member", "a", "bob", "-f")
    assert done.exit_code == 0 and "Removed bob from team a." in done.output


def test_a_forbidden_role_is_the_apis_sentence_with_exit_1(api: FakeApi, home: Path):
    _write_config(home, target=api.url, token="paas_t")
    sentence = ("your role 'developer' in team 'a' may not manage members: ask a manager of "
                "the team for the manager role.")
    api.answer("PUT", "/teams/a/members/bob", {"error": sentence}, 403)
    result = paas("add-member", "a", "bob", "--role", "viewer")
    assert result.exit_code == 1 and result.output.strip() == f"Error: {sentence}"


def test_create_user_reads_the_password_from_stdin(api: FakeApi, home: Path):
    _write_config(home, target=api.url, token="paas_t")
    api.answer("POST", "/users", {"user": {"username": "bob", "admin": False}}, 201)
    result = paas("create-user", "bob", "--password-stdin", stdin="bobs-password\n")
    assert result.exit_code == 0, result.output
    assert api.only("POST", "/users").body == {"username": "bob", "password": "bobs-password",
                                               "admin": False}
    assert "paas login --username bob" in result.output


# -- tokens, events ----------------------------------------------------------------------------
def test_create_token_prints_the_secret_once_and_parses_expires(api: FakeApi, home: Path):
    _write_config(home, target=api.url, token="paas_t")
    api.answer("POST", "/tokens", {"token": "paas_s3cr3t", "name": "ci", "scope": "read",
                                   "expires_at": "2027-01-02T12:00:00+00:00"}, 201)
    result = paas("create-token", "ci", "--scope", "read", "--expires", "12h")
    assert result.exit_code == 0, result.output
    assert api.only("POST", "/tokens").body == {"name": "ci", "scope": "read",
                                                "expires_in": 12 * 3600}
    assert result.stdout == "paas_s3cr3t\n"  # alone on stdout: TOKEN=$(paas create-token ci)
    assert "only time its secret is shown" in result.stderr
    assert result.output.count("paas_s3cr3t") == 1


@pytest.mark.parametrize("text, seconds", [("30d", 30 * 86400), ("12h", 43200), ("90m", 5400),
                                           ("never", None), ("NEVER", None)])
def test_expires_lifetimes(text: str, seconds: int | None):
    assert parse_expires(text) == seconds


@pytest.mark.parametrize("text", ["soon", "0d", "12", "3w", "-1h"])
def test_bad_expires_is_a_sentence(text: str):
    with pytest.raises(click.BadParameter, match="is not a lifetime: use a number of days"):
        parse_expires(text)


def test_create_token_never_sends_null(api: FakeApi, home: Path):
    _write_config(home, target=api.url, token="paas_t")
    api.answer("POST", "/tokens", {"token": "paas_x", "name": "ci", "scope": "deploy",
                                   "expires_at": None}, 201)
    result = paas("create-token", "ci", "--expires", "never")
    assert result.exit_code == 0 and "never expires" in result.output
    assert api.only("POST", "/tokens").body == {"name": "ci", "scope": "deploy",
                                                "expires_in": None}


def test_revoking_the_token_in_use_forgets_it(api: FakeApi, home: Path):
    _write_config(home, target=api.url, token="paas_t")
    api.answer("GET", "/tokens", {"tokens": [{"name": "cli", "scope": "admin", "kind": "login",
                                              "current": True}]})
    api.answer("DELETE", "/tokens/cli", {"revoked": "cli"})
    result = paas("revoke-token", "cli", "-f")
    assert result.exit_code == 0 and "Log in again" in result.output
    assert api.only("DELETE", "/tokens/cli")
    assert _config(home)["token"] is None


def test_events_of_one_team(api: FakeApi, home: Path):
    _write_config(home, target=api.url, token="paas_t")
    api.answer("GET", "/events", {"events": []})
    result = paas("events", "--all", "--team", "a")
    assert result.exit_code == 0 and "No events for team a yet." in result.output
    assert api.only("GET", "/events").query["team"] == ["a"]
    alone = paas("events", "web", "--team", "a")
    assert alone.exit_code == 2 and "--team goes with --all" in alone.output


def test_names_cannot_reach_another_route(api: FakeApi, home: Path):
    _write_config(home, target=api.url, token="paas_t")
    result = paas("delete-user", "../teams/a", "-f")
    assert result.exit_code == 1
    assert [s.path for s in api.seen] == ["/v1/users/..%2Fteams%2Fa"]


def test_teams_marks_the_one_new_apps_go_to_and_sends_no_stale_team(api: FakeApi, home: Path):
    _write_config(home, target=api.url, token="paas_t", team="b")
    api.answer("GET", "/teams", {"teams": [{"name": "a", "role": "developer", "apps": 2},
                                           {"name": "b", "role": "viewer", "apps": 0}]})
    result = paas("teams")
    assert result.exit_code == 0, result.output
    rows = [line.split() for line in result.output.splitlines()]
    assert ["a", "developer", "2"] in rows and ["*", "b", "viewer", "0"] in rows
    assert "X-Paas-Team" not in api.only("GET", "/teams").headers


def test_whoami_shows_user_teams_team_and_token(api: FakeApi, home: Path):
    _write_config(home, target=api.url, token="paas_t", team="a")
    api.answer("GET", "/whoami", {"name": "alice", "user": "alice", "admin": False,
                                  "role": "user", "teams": ALICE_TEAMS, "team": "a",
                                  "token": {"name": "ci", "scope": "deploy", "expires_at": None}})
    result = paas("whoami")
    assert result.exit_code == 0, result.output
    assert "teams: a (developer), b (viewer)" in result.output
    assert "new apps go to: a" in result.output
    assert "token: ci (scope deploy, expires never)" in result.output
    assert api.only("GET", "/whoami").headers["X-Paas-Team"] == "a"


def test_set_quota_answer_without_the_quota_shows_only_what_was_sent(api: FakeApi, home: Path):
    _write_config(home, target=api.url, token="paas_t")
    api.answer("PUT", "/teams/a/quota", {"name": "a"})
    result = paas("set-quota", "a", "--routes", "unlimited")
    assert result.exit_code == 0, result.output
    assert result.output.strip() == "Quota of team a: routes unlimited."


def test_passwd_reads_current_and_new_from_stdin(api: FakeApi, home: Path):
    _write_config(home, target=api.url, token="paas_t", team="a")
    api.answer("PUT", "/user/password", {"changed": True})
    result = paas("passwd", "--password-stdin", stdin="old-password\nnew-password\n")
    assert result.exit_code == 0 and "Password changed" in result.output
    sent = api.only("PUT", "/user/password")
    assert sent.body == {"current_password": "old-password", "new_password": "new-password"}


def test_passwd_prompts_twice_for_the_new_one_and_says_when_the_current_is_wrong(
        api: FakeApi, home: Path):
    _write_config(home, target=api.url, token="paas_t")
    api.answer("PUT", "/user/password", {"error": "the current password is wrong."}, 401)
    result = paas("passwd", stdin="old-password\nnew-password\nnew-password\n")
    assert result.exit_code == 1
    assert "Repeat for confirmation" in result.output
    assert "Error: the password was not changed: the current password is wrong." \
        in result.output
    assert _config(home)["token"] == "paas_t"


def test_update_team_turns_viewer_logs_off_and_on(api: FakeApi, home: Path):
    _write_config(home, target=api.url, token="paas_t")
    api.answer("PATCH", "/teams/a", {"name": "a", "viewer_logs": False})
    result = paas("update-team", "a", "--no-viewer-logs")
    assert result.exit_code == 0, result.output
    assert api.only("PATCH", "/teams/a").body == {"viewer_logs": False}
    assert "may not read" in result.output
    result = paas("update-team", "a")
    assert result.exit_code == 2 and "--viewer-logs" in result.output


def test_apps_of_several_teams_say_whose_they_are(api: FakeApi, home: Path):
    _write_config(home, target=api.url, token="paas_t")
    app = {"name": "api", "state": "STARTED", "instances_desired": 1, "instances_running": 1,
           "release": {"version": 1}}
    api.answer("GET", "/apps", {"apps": [
        {**app, "team": "a", "urls": ["http://api.localhost"]},
        {**app, "team": "b", "urls": ["http://api-b.localhost"]}]})
    result = paas("apps")
    assert result.exit_code == 0, result.output
    rows = [line.split() for line in result.output.splitlines()]
    assert rows[0][:2] == ["name", "team"]
    assert ["api", "a"] == rows[1][:2] and ["api", "b"] == rows[2][:2]
