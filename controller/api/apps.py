"""Apps: list, show, push, delete."""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Mapping

import redis
from flask import current_app, g, jsonify, request
from sqlalchemy import func, select
from sqlalchemy.orm import object_session, selectinload

from contracts import blobstore, keys, revisions
from contracts.appevents import BUILD_STARTED
from contracts.messages import InstanceReport, InstanceState
from contracts.options import InvalidOption, PushOptions
from contracts.settings import Settings
from controller import appstream, events, packages, quotas, resources, routing, staging
from controller.actual import instances_by_app, nudge, read_heartbeats
from controller.api import json_body, v1
from controller.api.buildpacks import store_buildpack
from controller.auth import (
    Permission,
    app_missing,
    authorize,
    authorize_app,
    current_identity,
    may_see,
    requires,
)
from controller.convergence import is_ready
from controller.errors import InvalidInput, NotFound, TooLarge
from controller.models import (
    App,
    AppState,
    Build,
    BuildState,
    Domain,
    Droplet,
    Package,
    Release,
    Route,
    Team,
    iso,
    validate_name,
)


def _settings():
    return current_app.config["PAAS_SETTINGS"]


def _redis():
    return current_app.extensions["paas.redis"]


def urls(app: App) -> list[str]:
    """Where the app answers: each route as a URL (https where the router serves it so)."""
    s = _settings()
    out = []
    for route in app.routes:
        if route.domain.certificate is not None and s.router_https_port and \
                route.https_redirect:
            port = "" if s.router_https_port == 443 else f":{s.router_https_port}"
            scheme = "https"
        else:
            port = "" if s.router_port == 80 else f":{s.router_port}"
            scheme = "http"
        out.append(f"{scheme}://{route.host}{port}{route.path}")
    return out


def find_app(name: str, permission: str | None = None) -> App:
    """The app ``name`` (see :func:`lookup_app`) if the caller may do the view's permission (or
    ``permission``) on it; another team's app is a 404 with the words of one that does not
    exist (see :func:`controller.auth.authorize`)."""
    app = lookup_app(name)
    if app is None:
        raise NotFound(app_missing(name))
    authorize_app(current_identity(), app, permission)
    return app


def lookup_app(name: str) -> App | None:
    """The app called ``name`` the request means: the named team's (X-Paas-Team), else the one
    of that name in the caller's teams (a 400 if there are several).

    A request that changes something answers with ``stream_id``, the app's event stream as
    it was before the change: following it from there shows the change's own events."""
    app = _lookup_app(name)
    if request.method not in ("GET", "HEAD") and "stream_from" not in g:
        g.stream_from = appstream.position(_redis(), app.guid) if app is not None else "0"
    return app


def _lookup_app(name: str) -> App | None:
    ident = current_identity()
    if ident.team_named:
        return g.db.scalar(select(App).where(App.name == name, App.team_id == ident.team_id))
    found = [a for a in g.db.scalars(select(App).where(App.name == name)) if may_see(ident, a)]
    if len(found) > 1:
        own = [a for a in found if a.team_id == ident.team_id]
        if len(own) == 1:
            return own[0]
        teams = ", ".join(sorted(a.team.name for a in found))
        raise InvalidInput(f"there are apps named {name!r} in teams {teams}: pick the team "
                           "with 'paas target --team TEAM'.")
    return found[0] if found else None


def present_instance(inst: InstanceReport,
                     applied: Mapping[str, int] | None = None) -> dict[str, object]:
    return {
        "index": inst.index,
        "process_type": inst.process_type,
        "state": inst.state,
        "since": inst.since,
        "release": inst.release,
        "generation": inst.generation,
        "ready": inst.ready,
        "agent": inst.agent_id,
        "reason": inst.reason,
        "exit_code": inst.exit_code,
        # nginx serves a route table of its agent that includes it (contracts.revisions).
        "routed": is_ready(inst, applied or {}) and inst.process_type == "web",
        # Resource use as the agent last sampled it (None until it has).
        "started_at": inst.started_at or None,
        "cpu_percent": inst.cpu_percent,
        "memory_bytes": inst.memory_bytes,
        "memory_limit_bytes": inst.memory_limit_bytes,
        "disk_bytes": inst.disk_bytes,
    }


