"""Users, teams and tokens: the domain the account endpoints, ``paas-admin`` and the tests
share. Passwords are hashed with argon2id; a token's secret is kept only as a sha256 (it is
random and long, so a slow hash buys nothing)."""

from __future__ import annotations

import datetime as dt
import functools

import redis
from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from contracts import keys
from controller.errors import Conflict, InvalidInput, NotFound
from controller.models import (
    DEFAULT_TEAM,
    App,
    Domain,
    Membership,
    Role,
    Scope,
    Team,
    Token,
    TokenKind,
    User,
    iso,
    validate_name,
)
from controller.models.base import aware, utcnow
from controller.models.user import validate_password, validate_username


@functools.cache
def _hasher() -> PasswordHasher:
    return PasswordHasher()  # argon2id with the library's (RFC 9106 low-memory) parameters


def hash_password(password: str) -> str:
    return _hasher().hash(password)


def check_password(user: User | None, password: str) -> bool:
    """True if ``password`` is ``user``'s. Without a user (or a password) the same work is
    done against a made-up hash, so the answer's time does not tell which names exist."""
    stored = user.password_hash if user is not None else None
    try:
        return _hasher().verify(stored or _decoy(), password) and stored is not None
    except (VerificationError, InvalidHashError):
        return False


@functools.cache
def _decoy() -> str:
    return _hasher().hash("not a password of anyone")


def find_user(session: Session, username: str) -> User:
    user = session.scalar(select(User).where(User.username == username))
    if user is None:
        raise NotFound(f"there is no user named {username!r}: 'paas users' lists them.")
    return user


def team_missing(name: str) -> str:
    return f"there is no team named {name!r}: 'paas teams' lists yours."


def find_team(session: Session, name: str) -> Team:
    team = session.scalar(select(Team).where(Team.name == name))
    if team is None:
        raise NotFound(team_missing(name))
    return team


def create_user(session: Session, username: object, password: object = None, *,
                admin: bool = False) -> User:
    username = validate_username(username)
    if session.scalar(select(User).where(User.username == username)) is not None:
        raise Conflict(f"there is already a user named {username!r}: pick another name.")
    if password is not None:
        password = validate_password(password)
    user = User(username=username, is_admin=bool(admin),
                password_hash=hash_password(password) if password is not None else None)
    session.add(user)
    return user


def create_team(session: Session, name: object, *, viewer_logs: bool = True) -> Team:
    if not isinstance(name, str):
        raise InvalidInput("the team's name must be a string.")
    try:
        validate_name(name)
    except InvalidInput:
        raise InvalidInput(f"{name!r} is not a valid team name: use 1 to 63 lower-case "
                           "letters, digits and hyphens, starting and ending with a letter or "
                           "digit.") from None
    if session.scalar(select(Team).where(Team.name == name)) is not None:
        raise Conflict(f"there is already a team named {name!r}: pick another name.")
    team = Team(name=name, viewer_logs=viewer_logs)
    session.add(team)
    return team


def set_member(session: Session, team: Team, user: User, role: object) -> Membership:
    if role not in Role.ORDER:
        raise InvalidInput(f"{role!r} is not a role: use one of {', '.join(Role.ORDER)}.")
    member = session.scalar(select(Membership).where(Membership.team_id == team.id,
                                                     Membership.user_id == user.id))
    if member is None:
        member = Membership(team=team, user=user, role=role)
        session.add(member)
    else:
        member.role = role
    return member


def membership(session: Session, team: Team, user: User) -> Membership | None:
    return session.scalar(select(Membership).where(Membership.team_id == team.id,
                                                   Membership.user_id == user.id))


def team_app_count(session: Session, team: Team) -> int:
    return session.scalar(select(func.count(App.id)).where(App.team_id == team.id)) or 0


def delete_team(session: Session, team: Team) -> None:
    if team.name == DEFAULT_TEAM:
        raise Conflict(f"{DEFAULT_TEAM!r} is the platform's own team (platform admins' apps go "
                       "there): it cannot be deleted.")
    apps = team_app_count(session, team)
    if apps:
        raise Conflict(f"team {team.name!r} still has {apps} app(s): delete them first "
                       f"('paas apps' with 'paas target --team {team.name}' lists them).")
    domains = list(session.scalars(select(Domain.name).where(Domain.team_id == team.id)))
    if domains:
        raise Conflict(f"team {team.name!r} still has the domain(s) {', '.join(domains)}: "
                       "delete them first ('paas delete-domain NAME').")
    session.delete(team)


def delete_user(session: Session, user: User) -> None:
    if user.is_admin:
        admins = session.scalar(select(func.count(User.id)).where(User.is_admin.is_(True)))
        if admins <= 1:
            raise Conflict(f"{user.username!r} is the last platform admin: make another admin "
                           "first ('paas create-user NAME --admin').")
    session.delete(user)


