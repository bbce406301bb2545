"""Who is calling, and may they? The one table of permissions, and the one check.

Every view declares the permission it needs with :func:`requires`; the API's before-request
hook (:func:`enforce`) refuses a view without one, checks the token (valid, not expired, its
scope) and the platform-admin permission; the lookup of the object a view acts on (an app, a
team, a domain) finishes the check against the object's team with :func:`authorize`.

A user's role in a team is ``viewer`` < ``developer`` < ``manager``, each allowed what the ones
before it are; platform admins are allowed everything everywhere. A token's scope (``read`` <
``deploy`` < ``admin``) caps what its user may do with it.

Another team's app (and what hangs off it: builds, tasks, routes) is not there for the caller:
every lookup answers it with the sentence of a name that does not exist (a 404), so no answer
tells "not yours" from "not there". A 403 is for what the caller can see but not do.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TypeVar

import redis
from flask import Flask, current_app, g, request
from sqlalchemy import select
from sqlalchemy.orm import Session

from contracts import keys
from controller.errors import Forbidden, InvalidInput, NotFound, Unauthorized
from controller.models import DEFAULT_TEAM, App, Membership, Role, Scope, Team, Token
from controller.models.base import aware, utcnow

TEAM_HEADER = "X-Paas-Team"


class Permission:
    PUBLIC = "public"  # no token needed
    SELF = "self"  # any valid token: the caller's own user, tokens and teams
    APP_READ = "app.read"
    APP_LOGS = "app.logs"
    APP_ENV = "app.env"  # env values, which may be secrets
    APP_WRITE = "app.write"
    TEAM_READ = "team.read"
    TEAM_MANAGE = "team.manage"
    PLATFORM_ADMIN = "platform.admin"


@dataclass(frozen=True)
class Rule:
    role: str | None  # the least role in the object's team (None: no team involved)
    scope: str  # the least scope of the token
    doing: str  # what it allows, for sentences: "your role ... may not <doing>"


RULES: Mapping[str, Rule] = {
    Permission.SELF: Rule(None, Scope.READ, "act as yourself"),
    Permission.APP_READ: Rule(Role.VIEWER, Scope.READ, "see the team's apps"),
    Permission.APP_LOGS: Rule(Role.VIEWER, Scope.READ, "read the team's logs"),
    Permission.APP_ENV: Rule(Role.DEVELOPER, Scope.DEPLOY, "read env values"),
    Permission.APP_WRITE: Rule(Role.DEVELOPER, Scope.DEPLOY, "change the team's apps"),
    Permission.TEAM_READ: Rule(Role.VIEWER, Scope.READ, "see the team"),
    Permission.TEAM_MANAGE: Rule(Role.MANAGER, Scope.ADMIN, "manage the team's members"),
    Permission.PLATFORM_ADMIN: Rule(None, Scope.ADMIN, "administer the platform"),
}

# The least role that may do each: what a sentence tells the caller to ask for.
_ROLE_FOR = {Role.VIEWER: "viewer", Role.DEVELOPER: "developer", Role.MANAGER: "manager"}

View = TypeVar("View", bound=Callable[..., object])


def requires(permission: str) -> Callable[[View], View]:
    """Declare the permission a view needs (see :data:`RULES`)."""
    if permission != Permission.PUBLIC and permission not in RULES:
        raise ValueError(f"unknown permission {permission!r}")

    def declare(view: View) -> View:
        view.permission = permission  # type: ignore[attr-defined]
        return view

    return declare


def permission_table(app: Flask) -> dict[str, str | None]:
    """Every endpoint of ``app`` and the permission it declares (None: it declares none)."""
    return {endpoint: getattr(view, "permission", None)
            for endpoint, view in app.view_functions.items() if endpoint != "static"}


@dataclass(frozen=True)
class Identity:
    user_id: int
    name: str  # the user's name
    is_admin: bool  # a platform admin
    scope: str  # the token's
    token_id: int
    token_name: str
    roles: Mapping[int, str] = field(default_factory=dict)  # team id -> role
    team_names: Mapping[int, str] = field(default_factory=dict)  # team id -> name
    # The team the request means (X-Paas-Team, or the caller's only team); None if unclear.
    team_id: int | None = None
    teams_unclear: tuple[str, ...] = ()  # the caller's teams, when the request names none
    team_named: bool = False  # the request named its team (X-Paas-Team)

    @property
    def role(self) -> str:
        return Role.ADMIN if self.is_admin else "user"

    def member_of(self, team_id: int | None) -> bool:
        return self.is_admin or (team_id is not None and team_id in self.roles)

    def acting_for(self, team_id: int) -> Identity:
        """This identity acting for ``team_id`` (the team of the app a route is mapped to)."""
        return dataclasses.replace(self, team_id=team_id, team_named=True)

    def request_team(self) -> int:
        """The team the request means, for making something new in it; a 400 if unclear."""
        if self.team_id is None:
            if self.teams_unclear:
                raise InvalidInput(
                    f"you belong to teams {', '.join(self.teams_unclear)}: pick the one to "
                    "act in with 'paas target --team TEAM'.")
            raise InvalidInput("you belong to no team: ask a team's manager to add you "
                               "('paas add-member TEAM USER --role developer').")
        return self.team_id


def _token_error(text: str) -> Unauthorized:
    return Unauthorized(f"{text}: log in again with 'paas login' (or use a token from "
                        "'paas create-token').")


def identify(session: Session) -> Identity:
    """The caller of this request, from its bearer token; a 401 without a live token."""
    header = request.headers.get("Authorization", "")
    scheme, _, secret = header.partition(" ")
    if scheme.lower() != "bearer" or not secret.strip():
        raise Unauthorized("no token given: log in with 'paas login' (make up prints the "
                           "admin's password), or send 'Authorization: Bearer TOKEN'.")
    token = session.scalar(select(Token).where(Token.token_hash == Token.hash(secret.strip())))
    if token is None:
        raise _token_error("the token is not valid (it was revoked, or never issued)")
    now = utcnow()
    if token.expired(now):
        raise _token_error("the token has expired")
    _touch(token, now)
    user = token.user
    rows = session.execute(select(Membership.team_id, Membership.role, Team.name)
                           .join(Team, Team.id == Membership.team_id)
                           .where(Membership.user_id == user.id)).all()
    roles = {team_id: role for team_id, role, _ in rows}
    names = {team_id: name for team_id, _, name in rows}
    team_id, unclear, named = _request_team(session, user.is_admin, roles, names)
    return Identity(user_id=user.id, name=user.username, is_admin=user.is_admin,
                    scope=token.scope, token_id=token.id, token_name=token.name, roles=roles,
                    team_names=names, team_id=team_id, teams_unclear=unclear, team_named=named)


def _touch(token: Token, now: dt.datetime) -> None:
    """Remember when the token was last used, to the minute, in Redis: the health manager
    copies it into the token's row (a request, even a GET, writes no row of its own)."""
    last = token.last_used_at
    if last is not None and now - aware(last) <= dt.timedelta(minutes=1):
        return
    try:
        current_app.extensions["paas.redis"].hset(keys.TOKENS_USED, str(token.id),
                                                  str(int(now.timestamp())))
    except redis.RedisError:
        pass  # a lost mark costs only the "last used" column's precision


