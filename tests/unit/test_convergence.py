"""The health manager's decisions, as a pure function of desired state, actual state (the
agents' instances and the route table revisions the router applied) and clock."""

from __future__ import annotations

import itertools
from typing import Any

import pytest

from contracts.messages import InstanceReport, InstanceState
from controller import convergence
from controller.convergence import (
    Action,
    AgentCapacity,
    Clock,
    Crashed,
    CrashPolicy,
    CrashRecord,
    DesiredApp,
    DesiredProcess,
    DesiredRelease,
    ReleaseDeployed,
    ReleaseFailed,
    Start,
    Stop,
    Unplaceable,
    is_ready,
)

AGENTS = [AgentCapacity("a1", 4096, 0), AgentCapacity("a2", 4096, 0)]
NOW = Clock(now=1000.0)
APPLIED = {"a1": 10, "a2": 10}  # the router serves each agent's route table of revision 10
RUNNING, STARTING, CRASHED = InstanceState.RUNNING, InstanceState.STARTING, InstanceState.CRASHED


def plan(*args: Any, applied: dict[str, int] = APPLIED, **kw: Any) -> list[Action]:
    return convergence.plan(*args, applied=applied, **kw)


def app(instances: int = 1, version: int = 1, status: str = "DEPLOYED", started: bool = True,
        memory: int = 256, release: bool = True, generation: int = 0, max_in_flight: int = 1,
        workers: int = 0, policy: CrashPolicy | None = None) -> DesiredApp:
    processes = [DesiredProcess("web", instances, memory, "run web")]
    if workers:
        processes.append(DesiredProcess("worker", workers, memory, "run worker"))
    return DesiredApp(
        guid="app-1", name="web", started=started, routes=("web.localhost",),
        release=DesiredRelease(version, status, f"img:{version}") if release else None,
        processes=tuple(processes), generation=generation, max_in_flight=max_in_flight,
        crash_policy=policy or CrashPolicy())


_guids = itertools.count()


def inst(index: int = 0, release: int = 1, state: str = RUNNING, agent: str = "a1",
         app_guid: str = "app-1", reason: str | None = None, since: float = 900.0,
         generation: int = 0, ready: bool = True, process_type: str = "web",
         started_at: float = 0.0, exit_code: int | None = None,
         routes_rev: int | None = None) -> InstanceReport:
    """An instance as its agent reports it; a web one first in its agent's table of revision
    ``routes_rev`` (default 7, which the router applied)."""
    if routes_rev is None:
        routes_rev = 7 if process_type == "web" and state == RUNNING and ready else 0
    return InstanceReport(
        instance_guid=f"i{next(_guids)}", app_guid=app_guid, app_name="web", release=release,
        process_type=process_type, index=index, state=state, host_port=1, since=since,
        agent_id=agent, reason=reason, generation=generation, ready=ready,
        started_at=started_at or since - 10, exit_code=exit_code, routes_rev=routes_rev)


def guids():
    counter = itertools.count()
    return lambda: f"new-{next(counter)}"


def kinds(actions) -> list[str]:
    return sorted(type(a).__name__ for a in actions)


def starts(actions) -> list[Start]:
    return [a for a in actions if isinstance(a, Start)]


def stopped(actions) -> set[str]:
    return {a.instance_guid for a in actions if isinstance(a, Stop)}


# -- starting and placing ----------------------------------------------------------------
def test_missing_instances_are_started_spread_over_agents():
    actions = plan([app(instances=3)], [], AGENTS, NOW, new_guid=guids())
    assert [s.spec.index for s in starts(actions)] == [0, 1, 2]
    assert sorted(s.agent_id for s in starts(actions)) == ["a1", "a1", "a2"]
    assert {s.spec.image for s in starts(actions)} == {"img:1"}
    assert starts(actions)[0].spec.routes == ["web.localhost"]


