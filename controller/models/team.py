"""Teams own apps; tokens are the identities that act on them."""

from __future__ import annotations

import hashlib
import secrets

from sqlalchemy import ForeignKey, String
from sqlalchemy.orm import Mapped, mapped_column, relationship

from controller.models.base import Base, created, guid, intpk

DEFAULT_TEAM = "default"


class Role:
    ADMIN = "admin"  # every team, platform operations
    DEVELOPER = "developer"  # read and write the apps of its own team


class Team(Base):
    __tablename__ = "teams"
    id: Mapped[intpk]
    guid: Mapped[guid]
    name: Mapped[str] = mapped_column(String(63), unique=True)
    created_at: Mapped[created]


class Token(Base):
    __tablename__ = "tokens"
    id: Mapped[intpk]
    name: Mapped[str] = mapped_column(String(100))
    token_hash: Mapped[str] = mapped_column(String(64), unique=True)
    role: Mapped[str] = mapped_column(String(20))
    team_id: Mapped[int] = mapped_column(ForeignKey("teams.id", ondelete="CASCADE"))
    created_at: Mapped[created]

    team: Mapped[Team] = relationship()

    @staticmethod
    def hash(secret: str) -> str:
        return hashlib.sha256(secret.encode()).hexdigest()

    @classmethod
    def issue(cls, name: str, role: str, team: Team) -> tuple[Token, str]:
        """A new token and its secret; only the hash is stored."""
        secret = "paas_" + secrets.token_urlsafe(32)
        return cls(name=name, role=role, team=team, token_hash=cls.hash(secret)), secret
