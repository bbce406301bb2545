"""Shipping instances' stdout and stderr into their apps' log streams.

One follower thread per instance container reads its output, stdout and stderr told apart,
with Docker's timestamps, and hands lines to one shared
:class:`~contracts.applog.AppLogWriter`, which a flusher thread writes to Redis every
``FLUSH_EVERY`` seconds, and at once when a batch is full (followers do not wait for it).
A follower reads the container's json-file log itself, as Filebeat or Promtail do, when the
agent can (it runs on the container's host, with Docker's data folder readable): that costs
Docker nothing more than writing the file. Otherwise it follows the log through Docker's
API, which costs Docker a decode, an encode and a write per line, and caps one stream near
15k lines/s on 2 cores.

With each batch goes the Docker timestamp of the container's last shipped line, into a hash
per agent: a restarted agent that adopts the container reads the lines since then and skips
those it shipped already, so no line is lost or doubled.
"""

from __future__ import annotations

import gc
import json
import logging
import os
import struct
import threading
import time
from collections import deque
from collections.abc import Iterator

import docker
import redis

from contracts import applog, keys
from contracts.applog import AppLogWriter, DockerTime, LogLine, line_of
from contracts.settings import Settings

log = logging.getLogger("paas.agent.logs")
FLUSH_EVERY = 0.02
READ_SIZE = 1 << 20
READ_PAUSE = 0.005
IDLE_PAUSE = 0.05
_HEADER = struct.Struct(">BxxxL").unpack_from
_scan = json.decoder.scanstring  # type: ignore[attr-defined]
_OUT, _ERR = ',"stream":"stdout","time":"', ',"stream":"stderr","time":"'
MAX_PENDING = 64 * 1024  # bytes of a line without its newline yet, before it is cut
FDS = {1: "out", 2: "err"}
RESUME_TAIL = 1000
LOST = ("output may have been lost here: Docker rotated this instance's log file more than "
        "once before the agent read it")


def body(response) -> Iterator[bytes]:  # noqa: ANN001
    """The body of Docker's (chunked) log response in large pieces, as it arrives.

    Docker sends each frame, so each line, in an HTTP chunk of its own, and urllib3 (like
    http.client) returns at most one chunk a read: a Python round trip per line. So the
    chunks are taken apart here, from what the socket has at each read. A response that is
    not chunked, or that urllib3 has begun to read, is read through urllib3.
    """
    raw = response.raw
    inner = getattr(raw, "_fp", None)  # http.client's response under urllib3's
    fp = getattr(inner, "fp", None)
    if fp is None or not getattr(inner, "chunked", False) or inner.chunk_left is not None:
        while chunk := raw.read1(READ_SIZE):
            yield chunk
        return
    buf = b""
    while True:
        data = fp.read1(READ_SIZE)
        if not data:
            return
        buf = buf + data if buf else data
        pieces, pos, end = [], 0, len(buf)
        while True:
            eol = buf.find(b"\r\n", pos)
            if eol < 0:
                break
            size = int(buf[pos:eol].split(b";", 1)[0], 16)
            if size == 0:  # the last chunk: the container ended
                if pieces:
                    yield b"".join(pieces)
                return
            start = eol + 2
            if start + size + 2 > end:
                break
            pieces.append(buf[start:start + size])
            pos = start + size + 2
        buf = buf[pos:]
        if pieces:
            yield b"".join(pieces)


def frames(response) -> Iterator[list[tuple[int, bytes]]]:  # noqa: ANN001
    """Lists of (fd, payload), the frames of a multiplexed Docker stream (non-TTY
    container) as they arrive, read in large pieces."""
    buf = b""
    for chunk in body(response):
        buf = buf + chunk if buf else chunk
        pos, end = 0, len(buf)
        found = []
        while end - pos >= 8:
            fd, size = _HEADER(buf, pos)
            if end - pos - 8 < size:
                break
            found.append((fd, buf[pos + 8:pos + 8 + size]))
            pos += 8 + size
        buf = buf[pos:]
        if found:
            yield found
        if len(chunk) < READ_SIZE // 8:
            # Little came: let more gather (the flusher writes every FLUSH_EVERY anyway), so
            # a steady trickle costs a read per few milliseconds, not one per line.
            time.sleep(READ_PAUSE)


