"""Who is calling, and may they? The one place permissions are checked.

Another team's app (and what hangs off it: builds, tasks, routes) is not there for the caller:
every lookup answers it with the sentence of a name that does not exist (a 404), so no answer
tells "not yours" from "not there". A 403 is kept for what exists for everyone, such as the
admin-only endpoints.
"""

from __future__ import annotations

from dataclasses import dataclass

from flask import g, request
from sqlalchemy import select
from sqlalchemy.orm import Session

from controller.errors import Forbidden, NotFound, Unauthorized
from controller.models import App, Role, Token


@dataclass(frozen=True)
class Identity:
    name: str
    role: str
    team_id: int

    @property
    def is_admin(self) -> bool:
        return self.role == Role.ADMIN


class Action:
    READ = "read"
    WRITE = "write"
    ADMIN = "administer the platform"


def identify(session: Session) -> Identity:
    header = request.headers.get("Authorization", "")
    scheme, _, secret = header.partition(" ")
    if scheme.lower() != "bearer" or not secret.strip():
        raise Unauthorized(
            "no token given: log in with 'paas login --token TOKEN' (make up prints the token)."
        )
    token = session.scalar(select(Token).where(Token.token_hash == Token.hash(secret.strip())))
    if token is None:
        raise Unauthorized("the token is not valid: log in again with 'paas login --token TOKEN'.")
    return Identity(name=token.name, role=token.role, team_id=token.team_id)


def app_missing(name: str) -> str:
    """The sentence for an app the caller cannot see: the same whether it does not exist or is
    another team's."""
    return f"there is no app named {name!r}: 'paas apps' lists yours."


def may_see(identity: Identity, app: App) -> bool:
    """True if ``app`` exists for ``identity``: its team's app, or any app for an admin."""
    return identity.is_admin or app.team_id == identity.team_id


def authorize(identity: Identity, action: str, app: App | None = None, *,
              missing: str | None = None) -> None:
    """Raise unless ``identity`` may do ``action`` (on ``app``, if given).

    Another team's app raises NotFound with ``missing`` (the sentence the caller's lookup gives
    for a thing that does not exist; the app's by default), never Forbidden.
    """
    if identity.is_admin:
        return
    if action == Action.ADMIN:
        raise Forbidden("only platform admins may do this: ask one, or use an admin token.")
    if app is not None and not may_see(identity, app):
        raise NotFound(missing or app_missing(app.name))
    if identity.role != Role.DEVELOPER:
        raise Forbidden(f"your role {identity.role!r} may not {action} here.")


def current_identity() -> Identity:
    return g.identity