def test_spread_counts_the_apps_instances_already_running():
    actions = plan([app(instances=2)], [inst(0, agent="a1")], AGENTS, NOW)
    assert [s.agent_id for s in starts(actions)] == ["a2"]


def test_placement_then_prefers_the_agent_with_most_free_memory():
    agents = [AgentCapacity("a1", 4096, 3000), AgentCapacity("a2", 4096, 1000)]
    assert [s.agent_id for s in starts(plan([app()], [], agents, NOW))] == ["a2"]


@pytest.mark.parametrize("agent", [
    AgentCapacity("a1", 512, 400),  # memory
    AgentCapacity("a1", 4096, 0, disk_mb=2048, disk_used_mb=1500),  # disk
    AgentCapacity("a1", 4096, 0, slots=4, slots_used=4),  # instance slots
])
def test_no_room_means_no_start_and_says_so(agent):
    actions = plan([app(memory=256)], [], [agent], NOW)
    assert kinds(actions) == ["Unplaceable"]
    assert actions[0] == Unplaceable("app-1", "web", 0, 256, 1024)


def test_no_agents_means_nothing_placed():
    assert kinds(plan([app()], [], [], NOW)) == ["Unplaceable"]


def test_placement_within_one_tick_counts_what_it_placed():
    agents = [AgentCapacity("a1", 600, 0)]
    actions = plan([app(instances=3, memory=256)], [], agents, NOW)
    assert kinds(actions) == ["Start", "Start", "Unplaceable"]


def test_worker_processes_are_started_without_routes():
    actions = plan([app(workers=2)], [inst(0)], AGENTS, NOW, new_guid=guids())
    specs = [s.spec for s in starts(actions)]
    assert [(s.process_type, s.index) for s in specs] == [("worker", 0), ("worker", 1)]
    assert all(s.routes == [] and s.command == "run worker" for s in specs)


def test_process_type_scaled_to_zero_is_stopped():
    worker = inst(0, process_type="worker")
    actions = plan([app(workers=0)], [inst(0), worker], AGENTS, NOW)
    assert stopped(actions) == {worker.instance_guid}


def test_nothing_to_do_when_actual_matches_desired():
    assert plan([app(instances=2)], [inst(0), inst(1, agent="a2")], AGENTS, NOW) == []


# -- surplus and duplicates --------------------------------------------------------------
def test_surplus_indices_are_stopped():
    keep, extra = inst(0), inst(1)
    actions = plan([app(instances=1)], [keep, extra], AGENTS, NOW)
    assert actions == [Stop("a1", extra.instance_guid, "the process was scaled down")]


def test_duplicate_index_keeps_the_running_one():
    running = inst(0, since=500.0)
    starting = inst(0, state=STARTING, since=800.0)
    actions = plan([app()], [starting, running], AGENTS, NOW)
    assert stopped(actions) == {starting.instance_guid}


def test_agent_back_after_loss_loses_its_stale_copies():
    stale = inst(0, agent="a1", since=100.0)  # reported again by the agent that came back
    replacement = inst(0, agent="a2", since=800.0)
    actions = plan([app()], [stale, replacement], AGENTS, NOW)
    assert stopped(actions) == {stale.instance_guid}


def test_instances_of_a_deleted_app_are_stopped():
    orphan = inst(0, app_guid="gone")
    assert plan([], [orphan], AGENTS, NOW) == [
        Stop("a1", orphan.instance_guid, "the app was deleted")]


def test_stopped_app_or_app_without_release_runs_nothing():
    running = inst(0)
    assert kinds(plan([app(started=False)], [running], AGENTS, NOW)) == ["Stop"]
    assert kinds(plan([app(release=False)], [running], AGENTS, NOW)) == ["Stop"]


def test_stopping_instances_are_left_alone():
    stopping = inst(0, state=InstanceState.STOPPING)
    assert kinds(plan([app()], [stopping], AGENTS, NOW)) == ["Start"]


