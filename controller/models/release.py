"""Releases: a droplet plus the config to run it, numbered per app."""

from __future__ import annotations

from sqlalchemy import JSON, ForeignKey, Integer, String, Text, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column, relationship

from controller.models.base import Base, created, intpk
from controller.models.build import Droplet
from controller.models.sealed import SealedJSON


class ReleaseStatus:
    DEPLOYING = "DEPLOYING"  # instances are starting; the previous release keeps serving
    DEPLOYED = "DEPLOYED"  # every desired instance ran; the one the app serves
    SUPERSEDED = "SUPERSEDED"  # a later release was deployed
    FAILED = "FAILED"  # never became healthy; the app went back to its previous release


class Release(Base):
    __tablename__ = "releases"
    __table_args__ = (UniqueConstraint("app_id", "version"),)
    id: Mapped[intpk]
    app_id: Mapped[int] = mapped_column(ForeignKey("apps.id", ondelete="CASCADE"))
    version: Mapped[int] = mapped_column(Integer)
    droplet_id: Mapped[int] = mapped_column(ForeignKey("droplets.id", ondelete="CASCADE"))
    # Sealed with the platform key in the database (controller.models.sealed).
    env: Mapped[dict] = mapped_column(SealedJSON, default=dict)
    # Start commands given by the user (push -c), by process type; they win over the
    # droplet's process types.
    commands: Mapped[dict] = mapped_column(JSON, default=dict)
    description: Mapped[str | None] = mapped_column(Text, nullable=True)
    created_by: Mapped[str | None] = mapped_column(String(100), nullable=True)
    status: Mapped[str] = mapped_column(String(16), default=ReleaseStatus.DEPLOYING)
    error: Mapped[str | None] = mapped_column(Text, nullable=True)
    created_at: Mapped[created]

    droplet: Mapped[Droplet] = relationship()

    def command(self, process_type: str) -> str | None:
        return self.commands.get(process_type) or self.droplet.process_types.get(process_type)

    @property
    def process_types(self) -> list[str]:
        return sorted({*self.droplet.process_types, *self.commands})
