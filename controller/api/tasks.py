"""One-off tasks (``paas run``): a command in a new container of the app's current release.

A task is not kept in the database: its Redis stream (``keys.task_log``) is its whole
record. The controller opens it with a ``task`` entry naming the app (so reading the log is
authorised against the app) and the agent it was sent to; the agent adds the output lines,
then ``exit_code`` or ``error``, then ``end``.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Iterator

import redis
from flask import current_app, g, jsonify, request
from sqlalchemy import select

from contracts import keys
from contracts.messages import RUN_TASK_TASK, Heartbeat, TaskSpec, agent_queue, dump, seal
from contracts.secretbox import hide_arguments
from controller import events, quotas
from controller.actual import read_heartbeats
from controller.api import v1
from controller.api.apps import find_app
from controller.auth import (
    Permission,
    authorize,
    current_identity,
    current_permission,
    requires,
)
from controller.errors import InvalidInput, NotFound, Unavailable
from controller.models import App, Release
from controller.ratelimit import follow_slot, leased_stream
from logpipe.output import KEEP_SECONDS

PING_EVERY = 10.0
MAX_COMMAND = 8192


def _redis() -> redis.Redis:
    return current_app.extensions["paas.redis"]


def pick_agent(beats: list[Heartbeat], memory_mb: int) -> Heartbeat:
    """The agent with the most free memory; Unavailable if none is up or none has room."""
    if not beats:
        raise Unavailable("no agent is up to run the task: start one (make up starts one), "
                          "then try again.")
    best = max(beats, key=lambda b: (b.memory_mb - b.memory_used_mb, b.agent_id))
    free = best.memory_mb - best.memory_used_mb
    if free < memory_mb:
        raise Unavailable(f"no agent has {memory_mb} MB free for the task (the most free is "
                          f"{free} MB on {best.agent_id}): scale something down, or add an "
                          "agent.")
    return best


def _command() -> str:
    body = request.get_json(silent=True)
    command = body.get("command") if isinstance(body, dict) else None
    if not isinstance(command, str) or not command.strip():
        raise InvalidInput("give the command to run, e.g. 'paas run APP -- python manage.py "
                           "migrate'.")
    if len(command) > MAX_COMMAND:
        raise InvalidInput(f"the command is longer than {MAX_COMMAND} characters.")
    return command.strip()


@v1.post("/apps/<name>/tasks")
@requires(Permission.APP_WRITE)
def run_task(name: str):
    """Start a one-off task; the response names it, and its log follows it."""
    app = find_app(name)
    command = _command()
    release = g.db.get(Release, app.release_id) if app.release_id else None
    if release is None:
        raise NotFound(f"app {name!r} has no release yet to run a task in: push it first.")
    client = _redis()
    quotas.check(g.db, app.team, client, tasks=1)
    web = next((p for p in app.processes if p.type == "web"), None)
    memory_mb = web.memory_mb if web else current_app.config["PAAS_SETTINGS"].default_memory_mb
    try:
        agent = pick_agent(read_heartbeats(client), memory_mb)
    except redis.RedisError as e:
        raise Unavailable("Redis is not reachable, so no agent can be asked to run the task: "
                          "check that redis-server runs, then try again.") from e
    spec = TaskSpec(task_guid=str(uuid.uuid4()), app_guid=app.guid, app_name=app.name,
                    release=release.version, image=release.droplet.image, command=command,
                    memory_mb=memory_mb, env=dict(release.env), team=app.team.guid,
                    disk_mb=web.disk_mb if web else 0,
                    runtime=current_app.config["PAAS_SETTINGS"].runtime_for(app.team.name,
                                                                            app.name))
    stream = keys.task_log(spec.task_guid)
    try:
        pipe = client.pipeline()
        pipe.xadd(stream, {"task": json.dumps({"app_guid": app.guid,
                                               "agent": agent.agent_id})})
        pipe.expire(stream, KEEP_SECONDS)
        pipe.execute()
        quotas.task_started(client, app.team, spec.task_guid,  # counted in usage, quota or not
                            current_app.config["PAAS_SETTINGS"].task_timeout or KEEP_SECONDS)
        current_app.extensions["paas.celery"].send_task(
            RUN_TASK_TASK, args=[dump(seal(spec, current_app.extensions["paas.secretbox"]))],
            queue=agent_queue(agent.agent_id))
    except Exception as e:  # kombu raises many kinds when Redis is down
        try:
            client.delete(stream)
        except redis.RedisError:
            pass
        raise Unavailable("the agents' queue (Redis) is not reachable, so the task did not "
                          "run: check that redis-server runs, then try again.") from e
    events.record(g.db, "app.task_run", current_identity().name, app, task=spec.task_guid,
                  command=hide_arguments(command), release=release.version,
                  agent=agent.agent_id)  # arguments may be secrets: the program only
    g.db.commit()
    return jsonify({"guid": spec.task_guid, "agent": agent.agent_id, "command": command,
                    "app": app.name, "release": release.version}), 201


def find_task(guid: str) -> dict[str, str]:
    """The task's opening entry (app guid, agent); a 404 if there is none or its app is
    another team's."""
    first = _redis().xrange(keys.task_log(guid), count=1)
    missing = f"there is no task {guid} (a task's output is kept for a day)."
    if not first or b"task" not in first[0][1]:
        raise NotFound(missing)
    info = json.loads(first[0][1][b"task"])
    app = g.db.scalar(select(App).where(App.guid == info["app_guid"]))
    if app is None:
        raise NotFound(f"the app of task {guid} has been deleted.")
    authorize(current_identity(), current_permission(), app.team, missing=missing)
    return {"agent": info.get("agent", ""), "start": first[0][0]}


