"""Recording events: one call, one row, who and when; an app's event also goes to its
stream (:mod:`controller.appstream`) when the change commits.

An event made through the API also becomes an ``API`` line in the app's log stream
(:func:`log_line` says what it reads: names, never values).
"""

from __future__ import annotations

from typing import Any

from sqlalchemy.orm import Session

from controller import appstream
from controller.models import App, Event


def record(
    session: Session, type_: str, actor: str, app: App | None = None, *,
    team_id: int | None = None, **data: Any
) -> Event:
    event = Event(
        type=type_,
        actor=actor,
        token=_token_name(),
        app_guid=app.guid if app else None,
        app_name=app.name if app else None,
        team_id=app.team_id if app else team_id,
        data=data,
    )
    session.add(event)
    if app is not None:
        _to_app_log(app, type_, actor, data)
        appstream.queue(session, app.guid, type_, {**data, "app": app.name, "by": actor})
    return event


def _token_name() -> str | None:
    """The name of the token the request acts with (None outside an API request)."""
    from flask import g, has_request_context

    identity = g.get("identity") if has_request_context() else None
    return identity.token_name if identity is not None else None


def log_line(type_: str, actor: str, data: dict[str, Any]) -> str | None:
    """What an API event reads in the app's log stream; None for events shown otherwise
    (staging has its STG lines, the health manager its HEALTH lines)."""
    by = f" (by {actor})"
    if type_ == "app.scaled":
        after, before = data.get("after") or {}, data.get("before") or {}
        parts = [f"{after[k]} instances" if k == "instances" else f"{k} {after[k]}"
                 for k in ("instances", "memory_mb", "disk_mb")
                 if k in after and after.get(k) != before.get(k)]
        what = ", ".join(parts) or "unchanged"
        return f"scaled {data.get('process_type', '?')} to {what}{by}"
    if type_ == "app.env_changed":
        names = ", ".join(data.get("names") or []) or "nothing"
        return f"changed env {names} (release {data.get('release')}){by}"
    if type_ == "app.updated":
        return f"updated {', '.join(sorted(data)) or 'nothing'}{by}"
    if type_ == "app.rolled_back":
        return f"rolled back to release {data.get('to')} (as release {data.get('release')}){by}"
    if type_ in ("route.mapped", "route.unmapped", "route.updated"):
        return f"{type_.split('.')[1].replace('updated', 'changed')} route {data.get('route')}{by}"
    if type_ == "app.task_run":
        return f"ran task {data.get('task')} on release {data.get('release')}{by}"
    simple = {"app.pushed": "pushed", "app.restaged": "restaging", "app.restarted":
              "restarting", "app.rebalanced": "rebalancing", "app.stopped": "stopped",
              "app.started": "started"}
    if type_ in simple:
        return simple[type_] + by
    return None


def _to_app_log(app: App, type_: str, actor: str, data: dict[str, Any]) -> None:
    """Best-effort: only inside an API request (where the app's Redis client is)."""
    from flask import current_app, has_app_context

    import logpipe

    if not has_app_context() or actor in ("health", "stager"):
        return
    text = log_line(type_, actor, data)
    client = current_app.extensions.get("paas.redis")
    if text and client is not None:
        logpipe.append(client, current_app.config["PAAS_SETTINGS"], app.guid, logpipe.API,
                       text)
