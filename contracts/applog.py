"""The per-app log stream: one Redis stream per app, every line tagged with its source.

Entry fields (all strings): ``src`` one of :data:`SOURCES`; ``meta`` the line's time (epoch
seconds, six decimals) and, space-separated, its process type, instance index (APP and RTR
lines) and ``out`` or ``err`` (APP lines), each empty when it does not apply, such as
``1764442862.123456 web 0 out``; ``line`` the text. Three fields, not six: every field costs
Redis and its readers work per line, and a busy app writes tens of thousands of lines a
second. (Entries of the former six fields, ``t src proc idx fd line``, read the same.)

Writers keep the stream bounded three ways, and say so in the stream when they do:

- the stream is trimmed to ``log_lines_per_app`` (``XADD MAXLEN ~``: Redis trims whole
  nodes, so it may hold up to one node, about 100 entries, more);
- a line over ``log_line_max_bytes`` is cut, with `` [cut: N bytes]`` saying how long it was;
- a token bucket per app (``log_rate_per_app`` lines/s, a burst of one second's worth) drops
  what exceeds it and counts it; once lines pass again, one line says how many were dropped.
"""

from __future__ import annotations

import calendar
import threading
import time
from collections.abc import Callable, Iterable
from datetime import UTC, datetime
from functools import partial
from json.encoder import encode_basestring_ascii as _json_str  # type: ignore[attr-defined]
from typing import TYPE_CHECKING, Any, NamedTuple

from contracts import keys
from contracts.logstream import StreamWriter
from contracts.settings import Settings

if TYPE_CHECKING:  # the CLI reads lines with this module: redis-py would cost it 0.3 s
    import redis

APP, STG, RTR, API, HEALTH = "APP", "STG", "RTR", "API", "HEALTH"
SOURCES = (APP, STG, RTR, API, HEALTH)


class LogLine(NamedTuple):
    """One line (a tuple: a busy app makes tens of thousands a second)."""

    t: float
    src: str
    line: str
    proc: str = ""
    idx: str = ""
    fd: str = ""

    def fields(self) -> dict[str, str]:
        return {"src": self.src, "meta": f"{self.t:.6f} {self.proc} {self.idx} {self.fd}",
                "line": self.line}

    @classmethod
    def from_fields(cls, fields: dict[Any, Any]) -> LogLine:
        """The line of a stream entry's fields (bytes from Redis, or str)."""
        get = fields.get
        meta = get(b"meta", get("meta"))
        if meta is not None:
            if isinstance(meta, bytes):
                meta = meta.decode("utf-8", "replace")
            t, _, kind = meta.partition(" ")
            proc, idx, fd = (kind.rsplit(" ", 2) + ["", ""])[:3]
            values = [t, get(b"src", get("src", b"")), get(b"line", get("line", b"")),
                      proc, idx, fd]
        else:  # the former six fields
            values = [get(b"t", get("t", b"")), get(b"src", get("src", b"")),
                      get(b"line", get("line", b"")), get(b"proc", get("proc", b"")),
                      get(b"idx", get("idx", b"")), get(b"fd", get("fd", b""))]
        try:
            t = float(values[0] or 0)
        except ValueError:
            t = 0.0
        src, line, proc, idx, fd = (v.decode("utf-8", "replace") if isinstance(v, bytes) else v
                                    for v in values[1:])
        return cls(t, src, line, proc, idx, fd)

    @classmethod
    def from_flat(cls, flat: list[bytes]) -> LogLine:
        """The line of a stream entry's fields as Redis sends them, names and values in
        turn, without redis-py's dict per entry."""
        if not _three_fields(flat):
            return cls.from_fields(dict(zip(flat[0::2], flat[1::2], strict=False)))
        return cls.from_fields({b"src": flat[1], b"meta": flat[3], b"line": flat[5]})

    @property
    def tag(self) -> str:
        """``APP/WEB/0``, ``STG``, ``RTR``, ..., as Cloud Foundry tags its lines."""
        if self.src == APP and self.proc:
            return "/".join(p for p in (APP, self.proc.upper(), self.idx) if p)
        return self.src

    def to_dict(self, entry_id: str = "") -> dict[str, object]:
        out: dict[str, object] = {"id": entry_id, "time": iso_time(self.t), "source": self.src,
                                  "process_type": self.proc or None,
                                  "instance": int(self.idx) if self.idx.isdigit() else None,
                                  "fd": self.fd or None, "text": self.line}
        return out

    def json(self, entry_id: str = "") -> str:
        """``json.dumps(self.to_dict(entry_id))``, made directly (the follow endpoint makes
        one per line)."""
        return (f'{{"id": {_json_str(entry_id)}, "time": "{iso_time(self.t)}", '
                f'{_json_tags(self.src, self.proc, self.idx, self.fd)}'
                f'"text": {_json_str(self.line)}}}')

    def format(self) -> str:
        """``2026-11-29T19:01:02.123Z [APP/WEB/0] text``; stderr lines read ``ERR text``."""
        err = "ERR " if self.fd == "err" else ""
        return f"{iso_time(self.t)} [{self.tag}] {err}{self.line}"


