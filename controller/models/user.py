"""Users, their roles in teams, and the tokens they act with."""

from __future__ import annotations

import datetime as dt
import hashlib
import re
import secrets

from sqlalchemy import Boolean, DateTime, ForeignKey, String, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column, relationship

from controller.errors import InvalidInput
from controller.models.base import Base, aware, created, guid, intpk, utcnow
from controller.models.team import Team

USERNAME_RE = re.compile(r"^[a-z0-9][a-z0-9._-]{0,62}$")
PASSWORD_MIN, PASSWORD_MAX = 8, 128


def validate_username(name: object) -> str:
    if not isinstance(name, str) or not USERNAME_RE.match(name):
        raise InvalidInput(f"{name!r} is not a valid user name: use 1 to 63 lower-case letters, "
                           "digits, dots, hyphens and underscores, starting with a letter or "
                           "digit.")
    return name


def validate_password(password: object, what: str = "the password") -> str:
    if not isinstance(password, str) or not PASSWORD_MIN <= len(password) <= PASSWORD_MAX:
        raise InvalidInput(f"{what} must be a string of {PASSWORD_MIN} to {PASSWORD_MAX} "
                           "characters.")
    return password


class Role:
    """A user's role in a team. Roles are cumulative: each may do what the ones before it may."""

    VIEWER = "viewer"  # reads the team's apps (not env values; logs unless the team says no)
    DEVELOPER = "developer"  # pushes, scales, sets env, maps routes, runs tasks
    MANAGER = "manager"  # adds and removes members

    ORDER = (VIEWER, DEVELOPER, MANAGER)
    # The role a legacy name stands for (tokens of before users: "admin" and "developer").
    ADMIN = "admin"

    @classmethod
    def rank(cls, role: str | None) -> int:
        return cls.ORDER.index(role) + 1 if role in cls.ORDER else 0


class Scope:
    """What a token may do of what its user may: read only, deploy too, or everything."""

    READ = "read"
    DEPLOY = "deploy"
    ADMIN = "admin"

    ORDER = (READ, DEPLOY, ADMIN)

    @classmethod
    def rank(cls, scope: str) -> int:
        return cls.ORDER.index(scope) + 1 if scope in cls.ORDER else 0


class User(Base):
    __tablename__ = "users"
    id: Mapped[intpk]
    guid: Mapped[guid]
    username: Mapped[str] = mapped_column(String(63), unique=True)
    # argon2id; None: the user acts only with tokens an admin made (no password login).
    password_hash: Mapped[str | None] = mapped_column(String(255), nullable=True)
    is_admin: Mapped[bool] = mapped_column(Boolean, default=False)
    created_at: Mapped[created]

    memberships: Mapped[list[Membership]] = relationship(
        back_populates="user", cascade="all, delete-orphan")
    tokens: Mapped[list[Token]] = relationship(
        back_populates="user", cascade="all, delete-orphan")


class Membership(Base):
    __tablename__ = "memberships"
    __table_args__ = (UniqueConstraint("user_id", "team_id"),)
    id: Mapped[intpk]
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"))
    team_id: Mapped[int] = mapped_column(ForeignKey("teams.id", ondelete="CASCADE"))
    role: Mapped[str] = mapped_column(String(20))

    user: Mapped[User] = relationship(back_populates="memberships")
    team: Mapped[Team] = relationship()


class TokenKind:
    LOGIN = "login"  # made by 'paas login'; revoked by 'paas logout' or a password change
    API = "api"  # made by 'paas create-token' (or the operator) for scripts and CI


class Token(Base):
    __tablename__ = "tokens"
    __table_args__ = (UniqueConstraint("user_id", "name"),)
    id: Mapped[intpk]
    name: Mapped[str] = mapped_column(String(100))
    token_hash: Mapped[str] = mapped_column(String(64), unique=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"))
    scope: Mapped[str] = mapped_column(String(10), default=Scope.ADMIN)
    kind: Mapped[str] = mapped_column(String(10), default=TokenKind.API)
    expires_at: Mapped[dt.datetime | None] = mapped_column(DateTime(timezone=True),
                                                           nullable=True)
    last_used_at: Mapped[dt.datetime | None] = mapped_column(DateTime(timezone=True),
                                                             nullable=True)
    created_at: Mapped[created]

    user: Mapped[User] = relationship(back_populates="tokens")

    @staticmethod
    def hash(secret: str) -> str:
        return hashlib.sha256(secret.encode()).hexdigest()

    @classmethod
    def issue(cls, user: User, name: str, scope: str = Scope.ADMIN, *,
              kind: str = TokenKind.API, ttl: float | None = None) -> tuple[Token, str]:
        """A new token of ``user`` and its secret; only the secret's hash is stored."""
        secret = "paas_" + secrets.token_urlsafe(32)
        expires = utcnow() + dt.timedelta(seconds=ttl) if ttl else None
        token = cls(user=user, name=name, scope=scope, kind=kind, expires_at=expires,
                    token_hash=cls.hash(secret))
        return token, secret

    def expired(self, now: dt.datetime | None = None) -> bool:
        return self.expires_at is not None and aware(self.expires_at) <= (now or utcnow())
