"""Running apps: scale, restart, stop, start, env, releases, rollback, rollout settings."""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

from flask import current_app, g, jsonify
from sqlalchemy import select

from contracts import options
from contracts.messages import Heartbeat
from controller import events, quotas, releases
from controller.actual import nudge, read_heartbeats
from controller.api import json_body, v1
from controller.api.apps import find_app, present_app
from controller.auth import Permission, current_identity, requires
from controller.errors import Conflict, InvalidInput, NotFound
from controller.models import App, AppState, Process, Release, iso

T = TypeVar("T")
MAX_INSTANCES = options.MAX_INSTANCES


def _redis():
    return current_app.extensions["paas.redis"]


def _whole(body: dict[str, object], key: str, low: int, high: int, what: str) -> int | None:
    value = body.get(key)
    if value is None:
        return None
    if not isinstance(value, int) or isinstance(value, bool) or not low <= value <= high:
        raise InvalidInput(f"{what} must be a whole number from {low} to {high}, not {value!r}.")
    return value


def _option(check: Callable[[object], T], value: object) -> T | None:
    """``value`` as ``check`` (a contracts.options function) takes it, None if not given; a
    bad value is a 400 with the sentence the manifest and the CLI give too."""
    if value is None:
        return None
    try:
        return check(value)
    except options.InvalidOption as e:
        raise InvalidInput(e.message) from None


def _changed(app: App, actor: str, type_: str, **data: object) -> None:
    events.record(g.db, type_, actor, app, **data)
    g.db.commit()
    nudge(_redis())


# -- scale -------------------------------------------------------------------------------
@v1.post("/apps/<name>/processes/<process_type>/scale")
@requires(Permission.APP_WRITE)
def scale(name: str, process_type: str):
    """Instances, memory and disk of one process type; a change of memory or disk rolls the
    instances over (one at a time, like a deploy)."""
    app = find_app(name)
    body = json_body()
    instances = _option(options.instances, body.get("instances"))
    memory = _option(options.memory_mb, body.get("memory_mb"))
    disk = _option(options.disk_mb, body.get("disk_mb"))
    if instances is None and memory is None and disk is None:
        raise InvalidInput("say what to scale: instances, memory or disk.")
    process = _process(app, process_type)
    new = (instances if instances is not None else process.instances,
           memory or process.memory_mb, disk or process.disk_mb)
    quotas.check(g.db, app.team, **quotas.scale_demand(app, process, new[0], new[1]))
    _check_capacity(app, process, *new)
    resized = (memory or process.memory_mb, disk or process.disk_mb) != \
        (process.memory_mb, process.disk_mb)
    before = {"instances": process.instances, "memory_mb": process.memory_mb,
              "disk_mb": process.disk_mb}
    process.instances, process.memory_mb, process.disk_mb = new
    if resized:
        app.generation += 1
    _changed(app, current_identity().name, "app.scaled", process_type=process_type,
             before=before, after={"instances": new[0], "memory_mb": new[1],
                                   "disk_mb": new[2]})
    return jsonify(present_app(app))


def _process(app: App, process_type: str) -> Process:
    for p in app.processes:
        if p.type == process_type:
            return p
    release = releases.current(g.db, app)
    known = release.process_types if release else [p.type for p in app.processes]
    if process_type in known:
        return app.process(process_type)
    raise NotFound(f"app {app.name!r} has no process type {process_type!r}: its process "
                   f"types are {', '.join(known) or 'none yet (push it first)'}.")


def _check_capacity(app: App, process: Process, instances: int, memory_mb: int,
                    disk_mb: int) -> None:
    """Refuse a scale that no agent set can hold, naming the free capacity."""
    beats = read_heartbeats(_redis())
    if not beats:
        return  # no agent reports now: the desired state waits for one
    extra_memory = instances * memory_mb - process.instances * process.memory_mb
    extra_disk = instances * disk_mb - process.instances * process.disk_mb
    free_memory = [b.memory_mb - b.memory_used_mb for b in beats]
    free_disk = [b.disk_mb - b.disk_used_mb for b in beats]
    problems = []
    if extra_memory > sum(free_memory) or (instances and memory_mb > max(
            b.memory_mb for b in beats)):
        problems.append(f"{_mb(extra_memory)} more memory, and the agents have "
                        f"{_mb(sum(free_memory))} free (at most {_mb(max(free_memory))} on "
                        f"one agent, {_mb(max(b.memory_mb for b in beats))} in all on the "
                        "largest)")
    if extra_disk > sum(free_disk) or (instances and disk_mb > max(b.disk_mb for b in beats)):
        problems.append(f"{_mb(extra_disk)} more disk, and the agents have "
                        f"{_mb(sum(free_disk))} free")
    slots = sum(b.slots - b.slots_used for b in beats)
    if instances - process.instances > slots:
        problems.append(f"{instances - process.instances} more instance slots, and the "
                        f"agents have {slots} free")
    if problems:
        raise Conflict(
            f"scaling {app.name}/{process.type} to {instances} x {_mb(memory_mb)} does not fit:"
            f" it needs {'; and '.join(problems)}. Scale down something else or add an agent.",
            detail=_capacity(beats))


