"""Instance containers: how one is started from a spec, and read back from its labels."""

from __future__ import annotations

import json
import os
import shutil
import time
from dataclasses import dataclass, field

import docker
import docker.errors

from contracts.labels import (
    KIND_INSTANCE,
    LABEL_AGENT,
    LABEL_APP_GUID,
    LABEL_APP_NAME,
    LABEL_DISK,
    LABEL_GENERATION,
    LABEL_HEALTH_CHECK,
    LABEL_HOST_PORT,
    LABEL_INDEX,
    LABEL_INSTANCE,
    LABEL_KIND,
    LABEL_MEMORY,
    LABEL_OUTPUT,
    LABEL_PLATFORM,
    LABEL_PROCESS,
    LABEL_RELEASE,
    LABEL_ROUTES,
    LABEL_START_TIMEOUT,
    LABEL_STARTED_AT,
)
from contracts.messages import InstanceReport, InstanceSpec, InstanceState, unseal
from contracts.secretbox import load_box
from contracts.settings import Settings

CONTAINER_PORT = 8080
RUN_USER = "2000:2000"
OUTPUT_DIR = "/run/paas"  # where they are in the container
OUTPUT_FILES = {1: "stdout", 2: "stderr"}
LAUNCH = 'for f in /app/.profile.d/*.sh; do [ -r "$f" ] && . "$f"; done; ' \
         'exec /bin/sh -c "$PAAS_START_COMMAND"'
# Everything the instance writes goes to its output files (opened to append, so a write
# never blocks on a reader and an agent's restart loses nothing); only a failure to open
# them reaches Docker's log.
LAUNCH_TO_FILES = f'exec >>{OUTPUT_DIR}/{OUTPUT_FILES[1]} 2>>{OUTPUT_DIR}/{OUTPUT_FILES[2]}; ' \
    + LAUNCH


@dataclass
class Instance:
    """What the agent knows of one of its containers."""

    guid: str
    container_id: str
    app_guid: str
    app_name: str
    release: int
    process_type: str
    index: int
    host_port: int
    routes: list[str]
    start_timeout: float
    started_at: float
    memory_mb: int = 0
    disk_mb: int = 0
    generation: int = 0
    health_check: str = "port"
    health_check_endpoint: str = "/"
    check_interval: float = 2.0
    probe_timeout: float = 1.0
    state: str = InstanceState.STARTING
    since: float = field(default_factory=time.time)
    reason: str | None = None
    exit_code: int | None = None
    ready: bool = True
    failures: int = 0  # health checks failed in a row
    checked_at: float = 0.0
    last_lines: list[str] = field(default_factory=list)
    output_dir: str = ""  # host folder of its stdout/stderr files; "" when Docker logs them

    def report(self) -> InstanceReport:
        return InstanceReport(
            instance_guid=self.guid, app_guid=self.app_guid, app_name=self.app_name,
            release=self.release, process_type=self.process_type, index=self.index,
            state=self.state, host_port=self.host_port, since=self.since,
            reason=self.reason, exit_code=self.exit_code, generation=self.generation,
            ready=self.ready, started_at=self.started_at, last_lines=list(self.last_lines))

    @classmethod
    def from_spec(cls, spec: InstanceSpec, host_port: int) -> Instance:
        return cls(
            guid=spec.instance_guid, container_id="", app_guid=spec.app_guid,
            app_name=spec.app_name, release=spec.release, process_type=spec.process_type,
            index=spec.index, host_port=host_port, routes=spec.routes,
            start_timeout=spec.start_timeout, started_at=time.time(),
            memory_mb=spec.memory_mb, disk_mb=spec.disk_mb, generation=spec.generation,
            health_check=spec.health_check, health_check_endpoint=spec.health_check_endpoint,
            check_interval=spec.check_interval, probe_timeout=spec.probe_timeout)

    @classmethod
    def from_container(cls, container) -> Instance:
        labels = container.labels
        check = json.loads(labels.get(LABEL_HEALTH_CHECK, "{}"))
        return cls(
            guid=labels[LABEL_INSTANCE],
            container_id=container.id,
            app_guid=labels[LABEL_APP_GUID],
            app_name=labels.get(LABEL_APP_NAME, ""),
            release=int(labels.get(LABEL_RELEASE, 0)),
            process_type=labels.get(LABEL_PROCESS, "web"),
            index=int(labels.get(LABEL_INDEX, 0)),
            host_port=int(labels.get(LABEL_HOST_PORT, 0)),
            routes=json.loads(labels.get(LABEL_ROUTES, "[]")),
            start_timeout=float(labels.get(LABEL_START_TIMEOUT, 60)),
            started_at=float(labels.get(LABEL_STARTED_AT, time.time())),
            memory_mb=int(labels.get(LABEL_MEMORY, 0)),
            disk_mb=int(labels.get(LABEL_DISK, 0)),
            generation=int(labels.get(LABEL_GENERATION, 0)),
            health_check=check.get("type", "port"),
            health_check_endpoint=check.get("endpoint", "/"),
            check_interval=float(check.get("interval", 2.0)),
            probe_timeout=float(check.get("probe_timeout", 1.0)),
            output_dir=labels.get(LABEL_OUTPUT, ""),
        )