def revoke_logins(session: Session, user: User, keep: int | None = None) -> None:
    """End the user's login tokens (but the token ``keep``): what a new password does."""
    for token in list(user.tokens):
        if token.kind == TokenKind.LOGIN and token.id != keep:
            session.delete(token)


def parse_ttl(value: object, what: str = "expires_in") -> float | None:
    """Seconds from now (None: never), from a request body."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float) or not \
            1 <= value <= 10 * 365 * 86400:
        raise InvalidInput(f"{what} must be a number of seconds from 1 to ten years, or null "
                           "for a token that never expires.")
    return float(value)


def issue_token(session: Session, user: User, name: object, scope: object = Scope.DEPLOY, *,
                kind: str = TokenKind.API, ttl: float | None = None) -> tuple[Token, str]:
    if not isinstance(name, str) or not 1 <= len(name) <= 100 or not name.isprintable() \
            or "/" in name:
        raise InvalidInput("a token's name must be 1 to 100 printable characters, without '/'.")
    if scope not in Scope.ORDER:
        raise InvalidInput(f"{scope!r} is not a token scope: use one of "
                           f"{', '.join(Scope.ORDER)}.")
    if session.scalar(select(Token).where(Token.user_id == user.id, Token.name == name)):
        raise Conflict(f"you already have a token named {name!r}: revoke it first "
                       f"('paas revoke-token {name}') or pick another name.")
    token, secret = Token.issue(user, name, scope, kind=kind, ttl=ttl)
    session.add(token)
    return token, secret


def login_token_name(session: Session, user: User) -> str:
    """``login <date>``, made unique among the user's tokens."""
    base = f"login {utcnow():%Y-%m-%d %H:%M:%S}"
    names = set(session.scalars(select(Token.name).where(Token.user_id == user.id)))
    name, n = base, 1
    while name in names:
        n += 1
        name = f"{base} ({n})"
    return name


def member_token(session: Session, username: str, team_name: str, role: str,
                 token_name: str | None = None) -> str:
    """A token of ``username`` (made if missing) with ``role`` in ``team_name`` (made if
    missing), as an operator makes one with ``paas-admin create-token``; its secret."""
    team = session.scalar(select(Team).where(Team.name == team_name)) or Team(name=team_name)
    session.add(team)
    user = session.scalar(select(User).where(User.username == username))
    if user is None:
        user = create_user(session, username, admin=role == Role.ADMIN)
    elif role == Role.ADMIN:
        user.is_admin = True
    session.flush()
    if role != Role.ADMIN:
        set_member(session, team, user, role)
    name = token_name or login_token_name(session, user).replace("login", "operator", 1)
    _, secret = issue_token(session, user, name, Scope.ADMIN)
    session.commit()
    return secret


def present_user(user: User) -> dict[str, object]:
    return {"username": user.username, "admin": user.is_admin,
            "password": user.password_hash is not None, "created_at": iso(user.created_at),
            "teams": [{"name": m.team.name, "role": m.role}
                      for m in sorted(user.memberships, key=lambda m: m.team.name)]}


def present_token(token: Token, current: Token | None = None,
                  used: dt.datetime | None = None) -> dict[str, object]:
    """``used``: a later use the health manager has yet to copy into the row."""
    last = token.last_used_at
    if used is not None and (last is None or aware(last) < used):
        last = used
    return {"name": token.name, "scope": token.scope, "kind": token.kind,
            "created_at": iso(token.created_at), "expires_at": iso(token.expires_at),
            "last_used_at": iso(last),
            "current": current is not None and token.id == current.id}



def tokens_used(raw: dict[bytes, bytes]) -> dict[int, dt.datetime]:
    """The marks of token use in Redis (``keys.TOKENS_USED``): token id -> when."""
    found = {}
    for key, value in raw.items():
        try:
            found[int(key)] = dt.datetime.fromtimestamp(int(value), dt.UTC)
        except (TypeError, ValueError, OverflowError):
            continue
    return found


def record_token_use(session: Session, client: redis.Redis) -> int:
    """Copy the marks of token use from Redis into the tokens' rows (the health manager's
    job, once a minute); returns how many rows changed."""
    copying = f"{keys.TOKENS_USED}:copying"
    try:  # moved aside at once: a use marked while this copies is kept for the next copy
        client.rename(keys.TOKENS_USED, copying)
    except redis.ResponseError:
        return 0  # no marks
    raw = client.hgetall(copying)
    changed = 0
    for token_id, used in tokens_used(raw).items():
        token = session.get(Token, token_id)
        if token is not None and (token.last_used_at is None or aware(token.last_used_at)
                                  < used):
            token.last_used_at = used
            changed += 1
    session.commit()
    client.delete(copying)
    return changed
