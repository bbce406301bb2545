"""Shipping instances' stdout and stderr into their apps' log streams.

One follower thread per instance container reads its output, stdout and stderr told apart,
and hands lines to one shared :class:`~logpipe.AppLogWriter`, which a flusher thread
writes to Redis every ``FLUSH_EVERY`` seconds, and at once when a batch is full (followers do
not wait for it).

An instance writes its stdout and stderr to two files of its own, opened to append
(dea_agent.instances, ``instance_log_files``), and its follower reads them as they grow: the
line costs the app a write and the agent a read. Through Docker, each line also cost a
copy in containerd's shim, a copy, a JSON encoding and a write in dockerd, and the agent's
JSON decoding: about half the CPU the whole path took, which at 20k lines/s left the two
cores of a small host no headroom. Writes to a file never block on the reader and never
fail for want of one, so an agent's restart costs the app nothing; the follower frees what
it has read (punching holes, so the offsets stay), and its offsets go to Redis with each
batch, so a restarted agent resumes at the byte where the last one stopped.

Containers started without output files (before ``instance_log_files``, or with it off) are
followed as before: their json-file log read directly when the agent can (it runs on the
container's host, with Docker's data folder readable), else through Docker's API. With each
batch goes then the Docker timestamp of the last shipped line, so a restarted agent that
adopts the container skips the lines it shipped already.
"""

from __future__ import annotations

import ctypes
import errno
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

from contracts import keys
from contracts.settings import Settings
from dea_agent.instances import OUTPUT_FILES, last_lines
from logpipe import APP, AppLogWriter, DockerTime, LogLine, line_of

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
RESUME_BYTES = 256 * 1024  # an output file adopted without a cursor: its last lines from here
RECENT = 20  # lines a follower keeps to explain a crash
FREE_EVERY = 1.0  # seconds between looks at what of the output files can be freed
FREE_AT = 1 << 20  # bytes read and written to Redis before they are freed
MAX_BACKLOG = 64 << 20  # unread bytes of an output file past which the oldest are skipped
BEHIND = ("output may have been lost here: {:,} bytes of it were skipped, as the agent had "
          "fallen too far behind (it was down, or the app wrote faster than it could read)")
BLOCK = 4096
_PUNCH = 0x01 | 0x02  # FALLOC_FL_KEEP_SIZE | FALLOC_FL_PUNCH_HOLE
LOST = ("output may have been lost here: Docker rotated this instance's log file more than "
        "once before the agent read it")


def body(response) -> Iterator[bytes]:
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


def frames(response) -> Iterator[list[tuple[int, bytes]]]:
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


_libc = ctypes.CDLL(None, use_errno=True)
_fallocate = _libc.fallocate
_fallocate.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int64, ctypes.c_int64]


def data_from(fd: int, offset: int) -> int:
    """Where the file's data goes on at or after ``offset``, past a hole (its size when
    only a hole follows; ``offset`` where the file system does not say)."""
    try:
        return os.lseek(fd, offset, os.SEEK_DATA)
    except OSError as e:
        if e.errno == errno.ENXIO:
            return max(offset, os.fstat(fd).st_size)
        return offset


def punch_hole(fd: int, offset: int, length: int) -> None:
    """Free the disk blocks of ``length`` bytes of the file from ``offset``; its size, and
    the offsets of what follows, stay. OSError where the file system cannot."""
    if _fallocate(fd, _PUNCH, offset, length) != 0:
        code = ctypes.get_errno()
        raise OSError(code, os.strerror(code))


