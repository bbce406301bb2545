"""Events, platform status and metrics: the API with a real SQLite database and stand-ins for
Redis and Celery, and the CLI's tables with the API replaced by canned answers."""

from __future__ import annotations

import json
import time

import pytest
from click.testing import CliRunner
from prometheus_client import CollectorRegistry
from prometheus_client.parser import text_string_to_metric_families

from contracts import keys
from contracts.messages import Heartbeat, InstanceReport
from controller import events as events_mod
from controller.accounts import member_token
from controller.convergence import Unplaceable
from controller.metrics import HealthMetrics
from controller.models import App, Role
from tests.unit.test_runtime_api import released

MiB = 1 << 20


def developer(env, team_name: str = "other") -> dict[str, str]:
    sessions = env.app.extensions["paas.sessionmaker"]
    with sessions() as session:
        secret = member_token(session, "dev-" + team_name, team_name, Role.DEVELOPER)
    return {"Authorization": f"Bearer {secret}"}


def crash(env, name: str = "myapp") -> None:
    """What the health manager records when an instance dies."""
    sessions = env.app.extensions["paas.sessionmaker"]
    with sessions() as session:
        from sqlalchemy import select

        app = session.scalar(select(App).where(App.name == name))
        events_mod.record(session, "app.crashed", "health", app, process_type="web", index=0,
                          exit_code=137, reason="the app exited with code 137",
                          crash_count=1, restart_in=0.0, last_lines=["boom"])
        session.commit()


def samples(text: str) -> dict[tuple[str, tuple], float]:
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


# -- events ------------------------------------------------------------------------------
def test_an_apps_events_tell_the_push_stage_release_scale_and_crash_in_order(env):
    released(env, options={"env": {"SECRET": "hunter2"}})
    assert env.client.post("/v1/apps/myapp/processes/web/scale",
                           json={"instances": 3}).status_code == 200
    env.client.patch("/v1/apps/myapp/env", json={"set": {"TOKEN": "s3cr3t"}})
    crash(env)
    r = env.client.get("/v1/apps/myapp/events?order=asc")
    assert r.status_code == 200, r.json
    found = r.json["events"]
    assert [e["type"] for e in found] == ["app.pushed", "route.mapped", "build.succeeded",
                                          "app.scaled", "app.env_changed", "app.crashed"]
    said = {e["type"]: e["description"] for e in found}
    assert said["app.pushed"].startswith("created and pushed") and "SECRET" in said["app.pushed"]
    assert said["route.mapped"] == "route mapped: myapp.localhost"
    assert said["build.succeeded"] == "staged with procfile: release 1"
    assert said["app.scaled"] == "scaled web 1→3"
    assert said["app.env_changed"] == "env changed: TOKEN (release 2)"
    assert said["app.crashed"] == ("crashed web #0: exit 137 (the app exited with code 137)")
    assert {e["actor"] for e in found} >= {"admin", "stager", "health"}
    assert all(e["time"] and e["app"] == "myapp" for e in found)
    assert "hunter2" not in r.text and "s3cr3t" not in r.text  # names, never values
    newest = env.client.get("/v1/apps/myapp/events?limit=2").json["events"]
    assert [e["type"] for e in newest] == ["app.crashed", "app.env_changed"]
    older = env.client.get(f"/v1/apps/myapp/events?limit=2&before={newest[-1]['id']}")
    assert [e["type"] for e in older.json["events"]] == ["app.scaled", "build.succeeded"]


@pytest.mark.parametrize("query, words", [
    ("limit=0", "limit must be a whole number from 1 to 1000"),
    ("limit=x", "limit must be a whole number"),
    ("order=up", "order must be asc or desc"),
    ("before=x", "before must be an event id"),
])
def test_bad_event_queries_are_refused(env, query, words):
    released(env)
    r = env.client.get(f"/v1/apps/myapp/events?{query}")
    assert r.status_code == 400 and words in r.json["error"]


def test_other_teams_see_neither_an_apps_events_nor_the_platform_feed(env):
    released(env)
    headers = developer(env)
    r = env.client.get("/v1/apps/myapp/events", headers=headers)
    assert r.status_code == 404
    assert r.json["error"] == "there is no app named 'myapp': 'paas apps' lists yours."
    assert env.client.get("/v1/events", headers=headers).status_code == 403
    assert env.client.get("/v1/status", headers=headers).status_code == 403
    assert env.client.get("/v1/apps/nope/events").status_code == 404


