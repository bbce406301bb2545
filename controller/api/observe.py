"""What happened and where things stand: an app's events, the platform-wide feed (admins)
and the platform's status (admins)."""

from __future__ import annotations

import json
import time
from typing import Any

import redis
from flask import current_app, g, jsonify, request
from sqlalchemy import select, text

from contracts import keys, revisions
from contracts.messages import STAGING_QUEUE, Heartbeat, agent_queue
from controller.accounts import find_team
from controller.actual import read_heartbeats
from controller.api import v1
from controller.api.apps import find_app
from controller.auth import Permission, requires
from controller.errors import InvalidInput
from controller.models import Event, iso

DEFAULT_LIMIT = 50
MAX_LIMIT = 1000
# kombu keeps messages of priority > 0 in lists named "<queue>\x06\x16<priority>".
PRIORITY_SUFFIXES = ("", "\x06\x163", "\x06\x166", "\x06\x169")


def _redis() -> Any:
    return current_app.extensions["paas.redis"]


# -- events ------------------------------------------------------------------------------
def _text(value: object) -> str:
    return "" if value is None else str(value)


def _scaled(data: dict[str, Any]) -> str:
    before, after = data.get("before") or {}, data.get("after") or {}
    parts = []
    for key, unit in (("instances", ""), ("memory_mb", " MB memory"), ("disk_mb", " MB disk")):
        if before.get(key) != after.get(key):
            parts.append(f"{before.get(key)}→{after.get(key)}{unit}")
    return f"scaled {data.get('process_type', 'web')} {', '.join(parts) or '(unchanged)'}"


def _crashed(data: dict[str, Any]) -> str:
    where = f"{data.get('process_type', 'web')} #{data.get('index', 0)}"
    code = data.get("exit_code")
    text_ = f"crashed {where}" + (f": exit {code}" if code is not None else "")
    reason = _text(data.get("reason"))
    if reason:
        text_ += f" ({reason[:120]})"
    if data.get("crash_count", 1) > 1:
        text_ += f", {data['crash_count']} in a row"
    restart = data.get("restart_in")
    if restart:
        text_ += f", restarts in {restart:.0f} s"
    return text_


def _pushed(data: dict[str, Any]) -> str:
    text_ = "created and pushed" if data.get("created") else "pushed"
    extras = [f"{data['instances']} instance(s)"] if data.get("instances") is not None else []
    if data.get("memory_mb"):
        extras.append(f"{data['memory_mb']} MB")
    if data.get("buildpack"):
        extras.append(f"buildpack {data['buildpack']}")
    if data.get("env_names"):  # names only: values may be secrets
        extras.append("env " + ", ".join(data["env_names"]))
    return text_ + (f" ({'; '.join(extras)})" if extras else "")


DESCRIBE = {
    "app.pushed": _pushed,
    "app.restaged": lambda d: "restaged" + (" without the build cache" if d.get("no_cache")
                                            else ""),
    "build.succeeded": lambda d: f"staged with {d.get('buildpack') or 'a buildpack'}: "
                                 f"release {d.get('release')}",
    "build.failed": lambda d: f"staging failed: {_text(d.get('error'))[:160]}",
    "release.deployed": lambda d: f"release {d.get('release')} deployed",
    "release.failed": lambda d: f"release {d.get('release')} failed: "
                                f"{_text(d.get('reason'))[:160]}" +
                                (f"; release {d['serving']} keeps serving"
                                 if d.get("serving") else ""),
    "app.scaled": _scaled,
    "app.crashed": _crashed,
    "app.env_changed": lambda d: f"env changed: {', '.join(d.get('names') or [])} "
                                 f"(release {d.get('release')})",
    "app.restarted": lambda d: "restarted all instances",
    "app.rebalanced": lambda d: "instances rebalanced over the agents",
    "app.stopped": lambda d: "stopped",
    "app.started": lambda d: "started",
    "app.updated": lambda d: "changed " + ", ".join(sorted(d)),
    "route.mapped": lambda d: f"route mapped: {d.get('route')}",
    "route.unmapped": lambda d: f"route unmapped: {d.get('route')}",
    "route.updated": lambda d: f"route {d.get('route')} changed: {d.get('balance')}"
                               f"{', HTTPS only' if d.get('https_redirect') else ''}",
    "domain.created": lambda d: f"{'shared' if d.get('shared') else 'private'} domain "
                                f"{d.get('domain')} added",
    "domain.deleted": lambda d: f"domain {d.get('domain')} deleted",
    "certificate.created": lambda d: f"certificate for {d.get('domain')} added",
    "certificate.replaced": lambda d: f"certificate for {d.get('domain')} replaced",
    "certificate.deleted": lambda d: f"certificate for {d.get('domain')} deleted",
    "app.rolled_back": lambda d: f"rolled back to release {d.get('to')} "
                                 f"(as release {d.get('release')})",
    "app.task_run": lambda d: f"ran task {_text(d.get('task'))[:8]} on {d.get('agent')}: "
                              f"{_text(d.get('command'))[:80]}",
    "app.instance_rescheduled": lambda d: f"{d.get('process_type')} #{d.get('index')} moved "
                                          f"from {d.get('from_agent')} to {d.get('to_agent')}: "
                                          f"{_text(d.get('reason'))}",
    "app.deleted": lambda d: "deleted",
    "buildpack.created": lambda d: f"buildpack {d.get('name')} registered",
    "buildpack.deleted": lambda d: f"buildpack {d.get('name')} removed",
}


