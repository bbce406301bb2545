"""One-off tasks (``paas run``): a command in a new container of an app's release.

The container is an instance's twin (same image, env, user, limits and ``.profile.d``
launch) without a port. Its output goes, line by line, to the task's Redis stream
(``keys.task_log``), then its exit code (or an ``error`` entry when it could not run), then
the end marker; the container is removed afterwards. Containers carry ``paas.kind=task``,
so the agent never adopts them as instances and the platform's clean-up removes them.
"""

from __future__ import annotations

import codecs
import json
import logging
import threading
from collections.abc import Iterable, Iterator

import docker
import docker.errors
import redis

from confinement.networks import NetworkError, Networks
from contracts import keys
from contracts.labels import (
    KIND_TASK,
    LABEL_AGENT,
    LABEL_APP_GUID,
    LABEL_APP_NAME,
    LABEL_KIND,
    LABEL_PLATFORM,
    LABEL_RELEASE,
    LABEL_TASK,
)
from contracts.messages import TaskSpec, unseal
from contracts.secretbox import SecretBoxError, hide_arguments, load_box
from contracts.settings import Settings
from dea_agent.instances import confinement
from logpipe.output import MAXLEN, StreamWriter

log = logging.getLogger("paas.agent")


def container_name(spec: TaskSpec) -> str:
    return f"paas-{spec.app_name}-task-{spec.task_guid[:8]}"


def task_env(spec: TaskSpec, settings: Settings) -> dict[str, str]:
    return {
        # Output reaches the user as it happens, not when a pipe buffer fills.
        "PYTHONUNBUFFERED": "1",
        **spec.env,
        "PAAS_APP_NAME": spec.app_name,
        "PAAS_TASK_GUID": spec.task_guid,
        # instances.LAUNCH runs this after sourcing .profile.d, as for an instance.
        "PAAS_START_COMMAND": spec.command,
        "VCAP_APPLICATION": json.dumps({
            "application_id": spec.app_guid,
            "application_name": spec.app_name,
            "name": spec.app_name,
            "space_name": "default",
            "limits": {"mem": spec.memory_mb, "disk": settings.default_disk_mb,
                       "fds": 16384},
            "version": str(spec.release),
        }),
        "HOME": "/app",
    }


def create_container(client: docker.DockerClient, spec: TaskSpec, settings: Settings,
                     network: str | None = None):
    """Create (not start) the task's container; ImageNotFound if the image is missing."""
    return client.containers.create(
        spec.image,
        name=container_name(spec),
        environment=task_env(spec, settings),
        labels={
            LABEL_PLATFORM: settings.platform_id,
            LABEL_KIND: KIND_TASK,
            LABEL_AGENT: settings.agent_id,
            LABEL_APP_GUID: spec.app_guid,
            LABEL_APP_NAME: spec.app_name,
            LABEL_RELEASE: str(spec.release),
            LABEL_TASK: spec.task_guid,
        },
        **confinement(spec.memory_mb, settings, network, spec.runtime),
    )


def split_lines(chunks: Iterable[bytes]) -> Iterator[str]:
    """Whole lines from a stream of byte chunks that may cut lines (and characters)."""
    decoder = codecs.getincrementaldecoder("utf-8")("replace")
    pending = ""
    for chunk in chunks:
        pending += decoder.decode(chunk)
        *lines, pending = pending.split("\n")
        for line in lines:
            yield line.rstrip("\r")
    pending += decoder.decode(b"", final=True)
    if pending:
        yield pending.rstrip("\r")


def _explain(e: Exception) -> str:
    if isinstance(e, docker.errors.APIError):
        return str(e.explanation or e)
    return f"{type(e).__name__}: {e}"


