"""Errors of staging. Each message is a sentence a pusher can act on.

    StagingError
     +-- NoBuildpack        nothing recognised the app
     +-- CompileFailed      the buildpack's compile step failed (exit code, last lines)
     +-- NoStartCommand     the app has no web command
     +-- StagingTimeout     staging ran longer than allowed
"""

from __future__ import annotations


class StagingError(Exception):
    # True when the message already reached the build output (a buildpack printed it).
    shown = False

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class NoBuildpack(StagingError):
    pass


class CompileFailed(StagingError):
    def __init__(self, message: str, exit_code: int, shown: bool = False) -> None:
        super().__init__(message)
        self.exit_code = exit_code
        self.shown = shown


class NoStartCommand(StagingError):
    pass


class StagingTimeout(StagingError):
    pass
