"""The health manager's decisions, as a pure function of desired and actual state."""

from __future__ import annotations

import itertools

from contracts.messages import InstanceReport, InstanceState
from controller.convergence import (
    AgentCapacity,
    DesiredApp,
    DesiredRelease,
    ReleaseDeployed,
    ReleaseFailed,
    Start,
    Stop,
    plan,
)

AGENTS = [AgentCapacity("a1", 4096, 0), AgentCapacity("a2", 4096, 0)]


def app(instances: int = 1, version: int = 1, status: str = "DEPLOYED", started: bool = True,
        memory: int = 256, release: bool = True) -> DesiredApp:
    return DesiredApp(
        guid="app-1", name="web", started=started, instances=instances, memory_mb=memory,
        routes=("web.localhost",),
        release=DesiredRelease(version, status, f"img:{version}", "run") if release else None)


_guids = itertools.count()


def inst(index: int = 0, release: int = 1, state: str = InstanceState.RUNNING,
         agent: str = "a1", app_guid: str = "app-1", reason: str | None = None,
         since: float = 0.0) -> InstanceReport:
    return InstanceReport(
        instance_guid=f"i{next(_guids)}", app_guid=app_guid, app_name="web", release=release,
        process_type="web", index=index, state=state, host_port=1, since=since,
        agent_id=agent, reason=reason)


def guids():  # noqa: ANN201
    counter = itertools.count()
    return lambda: f"new-{next(counter)}"


def kinds(actions) -> list[str]:  # noqa: ANN001
    return sorted(type(a).__name__ for a in actions)


def test_missing_instances_are_started_spread_over_agents():
    actions = plan([app(instances=3)], [], AGENTS, new_guid=guids())
    starts = [a for a in actions if isinstance(a, Start)]
    assert [s.spec.index for s in starts] == [0, 1, 2]
    assert sorted(s.agent_id for s in starts) == ["a1", "a1", "a2"]
    assert {s.spec.image for s in starts} == {"img:1"}
    assert starts[0].spec.routes == ["web.localhost"]


def test_nothing_to_do_when_actual_matches_desired():
    assert plan([app(instances=2)], [inst(0), inst(1, agent="a2")], AGENTS) == []


def test_deploying_release_keeps_the_old_one_until_all_new_instances_run():
    actual = [inst(0, release=1), inst(0, release=2, state=InstanceState.STARTING)]
    actions = plan([app(version=2, status="DEPLOYING")], actual, AGENTS)
    assert actions == []  # wait: the new one is starting, the old one serves


def test_release_is_deployed_and_old_instances_stop_once_new_ones_run():
    old, new = inst(0, release=1), inst(0, release=2)
    actions = plan([app(version=2, status="DEPLOYING")], [old, new], AGENTS)
    assert ReleaseDeployed("app-1", 2) in actions
    assert Stop("a1", old.instance_guid, "a newer release serves") in actions


def test_crash_while_deploying_fails_the_release_and_keeps_the_old():
    old = inst(0, release=1)
    bad = inst(0, release=2, state=InstanceState.CRASHED, reason="exited with code 1")
    actions = plan([app(version=2, status="DEPLOYING")], [old, bad], AGENTS)
    assert ReleaseFailed("app-1", 2, "exited with code 1") in actions
    stops = [a for a in actions if isinstance(a, Stop)]
    assert [s.instance_guid for s in stops] == [bad.instance_guid]  # not the old one


def test_crashed_instance_of_a_deployed_release_is_replaced():
    crashed = inst(0, state=InstanceState.CRASHED)
    actions = plan([app()], [crashed], AGENTS, new_guid=guids())
    assert kinds(actions) == ["Start", "Stop"]
    start = next(a for a in actions if isinstance(a, Start))
    assert start.spec.index == 0


def test_surplus_instances_are_stopped():
    keep, extra = inst(0), inst(1)
    actions = plan([app(instances=1)], [keep, extra], AGENTS)
    assert actions == [Stop("a1", extra.instance_guid, "it is surplus")]


def test_duplicate_index_keeps_the_running_one():
    running = inst(0, since=5.0)
    starting = inst(0, state=InstanceState.STARTING, since=1.0)
    actions = plan([app()], [starting, running], AGENTS)
    assert actions == [Stop("a1", starting.instance_guid, "it is surplus")]


def test_instances_of_a_deleted_app_are_stopped():
    orphan = inst(0, app_guid="gone")
    assert plan([], [orphan], AGENTS) == [Stop("a1", orphan.instance_guid, "the app was deleted")]


def test_stopped_app_or_app_without_release_runs_nothing():
    running = inst(0)
    assert kinds(plan([app(started=False)], [running], AGENTS)) == ["Stop"]
    assert kinds(plan([app(release=False)], [running], AGENTS)) == ["Stop"]


def test_stopping_instances_are_left_alone():
    stopping = inst(0, state=InstanceState.STOPPING)
    actions = plan([app()], [stopping], AGENTS, new_guid=guids())
    assert kinds(actions) == ["Start"]  # the index is missing; the stopping one is ignored


def test_no_room_means_no_start_yet():
    full = [AgentCapacity("a1", 512, 400)]
    assert plan([app(memory=256)], [], full) == []
    assert plan([app(memory=256)], [], []) == []


def test_zero_instances_deploys_at_once():
    actions = plan([app(instances=0, version=2, status="DEPLOYING")], [inst(0, release=1)],
                   AGENTS)
    assert ReleaseDeployed("app-1", 2) in actions
    assert any(isinstance(a, Stop) for a in actions)
