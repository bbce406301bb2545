"""An app: a name in a team, the processes to run, and the release they should run."""

from __future__ import annotations

import datetime as dt

from sqlalchemy import JSON, DateTime, Float, ForeignKey, Integer, String, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column, relationship

from contracts import options
from controller.errors import InvalidInput
from controller.models.base import Base, created, guid, intpk, utcnow
from controller.models.team import Team


def validate_name(name: str) -> str:
    """``name`` if it is a valid app name (contracts.options), else a 400 saying why."""
    try:
        return options.app_name(name)
    except options.InvalidOption as e:
        raise InvalidInput(e.message) from None


class AppState:
    STARTED = "STARTED"
    STOPPED = "STOPPED"


class App(Base):
    __tablename__ = "apps"
    # Names are the team's: two teams may both have an app called api (routes stay unique).
    __table_args__ = (UniqueConstraint("team_id", "name"),)
    id: Mapped[intpk]
    guid: Mapped[guid]
    name: Mapped[str] = mapped_column(String(63))
    team_id: Mapped[int] = mapped_column(ForeignKey("teams.id"))
    state: Mapped[str] = mapped_column(String(16), default=AppState.STARTED)
    # The release instances should run; None until the first successful staging.
    # (No foreign key: releases point at apps, and a cycle buys nothing but ordering pain.)
    release_id: Mapped[int | None] = mapped_column(Integer, nullable=True)
    # Bumped by a restart (or a memory change): instances of an older generation are
    # replaced one by one, like a new release.
    generation: Mapped[int] = mapped_column(Integer, default=0)
    # How many new instances a rolling deploy starts before old ones stop.
    max_in_flight: Mapped[int] = mapped_column(Integer, default=1)
    # Overrides of the platform's crash policy (keys as in contracts.settings crash_*).
    crash_policy: Mapped[dict | None] = mapped_column(JSON, nullable=True)
    created_at: Mapped[created]
    updated_at: Mapped[dt.datetime] = mapped_column(
        DateTime(timezone=True), default=utcnow, onupdate=utcnow
    )

    team: Mapped[Team] = relationship()
    processes: Mapped[list[Process]] = relationship(
        back_populates="app", cascade="all, delete-orphan", order_by="Process.type"
    )

    routes: Mapped[list[Route]] = relationship(  # noqa: F821 - controller.models.route
        back_populates="app", cascade="all, delete-orphan", order_by="Route.id")

    def process(self, type_: str) -> Process:
        for p in self.processes:
            if p.type == type_:
                return p
        # As in Cloud Foundry, only web listens by default; other types are checked by
        # their process running.
        p = Process(type=type_, instances=0,
                    health_check_type=HealthCheck.PORT if type_ == "web" else
                    HealthCheck.PROCESS)
        self.processes.append(p)
        return p


class HealthCheck:
    PORT = options.PORT  # the app listens on $PORT
    HTTP = options.HTTP  # GET endpoint answers 2xx
    PROCESS = options.PROCESS  # the process runs

    ALL = options.HEALTH_CHECK_TYPES


class Process(Base):
    """Desired scale and health check of one process type (``web`` is routed)."""

    __tablename__ = "processes"
    id: Mapped[intpk]
    app_id: Mapped[int] = mapped_column(ForeignKey("apps.id", ondelete="CASCADE"))
    type: Mapped[str] = mapped_column(String(63))
    instances: Mapped[int] = mapped_column(Integer, default=1)
    memory_mb: Mapped[int] = mapped_column(Integer, default=256)
    disk_mb: Mapped[int] = mapped_column(Integer, default=1024)
    health_check_type: Mapped[str] = mapped_column(String(16), default=HealthCheck.PORT)
    health_check_endpoint: Mapped[str] = mapped_column(String(255), default="/")
    # Seconds an instance may take to pass its first health check; None: the platform's.
    start_timeout: Mapped[int | None] = mapped_column(Integer, nullable=True)
    # Seconds between checks, and for one check to answer; None: the platform's.
    health_check_interval: Mapped[float | None] = mapped_column(Float, nullable=True)
    health_check_probe_timeout: Mapped[float | None] = mapped_column(Float, nullable=True)

    app: Mapped[App] = relationship(back_populates="processes")