_JSON_TAGS: dict[tuple[Any, Any, Any, Any], str] = {}  # the JSON's middle, by tags


def _three_fields(flat: list[bytes]) -> bool:
    """Whether an entry as Redis sends it is the writers' ``src``, ``meta``, ``line``."""
    return len(flat) == 6 and flat[2] == b"meta" and flat[0] == b"src" and flat[4] == b"line"


# LogLine from a tuple of its six fields, without NamedTuple's Python-level __new__: the
# agent and the router make tens of thousands a second.
line_of = partial(tuple.__new__, LogLine)


def _json_tags(src: Any, proc: Any, idx: Any, fd: Any) -> str:
    """``"source": ..., "process_type": ..., "instance": ..., "fd": ..., `` of a line's JSON
    (str or bytes tags; made once per kind of line)."""
    key = (src, proc, idx, fd)
    tags = _JSON_TAGS.get(key)
    if tags is None:
        if len(_JSON_TAGS) > 4096:
            _JSON_TAGS.clear()
        src, proc, idx, fd = (x.decode("utf-8", "replace") if isinstance(x, bytes) else x
                              for x in key)
        tags = _JSON_TAGS[key] = (
            f'"source": {_json_str(src)}, '
            f'"process_type": {_json_str(proc) if proc else "null"}, '
            f'"instance": {int(idx) if idx.isdigit() else "null"}, '
            f'"fd": {_json_str(fd) if fd else "null"}, ')
    return tags


# (source, ``proc idx fd`` of the meta field) -> (source, instance index, the JSON's middle)
_KINDS: dict[tuple[bytes, bytes], tuple[str, str, str]] = {}


def _kind(src: bytes, kind: bytes) -> tuple[str, str, str]:
    found = _KINDS.get((src, kind))
    if found is None:
        if len(_KINDS) > 4096:
            _KINDS.clear()
        proc, idx, fd = (kind.decode("utf-8", "replace").rsplit(" ", 2) + ["", ""])[:3]
        source = src.decode("utf-8", "replace")
        found = _KINDS[src, kind] = (source, idx, _json_tags(source, proc, idx, fd))
    return found


def entry_json(entry_id: str, flat: list[bytes]) -> tuple[str, str, str]:
    """(source, instance index, the line's JSON as :meth:`LogLine.json` makes it) of a
    stream entry as Redis sends it (``entry_id`` is a stream id: digits and a dash).

    The follow endpoint makes one per line: an entry of the writers' three fields is made
    without a LogLine, from the pieces cached per kind of line and per millisecond."""
    if not _three_fields(flat):
        line = LogLine.from_flat(flat)
        return line.src, line.idx, line.json(entry_id)
    stamp, _, kind = flat[3].partition(b" ")
    src, idx, tags = _KINDS.get((flat[1], kind)) or _kind(flat[1], kind)
    return (src, idx,
            f'{{"id": "{entry_id}", "time": "{_ISO.get(stamp[:-3]) or _iso_stamp(stamp)}", '
            f'{tags}"text": {_json_str(flat[5].decode("utf-8", "replace"))}}}')


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


def _bulk(data: bytes) -> bytes:
    return b"$%d\r\n%s\r\n" % (len(data), data)


_SECONDS: dict[bytes, str] = {}  # b"1764442862" -> "2025-11-29T19:01:02"
_ISO: dict[bytes, str] = {}  # b"1764442862.123" -> "2025-11-29T19:01:02.123Z"


def iso_time(t: float) -> str:
    """``2026-11-29T19:01:02.123Z``: the time to the millisecond, read from its six
    decimals as a stream entry holds them (so every path shows a line at the same time)."""
    stamp = b"%.6f" % t
    return _ISO.get(stamp[:-3]) or _iso_stamp(stamp)


