"""Declarative base and the column types the models share."""

from __future__ import annotations

import datetime as dt
import uuid
from typing import Annotated, Any

from sqlalchemy import JSON, DateTime, MetaData, String
from sqlalchemy.orm import DeclarativeBase, mapped_column


def new_guid() -> str:
    return str(uuid.uuid4())


def utcnow() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


intpk = Annotated[int, mapped_column(primary_key=True)]
guid = Annotated[str, mapped_column(String(36), unique=True, default=new_guid)]
created = Annotated[dt.datetime, mapped_column(DateTime(timezone=True), default=utcnow)]
jsondict = Annotated[dict[str, Any], mapped_column(JSON, default=dict)]

NAMING = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING)


def aware(value: dt.datetime) -> dt.datetime:
    """``value`` with its time zone: SQLite hands back naive datetimes (in UTC)."""
    return value if value.tzinfo is not None else value.replace(tzinfo=dt.UTC)


def iso(value: dt.datetime | None) -> str | None:
    return aware(value).isoformat() if value is not None else None
