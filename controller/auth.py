"""Who is calling, and may they? The one place permissions are checked."""

from __future__ import annotations

from dataclasses import dataclass

from flask import g, request
from sqlalchemy import select
from sqlalchemy.orm import Session

from controller.errors import Forbidden, Unauthorized
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


def authorize(identity: Identity, action: str, app: App | None = None) -> None:
    """Raise Forbidden unless ``identity`` may do ``action`` (on ``app``, if given)."""
    if identity.is_admin:
        return
    if action == Action.ADMIN:
        raise Forbidden("only platform admins may do this: ask one, or use an admin token.")
    if app is not None and app.team_id != identity.team_id:
        raise Forbidden(f"you are not a member of the team that owns app {app.name!r}.")
    if identity.role != Role.DEVELOPER:
        raise Forbidden(f"your role {identity.role!r} may not {action} here.")


def current_identity() -> Identity:
    return g.identity
