"""Schemas of what processes send each other: task names, instance specs, heartbeats, routes."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, replace
from typing import TYPE_CHECKING, Any, ClassVar, TypeVar

if TYPE_CHECKING:
    from contracts.secretbox import SecretBox

# Files of at least this size are fingerprinted by the CLI and kept in the controller's
# resource cache, so a re-push uploads only what changed (smaller ones always travel).
RESOURCE_MIN_BYTES = 4096

# Celery task names, so senders need not import the workers.
STAGE_TASK = "paas.stage"
START_INSTANCE_TASK = "paas.start_instance"
STOP_INSTANCE_TASK = "paas.stop_instance"
STAGING_QUEUE = "staging"


def agent_queue(agent_id: str) -> str:
    return f"agent.{agent_id}"


class InstanceState:
    STARTING = "STARTING"
    RUNNING = "RUNNING"
    CRASHED = "CRASHED"
    STOPPING = "STOPPING"


@dataclass
class StageRequest:
    build_guid: str
    app_guid: str
    app_name: str
    package_path: str  # blobstore-relative path of the package tarball
    command: str | None = None
    buildpack: str | None = None
    env: dict[str, str] = field(default_factory=dict)
    no_cache: bool = False  # throw the app's build cache away first
    # A buildpack uploaded with this push (-b PATH): blobstore path of its tarball.
    buildpack_blob: str | None = None
    # Buildpacks an admin registered, in detection order: [{"name", "blob"}].
    custom_buildpacks: list[dict[str, str]] = field(default_factory=list)
    # The OCI runtime of the staging container: the app's instances' (Settings.runtime_for).
    runtime: str = ""


@dataclass
class StageResult:
    ok: bool
    droplet_digest: str | None = None
    droplet_path: str | None = None
    droplet_size: int = 0
    image: str | None = None
    buildpack: str | None = None
    process_types: dict[str, str] = field(default_factory=dict)
    error: str | None = None


@dataclass
class InstanceSpec:
    """Everything an agent needs to start one instance; sent in ``start_instance``."""

    instance_guid: str
    app_guid: str
    app_name: str
    release: int
    process_type: str
    index: int
    image: str
    command: str
    memory_mb: int
    env: dict[str, str]
    routes: list[str]
    droplet_path: str = ""
    health_check: str = "port"  # port, http or process
    health_check_endpoint: str = "/"
    start_timeout: float = 60.0
    check_interval: float = 2.0
    probe_timeout: float = 1.0
    generation: int = 0
    disk_mb: int = 1024
    team: str = ""  # the team's guid: its instances share a network (confinement.networks)
    runtime: str = ""  # the OCI runtime ("" is the agent's default, runc)
    # The env values travel sealed (see seal); ``env`` is empty in a sealed message.
    sealed: str = ""
    SEALED: ClassVar[tuple[str, ...]] = ("env",)


@dataclass
class InstanceReport:
    """One instance as an agent sees it, published in each heartbeat."""

    instance_guid: str
    app_guid: str
    app_name: str
    release: int
    process_type: str
    index: int
    state: str
    host_port: int
    since: float
    agent_id: str = ""
    reason: str | None = None
    exit_code: int | None = None
    generation: int = 0
    # Passing its health check; a running instance that fails it leaves the router.
    ready: bool = True
    started_at: float = 0.0  # when its container started (crash counts reset on uptime)
    last_lines: list[str] = field(default_factory=list)  # a crashed instance's last output
    # Resource use, sampled by the agent every few seconds (None: not sampled yet). Uptime
    # is ``sent_at - started_at``.
    cpu_percent: float | None = None  # 100 = one core busy
    memory_bytes: int | None = None
    memory_limit_bytes: int | None = None
    disk_bytes: int | None = None  # the container's writable layer
    # Revision of the first table of its agent that included it (see contracts.revisions):
    # 0 for a non-web instance, or one not in a table yet. Heartbeats from before have none.
    routes_rev: int = 0


@dataclass
class Heartbeat:
    agent_id: str
    address: str
    sent_at: float
    memory_mb: int
    memory_used_mb: int
    instances: list[InstanceReport] = field(default_factory=list)
    disk_mb: int = 1 << 20
    disk_used_mb: int = 0
    slots: int = 1000
    slots_used: int = 0

    def to_json(self) -> str:
        return json.dumps(asdict(self))

    @classmethod
    def from_json(cls, raw: str | bytes) -> Heartbeat:
        data = json.loads(raw)
        data["instances"] = [InstanceReport(**i) for i in data.get("instances", [])]
        return cls(**data)


@dataclass(frozen=True)
class Backend:
    """One ready web instance an agent registers: requests for any route mapped to
    ``app_guid`` (see :mod:`contracts.routing`) may go to ``backend`` (``ip:port``)."""

    backend: str
    app_guid: str
    app_name: str
    instance_guid: str
    index: int = 0

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, raw: str | bytes) -> Backend:
        data = json.loads(raw)
        return cls(**{k: data[k] for k in ("backend", "app_guid", "app_name", "instance_guid",
                                            "index") if k in data})


def dump(obj: Any) -> dict[str, Any]:
    return asdict(obj)


RUN_TASK_TASK = "paas.run_task"  # a one-off command in a new container (``paas run``)


@dataclass
class TaskSpec:
    """Everything an agent needs to run one one-off task; sent in ``run_task``."""

    task_guid: str
    app_guid: str
    app_name: str
    release: int
    image: str
    command: str
    memory_mb: int
    env: dict[str, str] = field(default_factory=dict)
    team: str = ""  # as InstanceSpec's: the task runs on its team's network
    runtime: str = ""
    timeout: float = 0.0  # seconds before the agent stops it (0: the agent's task_timeout)
    disk_mb: int = 0  # its disk quota, as its app's web instances' (0: default_disk_mb)
    # The env values and the command travel sealed (see seal): empty in a sealed message.
    sealed: str = ""
    SEALED: ClassVar[tuple[str, ...]] = ("env", "command")


Sealable = TypeVar("Sealable", InstanceSpec, TaskSpec)


def seal(spec: Sealable, box: SecretBox) -> Sealable:
    """A copy of ``spec`` to send: its secret fields (``SEALED``) inside ``sealed``, sealed with
    the platform key, and emptied in the clear, so Redis never holds them readable."""
    if spec.sealed:
        return spec
    secret = {name: getattr(spec, name) for name in spec.SEALED}
    blank = {name: type(value)() for name, value in secret.items()}
    return replace(spec, sealed=box.seal_json(secret), **blank)


def unseal(spec: Sealable, box: SecretBox) -> Sealable:
    """``spec`` with its sealed fields opened (as it was before :func:`seal`). A spec sent
    unsealed (by a controller from before sealing) is returned as it is."""
    if not spec.sealed:
        return spec
    secret = box.open_json(spec.sealed)
    return replace(spec, sealed="", **{name: secret[name] for name in spec.SEALED})