class TaskRunner:
    """Runs tasks, each in a thread of its own, so a long task never holds up the agent's
    worker (which starts and stops instances)."""

    def __init__(self, settings: Settings, docker_client: docker.DockerClient,
                 redis_client: redis.Redis, networks: Networks | None = None) -> None:
        self.settings = settings
        self.docker = docker_client
        self.redis = redis_client
        self.networks = networks
        self._lock = threading.Lock()
        self._running: dict[str, TaskSpec] = {}  # counted in the agent's capacity

    def held(self) -> tuple[int, int]:
        """Memory (MB) and slots the running tasks hold."""
        with self._lock:
            return sum(t.memory_mb for t in self._running.values()), len(self._running)

    def _final(self, key: str, fields: dict[str, str]) -> None:
        self.redis.xadd(key, fields, maxlen=MAXLEN, approximate=True)
        StreamWriter(self.redis, key).end()

    def _ended(self, key: str) -> bool:
        last = self.redis.xrevrange(key, count=1)
        return bool(last) and b"end" in last[0][1]

    def start(self, spec: TaskSpec) -> threading.Thread:
        thread = threading.Thread(target=self._run_logged, args=(spec,),
                                  name=f"task-{spec.task_guid[:8]}", daemon=True)
        thread.start()
        return thread

    def _run_logged(self, spec: TaskSpec) -> None:
        with self._lock:
            self._running[spec.task_guid] = spec
        try:
            self.run(spec)
        except Exception:
            log.exception("task %s of %s failed", spec.task_guid, spec.app_name)
        finally:
            with self._lock:
                self._running.pop(spec.task_guid, None)

    def run(self, spec: TaskSpec) -> int | None:
        """Run the task to its end; returns its exit code (None if it could not run)."""
        key = keys.task_log(spec.task_guid)
        if self._ended(key):
            log.info("task %s of %s already ran; not running it again", spec.task_guid,
                     spec.app_name)
            return None
        try:  # env and command came sealed: opened just before the container is made
            spec = unseal(spec, load_box(self.settings)) if spec.sealed else spec
        except SecretBoxError as e:
            self._fail(key, spec, f"agent {self.settings.agent_id} could not open the task's "
                       f"sealed env and command: {e}")
            return None
        try:
            network = self.networks.for_team(spec.team) if self.networks else None
            container = create_container(self.docker, spec, self.settings, network)
        except NetworkError as e:
            self._fail(key, spec, f"agent {self.settings.agent_id} could not isolate the "
                       f"task's network: {e}")
            return None
        except docker.errors.ImageNotFound:
            self._fail(key, spec, f"the image {spec.image} of release {spec.release} is "
                       f"missing on agent {self.settings.agent_id}: push the app again.")
            return None
        except docker.errors.APIError as e:
            if e.status_code == 409:  # a redelivered message: the first run has it
                log.info("task %s already has a container; not running it again",
                         spec.task_guid)
                return None
            self._fail(key, spec, f"Docker could not create the task's container: {_explain(e)}")
            return None
        except Exception as e:  # Docker did not answer
            self._fail(key, spec, f"Docker could not create the task's container: {_explain(e)}")
            return None
        try:
            return self._run(key, spec, container)
        finally:
            try:
                container.remove(force=True)
            except docker.errors.APIError as e:
                log.warning("could not remove task container %s: %s", container.id[:12], e)

    def _watch_disk(self, container, disk_mb: int, over: threading.Event,
                    ended: threading.Event) -> None:
        """Stop the task once its writable layer passes ``disk_mb``, as the agent does an
        instance (the engine enforces no disk limit here); looked at every
        stats_disk_interval, since Docker walks the layer to size it."""
        while not ended.wait(self.settings.stats_disk_interval):
            try:
                found = self.docker.api.containers(all=True, size=True,
                                                   filters={"id": container.id})
            except Exception as e:  # Docker busy: look again next time
                log.debug("sizing task container %s failed: %s", container.id[:12], e)
                continue
            if found and int(found[0].get("SizeRw") or 0) > disk_mb << 20:
                over.set()
                self._expire(container, threading.Event())
                return

    def _expire(self, container, expired: threading.Event) -> None:
        expired.set()
        try:
            container.stop(timeout=int(self.settings.stop_grace_seconds))
        except docker.errors.APIError as e:
            log.warning("could not stop task container %s at its timeout: %s",
                        container.id[:12], e)

    def _fail(self, key: str, spec: TaskSpec, reason: str) -> None:
        log.warning("task %s of %s: %s", spec.task_guid, spec.app_name, reason)
        self._final(key, {"error": reason})

    def _run(self, key: str, spec: TaskSpec, container) -> int | None:
        try:
            container.start()
        except Exception as e:
            self._fail(key, spec, f"Docker could not start the task's container: {_explain(e)}")
            return None
        log.info("task %s of %s release %d started: %s", spec.task_guid, spec.app_name,
                 spec.release, hide_arguments(spec.command))
        writer = StreamWriter(self.redis, key)
        timeout = spec.timeout or self.settings.task_timeout
        expired = threading.Event()
        timer = threading.Timer(timeout, self._expire, args=(container, expired))
        timer.daemon = True
        timer.start()
        disk_mb = spec.disk_mb or self.settings.default_disk_mb
        over_disk, ended = threading.Event(), threading.Event()
        threading.Thread(target=self._watch_disk, args=(container, disk_mb, over_disk, ended),
                         name=f"task-disk-{spec.task_guid[:8]}", daemon=True).start()
        try:
            chunks = container.logs(stream=True, follow=True, stdout=True, stderr=True)
            for line in split_lines(chunks):
                writer.line(line)
            status = container.wait()
            code = int(status.get("StatusCode", -1))
            container.reload()
            if expired.is_set():
                writer.line(f"[paas] the task ran longer than its timeout ({timeout:g} s) and "
                            "was stopped.")
            elif over_disk.is_set():
                writer.line(f"[paas] the task wrote more than its disk quota ({disk_mb} MB) "
                            "and was stopped.")
            elif container.attrs.get("State", {}).get("OOMKilled"):
                writer.line(f"[paas] the task ran out of memory ({spec.memory_mb} MB) "
                            "and was killed.")
        except Exception as e:
            try:  # let the command finish rather than kill it half-way
                container.wait()
            except Exception:
                pass
            self._fail(key, spec, f"following the task's output failed: {_explain(e)}")
            return None
        finally:
            timer.cancel()
            ended.set()
        log.info("task %s of %s exited with %d", spec.task_guid, spec.app_name, code)
        self._final(key, {"exit_code": str(code)})
        return code

