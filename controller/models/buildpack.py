"""Buildpacks an admin registered: tarballs in the blobstore, tried in ``position`` order
after the built-in ones."""

from __future__ import annotations

from sqlalchemy import Integer, String
from sqlalchemy.orm import Mapped, mapped_column

from controller.models.base import Base, created, intpk


class RegisteredBuildpack(Base):
    __tablename__ = "buildpacks"
    id: Mapped[intpk]
    name: Mapped[str] = mapped_column(String(63), unique=True)
    position: Mapped[int] = mapped_column(Integer)
    blob_path: Mapped[str] = mapped_column(String(255))
    digest: Mapped[str] = mapped_column(String(64))
    created_by: Mapped[str] = mapped_column(String(100))
    created_at: Mapped[created]
