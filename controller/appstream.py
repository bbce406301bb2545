"""Each app's event stream: state changes published after they commit, read by followers.

A change is queued on the SQLAlchemy session that makes it (:func:`queue`; every
``controller.events.record`` about an app does) and written to the app's Redis stream when
that session commits, so a follower never sees a change that was rolled back, and sees the
changes in the order they were committed. The health manager also writes events nothing in
the database records (:func:`publish`): instances starting, running, crashing, stopping.
"""

from __future__ import annotations

import logging
import time
from typing import Any

import redis
from sqlalchemy import event
from sqlalchemy.orm import Session, SessionTransaction, sessionmaker

from contracts import keys
from contracts.appevents import APP_DELETED, AppEvent

log = logging.getLogger("paas.controller")

PENDING = "paas.app-events"
REDIS = "paas.redis"
LENGTH = "paas.app-stream-length"
# How long a deleted app's stream stays, so its followers read the deletion.
DELETED_STREAM_TTL = 300


def install(sessions: sessionmaker, client: redis.Redis, length: int) -> None:
    """Sessions made by ``sessions`` publish their queued events to ``client`` on commit."""
    sessions.configure(info={REDIS: client, LENGTH: length})


def queue(session: Session, app_guid: str, type_: str, data: dict[str, Any]) -> None:
    """Publish an event of ``app_guid`` when ``session`` commits (never if it rolls back)."""
    session.info.setdefault(PENDING, []).append(
        (app_guid, AppEvent(type_, {"at": round(time.time(), 3), **data})))


def publish(client: redis.Redis, app_guid: str, events: list[AppEvent],
            length: int = 1000) -> None:
    """Append ``events`` to the app's stream now (best effort: a follower that misses one
    still learns the state from the API)."""
    if not events:
        return
    stream = keys.app_events(app_guid)
    now = round(time.time(), 3)
    try:
        for e in events:
            if "at" not in e.data:
                e.data["at"] = now
            client.xadd(stream, e.fields(), maxlen=length, approximate=True)
            if e.type == APP_DELETED:
                client.expire(stream, DELETED_STREAM_TTL)
    except redis.RedisError as e:
        log.warning("could not publish %d event(s) of app %s: %s", len(events), app_guid, e)


def publish_all(client: redis.Redis, found: list[tuple[str, AppEvent]],
                length: int = 1000) -> None:
    """:func:`publish` each app's share of ``found`` ((app guid, event) pairs, in order)."""
    by_app: dict[str, list[AppEvent]] = {}
    for app_guid, e in found:
        by_app.setdefault(app_guid, []).append(e)
    for app_guid, events in by_app.items():
        publish(client, app_guid, events, length)


def position(client: redis.Redis, app_guid: str) -> str:
    """The id of the app's newest event ("0" for none): follow from here to see what comes
    next."""
    try:
        newest = client.xrevrange(keys.app_events(app_guid), count=1)
    except redis.RedisError:
        return "0"
    if not newest:
        return "0"
    entry_id = newest[0][0]
    return entry_id.decode() if isinstance(entry_id, bytes) else str(entry_id)


def read(client: redis.Redis, app_guid: str, after: str, block_ms: int | None = None,
         count: int = 200) -> list[AppEvent]:
    """The app's events after ``after`` (waiting up to ``block_ms`` for one, if given)."""
    found = client.xread({keys.app_events(app_guid): after}, count=count, block=block_ms)
    return [AppEvent.from_entry(entry_id, fields)
            for _stream, entries in found or [] for entry_id, fields in entries]


@event.listens_for(Session, "after_commit")
def _after_commit(session: Session) -> None:
    pending = session.info.pop(PENDING, None)
    client = session.info.get(REDIS)
    if pending and client is not None:
        publish_all(client, pending, session.info.get(LENGTH, 1000))


@event.listens_for(Session, "after_soft_rollback")
def _after_rollback(session: Session, previous_transaction: SessionTransaction) -> None:
    """A rolled-back change is never told (a savepoint's rollback keeps what came before)."""
    if previous_transaction.parent is None:
        session.info.pop(PENDING, None)