def test_admins_read_the_platform_wide_feed(env):
    released(env, "one")
    released(env, "two")
    found = env.client.get("/v1/events?order=asc").json["events"]
    assert [(e["app"], e["type"]) for e in found] == [
        ("one", "app.pushed"), ("one", "route.mapped"), ("one", "build.succeeded"),
        ("two", "app.pushed"), ("two", "route.mapped"), ("two", "build.succeeded")]
    only = env.client.get("/v1/events?type=app.pushed").json["events"]
    assert [e["app"] for e in only] == ["two", "one"]  # newest first by default


def test_unknown_event_types_still_read_as_words():
    from controller.api.observe import describe

    assert describe("app.route_mapped", {"host": "x"}) == "route mapped"
    assert describe("app.scaled", {"before": "odd"}) == "app.scaled"  # an odd old shape


# -- instance stats in paas app -----------------------------------------------------------
def test_an_apps_instances_carry_their_resource_use(env):
    released(env)
    guid = env.client.get("/v1/apps/myapp").json["guid"]
    inst = InstanceReport(instance_guid="i1", app_guid=guid, app_name="myapp", release=1,
                          process_type="web", index=0, state="RUNNING", host_port=61000,
                          since=time.time(), started_at=time.time() - 60, cpu_percent=12.5,
                          memory_bytes=50 * MiB, memory_limit_bytes=256 * MiB,
                          disk_bytes=3 * MiB, routes_rev=4)
    beat = Heartbeat(agent_id="a1", address="127.0.0.1", sent_at=time.time(), memory_mb=1024,
                     memory_used_mb=256, instances=[inst])
    env.redis.set(keys.agent("a1"), beat.to_json())
    [shown] = env.client.get("/v1/apps/myapp").json["instances"]
    assert shown["cpu_percent"] == 12.5 and shown["memory_bytes"] == 50 * MiB
    assert shown["memory_limit_bytes"] == 256 * MiB and shown["disk_bytes"] == 3 * MiB
    assert shown["agent"] == "a1" and shown["started_at"] > 0
    assert shown["routed"] is False  # the router has not applied a1's table with it yet
    env.redis.hset(keys.ROUTER_APPLIED, "a1", "4")
    assert env.client.get("/v1/apps/myapp").json["instances"][0]["routed"] is True


# -- status ------------------------------------------------------------------------------
def test_status_shows_agents_queues_router_and_the_health_manager(env):
    now = time.time()
    fresh = Heartbeat(agent_id="a1", address="127.0.0.1", sent_at=now - 1, memory_mb=2048,
                      memory_used_mb=512, slots=10, slots_used=2, instances=[
                          InstanceReport(instance_guid="i", app_guid="g", app_name="x",
                                         release=1, process_type="web", index=0,
                                         state="RUNNING", host_port=1, since=now,
                                         memory_bytes=30 * MiB)])
    stale = Heartbeat(agent_id="a2", address="127.0.0.2", sent_at=now - 30, memory_mb=1024,
                      memory_used_mb=0)
    env.redis.set(keys.agent("a1"), fresh.to_json())
    env.redis.set(keys.agent("a2"), stale.to_json())
    env.redis.rpush("staging", "m1", "m2")
    env.redis.rpush("agent.a1", "m3")
    env.redis.hset("unacked", "tag", "m")
    env.redis.set(keys.ROUTER_STATUS, json.dumps({"reloaded_at": now - 5, "routes": 3,
                                                   "hosts": 2}))
    env.redis.set(keys.HEALTH_LOCK, "manager-1")
    env.redis.hset(keys.routes("a1"), keys.REVISION_FIELD, "5")
    env.redis.hset(keys.routes("a2"), keys.REVISION_FIELD, "3")
    for field, revision in (("a1", "5"), ("a2", "2"), (keys.APPLIED_ROUTE_TABLE, "77")):
        env.redis.hset(keys.ROUTER_APPLIED, field, revision)
    body = env.client.get("/v1/status").json
    assert body["redis"]["ok"] and body["database"]["ok"]
    agents = {a["id"]: a for a in body["agents"]}
    assert agents["a1"]["healthy"] and not agents["a2"]["healthy"]
    assert agents["a1"]["memory_used_mb"] == 512 and agents["a1"]["slots_used"] == 2
    assert agents["a1"]["states"] == {"RUNNING": 1}
    assert agents["a1"]["memory_in_use_bytes"] == 30 * MiB
    assert 0.5 < agents["a1"]["last_beat_age"] < 5
    queues = {q["name"]: q["depth"] for q in body["queues"]}
    assert queues == {"staging": 2, "agent.a1": 1, "agent.a2": 0}
    assert body["unacked"] == 1
    assert body["router"]["routes"] == 3 and 4 < body["router"]["last_reload_age"] < 10
    assert body["router"]["applied"] == {"a1": 5, "a2": 2}
    assert body["router"]["route_table_revision"] == 77
    assert body["router"]["behind"] == ["a2"]  # nginx does not serve its newest table yet
    assert body["health_manager"]["holder"] == "manager-1"
    assert body["ok"] is False  # agent a2 is late


