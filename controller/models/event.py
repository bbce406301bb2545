"""The audit trail: every change a user or the platform makes, once, with who and when."""

from __future__ import annotations

from sqlalchemy import JSON, ForeignKey, String
from sqlalchemy.orm import Mapped, mapped_column, relationship

from controller.models.base import Base, created, intpk
from controller.models.team import Team


class Event(Base):
    __tablename__ = "events"
    id: Mapped[intpk]
    team_id: Mapped[int | None] = mapped_column(ForeignKey("teams.id", ondelete="SET NULL"))
    app_guid: Mapped[str | None] = mapped_column(String(36), index=True)
    app_name: Mapped[str | None] = mapped_column(String(63))
    actor: Mapped[str] = mapped_column(String(100))  # the user (or health, stager)
    token: Mapped[str | None] = mapped_column(String(100), nullable=True)  # the token's name
    type: Mapped[str] = mapped_column(String(50))
    data: Mapped[dict] = mapped_column(JSON, default=dict)
    created_at: Mapped[created]

    team: Mapped[Team | None] = relationship()