def index_records(app: App, key: str) -> dict[tuple[str, int], dict[str, object]]:
    """The health manager's crash records (or unplaced instances) of this app:
    (process type, index) -> record."""
    cache = g.setdefault("paas_hashes", {})
    if key not in cache:  # one read per request, however many apps it shows
        try:
            cache[key] = _redis().hgetall(key)
        except redis.RedisError:
            cache[key] = {}
    raw = cache[key]
    found = {}
    for name, value in raw.items():
        name = name.decode() if isinstance(name, bytes) else name
        guid, _, rest = name.partition("/")
        if guid != app.guid:
            continue
        type_, _, index = rest.rpartition("/")
        try:
            found[(type_, int(index))] = json.loads(value)
        except ValueError:
            continue
    return found


def _waiting_indices(app: App, instances: list[InstanceReport],
                     ) -> list[dict[str, object]]:
    """Indices with no instance: crashed and waiting for their restart, or placed nowhere
    because no agent has room."""
    live = {(i.process_type, i.index) for i in instances}
    # A crashed instance the agent is still taking away shows as crashed, not as stopping.
    stopping = {i.instance_guid for i in instances if i.state == InstanceState.STOPPING}
    desired = {p.type: p.instances for p in app.processes}
    rows = []
    now = time.time()
    for (type_, index), record in sorted(index_records(app, keys.CRASHES).items()):
        if index >= desired.get(type_, 0) or (
                (type_, index) in live and record.get("instance_guid") not in stopping):
            continue
        rows.append({
            "index": index, "process_type": type_, "state": "CRASHED",
            "since": record.get("last_at"), "release": None, "generation": None,
            "ready": False, "agent": None, "reason": record.get("reason"),
            "exit_code": record.get("exit_code"), "routed": False,
            "crash_count": record.get("count"),
            "restart_in": max(0.0, round(record.get("restart_at", now) - now, 1)),
        })
        live.add((type_, index))
    for (type_, index), need in sorted(index_records(app, keys.UNPLACED).items()):
        if (type_, index) in live:
            continue
        rows.append({
            "index": index, "process_type": type_, "state": "PENDING", "since": None,
            "release": None, "generation": None, "ready": False, "agent": None,
            "reason": f"no agent has room for {need.get('memory_mb')} MB memory and "
                      f"{need.get('disk_mb')} MB disk: scale something down or add an agent",
            "exit_code": None, "routed": False})
    return rows


def router_applied() -> dict[str, int]:
    """What the router serves: agent id -> revision of its route table ({} without Redis)."""
    try:
        return revisions.read_applied(_redis())
    except redis.RedisError:
        return {}


def present_app(app: App, instances: list[InstanceReport] | None = None,
                latest: Release | None = None,
                release: Release | None = None) -> dict[str, object]:
    """The app as the API shows it; ``latest`` (its newest release) and ``release`` (its
    current one), when the caller has them."""
    if release is None and app.release_id:
        release = g.db.get(Release, app.release_id)
    web = next((p for p in app.processes if p.type == "web"), None)
    body: dict[str, object] = {
        "guid": app.guid,
        "name": app.name,
        "team": app.team.name,
        "state": app.state,
        "urls": urls(app),
        "routes": [route.url for route in app.routes],
        "created_at": iso(app.created_at),
        "generation": app.generation,
        "max_in_flight": app.max_in_flight,
        "crash_policy": app.crash_policy,
        "processes": [
            {"type": p.type, "instances": p.instances, "memory_mb": p.memory_mb,
             "disk_mb": p.disk_mb, "command": release.command(p.type) if release else None,
             "health_check": {"type": p.health_check_type,
                              "endpoint": p.health_check_endpoint,
                              "timeout": p.start_timeout,
                              "interval": p.health_check_interval,
                              "probe_timeout": p.health_check_probe_timeout}}
            for p in app.processes
        ],
        "instances_desired": web.instances if web else 0,
        "release": None,
    }
    if release is not None:
        body["release"] = {
            "version": release.version,
            "status": release.status,
            "error": release.error,
            "buildpack": release.droplet.buildpack,
            "process_types": release.droplet.process_types,
            "created_at": iso(release.created_at),
        }
    if latest is None:
        latest = g.db.scalar(select(Release).where(Release.app_id == app.id)
                             .order_by(Release.version.desc()))
    if latest is not None and latest.status == "FAILED":
        body["failed_release"] = {"version": latest.version, "error": latest.error}
    if instances is not None:
        applied = router_applied() if instances else {}
        body["instances"] = [present_instance(i, applied) for i in instances] + \
            _waiting_indices(app, instances)
        running = [i for i in instances if i.state == "RUNNING" and i.process_type == "web"
                   and release is not None and i.release == release.version]
        body["instances_running"] = len(running)
    return body


