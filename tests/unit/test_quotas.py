"""controller.quotas: what a team uses, what a change asks for, the refusal with its numbers,
the quotas a request sets, and the running tasks kept in (fake) Redis."""

from __future__ import annotations

import time
from typing import Any

import pytest
from sqlalchemy.orm import Session

from contracts import keys
from controller import quotas
from controller.errors import InvalidInput
from controller.models import App, AppState, Domain, Process, Route, Team
from tests.unit.fakes import FakeRedis


@pytest.fixture
def db(env: Any) -> Session:
    with env.app.extensions["paas.sessionmaker"]() as session:
        yield session


def team_with_apps(db: Session, name: str = "a", **quota: int | None) -> Team:
    """Team ``name``: app ``web`` (started; web 2 x 256, worker 1 x 512), app ``off``
    (stopped; web 3 x 1024) and two routes of ``web``."""
    team = Team(name=name, **{f"quota_{k}": v for k, v in quota.items()})
    web = App(name="web", team=team, state=AppState.STARTED)
    off = App(name="off", team=team, state=AppState.STOPPED)
    db.add_all([team, web, off,
                Process(app=web, type="web", instances=2, memory_mb=256),
                Process(app=web, type="worker", instances=1, memory_mb=512),
                Process(app=off, type="web", instances=3, memory_mb=1024)])
    db.flush()
    domain = db.query(Domain).filter_by(name="localhost").one()
    db.add_all([Route(domain=domain, hostname=f"{name}-{n}", app=web, team_id=team.id)
                for n in range(2)])
    db.flush()
    return team


def test_usage_counts_started_apps_memory_and_instances_and_all_apps_and_routes(db: Session,
                                                                              ) -> None:
    team = team_with_apps(db)
    other = team_with_apps(db, "b")
    expected = {"memory_mb": 2 * 256 + 512, "instances": 3, "apps": 2, "routes": 2, "tasks": 0,
                "services": 0}
    assert quotas.usage(db, team) == expected
    assert quotas.usage(db, other) == expected  # each team only its own
    assert quotas.present(db, team, None) == {"quota": dict.fromkeys(expected), "usage": expected}


def test_check_passes_up_to_the_quota_and_refuses_past_it_with_the_numbers(db: Session) -> None:
    team = team_with_apps(db, memory_mb=2048, instances=4, apps=2)
    quotas.check(db, team, memory_mb=1024, instances=1)  # 1024 + 1024 = 2048: allowed
    with pytest.raises(quotas.QuotaExceeded) as refused:
        quotas.check(db, team, memory_mb=1025)
    assert refused.value.status == 422
    assert refused.value.detail == {"quota": "memory_mb", "used": 1024, "asked": 1025,
                                    "allowed": 2048}
    assert str(refused.value) == (
        "team 'a' is over its memory quota: it uses 1024 MiB, this asks 1025 MiB more, and "
        "2048 MiB is allowed; stop or scale down something, or ask a platform admin to raise "
        "the quota ('paas set-quota').")
    with pytest.raises(quotas.QuotaExceeded) as refused:
        quotas.check(db, team, apps=1)
    assert refused.value.detail == {"quota": "apps", "used": 2, "asked": 1, "allowed": 2}
    assert "over its apps quota: it uses 2, this asks 1 more, and 2 is allowed" in \
        str(refused.value)


def test_check_lets_through_less_and_what_has_no_quota(db: Session) -> None:
    team = team_with_apps(db, memory_mb=0, instances=0)  # already over: 1024 MiB, 3 instances
    quotas.check(db, team, memory_mb=-512, instances=-1)  # scaling down is always allowed
    quotas.check(db, team, memory_mb=0, instances=0)
    quotas.check(db, team, routes=100, apps=100)  # unlimited
    quotas.check(db, team)


def test_the_first_quota_over_is_the_one_named(db: Session) -> None:
    team = team_with_apps(db, memory_mb=1024, instances=3)
    with pytest.raises(quotas.QuotaExceeded) as refused:
        quotas.check(db, team, memory_mb=256, instances=1)
    assert refused.value.detail["quota"] == "memory_mb"
    team.quota_memory_mb = None
    with pytest.raises(quotas.QuotaExceeded) as refused:
        quotas.check(db, team, memory_mb=256, instances=1)
    assert refused.value.detail == {"quota": "instances", "used": 3, "asked": 1, "allowed": 3}


