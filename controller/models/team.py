"""Teams own apps, routes and domains; a team's quota caps what its apps may use."""

from __future__ import annotations

from sqlalchemy import Boolean, Integer, String
from sqlalchemy.orm import Mapped, mapped_column

from controller.models.base import Base, created, guid, intpk

DEFAULT_TEAM = "default"

# What a quota limits, and its column on ``teams`` (None: unlimited).
QUOTA_KEYS = ("memory_mb", "instances", "apps", "routes", "tasks", "services")


class Team(Base):
    __tablename__ = "teams"
    id: Mapped[intpk]
    guid: Mapped[guid]
    name: Mapped[str] = mapped_column(String(63), unique=True)
    # Whether the team's viewers may read its apps' logs (they may read everything else).
    viewer_logs: Mapped[bool] = mapped_column(Boolean, default=True)
    quota_memory_mb: Mapped[int | None] = mapped_column(Integer, nullable=True)
    quota_instances: Mapped[int | None] = mapped_column(Integer, nullable=True)
    quota_apps: Mapped[int | None] = mapped_column(Integer, nullable=True)
    quota_routes: Mapped[int | None] = mapped_column(Integer, nullable=True)
    quota_tasks: Mapped[int | None] = mapped_column(Integer, nullable=True)
    quota_services: Mapped[int | None] = mapped_column(Integer, nullable=True)
    created_at: Mapped[created]

    @property
    def quota(self) -> dict[str, int | None]:
        return {key: getattr(self, f"quota_{key}") for key in QUOTA_KEYS}