class Follower(threading.Thread):
    """Copies one container's output to its app's stream until the container ends."""

    def __init__(self, shipper: LogShipper, instance, since_ns: int,  # noqa: ANN001
                 tail: int | str = "all") -> None:
        super().__init__(daemon=True, name=f"logs-{instance.guid[:8]}")
        self.shipper = shipper
        self.guid = instance.guid
        self.app_guid = instance.app_guid
        self.container_id = instance.container_id
        self.proc, self.idx = instance.process_type, str(instance.index)
        self.since_ns, self.tail = since_ns, tail
        # Per stream, the last line's time: lines shipped before this agent restarted, and
        # lines read again (Docker's follow can repeat some across a rotation of its log
        # file), are not shipped twice.
        self.last = {1: since_ns, 2: since_ns}
        self.pending = {1: "", 2: ""}  # a line Docker split (over 16 KiB), so far
        self.response = None
        self.stopped = threading.Event()

    def run(self) -> None:
        try:
            self._follow()
        except Exception as e:  # the container or Docker went away under us
            if not self.stopped.is_set():
                log.debug("log stream of %s ended: %s", self.container_id[:12], e)
        self.shipper.ended(self)

    def _follow(self) -> None:
        clock = DockerTime()
        path = self._log_path()
        if path is not None:
            self._follow_file(path, clock)
        else:
            self._follow_api(clock)

    def _log_path(self) -> str | None:
        """The container's json-file log, when this agent may read it (it runs on the
        container's host with access to Docker's data folder), else None."""
        try:
            attrs = self.shipper.docker.api.inspect_container(self.container_id)
        except docker.errors.APIError:
            return None
        path = attrs.get("LogPath") or ""
        kind = ((attrs.get("HostConfig") or {}).get("LogConfig") or {}).get("Type")
        if kind != "json-file" or not path or not os.access(path, os.R_OK):
            return None
        return path

    def _follow_file(self, path: str, clock: DockerTime) -> None:
        """Read Docker's json-file log of the container as it grows: a read takes whatever
        was written since the last (a pause of ``READ_PAUSE`` when there was nothing).

        Docker rotates the file (``path`` becomes ``path.1``, ``path.1`` is deleted); a file
        is read to its end through the handle held open here, whatever its name became, and
        the new ``path`` is opened when it appears. When Docker rotated twice between two
        looks, the file between may have been deleted unread: a line says so.
        """
        files = []  # open, oldest first: the first is being read
        for name in (path + ".1", path):
            try:
                files.append(open(name, "rb"))  # noqa: SIM115  held across rotations
            except FileNotFoundError:
                pass
        if not files:
            return
        try:
            self._read_files(path, files, clock)
        finally:
            for f in files:
                f.close()

    def _read_files(self, path: str, files: list, clock: DockerTime) -> None:  # noqa: ANN001
        newest = os.fstat(files[-1].fileno()).st_ino
        backlog: deque | None = deque(maxlen=self.tail) if self.tail != "all" else None
        rest, quiet_since, ending = b"", time.monotonic(), False
        last_read = quiet_since
        while not self.stopped.is_set():
            read = files[0].read(READ_SIZE)
            if read:
                data, rest = rest + read, b""
                end = data.rfind(b"\n") + 1
                if end < len(data):
                    data, rest = data[:end], data[end:]
                if end:
                    self._ship(self._decode_json(data, clock), backlog)
                if len(read) == READ_SIZE or len(files) > 1:
                    continue  # more is there now
            elif len(files) > 1:  # a rotated file, read to its end
                files.pop(0).close()
                rest = b""
                continue
            if backlog is not None:  # what was there at the start, read: its last lines
                lines, backlog = list(backlog), None
                self._ship(lines, None)
            if ending:
                break
            try:
                ino = os.stat(path).st_ino
            except FileNotFoundError:  # being rotated, or the container was removed
                ending = not self._running()
                time.sleep(READ_PAUSE)
                continue
            if ino != newest:  # rotated (``newest`` is held open: its number is not reused)
                try:
                    older = open(path + ".1", "rb")  # noqa: SIM115
                    if os.fstat(older.fileno()).st_ino == newest:
                        older.close()
                    else:  # rotated more than once since the last look
                        files.append(older)
                        self._ship([LogLine(time.time(), applog.APP, LOST, self.proc,
                                            self.idx, "err")], None)
                except FileNotFoundError:
                    pass
                try:
                    files.append(open(path, "rb"))  # noqa: SIM115
                    newest = os.fstat(files[-1].fileno()).st_ino
                except FileNotFoundError:
                    pass  # rotating: the next look finds it
                continue
            now = time.monotonic()
            if read:
                quiet_since = last_read = now
            elif now - quiet_since > 1.0:
                quiet_since = now
                ending = not self._running()  # one more read: the last lines, then end
                continue
            # Quiet for a while: look less often (an agent has many mostly idle instances);
            # the first line after a pause waits at most IDLE_PAUSE.
            time.sleep(READ_PAUSE if now - last_read < 0.25 else IDLE_PAUSE)

    def _running(self) -> bool:
        try:
            state = self.shipper.docker.api.inspect_container(self.container_id)["State"]
        except docker.errors.NotFound:
            return False
        except docker.errors.APIError:
            return True  # Docker hiccups: keep reading
        return bool(state.get("Running") or state.get("Restarting"))

    def _decode_json(self, data: bytes, clock: DockerTime) -> list[tuple[int, int, str]]:
        """(fd, Docker time in ns, text) of each whole line of the json-file in ``data``.

        Docker writes ``{"log":"...","stream":"stdout","time":"..."}``: that shape is read
        with json's string scanner only, anything else with ``json.loads``."""
        out = []
        append, ns = out.append, clock.ns_text
        skip = len(_OUT)  # == len(_ERR)
        for raw in data.decode("utf-8", "replace").split("\n"):
            if not raw:
                continue
            try:
                if raw.startswith('{"log":"') and raw.endswith('"}'):
                    text, end = _scan(raw, 8)
                    if raw.startswith(_OUT, end):
                        append((1, ns(raw[end + skip:-2]), text))
                        continue
                    if raw.startswith(_ERR, end):
                        append((2, ns(raw[end + skip:-2]), text))
                        continue
                entry = json.loads(raw)
                append((2 if entry["stream"] == "stderr" else 1, ns(entry["time"]),
                        entry["log"]))
            except (ValueError, KeyError, TypeError, AttributeError):
                continue  # not a log entry
        return out

    def _follow_api(self, clock: DockerTime) -> None:
        api = self.shipper.docker.api
        params: dict[str, object] = {"stdout": 1, "stderr": 1, "timestamps": 1, "follow": 1,
                                     "tail": self.tail}
        if self.since_ns:
            params["since"] = f"{self.since_ns // 1_000_000_000}.{self.since_ns % 10**9:09d}"
        # Docker SDK's container.logs() drops which of stdout/stderr a frame came from, so
        # the same request is made through its low-level client and the frames read here.
        response = api._get(api._url("/containers/{0}/logs", self.container_id),
                            params=params, stream=True, timeout=None)
        api._raise_for_status(response)
        self.response = response
        for batch in frames(response):
            if self.stopped.is_set():
                break
            entries = []
            for fd, payload in batch:
                stamp, _, text = payload.partition(b" ")
                entries.append((fd, clock.ns(stamp), text.decode("utf-8", "replace")))
            self._ship(entries, None)

    def _ship(self, entries, backlog: deque | None) -> None:  # noqa: ANN001
        """Hand (fd, ns, text) entries to the writer as lines, or, while the backlog of an
        adopted container is read, keep its last ones. A LogLine passes as it is."""
        last, pending, since = self.last, self.pending, self.since_ns
        proc, idx, app = self.proc, self.idx, applog.APP
        lines: list[LogLine] = []
        append = lines.append
        for entry in entries:
            if isinstance(entry, LogLine):
                append(entry)
                continue
            fd, ns, text = entry
            if ns <= last.get(fd, since):
                continue
            last[fd] = ns
            # Docker splits lines over 16 KiB into pieces without a newline.
            if text[-1:] != "\n":
                pending[fd] = pending.get(fd, "") + text
                if len(pending[fd]) < MAX_PENDING:
                    continue
                text, pending[fd] = pending[fd], ""
            else:
                text = text[:-1]
                if pending.get(fd):
                    text, pending[fd] = pending[fd] + text, ""
            append(line_of((ns / 1e9, app, text, proc, idx, FDS.get(fd, "out"))))
        if backlog is not None:
            backlog.extend(lines)
            return
        if lines:
            writer = self.shipper.writer
            writer.add_many(self.app_guid, lines)
            writer.set_cursor(keys.app_log_cursors(self.shipper.settings.agent_id),
                              self.container_id, max(last.values()))
            if writer.full():
                self.shipper.flush_soon()  # the flusher writes; this goes on reading

    def stop(self) -> None:
        self.stopped.set()
        response = self.response
        if response is not None:
            try:
                response.close()
            except Exception:  # noqa: BLE001  already closed
                pass


