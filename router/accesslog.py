"""Access lines from nginx into each app's log stream, as ``RTR`` lines.

nginx sends one syslog datagram per proxied request to a UDP socket of the router on
127.0.0.1 (see ``render._access_log``); the fields are those of ``render.ACCESS_LOG_FIELDS``,
tab-separated. Parsing a datagram and turning it into a log line of the app whose instance
answered are pure functions; :class:`AccessLogListener` is the I/O: a thread that receives
datagrams and writes them in batches through :class:`contracts.applog.AppLogWriter` (so the
app's rate limit and stream cap apply, and a busy router makes one Redis call per batch).

A request nginx did not proxy (unknown host) or whose upstream address is in no route of
the table nginx serves gives no line: there is no app to give it to.
"""

from __future__ import annotations

import logging
import re
import socket
import threading
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

import redis

from contracts.applog import RTR, AppLogWriter, LogLine
from contracts.messages import Route
from router.render import ACCESS_LOG_FIELDS, ACCESS_LOG_TAG

log = logging.getLogger("paas.router")

# "<190>Nov 29 20:01:17 paas: " (nohostname): priority, timestamp, tag.
_SYSLOG_HEADER = re.compile(
    rb"<\d{1,3}>[A-Z][a-z]{2} [ 0-9]\d \d\d:\d\d:\d\d " + re.escape(ACCESS_LOG_TAG.encode())
    + rb": "
)
# In $upstream_addr, ", " separates servers tried in one upstream, " : " upstreams tried
# after an internal redirect; the last address is the one whose answer the client got.
_UPSTREAM_SEP = re.compile(r", | : ")


@dataclass(frozen=True)
class AccessEntry:
    """One request as nginx logged it."""

    t: float  # epoch seconds when the request ended
    method: str
    path: str  # with the query string, escaped by nginx (\xXX)
    status: int
    bytes_sent: int
    duration_ms: int
    upstream: str  # the backend that answered last (ip:port), "" if none
    request_id: str
    host: str


def parse_access_line(datagram: bytes) -> AccessEntry | None:
    """The entry in one syslog datagram from nginx, or None if it is not one."""
    header = _SYSLOG_HEADER.match(datagram)
    if header is None:
        return None
    text = datagram[header.end():].rstrip(b"\n").decode("utf-8", "replace")
    fields = text.split("\t")
    if len(fields) != len(ACCESS_LOG_FIELDS):
        return None
    msec, method, path, status, sent, duration, upstream, request_id, host = fields
    try:
        entry = AccessEntry(
            t=float(msec),
            method=method,
            path=path,
            status=int(status),
            bytes_sent=int(sent),
            duration_ms=round(float(duration) * 1000),
            upstream=last_upstream(upstream),
            request_id=request_id,
            host=host,
        )
    except ValueError:
        return None
    return entry


def last_upstream(upstream_addr: str) -> str:
    """The address that answered last in nginx's ``$upstream_addr``, "" if none was tried."""
    last = _UPSTREAM_SEP.split(upstream_addr.strip())[-1].strip()
    return "" if last in ("", "-") or last.startswith("@") else last


def routes_by_backend(routes: Iterable[Route]) -> dict[str, Route]:
    """Each backend address (as nginx writes it: ``ip:port``, ``[ip6]:port``) to its route."""
    out: dict[str, Route] = {}
    for route in sorted(routes, key=Route.to_json):  # same input, same choice
        if isinstance(route.backend, str) and isinstance(route.app_guid, str) and route.app_guid:
            out.setdefault(route.backend, route)
    return out


def rtr_line(entry: AccessEntry, route: Route) -> LogLine:
    """The RTR line of ``entry`` for the app of ``route`` (the instance that answered)."""
    index = route.index if isinstance(route.index, int) else 0
    text = (
        f"{entry.method} {entry.path} {entry.status} {entry.bytes_sent} bytes "
        f"{entry.duration_ms} ms instance {index} request-id {entry.request_id} "
        f"host {entry.host}"
    )
    return LogLine(t=entry.t, src=RTR, line=text, idx=str(index))


def app_line(datagram: bytes, backends: Mapping[str, Route]) -> tuple[str, LogLine] | None:
    """``(app guid, RTR line)`` for one datagram, or None if it names no known instance."""
    entry = parse_access_line(datagram)
    if entry is None or not entry.upstream:
        return None
    route = backends.get(entry.upstream)
    if route is None:
        return None
    return route.app_guid, rtr_line(entry, route)


class AccessLogListener:
    """Receives nginx's access datagrams on ``127.0.0.1:<port>`` (port 0: any free one)."""

    flush_interval = 0.05  # seconds a received line waits at most before it is written

    def __init__(self, writer: AppLogWriter, port: int = 0) -> None:
        self.writer = writer
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 * 1024 * 1024)
        self.sock.bind(("127.0.0.1", port))
        self.sock.settimeout(self.flush_interval)
        self.port: int = self.sock.getsockname()[1]
        self._backends: Mapping[str, Route] = {}
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()
        self._failing = False

    def set_routes(self, routes: Iterable[Route]) -> None:
        """The routes nginx serves now (replaced at once; the thread reads the old or new)."""
        self._backends = routes_by_backend(routes)

    def start(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="access-log", daemon=True)
            self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=2)
            self._thread = None
        self.sock.close()

    def receive(self, datagram: bytes) -> None:
        found = app_line(datagram, self._backends)
        if found is not None:
            self.writer.add(*found)

    def _run(self) -> None:
        next_flush = time.monotonic() + self.flush_interval
        while not self._stop.is_set():
            try:
                self.receive(self.sock.recv(65535))
            except TimeoutError:
                pass
            except OSError as e:
                if self._stop.is_set():
                    break
                log.warning("receiving access lines failed: %s", e)
                self._stop.wait(self.flush_interval)
            if self.writer.full() or time.monotonic() >= next_flush:
                self._flush()
                next_flush = time.monotonic() + self.flush_interval
        self._flush()

    def _flush(self) -> None:
        try:
            self.writer.flush()
        except redis.RedisError as e:  # the lines are lost; the router keeps routing
            if not self._failing:
                log.warning("could not write access lines to Redis (%s); dropping them", e)
            self._failing = True
            return
        self._failing = False
