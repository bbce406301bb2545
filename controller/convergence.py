"""What the health manager should do: desired state, actual state and the clock in, actions out.

Actual state is the agents' instances and what the router has applied: the revision of each
agent's route table nginx serves (see :mod:`contracts.revisions`).

A pure function: no I/O, no clock of its own, so every rule is a unit test.

Rules, per app:
- an app that is stopped, deleted or has no release runs nothing;
- an instance belongs to the app's *target* when it runs the target release at the app's
  current generation (a restart bumps the generation); every other instance is *old*;
- each process type gets every missing index of the target started, placed on an agent
  that fits memory, disk and a slot: the one with the fewest of the target's instances, then
  of the app's, then the most free memory (so a rollout or restart evens the spread);
- a **rolling deploy**: while old instances of a process type still serve, at most
  ``max_in_flight`` target instances are starting (or running but not yet routed) at once,
  and old instances stop only as target instances become ready, so the number of ready
  instances never drops below the desired count;
- a target release that is DEPLOYING is DEPLOYED once every index of every process type is
  ready; if one of its instances crashes before that, the release FAILED and its instances
  stop (the app goes back to the release that served before);
- a crashed instance of a deployed release is removed and replaced following the crash
  policy: the first few crashes restart at once, later ones wait a delay that doubles up to
  a maximum, and the count starts again after an instance ran long enough;
- duplicates of an index (an agent back after it was given up) keep the newest ready one.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field

from contracts.messages import InstanceReport, InstanceSpec, InstanceState
from contracts.revisions import is_routed

WEB = "web"


@dataclass(frozen=True)
class CrashPolicy:
    """Cloud Foundry's defaults: 3 immediate restarts, then 30 s doubling to 16 min; the
    count resets once an instance stayed up 5 min."""

    immediate_restarts: int = 3
    backoff_base: float = 30.0
    backoff_max: float = 960.0
    reset_after: float = 300.0

    def delay(self, crash_count: int) -> float:
        """Seconds to wait before restarting after the ``crash_count``-th crash in a row."""
        if crash_count <= self.immediate_restarts:
            return 0.0
        steps = crash_count - self.immediate_restarts - 1
        return min(self.backoff_max, self.backoff_base * (2 ** min(steps, 30)))


@dataclass(frozen=True)
class HealthCheckSpec:
    type: str = "port"  # port, http, process
    endpoint: str = "/"
    start_timeout: float = 60.0
    interval: float = 2.0
    probe_timeout: float = 1.0


@dataclass(frozen=True)
class DesiredProcess:
    type: str
    instances: int
    memory_mb: int
    command: str
    disk_mb: int = 1024
    health_check: HealthCheckSpec = field(default_factory=HealthCheckSpec)


@dataclass(frozen=True)
class DesiredRelease:
    version: int
    status: str  # controller.models.ReleaseStatus values
    image: str
    env: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class DesiredApp:
    guid: str
    name: str
    started: bool
    routes: tuple[str, ...]
    release: DesiredRelease | None
    processes: tuple[DesiredProcess, ...] = ()
    generation: int = 0
    max_in_flight: int = 1
    crash_policy: CrashPolicy = field(default_factory=CrashPolicy)
    team: str = ""  # the owning team's guid: its instances share that team's network
    runtime: str = ""  # the OCI runtime of its instances ("" is runc)


@dataclass(frozen=True)
class AgentCapacity:
    agent_id: str
    memory_mb: int
    memory_used_mb: int
    disk_mb: int = 1 << 30
    disk_used_mb: int = 0
    slots: int = 1 << 30
    slots_used: int = 0


@dataclass(frozen=True)
class CrashRecord:
    """Crashes in a row of one index of one process type of an app."""

    count: int
    last_at: float
    instance_guid: str  # the last crashed instance counted, so none is counted twice
    restart_at: float
    exit_code: int | None = None
    reason: str | None = None


CrashKey = tuple[str, str, int]  # app guid, process type, index


@dataclass(frozen=True)
class Start:
    agent_id: str
    spec: InstanceSpec


@dataclass(frozen=True)
class Stop:
    agent_id: str
    instance_guid: str
    reason: str


@dataclass(frozen=True)
class ReleaseDeployed:
    app_guid: str
    version: int


@dataclass(frozen=True)
class ReleaseFailed:
    app_guid: str
    version: int
    reason: str


@dataclass(frozen=True)
class Crashed:
    """Count this crash (once per instance) and remember when the index may restart."""

    app_guid: str
    process_type: str
    index: int
    record: CrashRecord
    last_lines: tuple[str, ...] = ()


@dataclass(frozen=True)
class Unplaceable:
    app_guid: str
    process_type: str
    index: int
    memory_mb: int
    disk_mb: int


Action = Start | Stop | ReleaseDeployed | ReleaseFailed | Crashed | Unplaceable
LIVE = (InstanceState.STARTING, InstanceState.RUNNING)


@dataclass(frozen=True)
class Clock:
    now: float  # epoch seconds


def plan(
    apps: Iterable[DesiredApp],
    actual: Iterable[InstanceReport],
    agents: Iterable[AgentCapacity],
    clock: Clock,
    crashes: Mapping[CrashKey, CrashRecord] | None = None,
    new_guid: Callable[[], str] = lambda: str(uuid.uuid4()),
    applied: Mapping[str, int] | None = None,
) -> list[Action]:
    """The actions that move actual state toward desired state. ``applied`` is what the
    router serves: agent id -> revision of that agent's route table (``keys.ROUTER_APPLIED``);
    a web instance is ready only once a table that includes it is applied."""
    by_app: dict[str, list[InstanceReport]] = {}
    for inst in actual:
        if inst.state != InstanceState.STOPPING:
            by_app.setdefault(inst.app_guid, []).append(inst)
    placer = _Placer(list(agents), by_app)
    actions: list[Action] = []
    desired = {app.guid: app for app in apps}
    for guid, insts in by_app.items():
        if guid not in desired:
            actions += [Stop(i.agent_id, i.instance_guid, "the app was deleted") for i in insts]
    for app in desired.values():
        planner = _AppPlan(app, by_app.get(app.guid, []), placer, clock, crashes or {},
                           new_guid, applied or {})
        actions += planner.plan()
    return actions


def is_ready(inst: InstanceReport, applied: Mapping[str, int]) -> bool:
    """Running, passing its health check, and (for web) served by nginx: the router applied a
    table of the instance's agent at least as new as the first one that included it."""
    if inst.state != InstanceState.RUNNING or not inst.ready:
        return False
    return inst.process_type != WEB or is_routed(inst.agent_id, inst.routes_rev, applied)


