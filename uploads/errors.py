"""The one error of this package."""

from __future__ import annotations


class UploadRefused(Exception):
    """An upload that breaks a rule; ``message`` names the entry and says what to do."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message
