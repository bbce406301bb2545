"""Users, teams, members, quotas and tokens; logging in and out."""

from __future__ import annotations

import redis
from flask import current_app, g, jsonify, request
from sqlalchemy import select
from sqlalchemy.orm import selectinload

from contracts import keys
from controller import accounts, events, quotas, ratelimit
from controller.api import json_body, v1
from controller.auth import Permission, authorize, current_identity, requires
from controller.errors import Conflict, Forbidden, InvalidInput, NotFound, Unauthorized
from controller.models import Membership, Role, Scope, Team, Token, TokenKind, User, iso
from controller.models.base import aware, utcnow
from controller.models.user import validate_password


def _settings():
    return current_app.config["PAAS_SETTINGS"]


def _redis():
    return current_app.extensions["paas.redis"]


def _text(body: dict, key: str, what: str | None = None) -> str:
    value = body.get(key)
    if not isinstance(value, str) or not value:
        raise InvalidInput(f"give {what or key} (text).")
    return value


def _flag(body: dict, key: str, default: bool) -> bool:
    value = body.get(key, default)
    if not isinstance(value, bool):
        raise InvalidInput(f"{key} must be true or false.")
    return value


# -- logging in --------------------------------------------------------------------------
@v1.post("/login")
@requires(Permission.PUBLIC)
def login():
    """A token for a user name and password (the CLI's 'paas login')."""
    body = json_body()
    username, password = body.get("username"), body.get("password")
    if not isinstance(username, str) or not isinstance(password, str) or not username:
        raise InvalidInput("give a username and a password (text).")
    settings = _settings()
    # A login's token may be asked to end sooner, never later, than login_token_ttl.
    ttl = min(accounts.parse_ttl(body.get("expires_in")) or settings.login_token_ttl,
              settings.login_token_ttl)
    address = request.remote_addr or "?"
    ratelimit.take_login_attempt(_redis(), settings, username, address)
    user = g.db.scalar(select(User).where(User.username == username))
    if not accounts.check_password(user, password):
        raise Unauthorized("the username or password is wrong.")
    ratelimit.forgive_login(_redis(), username, address)
    token, secret = accounts.issue_token(g.db, user, accounts.login_token_name(g.db, user),
                                         Scope.ADMIN, kind=TokenKind.LOGIN, ttl=ttl)
    g.db.flush()
    events.record(g.db, "user.logged_in", user.username, address=address)
    g.db.commit()
    return jsonify({"token": secret, "name": token.name, "scope": token.scope,
                    "expires_at": iso(token.expires_at),
                    "user": {"username": user.username, "admin": user.is_admin}}), 201


@v1.post("/logout")
@requires(Permission.SELF)
def logout():
    token = g.db.get(Token, current_identity().token_id)
    g.db.delete(token)
    g.db.commit()
    return jsonify({"revoked": token.name})


@v1.get("/whoami")
@requires(Permission.SELF)
def whoami():
    ident = current_identity()
    token = g.db.get(Token, ident.token_id)
    return jsonify({
        "name": ident.name, "user": ident.name, "admin": ident.is_admin, "role": ident.role,
        "token": {"name": token.name, "scope": token.scope,
                  "expires_at": iso(token.expires_at)},
        "teams": [{"name": ident.team_names[t], "role": r}
                  for t, r in sorted(ident.roles.items(), key=lambda i: ident.team_names[i[0]])],
        "team": g.db.get(Team, ident.team_id).name if ident.team_id else None,
    })


@v1.put("/user/password")
@requires(Permission.SELF)
def change_password():
    """Change the caller's own password (it needs the current one); the user's other login
    tokens are revoked."""
    body = json_body()
    ident = current_identity()
    user = g.db.get(User, ident.user_id)
    current = body.get("current_password")
    settings, address = _settings(), request.remote_addr or "?"
    # A guess at the current password counts as a failed login would.
    ratelimit.take_login_attempt(_redis(), settings, user.username, address)
    if not isinstance(current, str) or not accounts.check_password(user, current):
        raise Unauthorized("the current password is wrong.") if user.password_hash else \
            Conflict("you have no password to change: ask a platform admin to set one "
                     "('paas set-password').")
    ratelimit.forgive_login(_redis(), user.username, address)
    user.password_hash = accounts.hash_password(
        validate_password(body.get("new_password"), "the new password"))
    accounts.revoke_logins(g.db, user, keep=ident.token_id)
    events.record(g.db, "user.password_changed", ident.name, user=user.username)
    g.db.commit()
    return jsonify({"changed": True})


# -- users (platform admins) -------------------------------------------------------------
@v1.get("/users")
@requires(Permission.PLATFORM_ADMIN)
def list_users():
    users = g.db.scalars(select(User).order_by(User.username).options(
        selectinload(User.memberships).selectinload(Membership.team)))
    return jsonify({"users": [accounts.present_user(u) for u in users]})


