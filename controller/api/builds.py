"""Builds: their state, and their output as a live stream of JSON lines."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator

import redis
from flask import current_app, g, jsonify
from sqlalchemy import select

from contracts import keys
from controller import appstream
from controller.api import v1
from controller.api.apps import present_build
from controller.auth import (
    Permission,
    authorize,
    current_identity,
    current_permission,
    requires,
)
from controller.errors import NotFound
from controller.models import App, Build, BuildState
from controller.ratelimit import follow_slot, leased_stream

PING_EVERY = 10.0
SETTLE_WAIT = 30.0  # seconds the build log's result waits for the health manager


def find_build(guid: str) -> Build:
    build = g.db.scalar(select(Build).where(Build.guid == guid))
    missing = f"there is no build {guid}."
    if build is None:
        raise NotFound(missing)
    authorize(current_identity(), current_permission(), build.app.team, missing=missing)
    return build


@v1.get("/builds/<guid>")
@requires(Permission.APP_READ)
def show_build(guid: str):
    return jsonify(present_build(find_build(guid)))


@v1.get("/builds/<guid>/log")
@requires(Permission.APP_LOGS)
def build_log(guid: str):
    """Staging output as it happens, one JSON object per line, ending with the result."""
    find_build(guid)  # 404 / 403 before the stream starts
    app = current_app._get_current_object()  # type: ignore[attr-defined]
    # One of the caller's follow slots, as `paas logs -f` takes (a 429 past the cap).
    return leased_stream(follow_slot(), _follow(app, guid))


def _line(obj: dict[str, object]) -> str:
    return json.dumps(obj) + "\n"


def _follow(app, guid: str) -> Iterator[str]:
    client: redis.Redis = app.extensions["paas.redis"]
    settings = app.config["PAAS_SETTINGS"]
    stream = keys.build_log(guid)
    last_id, last_sent = "0", time.monotonic()
    deadline = time.monotonic() + settings.staging_timeout + 120
    ended = False
    while not ended and time.monotonic() < deadline:
        entries = client.xread({stream: last_id}, block=1000, count=500)
        for _name, items in entries or []:
            for entry_id, fields in items:
                last_id = entry_id
                if b"end" in fields:
                    ended = True
                    break
                last_sent = time.monotonic()
                yield _line({"type": "log", "text": fields.get(b"line", b"").decode(
                    "utf-8", "replace")})
        if not ended:
            if _settled(app, guid):
                # The end marker may still be on its way: send what the stream has.
                start = last_id.decode() if isinstance(last_id, bytes) else last_id
                for entry_id, fields in client.xrange(
                        stream, min=f"({start}" if start != "0" else "-"):
                    if b"end" in fields:
                        break
                    yield _line({"type": "log", "text": fields.get(b"line", b"").decode(
                        "utf-8", "replace")})
                    last_id = entry_id
                ended = True
            elif time.monotonic() - last_sent > PING_EVERY:
                last_sent = time.monotonic()
                yield _line({"type": "ping"})
    yield _line(_result(app, guid))


def _settled(app, guid: str) -> bool:
    """The build has left STAGING, or is gone (a failed first push removes its app)."""
    with app.extensions["paas.sessionmaker"]() as session:
        state = session.scalar(select(Build.state).where(Build.guid == guid))
        return state is None or state != BuildState.STAGING


def _result(app, guid: str) -> dict[str, object]:
    """The build's result once the health manager has settled it (it is woken by the
    stager's end of staging; this waits for it rather than settling the build itself)."""
    client = app.extensions["paas.redis"]
    _wait_until_settled(app, guid)
    with app.extensions["paas.sessionmaker"]() as session:
        build = session.scalar(select(Build).where(Build.guid == guid))
        if build is None:
            # The app of a failed first push is removed with its builds; the result remains.
            raw = client.get(keys.build_result(guid))
            error = json.loads(raw).get("error") if raw else "the build is gone"
            return {"type": "result", "state": BuildState.FAILED, "error": error}
        return {"type": "result", **present_build(build)}


def _wait_until_settled(app, guid: str) -> None:
    """Wait (bounded by SETTLE_WAIT) for the build to leave STAGING, woken by its app's
    stream when the health manager settles it."""
    client = app.extensions["paas.redis"]
    with app.extensions["paas.sessionmaker"]() as session:
        app_guid = session.scalar(select(App.guid).join(Build, Build.app_id == App.id)
                                  .where(Build.guid == guid))
    if app_guid is None:
        return
    since = appstream.position(client, app_guid)
    deadline = time.monotonic() + SETTLE_WAIT
    while not _settled(app, guid):
        left = deadline - time.monotonic()
        if left <= 0:
            return  # the result says STAGING: the health manager is not running
        try:
            found = appstream.read(client, app_guid, since, block_ms=int(min(left, 1.0) * 1000))
        except redis.RedisError:
            time.sleep(min(left, 0.2))
            continue
        if found:
            since = found[-1].id
