"""Columns stored sealed with the platform key (:mod:`contracts.secretbox`), read as plain values.

The key comes with the engine: :func:`use_secret_box` puts the process's box on the engine's
dialect, where the column types find it, so no key lives in a module global and a test's
engine may have its own. An engine without one fails on the first sealed column it touches
with a sentence naming what is missing.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import JSON, Engine, Text
from sqlalchemy.engine import Dialect
from sqlalchemy.types import TypeDecorator

from contracts.secretbox import SecretBox, SecretKeyError

_ATTR = "paas_secret_box"


def use_secret_box(engine: Engine, box: SecretBox) -> Engine:
    """Give ``engine`` the box its sealed columns are sealed and opened with."""
    setattr(engine.dialect, _ATTR, box)
    return engine


def box_of(dialect: Dialect) -> SecretBox:
    box = getattr(dialect, _ATTR, None)
    if box is None:
        raise SecretKeyError(
            "this database connection was opened without the platform secret key, so sealed "
            "columns (env values, TLS keys) cannot be read or written: the process must call "
            "controller.models.sealed.use_secret_box on its engine.")
    return box


class SealedText(TypeDecorator):
    """Text sealed in a Text column."""

    impl = Text
    cache_ok = True

    def process_bind_param(self, value: str | None, dialect: Dialect) -> str | None:
        return None if value is None else box_of(dialect).seal(value)

    def process_result_value(self, value: str | None, dialect: Dialect) -> str | None:
        return None if value is None else box_of(dialect).open(value)


class SealedJSON(TypeDecorator):
    """A JSON value sealed, kept as one JSON string in a JSON column (so the column's type
    stays what it was)."""

    impl = JSON
    cache_ok = True

    def process_bind_param(self, value: Any, dialect: Dialect) -> str | None:
        return None if value is None else box_of(dialect).seal_json(value)

    def process_result_value(self, value: Any, dialect: Dialect) -> Any:
        # A row the migration did not seal fails here with a sentence (open checks the prefix).
        return None if value is None else box_of(dialect).open_json(value)
