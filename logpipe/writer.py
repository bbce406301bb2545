"""Writing lines into apps' log streams: the agent's, the router's and the platform's.

Writers keep each app's stream bounded three ways, and say so in the stream when they do:

- the stream is trimmed to ``log_lines_per_app`` (``XADD MAXLEN ~``: Redis trims whole
  nodes, so it may hold up to one node, about 100 entries, more);
- a line over ``log_line_max_bytes`` is cut, with `` [cut: N bytes]`` saying how long it was;
- a token bucket per app (``log_rate_per_app`` lines/s, a burst of one second's worth) drops
  what exceeds it and counts it; once lines pass again, one line says how many were dropped.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterable
from importlib import resources
from typing import TYPE_CHECKING, Any

from contracts import keys
from contracts.settings import Settings
from logpipe.lines import APP, LogLine
from logpipe.resp import bulk, raw_reply

if TYPE_CHECKING:  # the CLI imports this package: redis-py would cost it 0.3 s
    import redis


def cut(text: str, max_bytes: int) -> str:
    """``text`` if it fits in ``max_bytes`` (UTF-8), else its start and a visible marker."""
    if len(text) * 4 <= max_bytes:  # fits whatever its characters
        return text
    raw = text.encode("utf-8", "replace")
    if len(raw) <= max_bytes:
        return text
    return raw[:max_bytes].decode("utf-8", "ignore") + f" [cut: {len(raw)} bytes]"


class TokenBucket:
    """``rate`` tokens a second, holding at most ``burst``; ``take`` spends one if it can."""

    def __init__(self, rate: float, burst: float, now: float) -> None:
        self.rate, self.burst = rate, burst
        self.tokens, self.at = burst, now

    def refill(self, now: float) -> float:
        self.tokens = min(self.burst, self.tokens + (now - self.at) * self.rate)
        self.at = now
        return self.tokens

    def take(self, now: float) -> bool:
        return self.take_many(now, 1) == 1

    def take_many(self, now: float, count: int) -> int:
        """Spend up to ``count`` tokens, one a line; how many it could (as ``take`` that
        many times at ``now``)."""
        got = min(count, int(self.tokens))
        self.tokens -= got
        if got < count and self.refill(now) >= 1:
            more = min(count - got, int(self.tokens))
            self.tokens -= more
            got += more
        return got


def dropped_line(count: int, rate: float) -> str:
    return f"{count} lines dropped (rate limit {rate:g} lines/s)"


# The script that appends a batch of lines to a stream, as a bulk string of its EVAL call.
_XADD_MANY = bulk(resources.files(__package__).joinpath("xadd_many.lua").read_bytes())

SEND_MOST = 2000  # lines a script call writes at most (about 10 ms of Redis)


class AppLogWriter:
    """Buffers lines per app and writes them in pipelines; thread-safe.

    ``add`` applies the line size cut and the rate limit; ``flush`` writes what is buffered
    (and the "N lines dropped" line of an app whose limit has let up). Followers call
    ``flush`` when a batch is full, and a timer calls it every few tens of milliseconds.
    """

    def __init__(self, client: redis.Redis, max_lines: int, max_bytes: int, rate: float,
                 clock: Callable[[], float] = time.monotonic, batch: int = 500) -> None:
        self.client = client
        self.max_lines, self.max_bytes, self.rate = max_lines, max_bytes, rate
        self.clock = clock
        self.batch = batch
        self.lock = threading.Lock()
        self.buckets: dict[str, TokenBucket] = {}
        self.dropped: dict[str, int] = {}
        self.pending: dict[str, list[LogLine]] = {}
        self.pending_count = 0
        self.cursors: dict[str, dict[str, str]] = {}  # hash key -> fields, for the next flush

    @classmethod
    def from_settings(cls, client: redis.Redis, settings: Settings, **kw: Any) -> AppLogWriter:
        return cls(client, settings.log_lines_per_app, settings.log_line_max_bytes,
                   settings.log_rate_per_app, **kw)

    def add(self, app_guid: str, line: LogLine) -> bool:
        """Buffer ``line`` unless the app's rate limit drops it; True when buffered."""
        return self.add_many(app_guid, [line]) == 1

    def add_many(self, app_guid: str, lines: list[LogLine]) -> int:
        """Buffer ``lines`` (in order) as far as the app's rate limit lets them; returns how
        many were buffered."""
        now = self.clock()
        with self.lock:
            bucket = self.buckets.get(app_guid)
            if bucket is None:
                bucket = self.buckets[app_guid] = TokenBucket(self.rate, self.rate, now)
            kept = bucket.take_many(now, len(lines))
            if kept:
                if app_guid in self.dropped:  # lines pass again: first, how many did not
                    self._admit_dropped(app_guid, lines[0].t)
                most = self.max_bytes
                pending = self.pending.setdefault(app_guid, [])
                for line in lines[:kept] if kept < len(lines) else lines:
                    if len(line.line) * 4 > most:
                        line = line._replace(line=cut(line.line, most))
                    pending.append(line)
                self.pending_count += kept
            if kept < len(lines):
                self.dropped[app_guid] = self.dropped.get(app_guid, 0) + len(lines) - kept
            return kept

    def _admit_dropped(self, app_guid: str, t: float) -> None:
        count = self.dropped.pop(app_guid, 0)
        if count:
            self.pending.setdefault(app_guid, []).append(
                LogLine(t, APP, dropped_line(count, self.rate)))
            self.pending_count += 1

    def full(self) -> bool:
        return self.pending_count >= self.batch

    def set_cursor(self, key: str, field: str, value: object) -> None:
        """Set ``field`` of hash ``key`` with the next flush (where a follower has got to)."""
        with self.lock:
            self.cursors.setdefault(key, {})[field] = str(value)

    def flush(self) -> int:
        """Write what is buffered; returns the number of lines written."""
        with self.lock:
            now = self.clock()
            for app_guid in [a for a, n in self.dropped.items() if n]:
                if self.buckets[app_guid].refill(now) >= 1:
                    self.buckets[app_guid].tokens -= 1
                    self._admit_dropped(app_guid, time.time())
            pending, self.pending, self.pending_count = self.pending, {}, 0
            cursors, self.cursors = self.cursors, {}
        if not pending and not cursors:
            return 0
        written = 0
        for app_guid, lines in pending.items():
            # In pieces: a script call holds Redis (every other client) while it runs.
            for start in range(0, len(lines), SEND_MOST):
                self._send(keys.app_log(app_guid), lines[start:start + SEND_MOST])
            written += len(lines)
        if cursors:
            pipe = self.client.pipeline(transaction=False)
            for key, mapping in cursors.items():
                pipe.hset(key, mapping=mapping)
            pipe.execute()
        return written

    def _send(self, key: str, lines: list[LogLine]) -> None:
        """One script call for the batch, packed here: redis-py's packing of an XADD per
        line (or of the script's arguments) costs more than Redis takes to run them, and
        caps a writer near 20k lines/s. (Other clients, test fakes, get plain XADDs.)"""
        import redis  # (loaded by then: the client is one)

        if not isinstance(self.client, redis.Redis):
            pipe = self.client.pipeline(transaction=False)
            for line in lines:
                pipe.xadd(key, line.fields(), maxlen=self.max_lines, approximate=True)
            pipe.execute()
            return
        parts = [b"*%d\r\n$4\r\nEVAL\r\n" % (5 + 3 * len(lines)), _XADD_MANY,
                 b"$1\r\n1\r\n", bulk(key.encode()), bulk(str(self.max_lines).encode())]
        # src, proc, idx, fd -> the packed src, and the meta's `` proc idx fd``
        tags: dict[tuple[str, str, str, str], tuple[bytes, bytes]] = {}
        for t, src, text, proc, idx, fd in lines:
            tag = tags.get((src, proc, idx, fd))
            if tag is None:
                tag = tags[src, proc, idx, fd] = (bulk(src.encode()),
                                                  f" {proc} {idx} {fd}".encode())
            stamp, raw = b"%.6f" % t, text.encode("utf-8", "replace")
            parts.append(b"%s$%d\r\n%s%s\r\n$%d\r\n%s\r\n" % (
                tag[0], len(stamp) + len(tag[1]), stamp, tag[1], len(raw), raw))
        raw_reply(self.client, lambda conn: conn.send_packed_command([b"".join(parts)]))

    def write(self, app_guid: str, lines: Iterable[LogLine]) -> None:
        """Add ``lines`` and flush at once."""
        for line in lines:
            self.add(app_guid, line)
        self.flush()


def append(client: redis.Redis, settings: Settings, app_guid: str, src: str, text: str) -> None:
    """Write one platform line (API, HEALTH) at once, without a rate limit.

    Best-effort: a Redis error is swallowed, since the line only reports what already
    happened (the caller's work must not fail because a log line could not be written).
    """
    import redis  # (loaded by then: the client is one)

    line = LogLine(time.time(), src, cut(text, settings.log_line_max_bytes))
    try:
        client.xadd(keys.app_log(app_guid), line.fields(), maxlen=settings.log_lines_per_app,
                    approximate=True)
    except redis.RedisError:
        pass