def test_status_says_when_redis_is_unreachable(env):
    env.redis.down = True
    body = env.client.get("/v1/status").json
    assert body["redis"]["ok"] is False and "down" in body["redis"]["error"]
    assert body["database"]["ok"] and body["ok"] is False and body["agents"] == []


# -- metrics -----------------------------------------------------------------------------
def test_the_controller_counts_and_times_requests_by_endpoint_and_status(env):
    env.client.get("/v1/apps")
    env.client.get("/v1/apps/missing")
    env.client.get("/v1/apps/missing")
    r = env.client.get("/metrics")  # the admin token
    assert r.status_code == 200 and r.mimetype == "text/plain"
    got = samples(r.get_data(as_text=True))
    assert got[("paas_api_requests_total", (("endpoint", "v1.list_apps"), ("method", "GET"),
                                            ("status", "200")))] == 1
    assert got[("paas_api_requests_total", (("endpoint", "v1.show_app"), ("method", "GET"),
                                            ("status", "404")))] == 2
    assert got[("paas_api_request_seconds_count", (("endpoint", "v1.show_app"),
                                                   ("method", "GET")))] == 2


def test_the_health_manager_counts_instances_by_state():
    registry = CollectorRegistry()
    metrics = HealthMetrics(registry)

    def inst(state: str, ready: bool = True) -> InstanceReport:
        return InstanceReport(instance_guid=state, app_guid="g", app_name="x", release=1,
                              process_type="web", index=0, state=state, host_port=1,
                              since=0, ready=ready)

    beats = [Heartbeat(agent_id="a1", address="", sent_at=0, memory_mb=1, memory_used_mb=0,
                       instances=[inst("RUNNING"), inst("RUNNING"), inst("CRASHED"),
                                  inst("RUNNING", ready=False)])]
    metrics.observe(beats, [Unplaceable("g", "web", 3, 256, 1024)], 0.02)
    from prometheus_client import generate_latest

    got = samples(generate_latest(registry).decode())
    assert got[("paas_instances", (("state", "RUNNING"),))] == 2
    assert got[("paas_instances", (("state", "UNHEALTHY"),))] == 1
    assert got[("paas_instances", (("state", "CRASHED"),))] == 1
    assert got[("paas_instances", (("state", "PENDING"),))] == 1
    assert got[("paas_instances", (("state", "STARTING"),))] == 0
    assert got[("paas_agents", ())] == 1
    assert got[("paas_health_actions_total", (("action", "Unplaceable"),))] == 1


# -- the CLI -----------------------------------------------------------------------------
class CannedApi:
    def __init__(self, answers: dict[str, object]) -> None:
        self.answers = answers
        self.asked: list[tuple[str, dict]] = []

    def get(self, path: str, **kwargs: object) -> object:
        self.asked.append((path, kwargs))
        return self.answers[path]