def _request_team(session: Session, is_admin: bool, roles: Mapping[int, str],
                  names: Mapping[int, str]) -> tuple[int | None, tuple[str, ...], bool]:
    """The team the request means, the caller's teams when that is unclear, and whether the
    request named it (X-Paas-Team)."""
    wanted = request.headers.get(TEAM_HEADER, "").strip()
    if wanted:
        for team_id, name in names.items():
            if name == wanted:
                return team_id, (), True
        team = session.scalar(select(Team).where(Team.name == wanted)) if is_admin else None
        if team is None:
            raise NotFound(f"there is no team named {wanted!r}: 'paas teams' lists yours "
                           "('paas target --team TEAM' picks one).")
        return team.id, (), True
    if len(roles) == 1:
        return next(iter(roles)), (), False
    if not roles and is_admin:
        team = session.scalar(select(Team).where(Team.name == DEFAULT_TEAM))
        return (team.id if team else None), (), False
    return None, tuple(sorted(names.values())), False


def enforce(identity: Identity | None, permission: str | None) -> None:
    """The endpoint's part of the check: a declaration, the token's scope, platform admin.
    The team's part waits for the object (:func:`authorize`)."""
    if permission is None:
        raise Forbidden("this endpoint declares no permission, so nobody may use it: tell the "
                        "platform's developers.")
    if permission == Permission.PUBLIC or identity is None:
        return
    rule = RULES[permission]
    if Scope.rank(identity.scope) < Scope.rank(rule.scope):
        raise Forbidden(f"this token's scope {identity.scope!r} does not allow this (it needs "
                        f"{rule.scope!r}): create one with 'paas create-token NAME --scope "
                        f"{rule.scope}'.")
    if permission == Permission.PLATFORM_ADMIN and not identity.is_admin:
        raise Forbidden("only platform admins may do this: ask one.")


def authorize(identity: Identity, permission: str, team: Team | None, *,
              missing: str | None = None) -> None:
    """Raise unless ``identity`` may do ``permission`` on an object of ``team``.

    Outside the caller's teams the object is missing: NotFound with ``missing`` (the sentence
    the lookup gives for a thing that does not exist), never Forbidden.
    """
    enforce(identity, permission)
    rule = RULES[permission]
    if identity.is_admin or rule.role is None:
        return
    role = identity.roles.get(team.id) if team is not None else None
    if role is None:
        raise NotFound(missing or "there is no such thing here.")
    if Role.rank(role) < Role.rank(rule.role):
        raise Forbidden(f"your role {role!r} in team {team.name!r} may not {rule.doing}: ask "
                        f"a manager of the team for the {_ROLE_FOR[rule.role]} role.")
    if permission == Permission.APP_LOGS and role == Role.VIEWER and not team.viewer_logs:
        raise Forbidden(f"team {team.name!r} does not let viewers read its apps' logs: ask a "
                        "manager of the team for the developer role.")


def app_missing(name: str) -> str:
    """The sentence for an app the caller cannot see: the same whether it does not exist or is
    another team's."""
    return f"there is no app named {name!r}: 'paas apps' lists yours."


def may_see(identity: Identity, app: App) -> bool:
    """True if ``app`` exists for ``identity``: an app of one of its teams (any for admins)."""
    return identity.member_of(app.team_id)


def authorize_app(identity: Identity, app: App, permission: str | None = None) -> None:
    """:func:`authorize` on ``app`` with the view's declared permission (or ``permission``)."""
    authorize(identity, permission or current_permission(), app.team,
              missing=app_missing(app.name))


def current_permission() -> str:
    return g.permission


def current_identity() -> Identity:
    return g.identity
