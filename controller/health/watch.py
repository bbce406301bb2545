"""What the health manager sees happen to an app's instances, told as app stream events.

Each tick the health manager compares the instances it sees with those of its last tick and
publishes the changes (:func:`instance_events`), and tells an app's stream once when the
router serves a rollout (:func:`routed_rollouts`). Nothing here is an audit record: the
database keeps what people did, the stream also shows what the platform did about it.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass

from contracts.appevents import (
    APP_ROUTED,
    INSTANCE_CRASHED,
    INSTANCE_RUNNING,
    INSTANCE_STARTING,
    INSTANCE_STOPPED,
    AppEvent,
)
from contracts.messages import InstanceReport, InstanceState
from controller.convergence import WEB, DesiredApp

AppEvents = list[tuple[str, AppEvent]]  # (app guid, event)


@dataclass(frozen=True)
class Seen:
    """An instance as last told: its state in the stream's words, and what names it."""

    state: str  # "starting", "running", "crashed", "stopping"
    report: InstanceReport


def told_state(inst: InstanceReport) -> str:
    """The state a follower is told: a running instance that has not passed its health
    check yet is still starting."""
    if inst.state == InstanceState.RUNNING:
        return "running" if inst.ready else "starting"
    return inst.state.lower()


def _event(type_: str, inst: InstanceReport) -> tuple[str, AppEvent]:
    data: dict[str, object] = {
        "app": inst.app_name, "by": "health", "instance": inst.instance_guid,
        "process_type": inst.process_type, "index": inst.index, "release": inst.release,
        "generation": inst.generation, "agent": inst.agent_id}
    if type_ == INSTANCE_CRASHED:
        data.update(reason=inst.reason, exit_code=inst.exit_code)
    return inst.app_guid, AppEvent(type_, data)


TOLD = {"starting": INSTANCE_STARTING, "running": INSTANCE_RUNNING,
        "crashed": INSTANCE_CRASHED}


def instance_events(before: Mapping[str, Seen], now: Iterable[InstanceReport],
                    ) -> tuple[AppEvents, dict[str, Seen]]:
    """The events between the instances last seen (``before``) and ``now``, and what is seen
    now. A stopping instance is told when it is gone."""
    found: AppEvents = []
    seen: dict[str, Seen] = {}
    for inst in now:
        state = told_state(inst)
        seen[inst.instance_guid] = Seen(state, inst)
        last = before.get(inst.instance_guid)
        if (last is None or last.state != state) and state in TOLD:
            found.append(_event(TOLD[state], inst))
    for guid, last in before.items():
        if guid not in seen:
            found.append(_event(INSTANCE_STOPPED, last.report))
    return found, seen


def routed_rollouts(desired: Iterable[DesiredApp], actual: Iterable[InstanceReport],
                    ready: Callable[[InstanceReport], bool]) -> dict[str, tuple[int, int, int]]:
    """Apps whose web traffic the router sends only to ready instances of their current
    release and generation, as many as desired: app guid -> (release, generation, web
    instances).

    ``ready`` says whether an instance is running, healthy and in the route table the
    router has applied (:func:`controller.convergence.is_ready`)."""
    web: dict[str, list[InstanceReport]] = {}
    for inst in actual:
        if inst.process_type == WEB and inst.state != InstanceState.CRASHED:
            web.setdefault(inst.app_guid, []).append(inst)
    found = {}
    for app in desired:
        if not app.started or app.release is None or not app.routes:
            continue
        wanted = next((p.instances for p in app.processes if p.type == WEB), 0)
        insts = web.get(app.guid, [])
        if wanted == 0 or any(i.release != app.release.version or
                              i.generation != app.generation for i in insts):
            continue  # an older release or generation may still get requests
        if sum(1 for i in insts if ready(i)) >= wanted:
            found[app.guid] = (app.release.version, app.generation, wanted)
    return found


def routed_events(desired: Iterable[DesiredApp], routed: Mapping[str, tuple[int, int, int]],
                  told: Mapping[str, str]) -> tuple[AppEvents, dict[str, str], set[str]]:
    """``app.routed`` for each app in ``routed`` whose rollout (release, generation and
    number of web instances) was not told yet; ``told``: app guid -> the mark last told.

    Returns the events, the marks to keep, and the apps whose mark goes: those no longer
    routed (stopped, crashed below their count, rolling out), so the next time the router
    serves them is told again (a start, or a scale, with the same release)."""
    names = {a.guid: a for a in desired}
    found: AppEvents = []
    marks: dict[str, str] = {}
    for guid, (version, generation, instances) in routed.items():
        mark = f"{version}/{generation}/{instances}"
        if told.get(guid) == mark:
            continue
        marks[guid] = mark
        app = names[guid]
        found.append((guid, AppEvent(APP_ROUTED, {
            "app": app.name, "by": "health", "release": version, "generation": generation,
            "instances": instances, "urls": list(app.routes)})))
    return found, marks, set(told) - set(routed)