# -- first deploy and release status -----------------------------------------------------
def test_first_deploy_starts_every_index_at_once():
    actions = plan([app(instances=4, status="DEPLOYING")], [], AGENTS, NOW)
    assert len(starts(actions)) == 4


def test_release_is_deployed_once_every_index_is_ready_and_routed():
    new = [inst(0), inst(1)]
    actions = plan([app(instances=2, status="DEPLOYING")], new, AGENTS, NOW)
    assert actions == [ReleaseDeployed("app-1", 1)]


def test_not_deployed_before_the_router_has_the_new_instance():
    new = inst(0, routes_rev=11)  # first in a table newer than the router applied
    assert plan([app(status="DEPLOYING")], [new], AGENTS, NOW) == []


def test_not_deployed_while_an_instance_fails_its_health_check():
    assert plan([app(status="DEPLOYING")], [inst(0, ready=False)], AGENTS, NOW) == []


def test_workers_count_as_ready_when_running_without_routes():
    actions = plan([app(status="DEPLOYING", workers=1)],
                   [inst(0), inst(0, process_type="worker")], AGENTS, NOW)
    assert actions == [ReleaseDeployed("app-1", 1)]


def test_zero_instances_deploys_at_once_and_stops_the_old():
    old = inst(0, release=1)
    actions = plan([app(instances=0, version=2, status="DEPLOYING")], [old], AGENTS, NOW)
    assert ReleaseDeployed("app-1", 2) in actions
    assert stopped(actions) == {old.instance_guid}


def test_crash_while_deploying_fails_the_release_and_keeps_the_old():
    old = inst(0, release=1)
    bad = inst(0, release=2, state=CRASHED, reason="exited with code 1")
    actions = plan([app(version=2, status="DEPLOYING")], [old, bad], AGENTS, NOW)
    assert ReleaseFailed("app-1", 2, "exited with code 1") in actions
    assert stopped(actions) == {bad.instance_guid}  # not the old one


# -- rolling deploy ----------------------------------------------------------------------
def rollout(instances: int = 3, max_in_flight: int = 1) -> DesiredApp:
    return app(instances=instances, version=2, status="DEPLOYING", max_in_flight=max_in_flight)


def test_rolling_deploy_starts_one_new_instance_while_old_ones_serve():
    old = [inst(i, release=1) for i in range(3)]
    actions = plan([rollout()], old, AGENTS, NOW, new_guid=guids())
    assert [s.spec.index for s in starts(actions)] == [0]
    assert stopped(actions) == set()


def test_rolling_deploy_honours_max_in_flight():
    old = [inst(i, release=1) for i in range(3)]
    actions = plan([rollout(max_in_flight=2)], old, AGENTS, NOW)
    assert [s.spec.index for s in starts(actions)] == [0, 1]


def test_rolling_deploy_waits_while_the_new_instance_starts():
    old = [inst(i, release=1) for i in range(3)]
    actual = [*old, inst(0, release=2, state=STARTING)]
    assert plan([rollout()], actual, AGENTS, NOW) == []


def test_rolling_deploy_waits_until_the_new_instance_is_routed():
    old = [inst(i, release=1) for i in range(3)]
    actual = [*old, inst(0, release=2, routes_rev=11)]
    assert plan([rollout()], actual, AGENTS, NOW) == []
    # The router acknowledges a1's table of revision 11: the rollout moves on.
    actions = plan([rollout()], actual, AGENTS, NOW, applied={"a1": 11, "a2": 10})
    assert [s.spec.index for s in starts(actions)] == [1]
    assert stopped(actions) == {old[2].instance_guid}