@pytest.fixture
def cli(monkeypatch, tmp_path):
    monkeypatch.setenv("PAAS_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("COLUMNS", "200")

    def run(answers: dict[str, object], *args: str):
        import cli.apps
        import cli.main
        import cli.observe

        api = CannedApi(answers)
        monkeypatch.setattr(cli.apps, "client", lambda: api)
        monkeypatch.setattr(cli.observe, "client", lambda: api)
        result = CliRunner().invoke(cli.main.main, list(args))
        return result, api

    return run


def test_paas_events_prints_oldest_first_with_descriptions(cli):
    newest_first = [
        {"id": 2, "time": "2024-05-01T10:00:05+00:00", "app": "myapp", "actor": "health",
         "type": "app.crashed", "description": "crashed web #0: exit 137", "data": {}},
        {"id": 1, "time": "2024-05-01T10:00:00+00:00", "app": "myapp", "actor": "admin",
         "type": "app.scaled", "description": "scaled web 1→3", "data": {}},
    ]
    result, api = cli({"/apps/myapp/events": {"events": newest_first}}, "events", "myapp")
    assert result.exit_code == 0, result.output
    assert result.output.index("scaled web 1→3") < result.output.index("crashed web #0")
    assert api.asked == [("/apps/myapp/events", {"params": {"limit": 50, "order": "desc"}})]
    result, _ = cli({"/events": {"events": newest_first}}, "events", "--all", "-n", "5")
    assert result.exit_code == 0 and "myapp" in result.output and "app" in result.output
    result, _ = cli({}, "events")
    assert result.exit_code == 2 and "give an app's NAME, or --all" in result.output


def test_paas_app_shows_cpu_memory_disk_and_routes(cli):
    app = {"name": "myapp", "state": "STARTED", "release": {"version": 1, "status": "DEPLOYED"},
           "instances_running": 1, "instances_desired": 2,
           "urls": ["http://myapp.localhost:8080"], "instances": [
               {"index": 0, "process_type": "web", "state": "RUNNING", "since": time.time(),
                "release": 1, "agent": "agent-0", "ready": True, "cpu_percent": 3.25,
                "memory_bytes": 50 * MiB + MiB // 2, "memory_limit_bytes": 256 * MiB,
                "disk_bytes": 120 * 1024},
               {"index": 1, "process_type": "web", "state": "CRASHED", "since": time.time(),
                "release": 1, "agent": "agent-0", "reason": "the app exited with code 7",
                "cpu_percent": None, "memory_bytes": None, "disk_bytes": None}]}
    result, _ = cli({"/apps/myapp": app}, "app", "myapp")
    assert result.exit_code == 0, result.output
    out = result.output
    assert "routes: http://myapp.localhost:8080" in out
    for words in ("cpu", "memory", "disk", "3.2%", "50.5M/256M", "120K", "CRASHED",
                  "the app exited with code 7"):
        assert words in out, words


def test_paas_status_prints_the_platform_at_a_glance(cli):
    body = {"ok": False, "time": time.time(),
            "redis": {"ok": True, "latency_ms": 0.4},
            "database": {"ok": False, "error": "OperationalError: no such file"},
            "agents": [{"id": "agent-0", "address": "127.0.0.1", "healthy": True,
                        "last_beat_age": 1.2, "memory_mb": 8192, "memory_used_mb": 512,
                        "disk_mb": 100, "disk_used_mb": 10, "slots": 250, "slots_used": 2,
                        "instances": 2, "states": {"RUNNING": 2},
                        "memory_in_use_bytes": 80 * MiB}],
            "queues": [{"name": "staging", "depth": 3, "agent_alive": None},
                       {"name": "agent.gone", "depth": 1, "agent_alive": False}],
            "unacked": 0, "router": {"reloaded_at": time.time() - 3, "routes": 4, "hosts": 2},
            "health_manager": {"holder": "hm-1", "lock_ttl": 14.0}}
    result, _ = cli({"/status": body}, "status")
    assert result.exit_code == 0, result.output
    for words in ("DEGRADED", "redis: ok", "database: unreachable", "hm-1 holds the lock",
                  "last reload 3s ago", "agent-0", "512/8192 MB", "2 running", "staging",
                  "its agent is not reporting"):
        assert words in result.output, words
    result, _ = cli({"/status": body}, "status", "--check")
    assert result.exit_code == 1