@v1.get("/apps")
@requires(Permission.SELF)
def list_apps():
    ident = current_identity()
    # What present_app reads of each app, in a few queries for all of them (not several
    # per app): its team, processes, routes with their domains, current and latest release.
    query = select(App).order_by(App.name).options(
        selectinload(App.team), selectinload(App.processes),
        selectinload(App.routes).selectinload(Route.domain).selectinload(Domain.certificate))
    if ident.team_named:
        query = query.where(App.team_id == ident.team_id)
    elif not ident.is_admin:
        query = query.where(App.team_id.in_(list(ident.roles)))
    apps = list(g.db.scalars(query))
    listed = [a.id for a in apps]
    newest = (select(Release.app_id, func.max(Release.version).label("version"))
              .where(Release.app_id.in_(listed)).group_by(Release.app_id).subquery())
    latest = {r.app_id: r for r in g.db.scalars(
        select(Release).join(newest, (Release.app_id == newest.c.app_id)
                             & (Release.version == newest.c.version)))}
    wanted = [a.release_id for a in apps if a.release_id]
    current = {r.id: r for r in g.db.scalars(
        select(Release).where(Release.id.in_(wanted)).options(selectinload(Release.droplet)))}
    grouped = instances_by_app(read_heartbeats(_redis()))
    return jsonify({"apps": [
        present_app(a, grouped.get(a.guid, []), latest.get(a.id), current.get(a.release_id))
        for a in apps]})


@v1.get("/apps/<name>")
@requires(Permission.APP_READ)
def show_app(name: str):
    app = find_app(name)
    grouped = instances_by_app(read_heartbeats(_redis()))
    return jsonify(present_app(app, grouped.get(app.guid, [])))


def _push_options() -> PushOptions:
    raw = request.form.get("options") or "{}"
    try:
        options = json.loads(raw)
    except ValueError as e:
        raise InvalidInput(f"the push options are not valid JSON: {e}.") from e
    if not isinstance(options, dict):
        raise InvalidInput("the push options must be a JSON object.")
    return _check_options(options)


def _check_options(options: dict[str, object]) -> PushOptions:
    """The push options as contracts.options checks them (the manifest and the CLI do the
    same): a bad one is a 400 with the sentence they give."""
    try:
        return PushOptions.from_json(options)
    except InvalidOption as e:
        raise InvalidInput(e.message) from None


def _build_started(app: App, build: Build) -> None:
    """Tell the app's stream that a build begins (once the request commits)."""
    appstream.queue(g.db, app.guid, BUILD_STARTED, {
        "app": app.name, "by": current_identity().name, "build": build.guid})