def test_a_web_instance_is_ready_once_the_router_applied_a_table_of_its_agent_with_it():
    web = inst(0, agent="a1", routes_rev=11)
    assert not is_ready(web, {"a1": 10, "a2": 99})  # another agent's revision says nothing
    assert is_ready(web, {"a1": 11}) and is_ready(web, {"a1": 12})
    assert not is_ready(web, {})  # no router has acknowledged anything (Redis restarted)
    assert not is_ready(inst(0, routes_rev=0), {"a1": 99})  # in no table yet
    assert not is_ready(inst(0, ready=False, routes_rev=3), {"a1": 99})  # out of the table
    assert is_ready(inst(0, process_type="worker"), {})  # not routed, so never waits


def test_a_release_stays_deploying_while_the_router_has_not_applied_its_agents_tables():
    new = [inst(0, agent="a1", routes_rev=12), inst(1, agent="a2", routes_rev=12)]
    desired = [app(instances=2, status="DEPLOYING")]
    assert plan(desired, new, AGENTS, NOW, applied={"a1": 12, "a2": 11}) == []
    assert plan(desired, new, AGENTS, NOW, applied={"a1": 12, "a2": 12}) == [
        ReleaseDeployed("app-1", 1)]


def test_rolling_deploy_stops_one_old_and_starts_the_next_once_one_new_is_ready():
    old = [inst(i, release=1) for i in range(3)]
    actual = [*old, inst(0, release=2)]
    actions = plan([rollout()], actual, AGENTS, NOW)
    assert [s.spec.index for s in starts(actions)] == [1]
    assert stopped(actions) == {old[2].instance_guid}  # ready count stays at 3


def test_rolling_deploy_finishes_when_all_new_are_ready():
    old = [inst(i, release=1) for i in range(3)]
    new = [inst(i, release=2) for i in range(3)]
    actions = plan([rollout()], [*old, *new], AGENTS, NOW)
    assert ReleaseDeployed("app-1", 2) in actions
    assert stopped(actions) == {o.instance_guid for o in old}


def test_ready_count_never_drops_below_desired_during_a_rollout():
    """Walk a whole rollout, applying the plan, and count ready instances at every step."""
    desired = rollout(instances=4)
    actual = [inst(i, release=1, agent=f"a{i % 2 + 1}") for i in range(4)]
    for _step in range(40):
        actions = plan([desired], actual, AGENTS, NOW, new_guid=guids())
        gone = stopped(actions)
        actual = [i for i in actual if i.instance_guid not in gone]
        for start in starts(actions):  # each start becomes ready by the next tick
            actual.append(inst(start.spec.index, release=2, agent=start.agent_id))
        ready = sum(1 for i in actual if i.state == RUNNING)
        assert ready >= 4
        if ReleaseDeployed("app-1", 2) in actions:
            break
    else:
        pytest.fail("the rollout never finished")
    assert sorted(i.release for i in actual) == [2, 2, 2, 2]


def test_restart_rolls_instances_to_the_new_generation():
    old = [inst(i, generation=0) for i in range(2)]
    actions = plan([app(instances=2, generation=1)], old, AGENTS, NOW)
    assert [(s.spec.index, s.spec.generation) for s in starts(actions)] == [(0, 1)]
    assert stopped(actions) == set()


def test_a_restart_evens_the_spread_over_an_agent_that_came_back():
    """a1 holds two, a2 one, a3 (back after a loss) none: the new generation lands one each."""
    agents = [*AGENTS, AgentCapacity("a3", 4096, 0)]
    actual = [inst(0, agent="a1"), inst(1, agent="a1"), inst(2, agent="a2")]
    desired = app(instances=3, generation=1)
    for _step in range(20):
        actions = plan([desired], actual, agents, NOW, new_guid=guids(),
                       applied={**APPLIED, "a3": 10})
        gone = stopped(actions)
        actual = [i for i in actual if i.instance_guid not in gone]
        actual += [inst(s.spec.index, agent=s.agent_id, generation=1) for s in starts(actions)]
        if all(i.generation == 1 for i in actual) and len(actual) == 3:
            break
    assert sorted(i.agent_id for i in actual) == ["a1", "a2", "a3"]


