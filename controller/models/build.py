"""Packages (uploaded bits), builds (staging runs) and droplets (their results)."""

from __future__ import annotations

import datetime as dt

from sqlalchemy import JSON, BigInteger, DateTime, ForeignKey, String, Text
from sqlalchemy.orm import Mapped, mapped_column, relationship

from contracts.options import PushOptions
from controller.models.app import App
from controller.models.base import Base, created, guid, intpk
from controller.models.sealed import SealedJSON


class Package(Base):
    __tablename__ = "packages"
    id: Mapped[intpk]
    guid: Mapped[guid]
    app_id: Mapped[int] = mapped_column(ForeignKey("apps.id", ondelete="CASCADE"))
    blob_path: Mapped[str] = mapped_column(String(255))
    digest: Mapped[str] = mapped_column(String(64))
    size: Mapped[int] = mapped_column(BigInteger)
    created_at: Mapped[created]


class BuildState:
    STAGING = "STAGING"
    SUCCEEDED = "SUCCEEDED"
    FAILED = "FAILED"


class Build(Base):
    __tablename__ = "builds"
    id: Mapped[intpk]
    guid: Mapped[guid]
    app_id: Mapped[int] = mapped_column(ForeignKey("apps.id", ondelete="CASCADE"))
    package_id: Mapped[int] = mapped_column(ForeignKey("packages.id", ondelete="CASCADE"))
    state: Mapped[str] = mapped_column(String(16), default=BuildState.STAGING)
    error: Mapped[str | None] = mapped_column(Text, nullable=True)
    buildpack: Mapped[str | None] = mapped_column(String(255), nullable=True)
    # What the push asked for (contracts.options.PushOptions as JSON), applied to the app
    # when the build succeeds. Sealed: it holds the env values given with the push.
    requested: Mapped[dict] = mapped_column(SealedJSON, default=dict)
    # Who pushed or restaged (the release is made in their name).
    actor: Mapped[str | None] = mapped_column(String(100), nullable=True)
    created_at: Mapped[created]
    finished_at: Mapped[dt.datetime | None] = mapped_column(DateTime(timezone=True))

    app: Mapped[App] = relationship()
    package: Mapped[Package] = relationship()

    @property
    def options(self) -> PushOptions:
        """What the push asked for, as the typed record."""
        return PushOptions.from_json(self.requested or {}, stored=True)


class Droplet(Base):
    __tablename__ = "droplets"
    id: Mapped[intpk]
    guid: Mapped[guid]
    app_id: Mapped[int] = mapped_column(ForeignKey("apps.id", ondelete="CASCADE"))
    build_id: Mapped[int] = mapped_column(ForeignKey("builds.id", ondelete="CASCADE"))
    digest: Mapped[str] = mapped_column(String(64))
    blob_path: Mapped[str] = mapped_column(String(255))
    image: Mapped[str] = mapped_column(String(255))
    size: Mapped[int] = mapped_column(BigInteger)
    buildpack: Mapped[str | None] = mapped_column(String(255))
    process_types: Mapped[dict] = mapped_column(JSON, default=dict)
    created_at: Mapped[created]