@v1.post("/apps/<name>/restage")
@requires(Permission.APP_WRITE)
def restage(name: str):
    """Stage the app's last package again (optionally without its build cache)."""
    app = find_app(name)
    body = json_body()
    package = g.db.scalar(select(Package).where(Package.app_id == app.id)
                          .order_by(Package.id.desc()))
    if package is None:
        raise NotFound(f"app {name!r} has no package to restage: push it first.")
    last = g.db.scalar(select(Build).where(Build.app_id == app.id).order_by(Build.id.desc()))
    given = last.options if last else PushOptions()  # the last push's buildpack stays
    requested = PushOptions(buildpack=given.buildpack, buildpack_blob=given.buildpack_blob,
                            no_cache=bool(body.get("no_cache")))
    build = Build(app=app, package=package, requested=requested.to_json(),
                  actor=current_identity().name)
    g.db.add(build)
    g.db.flush()
    events.record(g.db, "app.restaged", current_identity().name, app, build=build.guid,
                  no_cache=requested.no_cache)
    _build_started(app, build)
    g.db.commit()
    try:
        staging.enqueue(current_app.extensions["paas.celery"], g.db, app, build, package,
                        current_app.config["PAAS_SETTINGS"])
    except Exception:
        staging.settle_failed_enqueue(g.db, current_app.extensions["paas.blobstore"], build)
        raise
    return jsonify({"app": present_app(app), "build": present_build(build)}), 201


@v1.post("/apps/<name>/resource_match")
@requires(Permission.APP_WRITE)
def resource_match(name: str):
    """Which of these files (by sha1 and size) the app's team has cached already."""
    validate_name(name)
    ident = current_identity()
    app = _lookup_app(name)  # a question, not a change: no stream_id in the answer
    if app is not None:
        authorize_app(ident, app)
    else:  # a new app's: who may push it to the request's team
        authorize(ident, Permission.APP_WRITE, g.db.get(Team, ident.request_team()),
                  missing=app_missing(name))
    body = json_body()
    team_id = app.team_id if app is not None else ident.request_team()
    found = resources.match(current_app.extensions["paas.blobstore"], team_id,
                            body.get("resources"))
    return jsonify({"resources": found})


@v1.post("/apps/<name>/push")
@requires(Permission.APP_WRITE)
def push(name: str):
    """Upload a package and stage it; the response names the build to follow."""
    validate_name(name)
    ident = current_identity()
    upload = request.files.get("package")
    if upload is None:
        raise InvalidInput("the push carries no package: push with the paas CLI.")
    requested = _push_options()

    app = lookup_app(name)
    created = app is None
    settings = _settings()
    if app is None:
        team = g.db.get(Team, ident.request_team())
        authorize(ident, Permission.APP_WRITE, team, missing=app_missing(name))
        quotas.check(g.db, team, apps=1)
        app = App(name=name, team=team, state=AppState.STARTED)
        g.db.add(app)
    else:
        authorize_app(ident, app)
    quotas.check(g.db, app.team, **quotas.push_demand(app, requested.to_json(),
                                                     quotas.NEW_PROCESS_MEMORY_MB))
    blobs = current_app.extensions["paas.blobstore"]
    package = Package(guid=str(uuid.uuid4()))
    package.blob_path = blobstore.package(package.guid)
    uploaded = blobstore.upload(package.guid)
    try:
        blobs.put_stream(uploaded, upload.stream, limit=settings.max_upload_bytes)
    except OverflowError as e:
        raise TooLarge(
            f"the package is larger than {settings.max_upload_bytes // (1024 * 1024)} MiB: "
            "add what need not be deployed to .paasignore.") from e
    try:
        matched = resources.parse_matched(request.form.get("resources"))
        team_id = app.team.id
        # One pass judges the upload and the cached files it names, as the stager will
        # unpack them, before anything is kept; the package assembled from both is not read
        # again here.
        packages.check_archive(blobs.path(uploaded), extra=(
            (item["path"], item["mode"], resources.cached_size(blobs, team_id, item["sha1"]))
            for item in matched))
        if request.files.get("buildpack") is not None:
            blob, _ = store_buildpack(request.files["buildpack"])
            requested = requested.replace(buildpack_blob=blob)
        package.digest, package.size = resources.assemble(
            blobs, team_id, blobs.path(uploaded), matched, package.blob_path)
        g.db.flush()
        package.app_id = app.id
        stored = requested.to_json()
        build = Build(app=app, package=package, requested=stored, actor=ident.name)
        g.db.add_all([package, build])
        g.db.flush()
        shown = {k: v for k, v in stored.items() if k not in ("command", "env")}
        if shown.get("processes"):  # commands may hold secrets: readers see no command
            shown["processes"] = [{k: v for k, v in p.items() if k != "command"}
                                  for p in shown["processes"]]
        events.record(g.db, "app.pushed", ident.name, app, build=build.guid, created=created,
                      **shown, env_names=sorted(requested.env))
        _build_started(app, build)
        routes_changed = _push_routes(app, created, requested, settings)
        g.db.commit()
    except BaseException:
        g.db.rollback()
        blobs.delete(package.blob_path)
        raise
    finally:
        blobs.delete(uploaded)
    if routes_changed:
        routing.publish(_redis(), g.db)
    try:
        staging.enqueue(current_app.extensions["paas.celery"], g.db, app, build, package,
                        current_app.config["PAAS_SETTINGS"])
    except Exception:
        staging.settle_failed_enqueue(g.db, blobs, build)
        raise
    return jsonify({"app": present_app(app), "build": present_build(build)}), 201


