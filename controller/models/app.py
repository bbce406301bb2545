"""An app: a name in a team, the processes to run, and the release they should run."""

from __future__ import annotations

import datetime as dt
import re

from sqlalchemy import DateTime, ForeignKey, Integer, String, Text
from sqlalchemy.orm import Mapped, mapped_column, relationship

from controller.errors import InvalidInput
from controller.models.base import Base, created, guid, intpk, utcnow
from controller.models.team import Team

NAME_RE = re.compile(r"^[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?$")


def validate_name(name: str) -> str:
    if not NAME_RE.match(name or ""):
        raise InvalidInput(
            f"{name!r} is not a valid app name: use 1 to 63 lower-case letters, digits and "
            "hyphens, starting and ending with a letter or digit (it becomes part of the URL)."
        )
    return name


class AppState:
    STARTED = "STARTED"
    STOPPED = "STOPPED"


class App(Base):
    __tablename__ = "apps"
    id: Mapped[intpk]
    guid: Mapped[guid]
    name: Mapped[str] = mapped_column(String(63), unique=True)
    team_id: Mapped[int] = mapped_column(ForeignKey("teams.id"))
    state: Mapped[str] = mapped_column(String(16), default=AppState.STARTED)
    # The release instances should run; None until the first successful staging.
    # (No foreign key: releases point at apps, and a cycle buys nothing but ordering pain.)
    release_id: Mapped[int | None] = mapped_column(Integer, nullable=True)
    created_at: Mapped[created]
    updated_at: Mapped[dt.datetime] = mapped_column(
        DateTime(timezone=True), default=utcnow, onupdate=utcnow
    )

    team: Mapped[Team] = relationship()
    processes: Mapped[list[Process]] = relationship(
        back_populates="app", cascade="all, delete-orphan", order_by="Process.type"
    )

    def process(self, type_: str) -> Process:
        for p in self.processes:
            if p.type == type_:
                return p
        p = Process(type=type_, instances=0)
        self.processes.append(p)
        return p


class Process(Base):
    """Desired scale of one process type (``web`` is routed)."""

    __tablename__ = "processes"
    id: Mapped[intpk]
    app_id: Mapped[int] = mapped_column(ForeignKey("apps.id", ondelete="CASCADE"))
    type: Mapped[str] = mapped_column(String(63))
    instances: Mapped[int] = mapped_column(Integer, default=1)
    memory_mb: Mapped[int] = mapped_column(Integer, default=256)
    # A command given with the push (-c); overrides the droplet's process type command.
    command: Mapped[str | None] = mapped_column(Text, nullable=True)

    app: Mapped[App] = relationship(back_populates="processes")