def describe(type_: str, data: dict[str, Any]) -> str:
    """One short line for people; built from the event's data, which never holds env
    values (only names)."""
    try:
        return DESCRIBE[type_](data or {})
    except KeyError:
        return type_.partition(".")[2].replace("_", " ") or type_
    except (TypeError, ValueError, AttributeError):  # an older event of another shape
        return type_


def present_event(event: Event) -> dict[str, object]:
    return {
        "id": event.id,
        "time": iso(event.created_at),
        "app": event.app_name,
        "actor": event.actor,
        "token": event.token,
        "team": event.team.name if event.team is not None else None,
        "type": event.type,
        "description": describe(event.type, event.data),
        "data": event.data,
    }


def _page(query: Any) -> Any:
    """``limit`` (default 50), ``order`` (``desc``: newest first, the default; ``asc``) and
    ``before``/``after`` (event ids) to page on."""
    raw_limit = request.args.get("limit", str(DEFAULT_LIMIT))
    try:
        limit = int(raw_limit)
    except ValueError:
        limit = -1
    if not 1 <= limit <= MAX_LIMIT:
        raise InvalidInput(f"limit must be a whole number from 1 to {MAX_LIMIT}, "
                           f"not {raw_limit!r}.")
    order = request.args.get("order", "desc")
    if order not in ("asc", "desc"):
        raise InvalidInput(f"order must be asc or desc, not {order!r}.")
    for name, compare in (("before", Event.id.__lt__), ("after", Event.id.__gt__)):
        if request.args.get(name):
            try:
                event_id = int(request.args[name])
            except ValueError:
                event_id = -1
            if not 0 <= event_id < 2**63:
                raise InvalidInput(f"{name} must be an event id (a whole number from 0).")
            query = query.where(compare(event_id))
    query = query.order_by(Event.id.asc() if order == "asc" else Event.id.desc())
    return query.limit(limit)


@v1.get("/apps/<name>/events")
@requires(Permission.APP_READ)
def app_events(name: str):
    app = find_app(name)
    found = g.db.scalars(_page(select(Event).where(Event.app_guid == app.guid)))
    return jsonify({"events": [present_event(e) for e in found]})


@v1.get("/events")
@requires(Permission.PLATFORM_ADMIN)
def all_events():
    """Every event of the platform (admins): apps of every team, buildpacks; ``team`` keeps
    one team's."""
    query = select(Event)
    if request.args.get("team"):
        query = query.where(Event.team_id == find_team(g.db, request.args["team"]).id)
    if request.args.get("type"):
        query = query.where(Event.type == request.args["type"])
    found = g.db.scalars(_page(query))
    return jsonify({"events": [present_event(e) for e in found]})


# -- status ------------------------------------------------------------------------------
def _check(fn: Any) -> dict[str, object]:
    started = time.perf_counter()
    try:
        fn()
    except Exception as e:
        return {"ok": False, "error": f"{type(e).__name__}: {e}"}
    return {"ok": True, "latency_ms": round((time.perf_counter() - started) * 1000, 1)}


