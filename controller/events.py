"""Recording events: one call, one row, who and when."""

from __future__ import annotations

from typing import Any

from sqlalchemy.orm import Session

from controller.models import App, Event


def record(
    session: Session, type_: str, actor: str, app: App | None = None, **data: Any
) -> Event:
    event = Event(
        type=type_,
        actor=actor,
        app_guid=app.guid if app else None,
        app_name=app.name if app else None,
        team_id=app.team_id if app else None,
        data=data,
    )
    session.add(event)
    return event