class _AppPlan:
    def __init__(self, app: DesiredApp, insts: list[InstanceReport], placer: _Placer,
                 clock: Clock, crashes: Mapping[CrashKey, CrashRecord],
                 new_guid: Callable[[], str], applied: Mapping[str, int]) -> None:
        self.app, self.insts, self.placer, self.clock = app, insts, placer, clock
        self.crashes, self.new_guid, self.applied = crashes, new_guid, applied
        self.actions: list[Action] = []

    def stop(self, insts: Iterable[InstanceReport], reason: str) -> None:
        self.actions += [Stop(i.agent_id, i.instance_guid, reason) for i in insts]

    def plan(self) -> list[Action]:
        app, release = self.app, self.app.release
        if not app.started or release is None:
            self.stop(self.insts, "the app is stopped")
            return self.actions
        target = [i for i in self.insts if self._is_target(i)]
        deploying = release.status == "DEPLOYING"
        crashed = [i for i in target if i.state == InstanceState.CRASHED]
        if deploying and crashed:
            reason = crashed[0].reason or "an instance crashed while starting"
            self.actions.append(ReleaseFailed(app.guid, release.version, reason))
            self.stop(target, "its release failed")
            return self.actions

        desired = {p.type: p for p in app.processes}
        all_ready = True
        for type_ in sorted({*desired, *(i.process_type for i in self.insts)}):
            process = desired.get(type_)
            insts = [i for i in self.insts if i.process_type == type_]
            if process is None or process.instances == 0:
                self.stop([i for i in insts], "its process type is scaled to 0")
                continue
            all_ready &= self._plan_process(process, insts)
        if deploying and all_ready:
            self.actions.append(ReleaseDeployed(app.guid, release.version))
        return self.actions

    def _is_target(self, inst: InstanceReport) -> bool:
        assert self.app.release is not None
        return (inst.release == self.app.release.version
                and inst.generation == self.app.generation)

    def _plan_process(self, process: DesiredProcess, insts: list[InstanceReport]) -> bool:
        """Plan one process type; True when every desired index has a ready target instance."""
        applied = self.applied
        target = [i for i in insts if self._is_target(i)]
        old = [i for i in insts if not self._is_target(i)]
        for inst in target:
            if inst.state == InstanceState.CRASHED:
                self._crashed(inst)
        self.stop([i for i in old if i.state == InstanceState.CRASHED], "it crashed")

        by_index: dict[int, list[InstanceReport]] = {}
        for inst in target:
            if inst.state in LIVE:
                by_index.setdefault(inst.index, []).append(inst)
        live: dict[int, InstanceReport] = {}
        for index, group in sorted(by_index.items()):
            # The newest ready one stays: an agent that comes back after its instances were
            # replaced elsewhere loses its stale copies.
            group.sort(key=lambda i: (is_ready(i, applied), i.state == InstanceState.RUNNING,
                                      i.since), reverse=True)
            if index < process.instances:
                live[index] = group[0]
                self.stop(group[1:], "it duplicates another instance of its index")
            else:
                self.stop(group, "the process was scaled down")

        old_live = [i for i in old if i.state in LIVE]
        ready = sum(1 for i in live.values() if is_ready(i, applied))
        spread: dict[str, int] = {}  # the target's instances per agent, for placement
        for inst in live.values():
            spread[inst.agent_id] = spread.get(inst.agent_id, 0) + 1
        in_flight = len(live) - ready
        room = max(0, self.app.max_in_flight - in_flight) if old_live else process.instances
        for index in range(process.instances):
            if index in live or room == 0:
                continue
            if self._backing_off(process.type, index):
                continue
            agent_id = self.placer.place(self.app.guid, process.memory_mb, process.disk_mb,
                                         spread)
            if agent_id is None:
                self.actions.append(Unplaceable(self.app.guid, process.type, index,
                                                process.memory_mb, process.disk_mb))
                continue
            room -= 1
            self.actions.append(Start(agent_id, self._spec(process, index)))

        # Old instances go as target instances become ready, never below the desired count.
        keep = max(0, process.instances - ready)
        old_live.sort(key=lambda i: (is_ready(i, applied), -i.index), reverse=True)
        self.stop(old_live[keep:], "a newer release or generation serves")
        return ready == process.instances

    def _crashed(self, inst: InstanceReport) -> None:
        key = (self.app.guid, inst.process_type, inst.index)
        self.stop([inst], "it crashed")
        previous = self.crashes.get(key)
        if previous is not None and previous.instance_guid == inst.instance_guid:
            return  # counted already
        policy = self.app.crash_policy
        uptime = inst.since - inst.started_at if inst.started_at else 0.0
        count = 1 if previous is None or uptime >= policy.reset_after else previous.count + 1
        record = CrashRecord(count=count, last_at=inst.since, instance_guid=inst.instance_guid,
                             restart_at=self.clock.now + policy.delay(count),
                             exit_code=inst.exit_code, reason=inst.reason)
        self.crashes = {**self.crashes, key: record}  # later indices in this tick see it
        self.actions.append(Crashed(self.app.guid, inst.process_type, inst.index, record,
                                    tuple(inst.last_lines)))

    def _backing_off(self, process_type: str, index: int) -> bool:
        record = self.crashes.get((self.app.guid, process_type, index))
        return record is not None and record.restart_at > self.clock.now

    def _spec(self, process: DesiredProcess, index: int) -> InstanceSpec:
        app, release = self.app, self.app.release
        assert release is not None
        check = process.health_check
        return InstanceSpec(
            instance_guid=self.new_guid(), app_guid=app.guid, app_name=app.name,
            release=release.version, process_type=process.type, index=index,
            image=release.image, command=process.command, memory_mb=process.memory_mb,
            env=dict(release.env), routes=list(app.routes) if process.type == WEB else [],
            health_check=check.type, health_check_endpoint=check.endpoint,
            start_timeout=check.start_timeout, check_interval=check.interval,
            probe_timeout=check.probe_timeout, generation=app.generation,
            disk_mb=process.disk_mb, team=app.team, runtime=app.runtime)