def present_agent(beat: Heartbeat, now: float, settings: Any) -> dict[str, object]:
    age = max(0.0, now - beat.sent_at)
    states: dict[str, int] = {}
    for inst in beat.instances:
        states[inst.state] = states.get(inst.state, 0) + 1
    return {
        "id": beat.agent_id,
        "address": beat.address,
        "last_beat_age": round(age, 1),
        # The key expires a TTL after the last beat; a beat older than two intervals is late.
        "healthy": age <= 2 * settings.heartbeat_interval + 1,
        "memory_mb": beat.memory_mb,
        "memory_used_mb": beat.memory_used_mb,
        "disk_mb": beat.disk_mb,
        "disk_used_mb": beat.disk_used_mb,
        "slots": beat.slots,
        "slots_used": beat.slots_used,
        "instances": len(beat.instances),
        "states": states,
        "memory_in_use_bytes": sum(i.memory_bytes or 0 for i in beat.instances),
    }


def _queue_depth(client: Any, name: str) -> int:
    try:
        return sum(int(client.llen(name + suffix)) for suffix in PRIORITY_SUFFIXES)
    except redis.ResponseError:  # a key of that name that is no queue
        return 0


def _queues(client: Any, agent_ids: list[str]) -> list[dict[str, object]]:
    names = {STAGING_QUEUE, *(agent_queue(a) for a in agent_ids)}
    # Queues of agents that stopped beating but still have work waiting for them.
    for raw in client.scan_iter(match="agent.*", count=500):
        name = raw.decode() if isinstance(raw, bytes) else raw
        if "\x06" not in name and not name.endswith((".reply.celery.pidbox", ".pidbox")):
            names.add(name)
    return [{"name": n, "depth": _queue_depth(client, n),
             "agent_alive": n[len("agent."):] in agent_ids if n.startswith("agent.") else None}
            for n in sorted(names)]


def _decoded(raw: bytes | str | None) -> str | None:
    return raw.decode() if isinstance(raw, bytes) else raw


def _router(client: Any, now: float, agent_ids: list[str]) -> dict[str, object] | None:
    raw = client.get(keys.ROUTER_STATUS)
    if not raw:
        return None
    try:
        status = json.loads(raw)
    except ValueError:
        return {"error": "the router status in Redis is not JSON"}
    if isinstance(status.get("reloaded_at"), int | float):
        status["last_reload_age"] = round(now - status["reloaded_at"], 1)
    # The revision of each agent's route table nginx serves, and the agents whose newest
    # table it does not serve yet (a change in flight, or a router that stopped following).
    applied = revisions.read_applied(client)
    status["route_table_revision"] = applied.pop(keys.APPLIED_ROUTE_TABLE, None)
    status["applied"] = applied
    status["behind"] = [a for a in agent_ids if revisions.parse_revision(
        client.hget(keys.routes(a), keys.REVISION_FIELD)) > applied.get(a, 0)]
    return status


def _health_manager(client: Any) -> dict[str, object]:
    holder = _decoded(client.get(keys.HEALTH_LOCK))
    ttl_ms = client.pttl(keys.HEALTH_LOCK) if holder else None
    return {"holder": holder, "lock_ttl": round(ttl_ms / 1000, 1) if ttl_ms and ttl_ms > 0
            else None}


@v1.get("/status")
@requires(Permission.PLATFORM_ADMIN)
def status():
    """The platform at a glance, for operators: agents, queues, Redis, database, router,
    health manager."""
    settings = current_app.config["PAAS_SETTINGS"]
    client = _redis()
    now = time.time()
    body: dict[str, Any] = {
        "time": now,
        "database": _check(lambda: g.db.execute(text("SELECT 1"))),
        "redis": _check(client.ping),
        "agents": [], "queues": [], "unacked": None, "router": None, "health_manager": None,
    }
    if body["redis"]["ok"]:
        try:
            beats = read_heartbeats(client)
            body["agents"] = [present_agent(b, now, settings) for b in beats]
            body["queues"] = _queues(client, [b.agent_id for b in beats])
            body["unacked"] = int(client.hlen("unacked"))  # delivered, not yet done
            body["router"] = _router(client, now, [b.agent_id for b in beats])
            body["health_manager"] = _health_manager(client)
        except redis.RedisError as e:
            body["redis"] = {"ok": False, "error": f"{type(e).__name__}: {e}"}
    body["ok"] = bool(body["database"]["ok"] and body["redis"]["ok"] and body["agents"]
                      and all(a["healthy"] for a in body["agents"])
                      and body["health_manager"] and body["health_manager"]["holder"]
                      and body["router"])
    return jsonify(body)