def _app(db: Session, name: str) -> tuple[App, dict[str, Process]]:
    app = db.query(App).filter_by(name=name).one()
    return app, {p.type: p for p in app.processes}


def test_scale_demand_is_the_difference_and_nothing_while_stopped(db: Session) -> None:
    team_with_apps(db)
    web, procs = _app(db, "web")
    assert quotas.scale_demand(web, procs["web"], 5, 256) == {"memory_mb": 768, "instances": 3}
    assert quotas.scale_demand(web, procs["web"], 1, 1024) == {"memory_mb": 512,
                                                               "instances": -1}
    assert quotas.scale_demand(web, procs["web"], 0, 256) == {"memory_mb": -512,
                                                              "instances": -2}
    off, procs = _app(db, "off")
    assert quotas.scale_demand(off, procs["web"], 10, 4096) == {}


def test_start_demand_is_what_a_stopped_app_reserves(db: Session) -> None:
    team_with_apps(db)
    assert quotas.start_demand(_app(db, "off")[0]) == {"memory_mb": 3072, "instances": 3}
    assert quotas.start_demand(_app(db, "web")[0]) == {}


@pytest.mark.parametrize(("requested", "demand"), [
    ({}, {"memory_mb": 0, "instances": 0}),
    ({"instances": 4}, {"memory_mb": 512, "instances": 2}),
    ({"memory_mb": 512}, {"memory_mb": 512, "instances": 0}),
    ({"processes": [{"type": "worker", "instances": 0}]}, {"memory_mb": -512, "instances": -1}),
    ({"processes": [{"type": "clock", "instances": 1}]}, {"memory_mb": 128, "instances": 1}),
    ({"processes": [{"type": "clock"}]}, {"memory_mb": 0, "instances": 0}),  # none by default
    ({"instances": "4", "processes": ["junk"]}, {"memory_mb": 0, "instances": 0}),
])
def test_push_demand_of_an_existing_app(db: Session, requested: dict[str, Any],
                                        demand: dict[str, int]) -> None:
    team_with_apps(db)
    assert quotas.push_demand(_app(db, "web")[0], requested, 128) == demand


def test_push_demand_of_a_new_app_is_one_web_instance_of_the_default_memory(db: Session) -> None:
    team = Team(name="n")
    app = App(name="new", team=team, state=AppState.STARTED)
    db.add_all([team, app])
    db.flush()
    assert quotas.push_demand(app, {}, 256) == {"memory_mb": 256, "instances": 1}
    assert quotas.push_demand(app, {"instances": 3, "memory_mb": 64}, 256) == {
        "memory_mb": 192, "instances": 3}
    assert quotas.push_demand(team_with_apps(db, "z") and _app(db, "off")[0], {}, 256) == {}


def test_parse_takes_whole_numbers_and_null_and_refuses_the_rest() -> None:
    assert quotas.parse({}) == {}
    assert quotas.parse({"memory_mb": 4096, "apps": None, "tasks": 0}) == {
        "memory_mb": 4096, "apps": None, "tasks": 0}
    with pytest.raises(InvalidInput, match=r"^there is no quota 'disk': quotas are memory_mb, "
                                           r"instances, apps, routes, tasks, services\.$"):
        quotas.parse({"disk": 1})
    for bad in (-1, 1.5, "10", True, 100_001):
        with pytest.raises(InvalidInput, match=r"^the apps quota must be a whole number from 0 "
                                               r"to 100000, or null for unlimited\.$"):
            quotas.parse({"apps": bad})
    with pytest.raises(InvalidInput, match="the memory quota must be a whole number"):
        quotas.parse({"memory_mb": 64 * 1024 * 1024 + 1})


def start(client: FakeRedis, team: Team, guid: str) -> None:
    """As the API starts a task: the first entry of its log, then the team's set."""
    client.xadd(keys.task_log(guid), {"task": "{}"})
    quotas.task_started(client, team, guid, 600)