def _mb(n: int) -> str:
    return f"{n / 1024:.1f} GB" if abs(n) >= 1024 else f"{n} MB"


def _capacity(beats: list[Heartbeat]) -> list[dict[str, object]]:
    return [{"agent": b.agent_id, "memory_free_mb": b.memory_mb - b.memory_used_mb,
             "disk_free_mb": b.disk_mb - b.disk_used_mb,
             "slots_free": b.slots - b.slots_used} for b in beats]


# -- lifecycle ---------------------------------------------------------------------------
@v1.post("/apps/<name>/restart")
@requires(Permission.APP_WRITE)
def restart(name: str):
    """Replace every instance with a fresh one, one at a time (started if it was stopped)."""
    app = find_app(name)
    releases.require_current(g.db, app)
    quotas.check(g.db, app.team, **quotas.start_demand(app))
    app.generation += 1
    app.state = AppState.STARTED
    _changed(app, current_identity().name, "app.restarted", generation=app.generation)
    return jsonify(present_app(app))


@v1.post("/apps/<name>/rebalance")
@requires(Permission.APP_WRITE)
def rebalance(name: str):
    """Even the app's spread over the agents: when one agent holds more than one instance
    above another's share, replace the instances one at a time (new ones are placed on the
    agents with the fewest of the app's instances)."""
    app = find_app(name)
    releases.require_current(g.db, app)
    beats = read_heartbeats(_redis())
    per_agent = {b.agent_id: 0 for b in beats}
    for beat in beats:
        for inst in beat.instances:
            if inst.app_guid == app.guid and inst.state == "RUNNING":
                per_agent[beat.agent_id] += 1
    uneven = bool(per_agent) and max(per_agent.values()) - min(per_agent.values()) > 1
    if uneven:
        app.generation += 1
        _changed(app, current_identity().name, "app.rebalanced", before=per_agent)
    body = present_app(app)
    body["rebalancing"] = uneven
    body["spread"] = per_agent
    return jsonify(body)


@v1.post("/apps/<name>/stop")
@requires(Permission.APP_WRITE)
def stop(name: str):
    app = find_app(name)
    app.state = AppState.STOPPED
    _changed(app, current_identity().name, "app.stopped")
    return jsonify(present_app(app))


@v1.post("/apps/<name>/start")
@requires(Permission.APP_WRITE)
def start(name: str):
    app = find_app(name)
    releases.require_current(g.db, app)
    quotas.check(g.db, app.team, **quotas.start_demand(app))
    app.state = AppState.STARTED
    _changed(app, current_identity().name, "app.started")
    return jsonify(present_app(app))


# -- settings ----------------------------------------------------------------------------
CRASH_KEYS = {"immediate_restarts": (0, 100), "backoff_base": (0, 86400),
              "backoff_max": (0, 7 * 86400), "reset_after": (1, 86400)}


@v1.patch("/apps/<name>")
@requires(Permission.APP_WRITE)
def update_app(name: str):
    """Rollout width, crash policy and the health check of a process type."""
    app = find_app(name)
    body = json_body()
    changes: dict[str, object] = {}
    width = _whole(body, "max_in_flight", 1, MAX_INSTANCES, "max_in_flight")
    if width is not None:
        app.max_in_flight = changes["max_in_flight"] = width
    if body.get("crash_policy") is not None:
        policy = body["crash_policy"]
        if not isinstance(policy, dict) or not set(policy) <= set(CRASH_KEYS):
            raise InvalidInput(f"crash_policy takes {', '.join(CRASH_KEYS)}.")
        for key, value in policy.items():
            low, high = CRASH_KEYS[key]
            if not isinstance(value, int | float) or isinstance(value, bool) or \
                    not low <= value <= high:
                raise InvalidInput(f"crash_policy.{key} must be from {low} to {high}.")
        app.crash_policy = changes["crash_policy"] = {**(app.crash_policy or {}), **policy}
    if body.get("health_check") is not None:
        changes["health_check"] = _set_health_check(app, body["health_check"])
        app.generation += 1  # instances carry their check: roll them
    if not changes:
        raise InvalidInput("nothing to change: give max_in_flight, crash_policy or "
                           "health_check.")
    _changed(app, current_identity().name, "app.updated", **changes)
    return jsonify(present_app(app))