@v1.get("/tasks/<guid>/log")
@requires(Permission.APP_LOGS)
def task_log(guid: str):
    """The task's output as it happens, one JSON object per line: ``{"line": ...}``, then
    ``{"exit_code": N}`` or ``{"error": ...}``; ``{"ping": true}`` keeps a quiet one open."""
    task = find_task(guid)  # 404 / 403 before the stream starts
    # One of the caller's follow slots, as `paas logs -f` takes (a 429 past the cap).
    return leased_stream(follow_slot(), _follow(_redis(), guid, task["agent"], task["start"]))


def _line(obj: dict[str, object]) -> str:
    return json.dumps(obj) + "\n"


def _follow(client: redis.Redis, guid: str, agent_id: str,
            last_id: bytes | str) -> Iterator[str]:
    stream = keys.task_log(guid)
    last_sent = time.monotonic()
    while True:
        entries = client.xread({stream: last_id}, block=1000, count=500)
        for _name, items in entries or []:
            for entry_id, fields in items:
                last_id = entry_id
                if b"line" in fields:
                    last_sent = time.monotonic()
                    yield _line({"line": fields[b"line"].decode("utf-8", "replace")})
                elif b"exit_code" in fields:
                    yield _line({"exit_code": int(fields[b"exit_code"])})
                    return
                elif b"error" in fields:
                    yield _line({"error": fields[b"error"].decode("utf-8", "replace")})
                    return
                elif b"end" in fields:
                    yield _line({"error": "the task ended without an exit code."})
                    return
        if entries:
            continue
        gone = _gone(client, stream, agent_id)
        if gone:
            yield _line({"error": gone})
            return
        if time.monotonic() - last_sent > PING_EVERY:
            last_sent = time.monotonic()
            yield _line({"ping": True})


def _gone(client: redis.Redis, stream: str, agent_id: str) -> str | None:
    """Why the task's output will never come, if it will not."""
    if not client.exists(stream):
        return "the task's output is gone (it is kept for a day)."
    if agent_id and not client.exists(keys.agent(agent_id)):
        return (f"agent {agent_id} stopped answering while the task ran, so its outcome is "
                "unknown.")
    return None
