"""Errors of the controller. Each carries the HTTP status it maps to at the API boundary.

    ControllerError
     +-- InvalidInput      400
     +-- Unauthorized      401
     +-- Forbidden         403
     +-- NotFound          404
     +-- Conflict          409
     +-- TooLarge          413
     +-- Unavailable       503
"""

from __future__ import annotations


class ControllerError(Exception):
    status = 500

    def __init__(self, message: str, detail: object = None) -> None:
        super().__init__(message)
        self.message = message
        self.detail = detail


class InvalidInput(ControllerError):
    status = 400


class Unauthorized(ControllerError):
    status = 401


class Forbidden(ControllerError):
    status = 403


class NotFound(ControllerError):
    status = 404


class Conflict(ControllerError):
    status = 409


class TooLarge(ControllerError):
    status = 413


class Unavailable(ControllerError):
    status = 503
