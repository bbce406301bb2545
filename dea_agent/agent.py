"""The agent's state and loop: start and stop instances, watch them, report them.

A monitor loop refreshes every instance's state from Docker and probes, publishes the
heartbeat (capacity + instances) and the route table entries of running instances. Containers
carry labels, so a restarted agent re-adopts them without restarting them.
"""

from __future__ import annotations

import logging
import socket
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace

import docker
import docker.errors
import redis

from confinement.networks import NetworkError, Networks
from contracts import keys, revisions
from contracts.labels import KIND_INSTANCE, LABEL_AGENT, LABEL_KIND, LABEL_OUTPUT, LABEL_PLATFORM
from contracts.messages import Backend, Heartbeat, InstanceSpec, InstanceState
from contracts.secretbox import SecretBoxError
from contracts.settings import Settings
from dea_agent import instances as inst_mod
from dea_agent.instances import Instance
from dea_agent.logs import LogShipper
from dea_agent.probe import http_ok, port_open
from dea_agent.stats import StatsSampler, annotate
from dea_agent.tasks import TaskRunner

log = logging.getLogger("paas.agent")
FAST_TICK = 0.1  # while an instance is starting


class AgentError(Exception):
    pass


def _explain(e: Exception) -> str:
    if isinstance(e, docker.errors.APIError):
        return str(e.explanation or e)
    return f"{type(e).__name__}: {e}"


