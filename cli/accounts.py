"""``paas`` commands for people: log in and out, users, teams and their members, quotas, tokens."""

from __future__ import annotations

import dataclasses
import datetime as dt
import re
import sys
from typing import Any
from urllib.parse import quote

import click
from rich.table import Table

from cli.base import client, console, main, parse_memory, print_table
from cli.client import ApiError, Client
from cli.config import Config

ROLES = ("viewer", "developer", "manager")
SCOPES = ("read", "deploy", "admin")
QUOTAS = ("memory", "instances", "apps", "routes", "tasks", "services")
_DURATION_RE = re.compile(r"^\s*(\d+)\s*([dhm])\s*$", re.IGNORECASE)
_SECONDS = {"d": 86400, "h": 3600, "m": 60}


def _part(text: str) -> str:
    """A name as one segment of a URL path (a slash or '?' in it cannot reach another route)."""
    return quote(text, safe="")


def account_client() -> Client:
    """A client that sends no team: what it asks about is the caller or a named team, and a
    team saved earlier that no longer exists must not stand in the way of choosing another."""
    return Client(dataclasses.replace(Config.load(), team=None))


def _confirm(question: str, refusal: str, force: bool) -> None:
    if force:
        return
    if not sys.stdin.isatty():
        raise click.ClickException(f"{refusal} needs confirmation: pass -f.")
    click.confirm(question, abort=True)


def _stdin_lines(count: int, what: str) -> list[str]:
    """``count`` lines from stdin, without their line ends (nothing else is stripped)."""
    lines = [sys.stdin.readline().rstrip("\r\n") for _ in range(count)]
    if not all(lines):
        raise click.ClickException(f"--password-stdin expects {what} on stdin, one per line, "
                                   "and found fewer: e.g. printf '%s\\n' \"$PASSWORD\" | paas ...")
    return lines


def _teams_text(teams: list[dict[str, Any]]) -> str:
    return ", ".join(f"{t['name']} ({t['role']})" for t in teams) or "none"


def _when(value: object) -> str:
    """A time from the API (ISO 8601 text or seconds since the epoch) in local time."""
    if value in (None, ""):
        return "-"
    try:
        if isinstance(value, int | float):
            when = dt.datetime.fromtimestamp(value, dt.UTC)
        else:
            when = dt.datetime.fromisoformat(str(value))
            if when.tzinfo is None:
                when = when.replace(tzinfo=dt.UTC)
    except (ValueError, OverflowError, OSError):
        return str(value)
    return when.astimezone().strftime("%Y-%m-%d %H:%M")


# -- logging in and out ----------------------------------------------------------------------
@main.command()
@click.option("-u", "--username", help="Your username (asked for when not given).")
@click.option("--password-stdin", is_flag=True,
              help="Read the password from the first line of stdin (for scripts).")
@click.option("--token", help="Log in with an API token instead of a password.")
@click.option("--team", help="The team new apps go to (default: your only team).")
def login(username: str | None, password_stdin: bool, token: str | None,
          team: str | None) -> None:
    """Log in with your username and password (or an API token)."""
    if token is not None and (password_stdin or username):
        raise click.UsageError("log in either with --token or with a username and password, "
                               "not both.")
    if password_stdin and not username:
        raise click.UsageError("--password-stdin needs --username U (stdin holds the "
                               "password only).")
    config = Config.load()
    if not config.target:
        raise ApiError("no API target set: run 'paas target URL' first (make up prints the URL).")
    if token is not None:
        config.token = token.strip()
        if not config.token:
            raise click.UsageError("--token is empty: pass the token 'paas create-token' or "
                                   "make up printed.")
    else:
        if not username:
            username = click.prompt("Username").strip()
        if password_stdin:
            password = _stdin_lines(1, "the password")[0]
        else:
            password = click.prompt("Password", hide_input=True)
        config.token = _password_login(config, username, password)
    session = Client(dataclasses.replace(config, team=None))
    try:
        who = session.get("/whoami")
        teams = who.get("teams") or []
        if team is not None:
            session.get(f"/teams/{_part(team)}")  # a team the user cannot see is a 404 here
        elif len(teams) == 1:
            team = teams[0]["name"]
        elif config.team and any(t["name"] == config.team for t in teams):
            team = config.team  # logging in again keeps the team chosen before
    except ApiError:
        if token is None:
            _revoke_quietly(session)  # a failed login leaves no session behind
        raise
    config.team = team
    config.save()
    click.echo(_logged_in_sentence(who, teams, team))