class _Placer:
    """Spread an app's instances over agents, then prefer the most free memory."""

    def __init__(self, agents: list[AgentCapacity],
                 by_app: dict[str, list[InstanceReport]]) -> None:
        self.free = {a.agent_id: [a.memory_mb - a.memory_used_mb, a.disk_mb - a.disk_used_mb,
                                  a.slots - a.slots_used] for a in agents}
        self.count: dict[tuple[str, str], int] = {}
        for app_guid, insts in by_app.items():
            for i in insts:
                key = (app_guid, i.agent_id)
                self.count[key] = self.count.get(key, 0) + 1

    def place(self, app_guid: str, memory_mb: int, disk_mb: int = 0,
              spread: dict[str, int] | None = None) -> str | None:
        """An agent with room; fewest of ``spread`` (the new instances of a rollout, which
        evens the spread as old ones go), then fewest of the app's, then most free memory."""
        spread = {} if spread is None else spread
        fits = [a for a, (mem, disk, slots) in self.free.items()
                if mem >= memory_mb and disk >= disk_mb and slots >= 1]
        if not fits:
            return None
        best = min(fits, key=lambda a: (spread.get(a, 0), self.count.get((app_guid, a), 0),
                                        -self.free[a][0], a))
        spread[best] = spread.get(best, 0) + 1
        self.free[best][0] -= memory_mb
        self.free[best][1] -= disk_mb
        self.free[best][2] -= 1
        self.count[(app_guid, best)] = self.count.get((app_guid, best), 0) + 1
        return best