def test_scale_down_during_a_rollout_stops_surplus_old_instances():
    old = [inst(i, release=1) for i in range(3)]
    actions = plan([rollout(instances=1)], old, AGENTS, NOW)
    assert len(starts(actions)) == 1
    assert stopped(actions) == {old[1].instance_guid, old[2].instance_guid}


# -- crashes and back-off ----------------------------------------------------------------
def test_crash_policy_default_schedule():
    policy = CrashPolicy()
    assert [policy.delay(n) for n in range(1, 11)] == [
        0, 0, 0, 30, 60, 120, 240, 480, 960, 960]


def test_crashed_instance_is_counted_removed_and_restarted_at_once():
    crashed = inst(0, state=CRASHED, reason="exit 1", exit_code=1, since=990.0)
    actions = plan([app()], [crashed], AGENTS, NOW, new_guid=guids())
    assert kinds(actions) == ["Crashed", "Start", "Stop"]
    record = next(a for a in actions if isinstance(a, Crashed)).record
    assert (record.count, record.restart_at, record.exit_code) == (1, 1000.0, 1)


def test_a_crash_is_counted_once():
    crashed = inst(0, state=CRASHED, since=990.0)
    seen = {("app-1", "web", 0): CrashRecord(1, 990.0, crashed.instance_guid, 1000.0)}
    actions = plan([app()], [crashed], AGENTS, NOW, seen)
    assert kinds(actions) == ["Start", "Stop"]


def test_fourth_crash_in_a_row_waits_30_seconds():
    crashed = inst(0, state=CRASHED, since=995.0, started_at=990.0)
    before = {("app-1", "web", 0): CrashRecord(3, 980.0, "older", 980.0)}
    actions = plan([app()], [crashed], AGENTS, NOW, before)
    assert kinds(actions) == ["Crashed", "Stop"]
    record = next(a for a in actions if isinstance(a, Crashed)).record
    assert (record.count, record.restart_at) == (4, 1030.0)


def test_backing_off_index_is_not_started_until_its_time():
    records = {("app-1", "web", 0): CrashRecord(4, 995.0, "gone", 1030.0)}
    assert plan([app()], [], AGENTS, NOW, records) == []
    later = Clock(now=1030.0)
    assert kinds(plan([app()], [], AGENTS, later, records)) == ["Start"]


def test_crash_count_resets_after_a_long_enough_run():
    crashed = inst(0, state=CRASHED, since=1000.0, started_at=600.0)  # up 400 s
    before = {("app-1", "web", 0): CrashRecord(7, 500.0, "older", 500.0)}
    actions = plan([app()], [crashed], AGENTS, NOW, before)
    record = next(a for a in actions if isinstance(a, Crashed)).record
    assert record.count == 1
    assert kinds(actions) == ["Crashed", "Start", "Stop"]


def test_crash_policy_is_per_app():
    policy = CrashPolicy(immediate_restarts=0, backoff_base=2.0, backoff_max=8.0)
    crashed = inst(0, state=CRASHED, since=999.0)
    actions = plan([app(policy=policy)], [crashed], AGENTS, NOW)
    record = next(a for a in actions if isinstance(a, Crashed)).record
    assert record.restart_at == 1002.0
    assert [policy.delay(n) for n in range(1, 6)] == [2, 4, 8, 8, 8]


def test_other_indices_keep_serving_while_one_backs_off():
    records = {("app-1", "web", 1): CrashRecord(5, 990.0, "gone", 1050.0)}
    actions = plan([app(instances=3)], [inst(0)], AGENTS, NOW, records)
    assert [s.spec.index for s in starts(actions)] == [2]


def test_crashed_instance_of_an_old_release_is_just_removed():
    old_crash = inst(0, release=1, state=CRASHED)
    actions = plan([app(version=2)], [old_crash, inst(0, release=2)], AGENTS, NOW)
    assert kinds(actions) == ["Stop"]