def _password_login(config: Config, username: str, password: str) -> str:
    anonymous = Client(dataclasses.replace(config, token=None, team=None))
    try:
        answer = anonymous.post("/login", json={"username": username, "password": password})
    except ApiError as e:
        if e.status == 401:
            raise ApiError(f"login failed: {_server_sentence(e)} Check them and try again, or "
                           "ask a platform admin to set a new password.", 401) from None
        raise
    return answer["token"]


def _server_sentence(error: ApiError) -> str:
    """The API's sentence of a 401, without the 'not logged in' the client puts before it."""
    return error.message.removeprefix("not logged in: ")


def _revoke_quietly(session: Client) -> None:
    try:
        session.post("/logout")
    except ApiError:
        pass


def _logged_in_sentence(who: dict[str, Any], teams: list[dict[str, Any]],
                        team: str | None) -> str:
    name = who.get("user") or who.get("name")
    admin = "platform admin; " if who.get("admin") else ""
    opening = f"Logged in as {name} ({admin}teams: {_teams_text(teams)})"
    if team:
        return f"{opening}; new apps go to team {team}."
    if len(teams) > 1:
        return f"{opening}; pick the team new apps go to with 'paas target --team T'."
    if who.get("admin"):
        return f"{opening}; new apps go to team default, or pick one with 'paas target --team T'."
    return (f"{opening}; you are in no team yet, so you can push nothing: ask a platform admin "
            f"to add you ('paas add-member TEAM {name} --role developer').")


@main.command()
def logout() -> None:
    """Log out: the token this CLI holds is revoked and forgotten."""
    config = Config.load()
    if not config.token:
        click.echo("Not logged in; nothing to do.")
        return
    if config.target:
        try:
            Client(dataclasses.replace(config, team=None)).post("/logout")
        except ApiError as e:
            if e.status != 401:  # 401: the token had died already (expired or revoked)
                raise
    config.token = None
    config.save()
    click.echo("Logged out.")


@main.command()
def whoami() -> None:
    """Who this CLI acts as: user, teams, the team new apps go to, and the token."""
    who = client().get("/whoami")
    name = who.get("user") or who.get("name")
    admin = " (platform admin)" if who.get("admin") else ""
    console.print(f"[bold]{name}[/]{admin} at {Config.load().target}")
    console.print(f"teams: {_teams_text(who.get('teams') or [])}")
    console.print(f"new apps go to: {who.get('team') or 'no team chosen (paas target --team T)'}")
    token = who.get("token") or {}
    if token:
        expires = _when(token.get("expires_at")) if token.get("expires_at") else "never"
        console.print(f"token: {token.get('name')} (scope {token.get('scope')}, "
                      f"expires {expires})")


@main.command()
@click.option("--password-stdin", is_flag=True,
              help="Read the current password, then the new one, from two lines of stdin.")
def passwd(password_stdin: bool) -> None:
    """Change your password (your other login sessions are logged out)."""
    if password_stdin:
        current, new = _stdin_lines(2, "the current password, then the new one")
    else:
        current = click.prompt("Current password", hide_input=True)
        new = click.prompt("New password", hide_input=True, confirmation_prompt=True)
    try:
        account_client().put("/user/password", json={"current_password": current,
                                                     "new_password": new})
    except ApiError as e:
        if e.status == 401:  # the current password is wrong (or the token died)
            raise ApiError(f"the password was not changed: {_server_sentence(e)}", 401) from None
        raise
    click.echo("Password changed; your other login sessions are logged out.")


# -- users (platform admins) -----------------------------------------------------------------
def _new_password(password: str | None, password_stdin: bool, whose: str) -> str:
    if password is not None and password_stdin:
        raise click.UsageError("give the password with --password or --password-stdin, "
                               "not both.")
    if password is not None:
        return password
    if password_stdin:
        return _stdin_lines(1, "the password")[0]
    if not sys.stdin.isatty():
        raise click.UsageError(f"give {whose} password with --password P or --password-stdin.")
    return click.prompt(f"Password for {whose}", hide_input=True, confirmation_prompt=True)