def vcap_application(spec: InstanceSpec, settings: Settings) -> str:
    return json.dumps({
        "application_id": spec.app_guid,
        "application_name": spec.app_name,
        "name": spec.app_name,
        "application_uris": spec.routes,
        "uris": spec.routes,
        "instance_id": spec.instance_guid,
        "instance_index": spec.index,
        "space_name": "default",
        "limits": {"mem": spec.memory_mb, "disk": settings.default_disk_mb, "fds": 16384},
        "version": str(spec.release),
    })


def confinement(memory_mb: int, settings: Settings, network: str | None = None,
                runtime: str = "") -> dict[str, object]:
    """How every app container runs (instances and one-off tasks alike): the droplet's
    launcher as user 2000, memory and pids capped, CPU weighed by memory, no capabilities,
    on its team's network (see confinement.networks), under the team's or app's OCI runtime,
    logs rotated."""
    how: dict[str, object] = {
        "command": ["/bin/sh", "-c", LAUNCH],
        "user": RUN_USER,
        "working_dir": "/app",
        "init": True,
        "mem_limit": f"{memory_mb}m",
        "memswap_limit": f"{memory_mb}m",
        "pids_limit": 1024,
        "cap_drop": ["ALL"],
        "security_opt": ["no-new-privileges"],
        "cpu_shares": cpu_shares(memory_mb, settings),
        "log_config": {"type": "json-file", "config": {"max-size": "10m", "max-file": "2"}},
    }
    if network:
        how["network"] = network
    if runtime and runtime != "runc":
        how["runtime"] = runtime
    return how