@v1.post("/users")
@requires(Permission.PLATFORM_ADMIN)
def create_user():
    body = json_body()
    user = accounts.create_user(g.db, body.get("username"), body.get("password"),
                                admin=_flag(body, "admin", False))
    g.db.flush()
    events.record(g.db, "user.created", current_identity().name, user=user.username,
                  admin=user.is_admin)
    g.db.commit()
    return jsonify(accounts.present_user(user)), 201


@v1.delete("/users/<username>")
@requires(Permission.PLATFORM_ADMIN)
def delete_user(username: str):
    user = accounts.find_user(g.db, username)
    accounts.delete_user(g.db, user)
    events.record(g.db, "user.deleted", current_identity().name, user=username)
    g.db.commit()
    return jsonify({"deleted": username})


@v1.put("/users/<username>/password")
@requires(Permission.PLATFORM_ADMIN)
def set_password(username: str):
    """Set a user's password (a forgotten one); the user's login tokens are revoked."""
    user = accounts.find_user(g.db, username)
    user.password_hash = accounts.hash_password(validate_password(json_body().get("password")))
    accounts.revoke_logins(g.db, user)
    events.record(g.db, "user.password_set", current_identity().name, user=username)
    g.db.commit()
    return jsonify({"changed": True})


# -- teams -------------------------------------------------------------------------------
def _find_team(name: str, permission: str | None = None) -> Team:
    """The team ``name`` if the caller may do the view's permission on it; a team the caller
    is not in is missing."""
    team = g.db.scalar(select(Team).where(Team.name == name))
    missing = accounts.team_missing(name)
    if team is None:
        raise NotFound(missing)
    authorize(current_identity(), permission or g.permission, team, missing=missing)
    return team


def present_team(team: Team, role: str | None = None) -> dict[str, object]:
    body: dict[str, object] = {"name": team.name, "viewer_logs": team.viewer_logs,
                               "created_at": iso(team.created_at)}
    if role is not None:
        body["role"] = role
    return body


@v1.get("/teams")
@requires(Permission.SELF)
def list_teams():
    """The caller's teams (every team, for platform admins), with the caller's role."""
    ident = current_identity()
    query = select(Team).order_by(Team.name)
    if not ident.is_admin:
        query = query.where(Team.id.in_(list(ident.roles)))
    return jsonify({"teams": [
        {**present_team(t, ident.roles.get(t.id) or ("admin" if ident.is_admin else None)),
         "apps": accounts.team_app_count(g.db, t)} for t in g.db.scalars(query)]})


@v1.post("/teams")
@requires(Permission.PLATFORM_ADMIN)
def create_team():
    body = json_body()
    team = accounts.create_team(g.db, body.get("name"),
                                viewer_logs=_flag(body, "viewer_logs", True))
    g.db.flush()
    events.record(g.db, "team.created", current_identity().name, team_id=team.id, team=team.name)
    g.db.commit()
    return jsonify(present_team(team)), 201


@v1.get("/teams/<name>")
@requires(Permission.TEAM_READ)
def show_team(name: str):
    """The team: its quota against what it uses, and its members."""
    team = _find_team(name)
    body = present_team(team, current_identity().roles.get(team.id))
    body.update(quotas.present(g.db, team, _redis()))
    body["members"] = _members(team)
    return jsonify(body)


@v1.patch("/teams/<name>")
@requires(Permission.TEAM_MANAGE)
def update_team(name: str):
    team = _find_team(name)
    body = json_body()
    if "viewer_logs" not in body:
        raise InvalidInput("say what to change: viewer_logs (true or false).")
    team.viewer_logs = _flag(body, "viewer_logs", team.viewer_logs)
    events.record(g.db, "team.updated", current_identity().name, team_id=team.id, team=team.name,
                  viewer_logs=team.viewer_logs)
    g.db.commit()
    return jsonify(present_team(team))


@v1.delete("/teams/<name>")
@requires(Permission.PLATFORM_ADMIN)
def delete_team(name: str):
    team = _find_team(name)
    accounts.delete_team(g.db, team)
    events.record(g.db, "team.deleted", current_identity().name, team=name)
    g.db.commit()
    return jsonify({"deleted": name})


@v1.put("/teams/<name>/quota")
@requires(Permission.PLATFORM_ADMIN)
def set_quota(name: str):
    """Set some of the team's quotas (null: unlimited; those not given stay)."""
    team = _find_team(name)
    changes = quotas.parse(json_body())
    if not changes:
        raise InvalidInput("say which quotas to set: memory_mb, instances, apps, routes, "
                           "tasks, services.")
    for key, value in changes.items():
        setattr(team, f"quota_{key}", value)
    events.record(g.db, "team.quota_set", current_identity().name, team_id=team.id,
                  team=team.name, **changes)
    g.db.commit()
    body = present_team(team)
    body.update(quotas.present(g.db, team, _redis()))
    return jsonify(body)