@main.command("create-user")
@click.argument("name")
@click.option("--password", help="Their password (8 to 128 characters).")
@click.option("--password-stdin", is_flag=True, help="Read their password from stdin.")
@click.option("--admin", is_flag=True, help="Make them a platform admin.")
def create_user(name: str, password: str | None, password_stdin: bool, admin: bool) -> None:
    """Create a user who logs in with NAME and a password (platform admins only)."""
    secret = _new_password(password, password_stdin, name)
    account_client().post("/users", json={"username": name, "password": secret, "admin": admin})
    role = "platform admin" if admin else "user"
    click.echo(f"Created {role} {name}; they log in with 'paas login --username {name}'. "
               f"Add them to a team with 'paas add-member TEAM {name} --role developer'.")


@main.command("set-password")
@click.argument("name")
@click.option("--password", help="The new password (8 to 128 characters).")
@click.option("--password-stdin", is_flag=True, help="Read the new password from stdin.")
def set_password(name: str, password: str | None, password_stdin: bool) -> None:
    """Give user NAME a new password, e.g. a forgotten one (platform admins only)."""
    secret = _new_password(password, password_stdin, name)
    account_client().put(f"/users/{_part(name)}/password", json={"password": secret})
    click.echo(f"{name} has a new password.")


@main.command("delete-user")
@click.argument("name")
@click.option("-f", "--force", is_flag=True, help="Do not ask for confirmation.")
def delete_user(name: str, force: bool) -> None:
    """Delete user NAME and their tokens (platform admins only)."""
    _confirm(f"Really delete the user {name} and their tokens?", f"deleting user {name}", force)
    account_client().delete(f"/users/{_part(name)}")
    click.echo(f"Deleted user {name}; their tokens no longer work.")


@main.command()
def users() -> None:
    """List the users and their teams (platform admins only)."""
    found = account_client().get("/users")["users"]
    table = Table(box=None, pad_edge=False)
    for column in ("username", "admin", "teams", "created"):
        table.add_column(column)
    for user in found:
        table.add_row(user["username"], "yes" if user.get("admin") else "",
                      _teams_text(user.get("teams") or []), _when(user.get("created_at")))
    print_table(table)


# -- teams -----------------------------------------------------------------------------------
@main.command()
def teams() -> None:
    """List your teams (platform admins: every team); * marks the one new apps go to."""
    found = account_client().get("/teams")["teams"]
    if not found:
        click.echo("You are in no team yet: a platform admin adds you with "
                   "'paas add-member TEAM USER --role developer'.")
        return
    chosen = Config.load().team
    table = Table(box=None, pad_edge=False)
    for column in ("", "team", "role", "apps"):
        table.add_column(column)
    for team in found:
        table.add_row("*" if team["name"] == chosen else "", team["name"],
                      team.get("role") or "-", str(team.get("apps", "-")))
    print_table(table)


@main.command("create-team")
@click.argument("name")
@click.option("--no-viewer-logs", is_flag=True, help="Viewers of the team may not read logs.")
def create_team(name: str, no_viewer_logs: bool) -> None:
    """Create a team (platform admins only)."""
    body: dict[str, Any] = {"name": name}
    if no_viewer_logs:
        body["viewer_logs"] = False
    account_client().post("/teams", json=body)
    click.echo(f"Created team {name}. Add people with 'paas add-member {name} USER --role "
               f"developer'; limit it with 'paas set-quota {name} --memory 4G'.")


@main.command("update-team")
@click.argument("name")
@click.option("--viewer-logs/--no-viewer-logs", default=None,
              help="Whether the team's viewers may read its apps' logs.")
def update_team(name: str, viewer_logs: bool | None) -> None:
    """Change a team's settings (its managers)."""
    if viewer_logs is None:
        raise click.UsageError("say what to change: --viewer-logs or --no-viewer-logs.")
    account_client().patch(f"/teams/{_part(name)}", json={"viewer_logs": viewer_logs})
    click.echo(f"Viewers of team {name} {'may' if viewer_logs else 'may not'} read its apps' "
               "logs.")


@main.command("delete-team")
@click.argument("name")
@click.option("-f", "--force", is_flag=True, help="Do not ask for confirmation.")
def delete_team(name: str, force: bool) -> None:
    """Delete a team that has no apps left (platform admins only)."""
    _confirm(f"Really delete the team {name}?", f"deleting team {name}", force)
    account_client().delete(f"/teams/{_part(name)}")
    config = Config.load()
    if config.team == name:
        config.team = None
        config.save()
    click.echo(f"Deleted team {name}.")


