"""From an uploaded package to a release: start a build, and settle it when staging ends."""

from __future__ import annotations

import dataclasses
import json
import logging

import redis
from celery import Celery
from sqlalchemy import func, select, update
from sqlalchemy.orm import Session

from contracts import keys
from contracts.appevents import APP_DELETED
from contracts.messages import STAGE_TASK, STAGING_QUEUE, StageRequest, StageResult, dump
from contracts.options import ProcessOptions
from contracts.settings import Settings
from controller import appstream, events, quotas, releases
from controller.blobstore import Blobstore
from controller.errors import Unavailable
from controller.models import (
    App,
    Build,
    BuildState,
    Droplet,
    Package,
    Process,
    RegisteredBuildpack,
    Release,
)
from controller.models.base import aware, utcnow

log = logging.getLogger("paas.controller")


def enqueue(celery: Celery, session: Session, app: App, build: Build,
            package: Package, settings: Settings) -> None:
    options = build.options
    if options.command_given:  # given with this push (None: back to the Procfile)
        command = options.command
    else:  # as the app was last pushed
        release = releases.current(session, app)
        command = release.commands.get("web") if release else None
    request = StageRequest(
        build_guid=build.guid,
        app_guid=app.guid,
        app_name=app.name,
        package_path=package.blob_path,
        command=command,
        buildpack=options.buildpack,
        no_cache=options.no_cache,
        buildpack_blob=options.buildpack_blob,
        custom_buildpacks=[{"name": b.name, "blob": b.blob_path} for b in session.scalars(
            select(RegisteredBuildpack).order_by(RegisteredBuildpack.position))],
        runtime=settings.runtime_for(app.team.name, app.name),  # untrusted code builds too
    )
    try:
        celery.send_task(STAGE_TASK, args=[dump(request)], queue=STAGING_QUEUE)
    except Exception as e:  # kombu raises many kinds when Redis is down
        raise Unavailable(
            "the staging queue (Redis) is not reachable, so nothing was staged: "
            "check that redis-server runs, then push again."
        ) from e


def settle(session: Session, client: redis.Redis, settings: Settings, build: Build) -> bool:
    """Finish ``build`` if staging has ended; idempotent, safe to call from many processes.

    Returns True when this call moved the build out of STAGING.
    """
    if build.state != BuildState.STAGING:
        return False
    raw = client.get(keys.build_result(build.guid))
    if raw is not None:
        result = StageResult(**json.loads(raw))
    elif age(build) > settings.staging_timeout + 60:
        result = StageResult(
            ok=False,
            error=f"staging did not finish within {settings.staging_timeout:.0f} s: "
            "check that paas-stager runs, then push again.",
        )
    else:
        return False
    return finish(session, Blobstore(settings.blobstore_dir), build, result)


def settle_failed_enqueue(session: Session, blobs: Blobstore, build: Build) -> None:
    finish(session, blobs, build,
           StageResult(ok=False, error="the staging queue was not reachable"))


def finish(session: Session, blobs: Blobstore, build: Build, result: StageResult) -> bool:
    """Record ``result`` on ``build`` unless another process already did. A build whose
    scale (the push's instances and memory) would take its team over a quota now fails: the
    push was checked when it came, but other pushes and scales may have come since."""
    if result.ok:
        try:
            quotas.check(session, build.app.team, **quotas.push_demand(
                build.app, build.requested, quotas.NEW_PROCESS_MEMORY_MB))
        except quotas.QuotaExceeded as e:
            result = dataclasses.replace(result, ok=False,
                                         error=f"the build was not released: {e.message}")
    claimed = session.execute(
        update(Build)
        .where(Build.id == build.id, Build.state == BuildState.STAGING)
        .values(
            state=BuildState.SUCCEEDED if result.ok else BuildState.FAILED,
            error=result.error,
            buildpack=result.buildpack,
            finished_at=utcnow(),
        )
        .execution_options(synchronize_session=False)
    )
    if claimed.rowcount != 1:
        session.rollback()
        return False
    session.refresh(build)
    app = build.app
    if result.ok:
        release = _release(session, app, build, result)
        events.record(
            session, "build.succeeded", "stager", app,
            build=build.guid, buildpack=result.buildpack, release=release.version,
        )
    else:
        events.record(session, "build.failed", "stager", app, build=build.guid,
                      error=result.error)
        if _never_released(session, app) and not _other_builds_running(session, app, build):
            # A first push that failed leaves nothing behind: no app without a release.
            log.info("removing app %s: its first build failed", app.name)
            remove_app(session, blobs, app)
    session.commit()
    return True


def remove_app(session: Session, blobs: Blobstore, app: App) -> None:
    """Delete ``app`` with its packages' blobs (droplets are shared by digest and stay)."""
    paths = [p.blob_path for p in session.scalars(select(Package).where(
        Package.app_id == app.id))]
    appstream.queue(session, app.guid, APP_DELETED, {
        "app": app.name, "by": "health", "reason": "its first build failed"})
    session.delete(app)
    for path in paths:
        blobs.delete(path)


def _release(session: Session, app: App, build: Build, result: StageResult) -> Release:
    droplet = Droplet(
        app_id=app.id,
        build_id=build.id,
        digest=result.droplet_digest or "",
        blob_path=result.droplet_path or "",
        image=result.image or "",
        size=result.droplet_size,
        buildpack=result.buildpack,
        process_types=result.process_types,
    )
    session.add(droplet)
    previous = releases.current(session, app)
    requested = build.options
    env = {**(previous.env if previous else {}), **requested.env}
    commands = dict(previous.commands) if previous else {}
    for given in [requested, *requested.processes]:
        if given.command_given:  # given with this push (None: back to the Procfile)
            commands.pop(given.type, None)
            if given.command:
                commands[given.type] = given.command
    _apply_requested(app.process("web"), requested)
    for type_ in {*result.process_types, *commands}:  # other types exist, scaled to 0
        app.process(type_)
    for given in requested.processes:
        _apply_requested(app.process(given.type), given)
    return releases.create(
        session, app, droplet=droplet, env=env, commands=commands,
        description=f"deploy of build {build.guid[:8]} ({result.buildpack or 'no buildpack'})",
        actor=build.actor)


def _apply_requested(process: Process, given: ProcessOptions) -> None:
    """Scale and health check given with a push, for one process type (checked by
    contracts.options when the push came; None: the process keeps what it has)."""
    if given.instances is not None:
        process.instances = given.instances
    elif process.instances == 0 and process.id is None and process.type == "web":
        process.instances = 1
    for option, column in (("memory_mb", "memory_mb"), ("disk_mb", "disk_mb"),
                           ("health_check_type", "health_check_type"),
                           ("health_check_endpoint", "health_check_endpoint"),
                           ("timeout", "start_timeout"),
                           ("health_check_interval", "health_check_interval"),
                           ("health_check_probe_timeout", "health_check_probe_timeout")):
        value = getattr(given, option)
        if value is not None:
            setattr(process, column, value)


def _never_released(session: Session, app: App) -> bool:
    return session.scalar(select(func.count(Release.id)).where(Release.app_id == app.id)) == 0


def _other_builds_running(session: Session, app: App, build: Build) -> bool:
    return bool(session.scalar(select(func.count(Build.id)).where(
        Build.app_id == app.id, Build.id != build.id, Build.state == BuildState.STAGING)))


def age(build: Build) -> float:
    return (utcnow() - aware(build.created_at)).total_seconds()