class Agent:
    def __init__(self, settings: Settings, docker_client: docker.DockerClient,
                 redis_client: redis.Redis) -> None:
        self.settings = settings
        self.docker = docker_client
        self.redis = redis_client
        self.lock = threading.RLock()
        self.instances: dict[str, Instance] = {}
        self.wake = threading.Event()
        self.publish_lock = threading.Lock()
        self._last_routes: dict[str, str] | None = None
        self._revision = 0  # of the last table published (contracts.revisions)
        # Ready web instance guid -> revision of the first table that included it.
        self._included: dict[str, int] = {}
        self._last_beat = 0.0
        self.checker = ThreadPoolExecutor(max_workers=8, thread_name_prefix="check")
        self.logs = LogShipper(settings, docker_client, redis_client)  # output -> app log
        self.stats = StatsSampler(docker_client, settings.stats_interval,
                                  settings.stats_disk_interval)
        self.networks = Networks(settings, docker_client)  # one per team, made on first use
        self.tasks = TaskRunner(settings, docker_client, redis_client, self.networks)

    # -- adoption ----------------------------------------------------------------------
    def _own_filter(self) -> dict[str, list[str]]:
        return {"label": [f"{LABEL_PLATFORM}={self.settings.platform_id}",
                          f"{LABEL_AGENT}={self.settings.agent_id}",
                          f"{LABEL_KIND}={KIND_INSTANCE}"]}

    def adopt(self) -> int:
        """Take over the containers this agent started before it restarted."""
        found = self.docker.containers.list(ignore_removed=True, all=True,
                                            filters=self._own_filter())
        adopted = removed = 0
        for container in found:
            if container.status not in ("running", "restarting", "paused"):
                removed += 1
                # It died while no agent watched (the host went down, say): the health
                # manager has replaced it already, so it is no crash to report.
                self._remove(container)
                continue
            instance = Instance.from_container(container)
            with self.lock:
                if instance.guid not in self.instances:
                    self.instances[instance.guid] = instance
                    adopted += 1
            self.logs.follow(instance, resume=True)
        self._sweep_output_files()
        if found:
            log.info("re-adopted %d running instance container(s), removed %d stopped one(s)",
                     adopted, removed)
        return adopted

    # -- commands ----------------------------------------------------------------------
    def start(self, spec: InstanceSpec) -> None:
        with self.lock:
            if spec.instance_guid in self.instances:
                return  # a redelivered task: already started
            port = self._free_port()
            # Reserve the port before the slow part so a parallel start picks another.
            instance = Instance.from_spec(spec, port)
            self.instances[spec.instance_guid] = instance
        try:
            network = self.networks.for_team(spec.team)
            container = inst_mod.create_container(self.docker, spec, self.settings, port,
                                                  network)
        except NetworkError as e:
            self._crash(instance, f"agent {self.settings.agent_id} could not isolate the "
                        f"instance's network: {e}")
            return
        except docker.errors.ImageNotFound:
            self._crash(instance, f"the image {spec.image} is missing on agent "
                        f"{self.settings.agent_id}: push the app again.")
            return
        except inst_mod.OutputFilesError as e:
            self._crash(instance, f"{e}.")
            return
        except SecretBoxError as e:
            self._crash(instance, f"agent {self.settings.agent_id} could not open the "
                        f"instance's sealed env: {e}")
            return
        except Exception as e:  # Docker refused, or did not answer
            self._crash(instance, f"Docker could not create the instance: {_explain(e)}")
            return
        with self.lock:
            stopped_meanwhile = instance.state == InstanceState.STOPPING
            if not stopped_meanwhile:
                instance.container_id = container.id
                instance.output_dir = container.labels.get(LABEL_OUTPUT, "")
        if stopped_meanwhile:  # a stop came while Docker was creating it
            self._remove(container)
            with self.lock:
                self.instances.pop(spec.instance_guid, None)
            return
        try:
            container.start()
        except Exception as e:
            self._remove(container)
            self._crash(instance, f"Docker could not start the instance: {_explain(e)}")
            return
        self.logs.follow(instance)
        log.info("started %s/%s index %d release %d on port %d", spec.app_name,
                 spec.process_type, spec.index, spec.release, port)
        self.wake.set()

    def _crash(self, instance: Instance, reason: str) -> None:
        log.warning("%s/%s index %d: %s", instance.app_name, instance.process_type,
                    instance.index, reason)
        self._mark(instance, InstanceState.CRASHED, reason)

    @staticmethod
    def _remove(container) -> None:
        try:
            container.remove(force=True)
        except docker.errors.NotFound:
            pass
        except docker.errors.APIError as e:
            log.warning("could not remove container %s: %s", container.id[:12], e)
            return  # it may run on: its output files stay (the next adoption sweeps them)
        inst_mod.remove_output_files(container.labels.get(LABEL_OUTPUT, ""))

    def _sweep_output_files(self) -> None:
        """Remove the output files of instances this agent no longer has (their containers
        went while it was down)."""
        folder = self.settings.instance_logs_path / self.settings.agent_id
        with self.lock:  # (an instance being started has its folder before its label)
            kept = {inst_mod.output_dir(self.settings, guid) for guid in self.instances}
        try:
            found = [str(p) for p in folder.iterdir()]
        except FileNotFoundError:
            return
        for path in found:
            if path not in kept:
                inst_mod.remove_output_files(path)

    def stop(self, instance_guid: str) -> None:
        """Take the instance out of the router, then SIGTERM, grace period, SIGKILL."""
        with self.lock:
            instance = self.instances.get(instance_guid)
            if instance is None:
                return
            creating = not instance.container_id and instance.state == InstanceState.STARTING
            instance.state = InstanceState.STOPPING
            if not instance.container_id and not creating:
                self.instances.pop(instance_guid, None)  # it never got a container
        if creating:
            return  # start() sees STOPPING once Docker answers, and removes the container
        revision = self.publish()  # routes without it, before the signal
        if instance.process_type == "web":
            self._wait_for_router(revision)
        removed = True
        if instance.container_id:
            try:
                container = self.docker.containers.get(instance.container_id)
                container.stop(timeout=int(self.settings.stop_grace_seconds))
                container.remove(force=True)
            except docker.errors.NotFound:
                pass
            except docker.errors.APIError as e:
                removed = False
                log.warning("stopping %s failed: %s", instance_guid, e)
        with self.lock:
            self.instances.pop(instance_guid, None)
        self.logs.stop(instance_guid)  # it reads what is left through its open files
        if removed:
            inst_mod.remove_output_files(instance.output_dir)
        log.info("stopped %s/%s index %d release %d", instance.app_name,
                 instance.process_type, instance.index, instance.release)
        self.publish(force=True)

    def _wait_for_router(self, revision: int, timeout: float = 5.0) -> bool:
        """Wait until the router serves this agent's table of ``revision`` or a newer one.

        Bounded: True once it does, or when nothing is there to wait for (no router has
        written what it applied: none runs, or Redis restarted; Redis unreachable); False
        after ``timeout`` seconds.
        """
        deadline = time.monotonic() + timeout
        while True:
            try:
                applied = revisions.read_applied(self.redis)
            except redis.RedisError:
                return True
            if not applied or applied.get(self.settings.agent_id, 0) >= revision:
                return True
            if time.monotonic() >= deadline:
                log.warning("the router has not applied route table revision %d of agent %s "
                            "within %g s (it applied %s); stopping the instance anyway",
                            revision, self.settings.agent_id, timeout,
                            applied.get(self.settings.agent_id, "none"))
                return False
            time.sleep(0.02)

    def _free_port(self) -> int:
        used = {i.host_port for i in self.instances.values()}
        for port in range(self.settings.agent_port_min, self.settings.agent_port_max + 1):
            if port in used:
                continue
            with socket.socket() as s:
                try:
                    s.bind((self.settings.agent_address, port))
                except OSError:
                    continue
            return port
        raise AgentError(f"agent {self.settings.agent_id} has no free port left in "
                         f"{self.settings.agent_port_min}-{self.settings.agent_port_max}")

    # -- the monitor loop ----------------------------------------------------------------
    def refresh(self) -> None:
        """Bring every instance's state up to date from Docker and health checks."""
        with self.lock:
            # Container ids as of now: a start that gets its container after the listing
            # below must not look like a container that disappeared.
            current = [(i, i.container_id) for i in self.instances.values()]
        containers = {c.id: c for c in self.docker.containers.list(
            ignore_removed=True, all=True, filters=self._own_filter())}
        now = time.time()
        due: list[tuple[Instance, object]] = []
        for instance, container_id in current:
            if instance.state in (InstanceState.STOPPING, InstanceState.CRASHED):
                continue
            if not container_id:
                if now - instance.started_at > instance.start_timeout + 60:
                    self._crash(instance, "Docker did not create the container in time")
                continue  # still being created
            container = containers.get(container_id) or self._get_container(container_id)
            if container is None:
                self._mark(instance, InstanceState.CRASHED, "the container disappeared")
                continue
            if container.status in ("exited", "dead"):
                state = container.attrs.get("State", {})
                code = state.get("ExitCode")
                if state.get("OOMKilled"):
                    reason = f"the app ran out of memory and was killed (exit code {code})"
                else:
                    reason = f"the app exited with code {code}"
                self._crash_with_output(instance, container, reason, code)
                continue
            if self._over_disk(instance, container):
                continue
            if instance.state == InstanceState.STARTING or \
                    now - instance.checked_at >= instance.check_interval:
                due.append((instance, container))
        if due:
            results = list(self.checker.map(lambda pair: self._check(pair[0]), due))
            for (instance, container), (ok, detail) in zip(due, results, strict=True):
                self._checked(instance, container, ok, detail, now)

    def _over_disk(self, instance: Instance, container) -> bool:
        """Stop an instance whose writable layer outgrew its disk quota (the engine cannot
        enforce one on this storage driver): crashed, with the numbers, and restarted
        afresh by the health manager."""
        usage = self.stats.get(instance.guid)
        if usage is None or not usage.disk_bytes or not instance.disk_mb \
                or usage.disk_bytes <= instance.disk_mb << 20:
            return False
        try:
            container.kill()
        except docker.errors.APIError as e:
            log.warning("could not stop %s over its disk quota: %s", container.id[:12], e)
        self._crash_with_output(
            instance, container,
            f"the app used {usage.disk_bytes / 2**20:.0f} MB of disk, over its quota of "
            f"{instance.disk_mb} MB, and was stopped ('paas scale APP -k 2G' gives it more, or "
            "write less to the container's files)")
        return True

    def _get_container(self, container_id: str):
        try:
            return self.docker.containers.get(container_id)
        except docker.errors.NotFound:
            return None

    def _check(self, instance: Instance) -> tuple[bool, str]:
        """Run the instance's health check once."""
        kind = instance.health_check
        if kind == "process":
            return True, ""  # the container runs (checked above)
        if kind == "http" and (instance.state == InstanceState.RUNNING or port_open(
                self.settings.agent_address, instance.host_port)):
            return http_ok(self.settings.agent_address, instance.host_port,
                           instance.health_check_endpoint, instance.probe_timeout)
        if port_open(self.settings.agent_address, instance.host_port,
                     timeout=instance.probe_timeout):
            return kind != "http", "not answering HTTP yet"
        return False, f"nothing listens on its port ($PORT, {inst_mod.CONTAINER_PORT})"

    def _checked(self, instance: Instance, container, ok: bool, detail: str,
                 now: float) -> None:
        instance.checked_at = now
        if instance.state == InstanceState.STARTING:
            if ok:
                self._mark(instance, InstanceState.RUNNING)
            elif now - instance.started_at > instance.start_timeout:
                self._kill(container)
                what = (f"answer 2xx on {instance.health_check_endpoint}"
                        if instance.health_check == "http" else "listen on 0.0.0.0:$PORT")
                self._crash_with_output(
                    instance, container,
                    f"the app did not pass its {instance.health_check} health check within "
                    f"{instance.start_timeout:.0f} s ({detail}): make it {what}")
            return
        if ok:
            instance.failures = 0
            if not instance.ready:
                self._set_ready(instance, True, "its health check passes again")
            return
        instance.failures += 1
        if instance.ready:
            self._set_ready(instance, False, f"its health check failed: {detail}")
        if instance.failures >= self.settings.liveness_failures:
            self._kill(container)
            self._crash_with_output(
                instance, container,
                f"its {instance.health_check} health check failed {instance.failures} times "
                f"in a row ({detail}), so it was restarted")

    def _set_ready(self, instance: Instance, ready: bool, why: str) -> None:
        with self.lock:
            if instance.state != InstanceState.RUNNING:
                return
            instance.ready, instance.since = ready, time.time()
        log.info("%s/%s index %d %s: %s", instance.app_name, instance.process_type,
                 instance.index, "is back in the router" if ready else "leaves the router",
                 why)
        self.wake.set()

    @staticmethod
    def _kill(container) -> None:
        try:
            container.kill()
        except docker.errors.APIError:
            pass

    def _crash_with_output(self, instance: Instance, container, reason: str,
                           exit_code: int | None = None) -> None:
        lines = self.logs.last_lines(instance.guid) if instance.output_dir else []
        lines = lines or inst_mod.last_log_lines(container)
        if lines:
            reason += f"; its last output: {lines[-1]}"
        instance.last_lines = lines
        self._mark(instance, InstanceState.CRASHED, reason, exit_code)

    def _mark(self, instance: Instance, state: str, reason: str | None = None,
              exit_code: int | None = None) -> None:
        with self.lock:
            # STOPPING and CRASHED are final: a late probe must not bring an instance back.
            if instance.state in (state, InstanceState.STOPPING, InstanceState.CRASHED):
                return
            instance.state, instance.reason, instance.exit_code = state, reason, exit_code
            instance.since = time.time()
        log.info("%s/%s index %d release %d is %s%s", instance.app_name, instance.process_type,
                 instance.index, instance.release, state, f": {reason}" if reason else "")
        self.wake.set()

    def heartbeat(self, included: dict[str, int] | None = None) -> Heartbeat:
        """Capacity and instances; ``included`` (instance guid -> ``routes_rev``) is the
        routing of the table published with it (default: the last one published)."""
        included = self._included if included is None else included
        with self.lock:
            reports = [replace(annotate(i.report(), self.stats.get(i.guid)),
                               routes_rev=included.get(i.guid, 0))
                       for i in self.instances.values()]
            held = [i for i in self.instances.values() if i.state != InstanceState.CRASHED]
        s = self.settings
        task_memory, task_slots = self.tasks.held()  # one-off tasks hold room too
        return Heartbeat(agent_id=s.agent_id, address=s.agent_address, sent_at=time.time(),
                         memory_mb=s.agent_memory_mb,
                         memory_used_mb=sum(i.memory_mb for i in held) + task_memory,
                         instances=reports,
                         disk_mb=s.agent_disk_mb, disk_used_mb=sum(i.disk_mb for i in held),
                         slots=s.agent_slots, slots_used=len(held) + task_slots)

    def routes(self) -> dict[str, str]:
        """Backend entries of the ready web instances, by instance guid. Which hosts and paths
        reach them is the controller's route table; the router joins the two by app guid."""
        table: dict[str, str] = {}
        with self.lock:
            for i in self.instances.values():
                if i.state != InstanceState.RUNNING or not i.ready or i.process_type != "web":
                    continue
                table[i.guid] = Backend(backend=f"{self.settings.agent_address}:{i.host_port}",
                                        app_guid=i.app_guid, app_name=i.app_name,
                                        instance_guid=i.guid, index=i.index).to_json()
        return table

    def publish(self, force: bool = False) -> int:
        """Heartbeat and route table to Redis; a changed table gets the next revision (see
        :mod:`contracts.revisions`). Returns the revision of the table now published."""
        with self.publish_lock:  # one at a time, so an older table never lands last
            return self._publish(force)

    def _publish(self, force: bool) -> int:
        ttl_ms = int(self.settings.heartbeat_ttl * 1000)
        table = self.routes()
        changed = table != self._last_routes
        revision = revisions.next_revision(self.redis, self._revision) if changed \
            else self._revision
        # An instance keeps the revision of the first table that had it; one that left the
        # table (failing its health check) is routed again only by a newer one.
        included = {guid: self._included.get(guid) or revision for guid in table}
        beat = self.heartbeat(included)
        pipe = self.redis.pipeline()
        pipe.set(keys.agent(self.settings.agent_id), beat.to_json(), px=ttl_ms)
        route_key = keys.routes(self.settings.agent_id)
        # Rewritten on every beat, not only on change: a restarted Redis has lost it. An
        # empty table too: its revision says the router may drop the last instance.
        pipe.delete(route_key)
        pipe.hset(route_key, mapping={**table, keys.REVISION_FIELD: str(revision)})
        pipe.pexpire(route_key, ttl_ms)
        if changed:
            pipe.publish(keys.ROUTES_CHANGED, self.settings.agent_id)
        if changed or force:
            pipe.publish(keys.CONVERGE, self.settings.agent_id)
        pipe.execute()
        self._last_routes, self._revision, self._included = table, revision, included
        self._last_beat = time.monotonic()
        return revision

    def run(self, stop: threading.Event) -> None:
        last_states: dict[str, str] = {}
        adopted = False
        self.stats.start(stop)  # samples in its own thread what the loop hands it
        while not stop.is_set():
            try:
                if not adopted:
                    self.adopt()
                    adopted = True
                self.refresh()
                with self.lock:
                    states = {g: i.state for g, i in self.instances.items()}
                    starting = any(s == InstanceState.STARTING for s in states.values())
                    self.stats.track({g: i.container_id for g, i in self.instances.items()
                                      if i.container_id and i.state in (
                                          InstanceState.STARTING, InstanceState.RUNNING)})
                due = time.monotonic() - self._last_beat >= self.settings.heartbeat_interval
                if states != last_states or due:
                    self.publish(force=states != last_states)
                    last_states = states
            except (redis.RedisError, docker.errors.DockerException, OSError) as e:
                log.warning("monitor: %s (retrying)", e)
                starting = False
                stop.wait(1.0)
            except Exception:  # never let the monitor die while the worker takes starts
                log.exception("monitor: unexpected error (retrying)")
                starting = False
                stop.wait(1.0)
            self.wake.wait(FAST_TICK if starting else 0.5)
            self.wake.clear()