def mebibytes(mb: int | None) -> str:
    """3072 -> '3 GiB', 1536 -> '1.5 GiB', 512 -> '512 MiB'."""
    if mb is None:
        return "unlimited"
    if mb >= 1024:
        return f"{mb / 1024:.2f}".rstrip("0").rstrip(".") + " GiB"
    return f"{mb} MiB"


def quota_lines(quota: dict[str, Any], usage: dict[str, Any] | None = None) -> list[tuple]:
    """(what, 'used of allowed') per quota, as 'paas team' shows them."""
    rows = []
    for key in ("memory_mb", "instances", "apps", "routes", "tasks", "services"):
        allowed = quota.get(key)
        if key == "memory_mb":
            what, limit = "memory", mebibytes(allowed)
            used = mebibytes(usage.get(key) or 0) if usage is not None else None
        else:
            what, limit = key, "unlimited" if allowed is None else str(allowed)
            used = str(usage.get(key) or 0) if usage is not None else None
        over = usage is not None and allowed is not None and (usage.get(key) or 0) >= allowed
        rows.append((what, limit if used is None else f"{used} of {limit}", over))
    return rows


@main.command("team")
@click.argument("name", required=False)
def show_team(name: str | None) -> None:
    """A team's usage against its quota, and its members (default: the team you target)."""
    name = name or Config.load().team
    if not name:
        raise click.UsageError("which team? Give its NAME ('paas teams' lists yours) or pick one "
                               "with 'paas target --team T'.")
    team = account_client().get(f"/teams/{_part(name)}")
    logs = "viewers may read logs" if team.get("viewer_logs", True) else \
        "viewers may not read logs"
    console.print(f"[bold]team {team.get('name', name)}[/]  ({logs})")
    table = Table(box=None, pad_edge=False, show_header=False)
    table.add_column("quota")
    table.add_column("usage")
    for what, text, full in quota_lines(team.get("quota") or {}, team.get("usage") or {}):
        table.add_row(what, f"[yellow]{text}[/]" if full else text)
    print_table(table)
    _print_members(team.get("members") or [])


def _print_members(members: list[dict[str, Any]]) -> None:
    if not members:
        console.print("no members")
        return
    table = Table(box=None, pad_edge=False)
    table.add_column("member")
    table.add_column("role")
    for member in members:
        table.add_row(member["username"], member["role"])
    print_table(table)


@main.command()
@click.argument("team")
def members(team: str) -> None:
    """List the members of TEAM and their roles."""
    _print_members(account_client().get(f"/teams/{_part(team)}/members")["members"])


@main.command("add-member")
@click.argument("team")
@click.argument("user")
@click.option("--role", type=click.Choice(ROLES), required=True,
              help="viewer (reads), developer (also changes apps), manager (also members).")
def add_member(team: str, user: str, role: str) -> None:
    """Add USER to TEAM with a role, or change their role (team managers)."""
    answer = account_client().put(f"/teams/{_part(team)}/members/{_part(user)}",
                                  json={"role": role})
    given = (answer.get("member") or {}).get("role", role)
    click.echo(f"{user} is a {given} of team {team}.")


@main.command("remove-member")
@click.argument("team")
@click.argument("user")
@click.option("-f", "--force", is_flag=True, help="Do not ask for confirmation.")
def remove_member(team: str, user: str, force: bool) -> None:
    """Remove USER from TEAM (team managers)."""
    _confirm(f"Really remove {user} from team {team}?", f"removing {user} from team {team}",
             force)
    account_client().delete(f"/teams/{_part(team)}/members/{_part(user)}")
    click.echo(f"Removed {user} from team {team}.")


def _quota_count(option: str, text: str | None) -> int | None | bool:
    """False: not given (unchanged); None: unlimited; else the number."""
    if text is None:
        return False
    if text.strip().lower() == "unlimited":
        return None
    if option == "memory":
        return parse_memory(text)
    if not text.strip().isdigit():
        raise click.BadParameter(f"{text!r} is not a number: give a whole number such as 10, "
                                 "or 'unlimited'.")
    return int(text)