# -- members -----------------------------------------------------------------------------
def _members(team: Team) -> list[dict[str, str]]:
    rows = g.db.execute(select(User.username, Membership.role)
                        .join(Membership, Membership.user_id == User.id)
                        .where(Membership.team_id == team.id).order_by(User.username))
    return [{"username": u, "role": r} for u, r in rows]


def _keep_a_manager(team: Team, username: str) -> None:
    """Refuse (to all but platform admins) to leave the team without a manager."""
    if not current_identity().is_admin and not any(
            m["role"] == Role.MANAGER and m["username"] != username for m in _members(team)):
        raise Conflict(f"{username!r} is the last manager of team {team.name!r}: make another "
                       "member manager first.")


@v1.get("/teams/<name>/members")
@requires(Permission.TEAM_READ)
def list_members(name: str):
    return jsonify({"members": _members(_find_team(name))})


@v1.put("/teams/<name>/members/<username>")
@requires(Permission.TEAM_MANAGE)
def put_member(name: str, username: str):
    """Add a user to the team with a role, or change the member's role."""
    team = _find_team(name)
    user = accounts.find_user(g.db, username)
    role = json_body().get("role")
    current = accounts.membership(g.db, team, user)
    if current is not None and current.role == Role.MANAGER and role != Role.MANAGER:
        _keep_a_manager(team, username)
    member = accounts.set_member(g.db, team, user, role)
    events.record(g.db, "team.member_set", current_identity().name, team_id=team.id, team=team.name,
                  user=username, role=member.role)
    g.db.commit()
    return jsonify({"member": {"username": username, "role": member.role}})


@v1.delete("/teams/<name>/members/<username>")
@requires(Permission.TEAM_MANAGE)
def remove_member(name: str, username: str):
    team = _find_team(name)
    user = accounts.find_user(g.db, username)
    member = accounts.membership(g.db, team, user)
    if member is None:
        raise NotFound(f"{username!r} is not a member of team {team.name!r}: 'paas members "
                       f"{team.name}' lists them.")
    if member.role == Role.MANAGER:
        _keep_a_manager(team, username)
    g.db.delete(member)
    events.record(g.db, "team.member_removed", current_identity().name, team_id=team.id,
                  team=team.name, user=username)
    g.db.commit()
    return jsonify({"removed": username})


# -- tokens ------------------------------------------------------------------------------
@v1.get("/tokens")
@requires(Permission.SELF)
def list_tokens():
    ident = current_identity()
    tokens = g.db.scalars(select(Token).where(Token.user_id == ident.user_id)
                          .order_by(Token.created_at, Token.id))
    current = g.db.get(Token, ident.token_id)
    try:
        used = accounts.tokens_used(current_app.extensions["paas.redis"].hgetall(
            keys.TOKENS_USED))
    except redis.RedisError:
        used = {}
    return jsonify({"tokens": [accounts.present_token(t, current, used.get(t.id))
                               for t in tokens]})


@v1.post("/tokens")
@requires(Permission.SELF)
def create_token():
    """A named token of the caller (for scripts and CI), shown once; its scope may not be
    more than the calling token's."""
    ident = current_identity()
    body = json_body()
    scope = body.get("scope", Scope.DEPLOY)
    if scope in Scope.ORDER and Scope.rank(scope) > Scope.rank(ident.scope):
        raise InvalidInput(f"this token's scope is {ident.scope!r}: it cannot make a token "
                           f"with the wider scope {scope!r}.")
    ttl = accounts.parse_ttl(body.get("expires_in"))
    caller = g.db.get(Token, ident.token_id)
    if caller.expires_at is not None:  # a token outlives not the one that made it
        left = (aware(caller.expires_at) - utcnow()).total_seconds()
        ttl = max(1.0, min(ttl or left, left))
    user = g.db.get(User, ident.user_id)
    token, secret = accounts.issue_token(g.db, user, body.get("name"), scope, ttl=ttl)
    g.db.flush()
    events.record(g.db, "token.created", ident.name, name=token.name, scope=token.scope)
    g.db.commit()
    return jsonify({"token": secret, "name": token.name, "scope": token.scope,
                    "expires_at": iso(token.expires_at)}), 201


@v1.delete("/tokens/<name>")
@requires(Permission.SELF)
def revoke_token(name: str):
    ident = current_identity()
    token = g.db.scalar(select(Token).where(Token.user_id == ident.user_id, Token.name == name))
    if token is None:
        raise NotFound(f"you have no token named {name!r}: 'paas tokens' lists yours.")
    if Scope.rank(token.scope) > Scope.rank(ident.scope):
        raise Forbidden(f"this token's scope {ident.scope!r} may not revoke the token {name!r} "
                        f"of the wider scope {token.scope!r}: revoke it with one as wide.")
    g.db.delete(token)
    events.record(g.db, "token.revoked", ident.name, name=name)
    g.db.commit()
    return jsonify({"revoked": name})
