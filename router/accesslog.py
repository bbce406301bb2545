"""Access lines from nginx into each app's log stream, as ``RTR`` lines.

nginx appends one line per request to ``<runtime_dir>/access.log``, buffered (one write per
32 KB or 100 ms, see ``render._access_log``); the fields are those of
``render.ACCESS_LOG_FIELDS``, tab-separated. A file costs nginx almost nothing per request,
where a syslog datagram per request cost it (and the router, woken for each) tens of
microseconds.

Parsing a line and turning it into a log line of the app whose instance answered are pure
functions; :class:`AccessLogListener` is the I/O: a thread that follows the file and writes
lines in batches through :class:`logpipe.AppLogWriter` (so the app's rate limit and
stream cap apply, and a busy router makes one Redis call per batch). A line is only sorted
by app when it is read; its RTR line is made when the writer keeps it, so a flood beyond an
app's rate limit costs little more than reading it. When the file passes ``rotate_bytes``
the listener renames it, has nginx reopen its logs, reads the old file to its end, and
removes it.

A request nginx did not proxy (unknown host) or whose upstream address is no backend nginx
serves gives no line: there is no app to give it to.
"""

from __future__ import annotations

import logging
import os
import re
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import BinaryIO, NamedTuple, overload

import redis

from contracts.messages import Backend
from logpipe import RTR, AppLogWriter, LogLine, line_of
from router.render import ACCESS_LOG_FIELDS

log = logging.getLogger("paas.router")

# In $upstream_addr, ", " separates servers tried in one upstream, " : " upstreams tried
# after an internal redirect; the last address is the one whose answer the client got.
_UPSTREAM_SEP = re.compile(r", | : ")
_UPSTREAM_FIELD = ACCESS_LOG_FIELDS.index("$upstream_addr")


class AccessEntry(NamedTuple):
    """One request as nginx logged it (a tuple: made for many requests, so made cheaply)."""

    t: float  # epoch seconds when the request ended
    method: str
    path: str  # with the query string, escaped by nginx (\xXX)
    status: int
    bytes_sent: int
    duration_ms: int
    upstream: str  # the backend that answered last (ip:port), "" if none
    request_id: str
    host: str


def parse_access_line(line: bytes) -> AccessEntry | None:
    """The entry in one line from nginx (with or without its newline), or None."""
    fields = line.rstrip(b"\n").decode("utf-8", "replace").split("\t")
    if len(fields) != len(ACCESS_LOG_FIELDS):
        return None
    upstream, msec, method, path, status, sent, duration, request_id, host = fields
    try:
        return AccessEntry(
            float(msec), method, path, int(status), int(sent),
            round(float(duration) * 1000), last_upstream(upstream), request_id, host,
        )  # fmt: skip
    except ValueError:
        return None


def last_upstream(upstream_addr: str) -> str:
    """The address that answered last in nginx's ``$upstream_addr``, "" if none was tried."""
    if "," in upstream_addr or " : " in upstream_addr:
        last = _UPSTREAM_SEP.split(upstream_addr.strip())[-1].strip()
    else:
        last = upstream_addr.strip()
    return "" if last in ("", "-") or last.startswith("@") else last


def backends_by_address(backends: Iterable[Backend]) -> dict[str, Backend]:
    """Each backend address (as nginx writes it: ``ip:port``, ``[ip6]:port``) to its entry."""
    out: dict[str, Backend] = {}
    for backend in sorted(backends, key=Backend.to_json):  # same input, same choice
        if (
            isinstance(backend.backend, str)
            and isinstance(backend.app_guid, str)
            and (backend.app_guid)
        ):
            out.setdefault(backend.backend, backend)
    return out


def rtr_line(entry: AccessEntry, backend: Backend) -> LogLine:
    """The RTR line of ``entry`` for the app of ``backend`` (the instance that answered)."""
    return _rtr(entry.t, entry.method, entry.path, entry.status, entry.bytes_sent,
                entry.duration_ms, entry.request_id, entry.host, backend)