def _iso_stamp(stamp: bytes) -> str:
    """:func:`iso_time` of an epoch time written with six decimals (``b"%.6f" % t``),
    cached by its millisecond: the lines of a busy app share them."""
    if stamp[-7:-6] != b"." or not stamp[:-7].isdigit():  # not as the writers make it
        try:
            t = float(stamp)
        except ValueError:
            t = 0.0
        stamp = b"%.6f" % (t if 0.0 <= t < 1e11 else 0.0)  # (a year datetime can show)
    whole, frac = stamp[:-7], stamp[-6:-3]
    prefix = _SECONDS.get(whole)
    if prefix is None:
        if len(_SECONDS) > 1024:
            _SECONDS.clear()
        prefix = _SECONDS[whole] = datetime.fromtimestamp(int(whole), UTC).strftime(
            "%Y-%m-%dT%H:%M:%S")
    if len(_ISO) > 8192:
        _ISO.clear()
    iso = _ISO[stamp[:-3]] = f"{prefix}.{frac.decode()}Z"
    return iso


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


# KEYS[1] the stream; ARGV[1] its cap, then src, meta, line of each entry.
_XADD_MANY = """
local cap = ARGV[1]
for i = 2, #ARGV, 3 do
  redis.call('XADD', KEYS[1], 'MAXLEN', '~', cap, '*',
             'src', ARGV[i], 'meta', ARGV[i + 1], 'line', ARGV[i + 2])
end
return #ARGV
"""


SEND_MOST = 2000  # lines a script call writes at most (about 10 ms of Redis)


class AppLogWriter:
    """Buffers lines per app and writes them in pipelines; thread-safe.

    ``add`` applies the line size cut and the rate limit; ``flush`` writes what is buffered
    (and the "N lines dropped" line of an app whose limit has let up). Followers call
    ``flush`` when a batch is full, and a timer calls it every few tens of milliseconds.
    """

    def __init__(self, client: redis.Redis, max_lines: int, max_bytes: int, rate: float,
                 clock=time.monotonic, batch: int = 500) -> None:  # noqa: ANN001
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
        parts = [b"*%d\r\n$4\r\nEVAL\r\n" % (5 + 3 * len(lines)), _bulk(_XADD_MANY.encode()),
                 b"$1\r\n1\r\n", _bulk(key.encode()), _bulk(str(self.max_lines).encode())]
        # src, proc, idx, fd -> the packed src, and the meta's `` proc idx fd``
        tags: dict[tuple[str, str, str, str], tuple[bytes, bytes]] = {}
        for t, src, text, proc, idx, fd in lines:
            tag = tags.get((src, proc, idx, fd))
            if tag is None:
                tag = tags[src, proc, idx, fd] = (_bulk(src.encode()),
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


class StagingWriter(StreamWriter):
    """A build's output stream that also copies each line into the app's stream as STG."""

    def __init__(self, client: redis.Redis, key: str, settings: Settings,
                 app_guid: str) -> None:
        super().__init__(client, key)
        self.settings, self.app_guid = settings, app_guid

    def line(self, text: str) -> None:
        super().line(text)
        append(self.client, self.settings, self.app_guid, STG, text)


class DockerTime:
    """Docker's RFC 3339 timestamps (``2026-11-29T19:01:02.123456789Z``) as nanoseconds."""

    def __init__(self) -> None:
        self._seconds: dict[bytes, int] = {}

    def ns(self, stamp: bytes) -> int:
        whole, frac = stamp[:19], stamp[20:-1]  # ...T19:01:02 . 123456789 Z
        if stamp[19:20] != b"." or stamp[-1:] != b"Z":
            whole, _, frac = stamp.rstrip(b"Z").partition(b".")
        seconds = self._seconds.get(whole)
        if seconds is None:
            seconds = calendar.timegm(time.strptime(whole.decode(), "%Y-%m-%dT%H:%M:%S"))
            if len(self._seconds) > 4096:
                self._seconds.clear()
            self._seconds[whole] = seconds
        return seconds * 1_000_000_000 + int(frac[:9].ljust(9, b"0") or 0)

    def ns_text(self, stamp: str) -> int:
        """:meth:`ns` of a timestamp as text (the json-file log has one a line)."""
        if stamp[19:20] != "." or stamp[-1:] != "Z":
            return self.ns(stamp.encode())
        seconds, frac = self._seconds.get(stamp[:19]), stamp[20:-1]
        if seconds is None:
            seconds = self._seconds[stamp[:19]] = self.ns(stamp[:19].encode() + b"Z") // 10**9
        # Docker drops a fraction's trailing zeros: "...:02.12Z" is 120 ms.
        return seconds * 1_000_000_000 + int(frac if len(frac) == 9 else frac[:9].ljust(9, "0"))
