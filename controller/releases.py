"""Making releases: every new droplet, env change, command change or rollback is one.

A new release becomes the app's target at once (``DEPLOYING``); the health manager rolls
instances over to it and marks it ``DEPLOYED``, or ``FAILED`` (the app goes back to the
release that served before).
"""

from __future__ import annotations

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from contracts.appevents import RELEASE_CREATED
from controller import appstream
from controller.errors import InvalidInput, NotFound
from controller.models import App, Droplet, Release, ReleaseStatus


def current(session: Session, app: App) -> Release | None:
    return session.get(Release, app.release_id) if app.release_id else None


def require_current(session: Session, app: App) -> Release:
    release = current(session, app)
    if release is None:
        raise NotFound(f"app {app.name!r} has no release yet: push it first.")
    return release


def create(session: Session, app: App, *, description: str, actor: str | None,
           droplet: Droplet | None = None, env: dict[str, str] | None = None,
           commands: dict[str, str] | None = None) -> Release:
    """A new release from the current one with the given parts replaced; the app's target."""
    previous = current(session, app)
    if droplet is None and previous is None:
        raise NotFound(f"app {app.name!r} has no release yet: push it first.")
    version = (session.scalar(select(func.max(Release.version)).where(
        Release.app_id == app.id)) or 0) + 1
    release = Release(
        app_id=app.id,
        version=version,
        droplet=droplet if droplet is not None else previous.droplet,
        env=dict(env if env is not None else (previous.env if previous else {})),
        commands=dict(commands if commands is not None else
                      (previous.commands if previous else {})),
        status=ReleaseStatus.DEPLOYING,
        description=description,
        created_by=actor,
    )
    session.add(release)
    session.flush()
    app.release_id = release.id
    appstream.queue(session, app.guid, RELEASE_CREATED, {
        "app": app.name, "by": actor, "release": version, "description": description})
    return release


def rollback_target(session: Session, app: App, version: int | None) -> Release:
    """The release to go back to: ``version``, or the last deployed one before the current."""
    if version is not None:
        release = session.scalar(select(Release).where(
            Release.app_id == app.id, Release.version == version))
        if release is None:
            raise NotFound(f"app {app.name!r} has no release {version}: "
                           f"'paas releases {app.name}' lists them.")
        return release
    now = current(session, app)
    release = session.scalar(
        select(Release).where(
            Release.app_id == app.id,
            Release.version < (now.version if now else 1 << 30),
            Release.status.in_([ReleaseStatus.DEPLOYED, ReleaseStatus.SUPERSEDED]))
        .order_by(Release.version.desc()))
    if release is None:
        raise InvalidInput(f"app {app.name!r} has no earlier release that ran: nothing to "
                           "roll back to.")
    return release