def _rtr(t: float, method: str, path: str, status: int, sent: int, ms: int, request_id: str,
         host: str, backend: Backend) -> LogLine:
    index = backend.index
    if type(index) is not int:
        index = 0
    text = (f"{method} {path} {status} {sent} bytes {ms} ms instance {index} "
            f"request-id {request_id} host {host}")
    return line_of((t, RTR, text, "", str(index), ""))


def app_line(line: bytes, backends: Mapping[str, Backend]) -> tuple[str, LogLine] | None:
    """``(app guid, RTR line)`` for one access line, or None if it names no known instance."""
    entry = parse_access_line(line)
    if entry is None or not entry.upstream:
        return None
    backend = backends.get(entry.upstream)
    if backend is None:
        return None
    return backend.app_guid, rtr_line(entry, backend)


def app_of(line: bytes, backends: Mapping[str, Backend]) -> Backend | None:
    """The backend (instance) that answered the request of ``line``, cheaply: no RTR line
    is made. None if it is no access line or names no known instance."""
    fields = line.split(b"\t")
    if len(fields) != len(ACCESS_LOG_FIELDS):
        return None
    upstream = last_upstream(fields[_UPSTREAM_FIELD].decode("utf-8", "replace"))
    return backends.get(upstream) if upstream else None


class LazyLines(Sequence[LogLine]):
    """The RTR lines of one app's access lines, each made only when read."""

    def __init__(self, items: list[tuple[bytes, Backend]]) -> None:
        self._items = items

    def __len__(self) -> int:
        return len(self._items)

    @overload
    def __getitem__(self, i: int) -> LogLine: ...
    @overload
    def __getitem__(self, i: slice) -> list[LogLine]: ...
    def __getitem__(self, i: int | slice) -> LogLine | list[LogLine]:
        if isinstance(i, slice):
            return [_line(*item) for item in self._items[i]]
        return _line(*self._items[i])

    def __iter__(self) -> Iterator[LogLine]:
        return (_line(*item) for item in self._items)


_FIELDS = len(ACCESS_LOG_FIELDS)


def _line(raw: bytes, backend: Backend) -> LogLine:
    """:func:`rtr_line` of :func:`parse_access_line`, for the lines the rate limit keeps (a
    thousand a second and more): one split, no entry between."""
    fields = raw.decode("utf-8", "replace").split("\t")
    if len(fields) == _FIELDS:
        _up, msec, method, path, status, sent, duration, request_id, host = fields
        if status.isdigit() and sent.isdigit():
            try:
                t, ms = float(msec), round(float(duration) * 1000)
            except ValueError:
                pass
            else:
                return _rtr(t, method, path, int(status), int(sent), ms, request_id, host,
                            backend)
    entry = parse_access_line(raw)
    if entry is None:  # app_of took it, so only a field nginx never writes is wrong
        return LogLine(t=time.time(), src=RTR, line=raw.decode("utf-8", "replace"), idx="0")
    return rtr_line(entry, backend)