@main.command("set-quota")
@click.argument("team")
@click.option("--memory", help="Memory of the team's running instances, e.g. 4G.")
@click.option("--instances", help="Running instances.")
@click.option("--apps", help="Apps.")
@click.option("--routes", help="Routes.")
@click.option("--tasks", help="Running one-off tasks.")
@click.option("--services", help="Services.")
def set_quota(team: str, **limits: str | None) -> None:
    """Limit what TEAM may use ('unlimited' lifts a limit; platform admins only)."""
    body: dict[str, int | None] = {}
    for option in QUOTAS:
        try:
            value = _quota_count(option, limits[option])
        except click.BadParameter as e:
            e.param_hint = f"--{option}"
            raise
        if value is not False:
            body["memory_mb" if option == "memory" else option] = value  # type: ignore[assignment]
    if not body:
        raise click.UsageError("nothing to change: give at least one of "
                               + ", ".join(f"--{q}" for q in QUOTAS) + ".")
    answer = account_client().put(f"/teams/{_part(team)}/quota", json=body)
    changed = answer.get("team") if isinstance(answer.get("team"), dict) else answer
    quota = changed.get("quota")
    if isinstance(quota, dict):
        rows = quota_lines(quota)
    else:  # an answer without the quota: say what was sent
        sent = {"memory" if key == "memory_mb" else key for key in body}
        rows = [row for row in quota_lines(body) if row[0] in sent]
    shown = ", ".join(f"{what} {text}" for what, text, _ in rows)
    click.echo(f"Quota of team {team}: {shown}.")


# -- tokens ----------------------------------------------------------------------------------
def parse_expires(text: str) -> int | None:
    """'30d', '12h', '90m' -> seconds; 'never' -> None."""
    if text.strip().lower() == "never":
        return None
    match = _DURATION_RE.match(text)
    if not match or int(match.group(1)) == 0:
        raise click.BadParameter(f"{text!r} is not a lifetime: use a number of days, hours or "
                                 "minutes such as 30d, 12h or 90m, or 'never'.",
                                 param_hint="--expires")
    return int(match.group(1)) * _SECONDS[match.group(2).lower()]


@main.command()
def tokens() -> None:
    """List your tokens; * marks the one this CLI uses."""
    found = account_client().get("/tokens")["tokens"]
    table = Table(box=None, pad_edge=False)
    for column in ("", "name", "scope", "kind", "created", "expires", "last used"):
        table.add_column(column)
    for token in found:
        table.add_row("*" if token.get("current") else "", token["name"], token["scope"],
                      token.get("kind") or "-", _when(token.get("created_at")),
                      _when(token["expires_at"]) if token.get("expires_at") else "never",
                      _when(token.get("last_used_at")) if token.get("last_used_at") else "never")
    print_table(table)


@main.command("create-token")
@click.argument("name")
@click.option("--scope", type=click.Choice(SCOPES), default="deploy", show_default=True,
              help="read: look only; deploy: also change apps; admin: also manage people.")
@click.option("--expires", help="Lifetime: 30d, 12h, 90m, or never (default: the platform's).")
def create_token(name: str, scope: str, expires: str | None) -> None:
    """Create an API token for scripts and CI; its secret is shown once."""
    body: dict[str, Any] = {"name": name, "scope": scope}
    if expires is not None:
        body["expires_in"] = parse_expires(expires)
    made = account_client().post("/tokens", json=body)
    until = f"expires {_when(made['expires_at'])}" if made.get("expires_at") else "never expires"
    click.echo(f"Token {made.get('name', name)} (scope {made.get('scope', scope)}, {until}). "
               "This is the only time its secret is shown: store it now (e.g. in your CI's "
               "secrets), then use it with 'paas login --token'.", err=True)
    click.echo(made["token"])


@main.command("revoke-token")
@click.argument("name")
@click.option("-f", "--force", is_flag=True, help="Do not ask for confirmation.")
def revoke_token(name: str, force: bool) -> None:
    """Revoke one of your tokens: it stops working at once."""
    api = account_client()
    mine = api.get("/tokens")["tokens"]
    current = any(t["name"] == name and t.get("current") for t in mine)
    tail = " It is the token this CLI uses: you will need to log in again." if current else ""
    _confirm(f"Really revoke the token {name}?{tail}", f"revoking token {name}", force)
    api.delete(f"/tokens/{_part(name)}")
    if current:
        config = Config.load()
        config.token = None
        config.save()
    click.echo(f"Revoked token {name}." + (" Log in again with 'paas login'." if current else ""))