def cpu_shares(memory_mb: int, settings: Settings) -> int:
    """CPU weight proportional to the memory limit, as Cloud Foundry gives it (Docker's
    least is 2)."""
    return max(2, memory_mb * settings.cpu_shares_per_gb // 1024)


class OutputFilesError(Exception):
    """The agent could not make an instance's output files."""


def output_dir(settings: Settings, instance_guid: str) -> str:
    return str(settings.instance_logs_path / settings.agent_id / instance_guid)


def make_output_files(folder: str) -> None:
    """The instance's empty stdout and stderr files, writable by its user only."""
    os.makedirs(folder, mode=0o700, exist_ok=True)
    uid, gid = (int(n) for n in RUN_USER.split(":"))
    for name in OUTPUT_FILES.values():
        path = os.path.join(folder, name)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            try:
                os.fchown(fd, uid, gid)
            except PermissionError:  # an agent that is not root: the folder guards them
                os.fchmod(fd, 0o666)
        finally:
            os.close(fd)


def remove_output_files(folder: str) -> None:
    if folder:
        shutil.rmtree(folder, ignore_errors=True)


def create_container(client: docker.DockerClient, spec: InstanceSpec, settings: Settings,
                     host_port: int, network: str | None = None):
    """Create (not start) the instance's container; ImageNotFound if the image is missing.

    With ``settings.instance_log_files``, its stdout and stderr go to files in a folder of
    its own (see dea_agent.logs), bind-mounted one by one so that it can write them and
    nothing else there."""
    started_at = time.time()
    # The env values came sealed; opened only now (SecretBoxError with a sentence if not).
    env = {
        **(unseal(spec, load_box(settings)) if spec.sealed else spec).env,
        "PORT": str(CONTAINER_PORT),
        "INSTANCE_INDEX": str(spec.index),
        "CF_INSTANCE_INDEX": str(spec.index),
        "INSTANCE_GUID": spec.instance_guid,
        "PAAS_APP_NAME": spec.app_name,
        "PAAS_START_COMMAND": spec.command,
        "VCAP_APPLICATION": vcap_application(spec, settings),
        "HOME": "/app",
    }
    labels = {
        LABEL_PLATFORM: settings.platform_id,
        LABEL_KIND: KIND_INSTANCE,
        LABEL_AGENT: settings.agent_id,
        LABEL_APP_GUID: spec.app_guid,
        LABEL_APP_NAME: spec.app_name,
        LABEL_PROCESS: spec.process_type,
        LABEL_INDEX: str(spec.index),
        LABEL_INSTANCE: spec.instance_guid,
        LABEL_RELEASE: str(spec.release),
        LABEL_HOST_PORT: str(host_port),
        LABEL_ROUTES: json.dumps(spec.routes),
        LABEL_START_TIMEOUT: str(spec.start_timeout),
        LABEL_STARTED_AT: str(started_at),
        LABEL_MEMORY: str(spec.memory_mb),
        LABEL_DISK: str(spec.disk_mb),
        LABEL_GENERATION: str(spec.generation),
        LABEL_HEALTH_CHECK: json.dumps({
            "type": spec.health_check, "endpoint": spec.health_check_endpoint,
            "interval": spec.check_interval, "probe_timeout": spec.probe_timeout}),
    }
    how = confinement(spec.memory_mb, settings, network, spec.runtime)
    folder = ""
    try:
        if settings.instance_log_files:
            folder = output_dir(settings, spec.instance_guid)
            try:
                make_output_files(folder)
            except OSError as e:
                raise OutputFilesError(
                    f"agent {settings.agent_id} could not make the instance's output files "
                    f"in {folder} ({e.strerror or e}): the operators must free space there or "
                    "let the agent write it (PAAS_INSTANCE_LOGS_DIR)") from e
            labels[LABEL_OUTPUT] = folder
            how["command"] = ["/bin/sh", "-c", LAUNCH_TO_FILES]
            how["mounts"] = [docker.types.Mount(f"{OUTPUT_DIR}/{name}", f"{folder}/{name}",
                                                type="bind")
                             for name in OUTPUT_FILES.values()]
            how["log_config"] = {"type": "json-file",
                                 "config": {"max-size": "1m", "max-file": "1"}}
        return client.containers.create(
            spec.image,
            name=f"paas-{spec.app_name}-{spec.process_type}-{spec.index}-"
                 f"{spec.instance_guid[:8]}",
            environment=env,
            labels=labels,
            ports={f"{CONTAINER_PORT}/tcp": (settings.agent_address, host_port)},
            **how,
        )
    except Exception:
        remove_output_files(folder)
        raise


def last_lines(lines: list[str], count: int = 10) -> list[str]:
    """The last ``count`` non-blank ``lines``, each cut to 300 characters."""
    kept = [line.rstrip()[:300] for line in lines if line.strip()]
    return kept[-count:]


def last_log_lines(container, count: int = 10) -> list[str]:
    """The container's last non-blank output lines as Docker logged them (an instance that
    writes to output files has there only what went wrong before it could open them)."""
    try:
        raw = container.logs(tail=count * 2).decode("utf-8", "replace")
    except docker.errors.APIError:
        return []
    return last_lines(raw.splitlines(), count)
