"""What the health manager should do: desired state and actual state in, actions out.

A pure function: no I/O, no clock of its own, so every rule is a unit test.

Rules, per app:
- an app that is stopped, deleted or has no release runs nothing;
- the app's target release gets every missing index started (placed on the agent with the
  fewest of the app's instances, then the most free memory);
- while the target release is DEPLOYING, the previous release keeps serving; once every
  index of the target runs, the target is DEPLOYED and other releases' instances stop;
  if one of the target's instances crashes before that, the release FAILED and its
  instances stop (the app goes back to its previous release);
- a crashed instance of a deployed release is replaced; extra indices are stopped.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from contracts.messages import InstanceReport, InstanceSpec, InstanceState


@dataclass(frozen=True)
class DesiredRelease:
    version: int
    status: str  # controller.models.ReleaseStatus values
    image: str
    command: str
    env: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class DesiredApp:
    guid: str
    name: str
    started: bool
    instances: int
    memory_mb: int
    routes: tuple[str, ...]
    release: DesiredRelease | None


@dataclass(frozen=True)
class AgentCapacity:
    agent_id: str
    memory_mb: int
    memory_used_mb: int


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


Action = Start | Stop | ReleaseDeployed | ReleaseFailed
LIVE = (InstanceState.STARTING, InstanceState.RUNNING)


def plan(
    apps: Iterable[DesiredApp],
    actual: Iterable[InstanceReport],
    agents: Iterable[AgentCapacity],
    start_timeout: float = 60.0,
    new_guid: Callable[[], str] = lambda: str(uuid.uuid4()),
) -> list[Action]:
    """The actions that move actual state toward desired state."""
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
        actions += _plan_app(app, by_app.get(app.guid, []), placer, start_timeout, new_guid)
    return actions


def _plan_app(app: DesiredApp, insts: list[InstanceReport], placer: _Placer,
              start_timeout: float, new_guid: Callable[[], str]) -> list[Action]:
    release = app.release
    if not app.started or release is None:
        return [Stop(i.agent_id, i.instance_guid, "the app is stopped") for i in insts]
    actions: list[Action] = []
    target = [i for i in insts if i.release == release.version and i.process_type == "web"]
    others = [i for i in insts if i not in target]
    deploying = release.status == "DEPLOYING"

    crashed = [i for i in target if i.state == InstanceState.CRASHED]
    if deploying and crashed:
        reason = crashed[0].reason or "an instance crashed while starting"
        actions.append(ReleaseFailed(app.guid, release.version, reason))
        actions += [Stop(i.agent_id, i.instance_guid, "its release failed") for i in target]
        return actions
    actions += [Stop(i.agent_id, i.instance_guid, "it crashed") for i in crashed]

    live = [i for i in target if i.state in LIVE]
    by_index: dict[int, list[InstanceReport]] = {}
    for inst in live:
        by_index.setdefault(inst.index, []).append(inst)
    for index, group in sorted(by_index.items()):
        keep = sorted(group, key=lambda i: (i.state != InstanceState.RUNNING, i.since))
        surplus = keep[1:] if index < app.instances else keep
        actions += [Stop(i.agent_id, i.instance_guid, "it is surplus") for i in surplus]

    for index in range(app.instances):
        if index in by_index:
            continue
        agent_id = placer.place(app.guid, app.memory_mb)
        if agent_id is None:
            continue  # no room anywhere now; the next tick tries again
        actions.append(Start(agent_id, InstanceSpec(
            instance_guid=new_guid(), app_guid=app.guid, app_name=app.name,
            release=release.version, process_type="web", index=index, image=release.image,
            command=release.command, memory_mb=app.memory_mb, env=dict(release.env),
            routes=list(app.routes), start_timeout=start_timeout)))

    running = {i.index for i in live if i.state == InstanceState.RUNNING}
    all_running = all(index in running for index in range(app.instances))
    if deploying and all_running:
        actions.append(ReleaseDeployed(app.guid, release.version))
    if all_running or not deploying:
        # Old releases go once the target serves fully (or it is already the deployed one).
        actions += [Stop(i.agent_id, i.instance_guid, "a newer release serves")
                    for i in others]
    return actions


class _Placer:
    """Spread an app's instances over agents, then prefer the most free memory."""

    def __init__(self, agents: list[AgentCapacity],
                 by_app: dict[str, list[InstanceReport]]) -> None:
        self.free = {a.agent_id: a.memory_mb - a.memory_used_mb for a in agents}
        self.count: dict[tuple[str, str], int] = {}
        for app_guid, insts in by_app.items():
            for i in insts:
                key = (app_guid, i.agent_id)
                self.count[key] = self.count.get(key, 0) + 1

    def place(self, app_guid: str, memory_mb: int) -> str | None:
        fits = [a for a, free in self.free.items() if free >= memory_mb]
        if not fits:
            return None
        best = min(fits, key=lambda a: (self.count.get((app_guid, a), 0), -self.free[a], a))
        self.free[best] -= memory_mb
        self.count[(app_guid, best)] = self.count.get((app_guid, best), 0) + 1
        return best
