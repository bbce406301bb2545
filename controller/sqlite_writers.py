"""SQLite under gevent: one writing transaction per worker at a time, waited for cooperatively.

SQLite lets one connection write at a time; another writer's statement waits in SQLite's own
busy handler, a C sleep. Under gevent (controller.serve) that sleep stops the whole worker, so
when the transaction holding the lock belongs to a greenlet of the same worker, paused on
Redis or Celery before its commit, it can never finish: every request of the worker stalls
until the busy timeout (30 s) fails the second writer. Here a worker's writers queue on a
lock instead, taken at a transaction's first write and given back at its commit or rollback
(or when its connection returns to the pool): the wait yields to the other greenlets, and
SQLite's busy handler is left to wait only for other processes. With threads it changes
nothing: SQLite would have serialized those writers anyway.
"""

from __future__ import annotations

import threading
from typing import Any

from sqlalchemy import Engine, event

from controller.errors import Unavailable

HELD = "paas.sqlite_writer"
WRITES = {"INSERT", "UPDATE", "DELETE", "REPLACE", "CREATE", "DROP", "ALTER", "UPSERT"}


def is_write(statement: str) -> bool:
    """A statement that writes: by its first word, and a ``WITH ...`` that ends in a write."""
    words = statement.split(None, 1)
    first = words[0].upper() if words else ""
    if first == "WITH":
        body = statement.upper()
        return any(f" {word} " in f" {body} " for word in ("INSERT", "UPDATE", "DELETE"))
    return first in WRITES


def serialize_writers(engine: Engine, wait: float = 30.0) -> Engine:
    """Make ``engine``'s writing transactions take turns in this process (SQLite only)."""
    if engine.dialect.name != "sqlite":
        return engine
    lock = threading.Lock()  # gevent's, once the worker is patched

    @event.listens_for(engine, "before_cursor_execute")
    def _take(conn: Any, _cursor: Any, statement: str, *_: Any) -> None:
        if conn.info.get(HELD) or not is_write(statement):
            return
        if not lock.acquire(timeout=wait):
            raise Unavailable(f"the database stayed busy with other changes for {wait:g} s: "
                              "try again in a moment.")
        conn.info[HELD] = True

    def _give_back(info: dict[str, Any]) -> None:
        if info.pop(HELD, False):
            lock.release()

    # "commit" and "rollback" come just before SQLite's own, which no other greenlet can
    # enter: the driver's call does not yield.
    event.listen(engine, "commit", lambda conn: _give_back(conn.info))
    event.listen(engine, "rollback", lambda conn: _give_back(conn.info))
    event.listen(engine, "checkin", lambda _dbapi, record: _give_back(record.info))
    return engine
