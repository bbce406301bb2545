"""Team quotas: what a team's apps use, and the check before a change would use more.

What counts (as in Cloud Foundry, memory is what started apps' instances reserve):
- ``apps``: the team's apps; ``routes``: its routes;
- ``memory_mb`` and ``instances``: instances x memory, and instances, over the processes of
  its started apps;
- ``tasks``: one-off tasks running now (a sorted set per team in Redis of task guid -> the
  time it is given up on; a task whose log has its last line no longer counts);
- ``services``: none yet (the platform has no backing services); the quota is kept for them.

A change over a quota is refused with the numbers: used, asked, allowed.
"""

from __future__ import annotations

import time
from typing import Any

import redis
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from contracts import keys
from controller.errors import ControllerError, InvalidInput
from controller.models import QUOTA_KEYS, App, AppState, Process, Route, Team

# How each quota reads in a sentence: (name, unit).
LABELS = {"memory_mb": ("memory", "MiB"), "instances": ("instances", ""),
          "apps": ("apps", ""), "routes": ("routes", ""), "tasks": ("running tasks", ""),
          "services": ("services", "")}
LIMITS = {"memory_mb": 64 * 1024 * 1024, "instances": 100_000, "apps": 100_000,
          "routes": 100_000, "tasks": 100_000, "services": 100_000}


# The memory a process gets when neither the push nor a scale says (the column's default).
NEW_PROCESS_MEMORY_MB: int = Process.__table__.c.memory_mb.default.arg


class QuotaExceeded(ControllerError):
    status = 422


def team_tasks_key(team: Team) -> str:
    return f"{keys.PREFIX}:team-tasks:{team.guid}"


def running_tasks(client: redis.Redis | None, team: Team) -> int:
    """Tasks of ``team`` running now (those whose log has not ended, until given up on)."""
    if client is None:
        return 0
    key = team_tasks_key(team)
    try:
        client.zremrangebyscore(key, "-inf", time.time())
        guids = [g.decode() if isinstance(g, bytes) else g for g in client.zrange(key, 0, -1)]
        if not guids:
            return 0
        ended = [guid for guid in guids
                 if not (last := client.xrevrange(keys.task_log(guid), count=1))
                 or _final(last[0][1])]
        if ended:
            client.zrem(key, *ended)
        return len(guids) - len(ended)
    except redis.RedisError:
        return 0  # no task can be started without Redis either


def _final(fields: dict[Any, Any]) -> bool:
    names = {k.decode() if isinstance(k, bytes) else k for k in fields}
    return bool(names & {"exit_code", "error"})


def task_started(client: redis.Redis, team: Team, task_guid: str, gives_up_in: float) -> None:
    key = team_tasks_key(team)
    client.zadd(key, {task_guid: time.time() + gives_up_in})
    client.expire(key, int(gives_up_in) + 60)


def usage(session: Session, team: Team, client: redis.Redis | None = None) -> dict[str, int]:
    started = (select(Process).join(App, App.id == Process.app_id)
               .where(App.team_id == team.id, App.state == AppState.STARTED))
    memory, instances = 0, 0
    for process in session.scalars(started):
        memory += process.instances * process.memory_mb
        instances += process.instances
    return {
        "memory_mb": memory,
        "instances": instances,
        "apps": session.scalar(select(func.count(App.id)).where(App.team_id == team.id)) or 0,
        "routes": session.scalar(
            select(func.count(Route.id)).where(Route.team_id == team.id)) or 0,
        "tasks": running_tasks(client, team),
        "services": 0,
    }


def check(session: Session, team: Team, client: redis.Redis | None = None,
          **asked: int) -> None:
    """Refuse ``asked`` (more of each quota's unit: ``memory_mb=512``, ``apps=1``) if it
    takes the team over a quota."""
    quota = team.quota
    if not any(quota[k] is not None and n > 0 for k, n in asked.items()):
        return
    used = usage(session, team, client if "tasks" in asked else None)
    for key in QUOTA_KEYS:
        more, allowed = asked.get(key, 0), quota[key]
        if allowed is None or more <= 0 or used[key] + more <= allowed:
            continue
        name, unit = LABELS[key]
        u = f" {unit}" if unit else ""
        raise QuotaExceeded(
            f"team {team.name!r} is over its {name} quota: it uses {used[key]}{u}, this asks "
            f"{more}{u} more, and {allowed}{u} is allowed; stop or scale down something, or "
            "ask a platform admin to raise the quota ('paas set-quota').",
            detail={"quota": key, "used": used[key], "asked": more, "allowed": allowed})


def scale_demand(app: App, process: Process, instances: int, memory_mb: int) -> dict[str, int]:
    """What scaling ``process`` of ``app`` to ``instances`` x ``memory_mb`` asks for more
    (nothing while the app is stopped: stopped apps reserve nothing)."""
    if app.state != AppState.STARTED:
        return {}
    return {"memory_mb": instances * memory_mb - process.instances * process.memory_mb,
            "instances": instances - process.instances}


def start_demand(app: App) -> dict[str, int]:
    """What starting a stopped ``app`` asks for."""
    if app.state == AppState.STARTED:
        return {}
    return {"memory_mb": sum(p.instances * p.memory_mb for p in app.processes),
            "instances": sum(p.instances for p in app.processes)}


def push_demand(app: App, requested: dict[str, Any], default_memory_mb: int) -> dict[str, int]:
    """What a push's scale (the manifest's instances and memory, per process type) asks for
    more than the app reserves now; a new app's web process gets one instance by default."""
    if app.state != AppState.STARTED:
        return {}
    current = {p.type: (p.instances, p.memory_mb) for p in app.processes}
    wanted = dict(current)
    for type_, given in [("web", requested)] + [(p.get("type"), p) for p in
                                                requested.get("processes") or []
                                                if isinstance(p, dict)]:
        instances, memory = current.get(type_, (1 if type_ == "web" else 0, default_memory_mb))
        if isinstance(given.get("instances"), int):
            instances = given["instances"]
        if isinstance(given.get("memory_mb"), int):
            memory = given["memory_mb"]
        wanted[type_] = (instances, memory)
    return {"memory_mb": sum(i * m for i, m in wanted.values())
            - sum(i * m for i, m in current.values()),
            "instances": sum(i for i, _ in wanted.values()) - sum(i for i, _ in current.values())}


def present(session: Session, team: Team, client: redis.Redis | None) -> dict[str, Any]:
    return {"quota": team.quota, "usage": usage(session, team, client)}


def parse(body: dict[str, Any]) -> dict[str, int | None]:
    """The quotas a request sets: whole numbers (memory in MiB) or null for unlimited."""
    unknown = set(body) - set(QUOTA_KEYS)
    if unknown:
        raise InvalidInput(f"there is no quota {sorted(unknown)[0]!r}: quotas are "
                           f"{', '.join(QUOTA_KEYS)}.")
    out: dict[str, int | None] = {}
    for key, value in body.items():
        if value is not None and (isinstance(value, bool) or not isinstance(value, int)
                                  or not 0 <= value <= LIMITS[key]):
            raise InvalidInput(f"the {LABELS[key][0]} quota must be a whole number from 0 to "
                               f"{LIMITS[key]}, or null for unlimited.")
        out[key] = value
    return out