def _set_health_check(app: App, spec: object) -> dict[str, object]:
    if not isinstance(spec, dict):
        raise InvalidInput("health_check must be an object.")
    process = _process(app, str(spec.get("process_type") or "web"))
    kind = _option(options.health_check_type, spec.get("type")) or process.health_check_type
    endpoint = _option(options.health_check_endpoint, spec.get("endpoint")) or \
        process.health_check_endpoint
    timeout = _option(options.start_timeout, spec.get("timeout"))
    interval = _option(options.health_check_interval, spec.get("interval"))
    probe_timeout = _option(options.health_check_probe_timeout, spec.get("probe_timeout"))
    process.health_check_type, process.health_check_endpoint = kind, endpoint
    if timeout is not None:
        process.start_timeout = timeout
    if interval is not None:
        process.health_check_interval = interval
    if probe_timeout is not None:
        process.health_check_probe_timeout = probe_timeout
    return {"process_type": process.type, "type": kind, "endpoint": endpoint,
            "timeout": process.start_timeout, "interval": process.health_check_interval,
            "probe_timeout": process.health_check_probe_timeout}


# -- env ---------------------------------------------------------------------------------
@v1.get("/apps/<name>/env")
@requires(Permission.APP_ENV)
def show_env(name: str):
    app = find_app(name)
    release = releases.current(g.db, app)
    return jsonify({"env": dict(sorted((release.env if release else {}).items()))})


@v1.patch("/apps/<name>/env")
@requires(Permission.APP_WRITE)
def change_env(name: str):
    """Set and unset variables: a new release, rolled out like a deploy."""
    app = find_app(name)
    body = json_body()
    to_set, to_unset = body.get("set") or {}, body.get("unset") or []
    if not isinstance(to_set, dict) or not isinstance(to_unset, list) or \
            not all(isinstance(k, str) for k in to_unset):
        raise InvalidInput("give 'set' as an object and 'unset' as a list of names.")
    _option(options.env, to_set)
    current = releases.require_current(g.db, app)
    missing = [k for k in to_unset if k not in current.env]
    if missing:
        raise NotFound(f"app {name!r} has no variable {', '.join(map(str, missing))}: "
                       f"'paas env {name}' lists them.")
    env = {k: v for k, v in {**current.env, **to_set}.items() if k not in to_unset}
    if env == current.env:
        return jsonify({"release": present_release(app, current), "changed": False})
    names = sorted([*to_set, *to_unset])
    release = releases.create(
        g.db, app, env=env, actor=current_identity().name,
        description=("set " + ", ".join(sorted(to_set)) if to_set else "") +
                    ("; " if to_set and to_unset else "") +
                    ("unset " + ", ".join(sorted(to_unset)) if to_unset else ""))
    _changed(app, current_identity().name, "app.env_changed", names=names,
             release=release.version)  # names only: values may be secrets
    return jsonify({"release": present_release(app, release), "changed": True})


# -- releases and rollback ---------------------------------------------------------------
def present_release(app: App, release: Release) -> dict[str, object]:
    return {
        "version": release.version,
        "status": release.status,
        "error": release.error,
        "current": app.release_id == release.id,
        "description": release.description,
        "created_by": release.created_by,
        "buildpack": release.droplet.buildpack,
        "droplet": release.droplet.digest[:12],
        "env_names": sorted(release.env),
        "commands": release.commands,
        "created_at": iso(release.created_at),
    }


@v1.get("/apps/<name>/releases")
@requires(Permission.APP_READ)
def list_releases(name: str):
    app = find_app(name)
    found = g.db.scalars(select(Release).where(Release.app_id == app.id)
                         .order_by(Release.version.desc()))
    return jsonify({"releases": [present_release(app, r) for r in found]})


@v1.post("/apps/<name>/rollback")
@requires(Permission.APP_WRITE)
def rollback(name: str):
    """A new release with the droplet, env and commands of an earlier one."""
    app = find_app(name)
    version = _whole(json_body(), "version", 1, 1 << 30, "the release version")
    earlier = releases.rollback_target(g.db, app, version)
    if not earlier.droplet.image:  # controller.gc marks the droplets it removed so
        raise Conflict(f"release {earlier.version}'s droplet was removed by garbage collection "
                       "(only the last releases keep theirs): roll back to a later one "
                       f"('paas releases {app.name}'), or push that code again.")
    quotas.check(g.db, app.team, **quotas.start_demand(app))  # a rollback starts the app
    release = releases.create(
        g.db, app, droplet=earlier.droplet, env=dict(earlier.env),
        commands=dict(earlier.commands), actor=current_identity().name,
        description=f"rollback to release {earlier.version}")
    app.state = AppState.STARTED
    _changed(app, current_identity().name, "app.rolled_back", to=earlier.version,
             release=release.version)
    return jsonify({"release": present_release(app, release)}), 201
