"""Shipping instances' stdout and stderr into their apps' log streams.

One follower thread per instance container reads Docker's log stream (``follow``, with
timestamps, stdout and stderr told apart) and hands lines to one shared
:class:`~contracts.applog.AppLogWriter`, which a flusher thread writes to Redis every
``FLUSH_EVERY`` seconds (and a follower at once when a batch is full).

With each batch goes the Docker timestamp of the container's last shipped line, into a hash
per agent: a restarted agent that adopts the container asks Docker for the lines since then
and skips those it shipped already, so no line is lost or doubled.
"""

from __future__ import annotations

import logging
import struct
import threading
import time

import docker
import redis

from contracts import applog, keys
from contracts.applog import AppLogWriter, DockerTime, LogLine
from contracts.settings import Settings

log = logging.getLogger("paas.agent.logs")
FLUSH_EVERY = 0.05
MAX_PENDING = 64 * 1024  # bytes of a line without its newline yet, before it is cut
FDS = {1: "out", 2: "err"}
RESUME_TAIL = 1000


def frames(response) -> object:  # noqa: ANN001
    """Lists of (fd, payload), the frames of a multiplexed Docker stream (non-TTY
    container) as they arrive, read in large pieces."""
    buf = bytearray()
    raw = response.raw
    while True:
        chunk = raw.read1(65536)
        if not chunk:
            return
        buf += chunk
        pos, end = 0, len(buf)
        found = []
        while end - pos >= 8:
            fd, size = struct.unpack_from(">BxxxL", buf, pos)
            if end - pos - 8 < size:
                break
            found.append((fd, bytes(buf[pos + 8:pos + 8 + size])))
            pos += 8 + size
        del buf[:pos]
        if found:
            yield found


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
        clock, writer = DockerTime(), self.shipper.writer
        cursor_key = keys.app_log_cursors(self.shipper.settings.agent_id)
        pending = {1: b"", 2: b""}
        # Per stream, the last line's time: lines shipped before this agent restarted, and
        # lines Docker sends again (its json-file follow can repeat some across a rotation
        # of the log file), are not shipped twice.
        last = {1: self.since_ns, 2: self.since_ns}
        for batch in frames(response):
            if self.stopped.is_set():
                break
            lines = []
            for fd, payload in batch:
                stamp, _, text = payload.partition(b" ")
                ns = clock.ns(stamp)
                if ns <= last.get(fd, self.since_ns):
                    continue
                last[fd] = ns
                # Docker splits lines over 16 KiB into frames without a newline.
                if not text.endswith(b"\n"):
                    pending[fd] = pending.get(fd, b"") + text
                    if len(pending[fd]) < MAX_PENDING:
                        continue
                    text, pending[fd] = pending[fd], b""
                elif pending.get(fd):
                    text, pending[fd] = pending[fd] + text, b""
                lines.append(LogLine(
                    ns / 1e9, applog.APP, text.rstrip(b"\n").decode("utf-8", "replace"),
                    self.proc, self.idx, FDS.get(fd, "out")))
            if lines:
                writer.add_many(self.app_guid, lines)
                writer.set_cursor(cursor_key, self.container_id, max(last.values()))
                if writer.full():
                    self.shipper.flush()

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

    def _flush_loop(self) -> None:
        while True:
            time.sleep(FLUSH_EVERY)
            try:
                self.flush()
            except Exception:  # never let the flusher die: every follower relies on it
                log.exception("writing app log lines failed")
