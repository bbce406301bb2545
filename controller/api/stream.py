"""An app's live event stream, as server-sent events (what ``paas push`` and the dashboard
follow): ``GET /v1/apps/<name>/stream``."""

from __future__ import annotations

import re
import time
from collections.abc import Iterator

import redis
from flask import Flask, current_app, request

from contracts.appevents import APP_DELETED
from controller import appstream
from controller.api import v1
from controller.api.apps import find_app
from controller.auth import Permission, requires
from controller.errors import InvalidInput
from controller.ratelimit import follow_slot, leased_stream

QUIET_PING = 5.0  # seconds without an event before a comment line keeps proxies from closing
# A follow ends after five minutes (clients reconnect with Last-Event-ID), so the caller's
# token and role are checked again that often: a revoked token stops following.
FOLLOW_FOR = 300.0
EVENT_ID = re.compile(r"^(\d{1,20})(?:-(\d{1,20}))?$")
ID_PART_MAX = 2**64 - 1  # what Redis takes in a stream id


@v1.get("/apps/<name>/stream")
@requires(Permission.APP_READ)
def app_stream(name: str):
    """The app's events after ``Last-Event-ID`` (or ``?since=ID``; ``0`` is every event
    kept), else from now on, as ``text/event-stream``; ``?follow=false`` ends the stream
    after the events kept instead of waiting for more."""
    app = find_app(name)
    since = request.headers.get("Last-Event-ID") or request.args.get("since")
    client: redis.Redis = current_app.extensions["paas.redis"]
    if since is None or not since.strip():
        since = appstream.position(client, app.guid)
    elif not _event_id(since.strip()):
        raise InvalidInput(f"{since[:40]!r} is not an event id: resume with the id of the last "
                           "event you read (such as 1733230000000-0), or 0 for every event.")
    follow = request.args.get("follow", "true").lower() not in ("0", "false", "no")
    flask_app = current_app._get_current_object()  # type: ignore[attr-defined]
    response = leased_stream(follow_slot(), _events(flask_app, app.guid, since.strip(),
                                                    follow), mimetype="text/event-stream")
    response.headers["Cache-Control"] = "no-cache"
    response.headers["X-Accel-Buffering"] = "no"  # a proxy in front passes events at once
    return response


def _event_id(text: str) -> bool:
    found = EVENT_ID.match(text)
    return bool(found) and all(int(part) <= ID_PART_MAX for part in found.groups() if part)


def _events(flask_app: Flask, app_guid: str, since: str, follow: bool) -> Iterator[str]:
    client: redis.Redis = flask_app.extensions["paas.redis"]
    yield "retry: 1000\n\n"
    ends = time.monotonic() + FOLLOW_FOR
    while time.monotonic() < ends:
        try:
            found = appstream.read(client, app_guid, since,
                                   block_ms=int(QUIET_PING * 1000) if follow else None)
        except redis.ResponseError:
            return  # Redis refused the read itself: asking again would not help
        except redis.RedisError:
            yield ": the platform's Redis is unreachable; retrying\n\n"
            time.sleep(1.0)
            continue
        if not found:
            if not follow:
                return
            yield ": ping\n\n"
            continue
        for event in found:
            since = event.id
            yield event.sse()
            if event.type == APP_DELETED:
                return
