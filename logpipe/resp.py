"""Redis's wire protocol by hand, where redis-py's packing and parsing cost more than Redis.

The log writer packs its script calls itself (:meth:`logpipe.writer.AppLogWriter._send`),
and the follow endpoint reads stream replies unparsed (``controller/api/logs.py``): at tens
of thousands of lines a second, redis-py's per-argument packing and per-entry dicts were
most of the work.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # the CLI imports this package: redis-py would cost it 0.3 s
    import redis


def bulk(data: bytes) -> bytes:
    """``data`` as a bulk string of the protocol: ``$<length>\\r\\n<data>\\r\\n``."""
    return b"$%d\r\n%s\r\n" % (len(data), data)


def raw_reply(client: redis.Redis, send: Callable[[Any], None]) -> Any:
    """The reply, unparsed by redis-py's response callbacks, to what ``send(connection)``
    writes on a connection of ``client``'s pool; an error reply is raised."""
    pool = client.connection_pool
    conn = pool.get_connection()
    try:
        send(conn)
        reply = conn.read_response()
    except BaseException:
        conn.disconnect()  # a half-read reply must not reach the next user
        raise
    finally:
        pool.release(conn)
    if isinstance(reply, Exception):
        raise reply
    return reply