class LogShipper:
    def __init__(self, settings: Settings, docker_client: docker.DockerClient,
                 redis_client: redis.Redis) -> None:
        self.settings = settings
        self.docker = docker_client
        self.redis = redis_client
        self.writer = AppLogWriter.from_settings(redis_client, settings)
        self.lock = threading.Lock()
        self.flush_lock = threading.Lock()
        self.followers: dict[str, Follower] = {}
        self.flusher: threading.Thread | None = None
        self.due = threading.Event()  # a batch is full: the flusher writes at once

    def follow(self, instance, resume: bool = False) -> None:  # noqa: ANN001
        """Ship ``instance``'s output: all of it, or (``resume``, an adopted container) what
        follows the last line shipped before the agent restarted.

        An adopted container without a cursor had nothing shipped (or Redis lost its
        streams): its last ``RESUME_TAIL`` lines are shipped.
        """
        since_ns, tail = 0, "all"
        if resume:
            try:
                raw = self.redis.hget(keys.app_log_cursors(self.settings.agent_id),
                                      instance.container_id)
                since_ns = int(raw) if raw else 0
            except (redis.RedisError, ValueError):
                since_ns = time.time_ns()  # unknown: from now on, rather than twice
            if not since_ns:
                tail = RESUME_TAIL
        with self.lock:
            if instance.guid in self.followers or not instance.container_id:
                return
            follower = self.followers[instance.guid] = Follower(self, instance, since_ns, tail)
            if self.flusher is None:
                # The agent's modules are loaded by now and live as long as it does: keep
                # them out of the collector's full passes, which shipping lines triggers
                # every few seconds (a pass over all of them stalled the shipping 50-140 ms).
                gc.freeze()
                self.flusher = threading.Thread(target=self._flush_loop, daemon=True,
                                                name="logs-flush")
                self.flusher.start()
        follower.start()

    def stop(self, instance_guid: str) -> None:
        """Stop following (the instance was removed); what was read is still written."""
        with self.lock:
            follower = self.followers.pop(instance_guid, None)
        if follower is not None:
            follower.stop()

    def ended(self, follower: Follower) -> None:
        self.flush()
        with self.lock:
            if self.followers.get(follower.guid) is follower:
                self.followers.pop(follower.guid, None)
        try:  # the container is gone: its cursor is of no more use
            self.redis.hdel(keys.app_log_cursors(self.settings.agent_id), follower.container_id)
        except redis.RedisError:
            pass

    def flush(self) -> None:
        with self.flush_lock:
            try:
                self.writer.flush()
            except redis.RedisError as e:
                log.warning("could not write app log lines (dropped): %s", e)

    def flush_soon(self) -> None:
        """Have the flusher write now rather than at its next tick."""
        self.due.set()

    def _flush_loop(self) -> None:
        """Write what the followers read, every ``FLUSH_EVERY`` or as soon as a batch is
        full. Followers do not wait for Redis: they read and decode the next lines while the
        last are written. (A follower that wrote its own full batches read nothing while
        Redis worked, and on a loaded machine each wait for Redis, then for a core again,
        let it fall further behind.)"""
        while True:
            self.due.wait(FLUSH_EVERY)
            self.due.clear()
            try:
                self.flush()
            except Exception:  # never let the flusher die: every follower relies on it
                log.exception("writing app log lines failed")