def _push_routes(app: App, created: bool, requested: PushOptions, settings: Settings) -> bool:
    """Routes a push asks for, checked (and conflicts refused) before anything is stored:
    the manifest's ``routes`` are mapped (added, as in Cloud Foundry); ``no_route`` unmaps
    every route; a new app without either gets ``<name>.<platform domain>``."""
    ident = current_identity().acting_for(app.team.id)
    if requested.no_route:  # (with routes too: refused by PushOptions)
        changed = bool(app.routes)
        for route in list(app.routes):
            events.record(g.db, "route.unmapped", ident.name, app, route=route.url)
            g.db.delete(route)
        app.routes.clear()
        return changed
    changed = False
    wanted = requested.routes or []
    if not wanted and created:
        g.db.flush()
        route = routing.default_route(g.db, ident, app, settings.domain)
        events.record(g.db, "route.mapped", ident.name, app, route=route.url)
        return True
    for url in wanted:
        domain, hostname, path = routing.split_url(g.db, str(url), ident)
        g.db.flush()
        route, new = routing.map_route(g.db, ident, app, domain, hostname, path)
        if new:
            events.record(g.db, "route.mapped", ident.name, app, route=route.url)
            changed = True
    return changed


def present_build(build: Build) -> dict[str, object]:
    body: dict[str, object] = {
        "guid": build.guid,
        "state": build.state,
        "error": build.error,
        "buildpack": build.buildpack,
        "created_at": iso(build.created_at),
        "finished_at": iso(build.finished_at),
    }
    if build.state == BuildState.SUCCEEDED:  # the release its droplet became
        release = object_session(build).scalar(
            select(Release).join(Droplet).where(Droplet.build_id == build.id))
        body["release"] = release.version if release else None
    return body


@v1.delete("/apps/<name>")
@requires(Permission.APP_WRITE)
def delete_app(name: str):
    app = find_app(name)
    events.record(g.db, "app.deleted", current_identity().name, app)
    had_routes = bool(app.routes)
    staging.remove_app(g.db, current_app.extensions["paas.blobstore"], app)
    g.db.commit()
    if had_routes:
        routing.publish(_redis(), g.db)
    try:  # its log stream goes too, once its stopping instances had their last word
        _redis().expire(keys.app_log(app.guid), 600)
    except redis.RedisError:
        pass
    nudge(_redis())
    return jsonify({"deleted": name})


@v1.get("/apps/<name>/releases/<int:version>")
@requires(Permission.APP_READ)
def show_release(name: str, version: int):
    app = find_app(name)
    release = g.db.scalar(select(Release).where(Release.app_id == app.id,
                                                Release.version == version)) \
        if version < 2**31 else None  # past the column's range (the database would fail)
    if release is None:
        raise NotFound(f"app {name!r} has no release {version}.")
    return jsonify({
        "version": release.version,
        "status": release.status,
        "error": release.error,
        "current": app.release_id == release.id,
        "created_at": iso(release.created_at),
    })
