"""Builds: their state, and their output as a live stream of JSON lines."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator

import redis
from flask import current_app, g, jsonify
from sqlalchemy import select

from contracts import keys
from controller import staging
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
from controller.models import Build, BuildState
from controller.ratelimit import follow_slot, leased_stream

PING_EVERY = 10.0


def find_build(guid: str) -> Build:
    build = g.db.scalar(select(Build).where(Build.guid == guid))
    missing = f"there is no build {guid}."
    if build is None:
        raise NotFound(missing)
    authorize(current_identity(), current_permission(), build.app.team, missing=missing)
    return build


@v1.get("/builds/<guid>")
@requires(Permission.APP_READ)
def show_build(guid: str):  # noqa: ANN201
    build = find_build(guid)
    staging.settle(g.db, current_app.extensions["paas.redis"],
                   current_app.config["PAAS_SETTINGS"], build)
    return jsonify(present_build(find_build(guid)))


@v1.get("/builds/<guid>/log")
@requires(Permission.APP_LOGS)
def build_log(guid: str):  # noqa: ANN201
    """Staging output as it happens, one JSON object per line, ending with the result."""
    find_build(guid)  # 404 / 403 before the stream starts
    app = current_app._get_current_object()  # type: ignore[attr-defined]
    # One of the caller's follow slots, as `paas logs -f` takes (a 429 past the cap).
    return leased_stream(follow_slot(), _follow(app, guid))


def _line(obj: dict[str, object]) -> str:
    return json.dumps(obj) + "\n"


def _follow(app, guid: str) -> Iterator[str]:  # noqa: ANN001
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
            if _finished_without_stream(app, guid):
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


def _finished_without_stream(app, guid: str) -> bool:  # noqa: ANN001
    with app.extensions["paas.sessionmaker"]() as session:
        build = session.scalar(select(Build).where(Build.guid == guid))
        if build is None or build.state != BuildState.STAGING:
            return True
        return staging.settle(session, app.extensions["paas.redis"],
                              app.config["PAAS_SETTINGS"], build)


def _result(app, guid: str) -> dict[str, object]:  # noqa: ANN001
    client = app.extensions["paas.redis"]
    with app.extensions["paas.sessionmaker"]() as session:
        build = session.scalar(select(Build).where(Build.guid == guid))
        if build is not None:
            staging.settle(session, client, app.config["PAAS_SETTINGS"], build)
            build = session.scalar(select(Build).where(Build.guid == guid))
        if build is None:
            # The app of a failed first push is removed with its builds; the result remains.
            raw = client.get(keys.build_result(guid))
            error = json.loads(raw).get("error") if raw else "the build is gone"
            return {"type": "result", "state": BuildState.FAILED, "error": error}
        return {"type": "result", **present_build(build)}