def test_running_tasks_counts_tasks_until_their_log_ends_or_they_are_given_up(db: Session,
                                                                              ) -> None:
    team = team_with_apps(db)
    client = FakeRedis()
    assert quotas.running_tasks(None, team) == 0
    assert quotas.running_tasks(client, team) == 0
    quotas.task_started(client, team, "gone", 600)  # its log has expired: it ended long ago
    assert quotas.running_tasks(client, team) == 0
    for guid in ("t1", "t2", "t3"):
        start(client, team, guid)
    assert quotas.running_tasks(client, team) == 3
    client.xadd(keys.task_log("t1"), {"line": "working"})
    assert quotas.running_tasks(client, team) == 3  # a line of output: still running
    client.xadd(keys.task_log("t1"), {"exit_code": "0"})
    client.xadd(keys.task_log("t2"), {"error": "the agent went away"})
    assert quotas.running_tasks(client, team) == 1
    # A task given up on (its deadline passed) no longer counts, log or not.
    client.zadd(quotas.team_tasks_key(team), {"t3": time.time() - 1})
    assert quotas.running_tasks(client, team) == 0
    other = team_with_apps(db, "b")
    start(client, other, "t4")
    assert quotas.running_tasks(client, team) == 0 and quotas.running_tasks(client, other) == 1
    assert quotas.usage(db, other, client)["tasks"] == 1


def test_a_tasks_quota_is_checked_against_the_running_tasks(db: Session) -> None:
    team = team_with_apps(db, tasks=1)
    client = FakeRedis()
    quotas.check(db, team, client, tasks=1)
    start(client, team, "t1")
    with pytest.raises(quotas.QuotaExceeded) as refused:
        quotas.check(db, team, client, tasks=1)
    assert refused.value.detail == {"quota": "tasks", "used": 1, "asked": 1, "allowed": 1}
    assert "over its running tasks quota" in str(refused.value)


def test_running_tasks_without_redis_count_none() -> None:
    class Down(FakeRedis):
        def zremrangebyscore(self, *_: Any) -> int:
            import redis

            raise redis.ConnectionError("down")

    assert quotas.running_tasks(Down(), Team(name="a")) == 0


# -- through the API -------------------------------------------------------------------------

@pytest.fixture
def fake_redis() -> FakeRedis:
    """``env``'s Redis, with the streams tasks write (tests.unit.test_tasks)."""
    from tests.unit.test_tasks import StreamRedis

    return StreamRedis()


def _task_env(env: Any) -> None:
    from tests.unit.test_tasks import _agent, _push

    _push(env, "myapp")
    _agent(env, "agent-a", 4096, 0)


def test_a_task_past_the_running_tasks_quota_is_refused_until_one_ends(env: Any) -> None:
    _task_env(env)
    assert env.client.put("/v1/teams/default/quota", json={"tasks": 1}).status_code == 200
    first = env.client.post("/v1/apps/myapp/tasks", json={"command": "sleep 60"})
    assert first.status_code == 201, first.json
    r = env.client.post("/v1/apps/myapp/tasks", json={"command": "sleep 60"})
    assert r.status_code == 422 and r.json["detail"] == {
        "quota": "tasks", "used": 1, "asked": 1, "allowed": 1}
    assert r.json["error"].startswith("team 'default' is over its running tasks quota: it uses "
                                      "1, this asks 1 more, and 1 is allowed;")
    assert env.client.get("/v1/teams/default").json["usage"]["tasks"] == 1
    env.redis.xadd(keys.task_log(first.json["guid"]), {"exit_code": "0"})
    assert env.client.get("/v1/teams/default").json["usage"]["tasks"] == 0
    assert env.client.post("/v1/apps/myapp/tasks", json={"command": "true"}).status_code == 201


def test_tasks_started_before_a_tasks_quota_count_against_it(env: Any) -> None:
    _task_env(env)
    assert env.client.post("/v1/apps/myapp/tasks", json={"command": "sleep 60"}).status_code \
        == 201
    assert env.client.get("/v1/teams/default").json["usage"]["tasks"] == 1
    assert env.client.put("/v1/teams/default/quota", json={"tasks": 1}).status_code == 200
    r = env.client.post("/v1/apps/myapp/tasks", json={"command": "sleep 60"})
    assert r.status_code == 422, r.json