class AccessLogListener:
    """Follows nginx's access log at ``path`` (removed when the listener starts)."""

    flush_interval = 0.05  # seconds a line waits at most, once read, before it is written
    batch = 500  # or until this many lines wait
    rotate_bytes = 32 << 20  # a file this big is rotated
    rotate_drain = 1.0  # seconds the old file is still read after nginx reopened its logs

    def __init__(self, writer: AppLogWriter, path: str | os.PathLike[str]) -> None:
        self.writer = writer
        self.path = Path(path)
        # Has nginx reopen its log files (the router sets it to its nginx's reopen_logs).
        self.reopen: Callable[[], None] | None = None
        self._backends: Mapping[str, Backend] = {}
        self._by_address: Mapping[bytes, Backend] = {}  # the same, by address as nginx logs it
        self._received: dict[str, list[tuple[bytes, Backend]]] = {}  # by app guid
        self._count = 0
        self._file: BinaryIO | None = None
        self._partial = b""
        self._old: tuple[BinaryIO, bytes, float] | None = None  # a rotated file, until done
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()
        self._failing = False

    def set_backends(self, backends: Iterable[Backend]) -> None:
        """The backends nginx serves now (replaced at once; the thread reads the old or new)."""
        by_address = backends_by_address(backends)
        self._backends = by_address
        self._by_address = {address.encode(): b for address, b in by_address.items()}

    def start(self) -> None:
        """Remove the last run's file (its lines were handled or are stale) and follow."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.path.unlink(missing_ok=True)
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="access-log", daemon=True)
            self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=2)
            self._thread = None
        for f in (self._file, self._old[0] if self._old else None):
            if f is not None:
                f.close()
        self._file = self._old = None

    def receive(self, line: bytes) -> None:
        """Keep one access line for its app until the next :meth:`drain`."""
        backend = app_of(line, self._backends)
        if backend is not None:
            self._received.setdefault(backend.app_guid, []).append((line, backend))
            self._count += 1

    def drain(self) -> None:
        """Hand what was read to the writer (which keeps what the rate limits let through)
        and write it to Redis."""
        received, self._received, self._count = self._received, {}, 0
        for app_guid, items in received.items():
            self.writer.add_many(app_guid, LazyLines(items))  # type: ignore[arg-type]
        self._flush()

    def poll(self) -> int:
        """Read what nginx appended since the last poll; returns the bytes read."""
        read = 0
        if self._old is not None:
            f, partial, until = self._old
            data = f.read()
            read += len(data)
            partial = self._lines(partial + data)
            if time.monotonic() >= until:
                f.close()
                self._old = None
            else:
                self._old = (f, partial, until)
        if self._file is None:
            try:
                self._file = open(self.path, "rb")
            except FileNotFoundError:
                return read
        data = self._file.read(4 << 20)
        read += len(data)
        self._partial = self._lines(self._partial + data)
        if self._file.tell() >= self.rotate_bytes and self._old is None:
            self._rotate()
        return read

    def _lines(self, data: bytes) -> bytes:
        """Receive every whole line of ``data``; returns the incomplete rest.

        As :meth:`receive` does, but a line whose first field is one backend's address (all
        but retried requests) is sorted by one slice and one lookup: a busy router reads
        tens of thousands a second."""
        lines = data.split(b"\n")
        rest = lines.pop()
        by_address, received = self._by_address, self._received
        count = 0
        for line in lines:
            backend = by_address.get(line[:line.find(b"\t")])
            if backend is None:
                if line:
                    self.receive(line)  # several addresses, none, or no access line
                continue
            items = received.get(backend.app_guid)
            if items is None:
                items = received[backend.app_guid] = []
            items.append((line, backend))
            count += 1
        self._count += count
        return rest

    def _rotate(self) -> None:
        if self.reopen is None or self._file is None:
            return
        old = self.path.with_name(self.path.name + ".old")
        try:
            os.replace(self.path, old)
            self.reopen()
        except OSError as e:
            log.warning("could not rotate the access log %s: %s", self.path, e)
            return
        self._old = (self._file, self._partial, time.monotonic() + self.rotate_drain)
        self._file, self._partial = None, b""
        old.unlink(missing_ok=True)  # the open file is still read

    def _run(self) -> None:
        next_flush = time.monotonic() + self.flush_interval
        while not self._stop.is_set():
            try:
                got = self.poll()
            except OSError as e:
                log.warning("reading the access log %s failed: %s", self.path, e)
                got = 0
                self._file = None
            if self._count >= self.batch or time.monotonic() >= next_flush:
                self.drain()
                next_flush = time.monotonic() + self.flush_interval
            if not got:
                self._stop.wait(self.flush_interval / 2)
        self.poll()
        self.drain()

    def _flush(self) -> None:
        try:
            self.writer.flush()
        except redis.RedisError as e:  # the lines are lost; the router keeps routing
            if not self._failing:
                log.warning("could not write access lines to Redis (%s); dropping them", e)
            self._failing = True
            return
        self._failing = False