class Follower(threading.Thread):
    """Copies one container's output to its app's stream until the container ends."""

    def __init__(self, shipper: LogShipper, instance, since_ns: int = 0,
                 tail: int | str = "all", offsets: dict[int, int] | None = None) -> None:
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
        # Output files: where their next unread byte is (from the cursor when adopted).
        self.output_dir = getattr(instance, "output_dir", "")
        self.offsets = dict(offsets or {})
        self.read_to: dict[int, int] = {}  # file -> bytes read so far
        self.recent: deque[str] = deque(maxlen=RECENT)  # its last lines, to explain a crash

    def run(self) -> None:
        try:
            self._follow()
        except Exception as e:  # the container or Docker went away under us
            if not self.stopped.is_set():
                log.debug("log stream of %s ended: %s", self.container_id[:12], e)
        self.shipper.ended(self)

    def _follow(self) -> None:
        if self.output_dir:
            self._follow_output()
            return
        clock = DockerTime()
        path = self._log_path()
        if path is not None:
            self._follow_file(path, clock)
        else:
            self._follow_api(clock)

    def _follow_output(self) -> None:
        """Read the instance's stdout and stderr files as they grow, until the container
        ends (and for a last time then) or the follower is stopped (likewise)."""
        fds: dict[int, int] = {}
        try:
            for fd, name in OUTPUT_FILES.items():
                path = os.path.join(self.output_dir, name)
                try:
                    fds[fd] = os.open(path, os.O_RDWR)  # writable: to free what was read
                except PermissionError:
                    fds[fd] = os.open(path, os.O_RDONLY)
                except FileNotFoundError:
                    continue
            if fds:
                self._read_output(fds)
        finally:
            for f in fds.values():
                os.close(f)

    def _read_output(self, fds: dict[int, int]) -> None:
        pos = {fd: self.offsets.get(fd, 0) for fd in fds}  # the next byte to read
        rest = {fd: b"" for fd in fds}  # a line without its newline yet
        skip = dict.fromkeys(fds, False)  # the first line read is a piece: drop it
        if self.tail != "all":  # adopted without a cursor: its last lines (0: from the end)
            for fd, f in fds.items():
                size = os.fstat(f).st_size
                pos[fd] = max(pos[fd], size - RESUME_BYTES) if self.tail else size
                skip[fd] = 0 < pos[fd] < size
        freed = dict.fromkeys(fds, 0)
        # Offsets of a cursor handed to the writer by ``safe_at``: once a flush that began
        # after that succeeded, what lies before them is in Redis and may be freed.
        safe, safe_at = dict(pos), time.monotonic()
        can_free = True
        self.read_to = dict(pos)
        cursors = keys.app_log_cursors(self.shipper.settings.agent_id)
        proc, idx, app, name = self.proc, self.idx, APP, FDS
        writer = self.shipper.writer

        def ship(lines: list[LogLine]) -> None:
            writer.add_many(self.app_guid, lines)
            writer.set_cursor(cursors, self.container_id, "f" + ":".join(
                str(pos.get(fd, 0) - len(rest.get(fd, b""))) for fd in OUTPUT_FILES))
            if writer.full():
                self.shipper.flush_soon()  # the flusher writes; this goes on reading

        looked, last_read = float("-inf"), time.monotonic()
        ending = False
        while True:
            stopping = self.stopped.is_set()
            now, mono = time.time(), time.monotonic()
            if mono - looked >= FREE_EVERY:  # also while reading flat out
                looked = mono
                for fd, f in fds.items():
                    size = os.fstat(f).st_size
                    if size - pos[fd] > MAX_BACKLOG:  # the agent was down long, or is slow
                        skipped = size - RESUME_BYTES - pos[fd]
                        pos[fd], skip[fd], rest[fd] = size - RESUME_BYTES, True, b""
                        ship([LogLine(now, app, BEHIND.format(skipped), proc, idx, name[fd])])
                if can_free and self.shipper.written_at >= safe_at:
                    can_free = self._free(fds, freed, safe)
                safe, safe_at = {fd: pos[fd] - len(rest[fd]) for fd in fds}, time.monotonic()
                if mono - last_read > 1.0 and not stopping and not self._running():
                    ending = True  # one more read: the last lines, then end
            lines: list[LogLine] = []
            more = False
            for fd, f in fds.items():
                at = pos[fd]
                data = os.pread(f, READ_SIZE, at)
                if not data:
                    if os.fstat(f).st_size < at:  # the app truncated it: from the top
                        pos[fd] = freed[fd] = safe[fd] = 0
                        rest[fd] = b""
                    continue
                size = len(data)
                if data[0] == 0 and not rest[fd]:  # a hole: the app wrote past the end
                    data = data.lstrip(b"\0")  # (or one this follower freed, before a crash)
                    if not data:  # on to where data is again
                        pos[fd], more = data_from(f, at + size), True
                        continue
                pos[fd] = at + size
                more = more or size == READ_SIZE
                if rest[fd]:
                    data = rest[fd] + data
                end = data.rfind(b"\n") + 1
                if len(data) - end >= MAX_PENDING:  # a very long line: cut here
                    whole, rest[fd] = data + b"\n", b""
                else:
                    whole, rest[fd] = data[:end], data[end:]
                if skip[fd] and whole:
                    whole, skip[fd] = whole[whole.find(b"\n") + 1:], False
                if not whole:
                    continue
                texts = whole[:-1].decode("utf-8", "replace").split("\n")
                if self.tail not in ("all", 0):
                    texts = texts[-int(self.tail):]
                where = name[fd]
                lines.extend([line_of((now, app, text, proc, idx, where)) for text in texts])
                self.recent.extend(texts[-RECENT:])
            self.tail = "all"
            self.read_to = dict(pos)
            if lines:
                last_read = mono
                ship(lines)
            if more:
                continue
            if stopping or ending:  # that was the last read; a last line may lack its "\n"
                last = [(fd, r) for fd, r in rest.items() if r]
                for fd, r in last:
                    rest[fd] = b""
                    text = r.decode("utf-8", "replace")
                    self.recent.append(text)
                    lines.append(line_of((now, app, text, proc, idx, name[fd])))
                if last:
                    ship(lines[-len(last):])
                break
            # Quiet for a while: look less often (an agent has many mostly idle instances);
            # the first line after a pause waits at most IDLE_PAUSE.
            self.stopped.wait(READ_PAUSE if mono - last_read < 0.25 else IDLE_PAUSE)

    def _free(self, fds: dict[int, int], freed: dict[int, int], safe: dict[int, int]) -> bool:
        """Free the disk blocks of what was shipped up to ``safe``, once it is ``FREE_AT``
        or more; False when this file system (or a read-only handle) cannot."""
        for fd, f in fds.items():
            upto = safe[fd] // BLOCK * BLOCK
            if upto - freed[fd] < FREE_AT or os.fstat(f).st_size < safe[fd]:
                continue  # little to free, or the app truncated the file meanwhile
            try:
                punch_hole(f, freed[fd], upto - freed[fd])
            except OSError as e:
                level = logging.DEBUG if e.errno == errno.EBADF else logging.WARNING
                log.log(level, "cannot free what was read of %s's output (%s): it grows "
                        "until the instance is removed", self.container_id[:12], e)
                return False
            freed[fd] = upto
        return True

    def caught_up(self, timeout: float) -> None:
        """Wait (at most ``timeout``) until what the output files hold now is read."""
        if not self.output_dir or not self.is_alive():
            return
        sizes = {}
        for fd, name in OUTPUT_FILES.items():
            try:
                sizes[fd] = os.path.getsize(os.path.join(self.output_dir, name))
            except OSError:
                pass
        deadline = time.monotonic() + timeout
        while self.is_alive() and time.monotonic() < deadline and any(
                self.read_to.get(fd, 0) < size for fd, size in sizes.items()):
            time.sleep(READ_PAUSE)

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
                files.append(open(name, "rb"))
            except FileNotFoundError:
                pass
        if not files:
            return
        try:
            self._read_files(path, files, clock)
        finally:
            for f in files:
                f.close()

    def _read_files(self, path: str, files: list, clock: DockerTime) -> None:
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
                    older = open(path + ".1", "rb")
                    if os.fstat(older.fileno()).st_ino == newest:
                        older.close()
                    else:  # rotated more than once since the last look
                        files.append(older)
                        self._ship([LogLine(time.time(), APP, LOST, self.proc,
                                            self.idx, "err")], None)
                except FileNotFoundError:
                    pass
                try:
                    files.append(open(path, "rb"))
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

    def _ship(self, entries, backlog: deque | None) -> None:
        """Hand (fd, ns, text) entries to the writer as lines, or, while the backlog of an
        adopted container is read, keep its last ones. A LogLine passes as it is."""
        last, pending, since = self.last, self.pending, self.since_ns
        proc, idx, app = self.proc, self.idx, APP
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
            except Exception:
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
        self.recent: dict[str, deque[str]] = {}  # ended followers' last lines, by instance
        self.written_at = 0.0  # when the last flush that succeeded began (monotonic)

    def follow(self, instance, resume: bool = False) -> None:
        """Ship ``instance``'s output: all of it, or (``resume``, an adopted container) what
        follows the last line shipped before the agent restarted.

        An adopted container without a cursor had nothing shipped (or Redis lost its
        streams): its last ``RESUME_TAIL`` lines are shipped.
        """
        since_ns, tail, offsets = 0, "all", None
        if resume:
            try:
                raw = self.redis.hget(keys.app_log_cursors(self.settings.agent_id),
                                      instance.container_id)
                raw = raw.decode() if isinstance(raw, bytes) else raw or ""
                if raw.startswith("f"):  # output files: where each was read to
                    offsets = dict(zip(OUTPUT_FILES, map(int, raw[1:].split(":")),
                                       strict=True))
                else:
                    since_ns = int(raw) if raw else 0
            except (redis.RedisError, ValueError):
                since_ns = time.time_ns()  # unknown: from now on, rather than twice
                tail = 0 if instance.output_dir else tail
            if not since_ns and offsets is None and tail == "all":
                tail = RESUME_TAIL
        with self.lock:
            if instance.guid in self.followers or not instance.container_id:
                return
            self.recent.pop(instance.guid, None)
            follower = self.followers[instance.guid] = Follower(self, instance, since_ns, tail,
                                                                offsets)
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
            self.recent.pop(instance_guid, None)
        if follower is not None:
            follower.stop()

    def last_lines(self, instance_guid: str, count: int = 10) -> list[str]:
        """The last lines an instance wrote to its output files, once its follower has read
        what they hold (an empty list when it has none)."""
        with self.lock:
            follower = self.followers.get(instance_guid)
        if follower is not None:
            follower.caught_up(timeout=1.0)
            recent = follower.recent
        else:
            recent = self.recent.get(instance_guid) or deque()
        return last_lines(list(recent), count)

    def ended(self, follower: Follower) -> None:
        self.flush()
        with self.lock:
            if self.followers.get(follower.guid) is follower:
                self.followers.pop(follower.guid, None)
                if follower.recent:  # to explain a crash the agent has yet to notice
                    self.recent[follower.guid] = follower.recent
        try:  # the container is gone: its cursor is of no more use
            self.redis.hdel(keys.app_log_cursors(self.settings.agent_id), follower.container_id)
        except redis.RedisError:
            pass

    def flush(self) -> None:
        with self.flush_lock:
            began = time.monotonic()
            try:
                self.writer.flush()
            except redis.RedisError as e:
                log.warning("could not write app log lines (dropped): %s", e)
            else:
                self.written_at = began  # lines and cursors handed over by then are stored

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
