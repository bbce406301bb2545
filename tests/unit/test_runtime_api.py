"""The runtime API (scale, env, releases, rollback, restart, configure) with a real SQLite
database and stand-ins for Redis and Celery."""

from __future__ import annotations

import json
from dataclasses import replace

import pytest

from contracts import keys
from contracts.messages import Heartbeat, InstanceReport, StageResult
from tests.unit.test_controller_api import _settle, package, push


def released(env, name: str = "myapp", types: dict | None = None, options: dict | None = None,
             ) -> None:
    build = push(env.client, name, package(), options or {}).json["build"]
    _settle(env, build["guid"], StageResult(
        ok=True, droplet_digest=build["guid"].replace("-", "") * 2, droplet_path="d.json",
        image=f"img:{build['guid'][:6]}", buildpack="procfile",
        process_types=types or {"web": "serve", "worker": "work"}))


def agent(env, agent_id: str = "a1", memory: int = 1024, used: int = 0,
          instances: list[InstanceReport] | None = None) -> None:
    beat = Heartbeat(agent_id=agent_id, address="127.0.0.1", sent_at=0, memory_mb=memory,
                     memory_used_mb=used, instances=instances or [])
    env.redis.set(keys.agent(agent_id), beat.to_json())


def test_scale_instances_memory_and_a_worker(env):
    released(env)
    r = env.client.post("/v1/apps/myapp/processes/web/scale", json={"instances": 3})
    assert r.status_code == 200, r.json
    procs = {p["type"]: p for p in r.json["processes"]}
    assert procs["web"]["instances"] == 3 and procs["worker"]["instances"] == 0
    assert r.json["generation"] == 0  # more instances: no restart
    r = env.client.post("/v1/apps/myapp/processes/web/scale", json={"memory_mb": 512})
    assert r.json["generation"] == 1  # new memory: instances roll over
    r = env.client.post("/v1/apps/myapp/processes/worker/scale", json={"instances": 2})
    assert {p["type"]: p["instances"] for p in r.json["processes"]}["worker"] == 2
    assert ("paas:converge", "1") in env.redis.published


def test_scale_refuses_what_does_not_fit_and_names_the_free_capacity(env):
    released(env)
    agent(env, "a1", memory=1024, used=512)
    agent(env, "a2", memory=1024, used=0)
    r = env.client.post("/v1/apps/myapp/processes/web/scale", json={"instances": 8})
    assert r.status_code == 409
    assert "does not fit" in r.json["error"] and "1.5 GB free" in r.json["error"]
    assert {d["agent"] for d in r.json["detail"]} == {"a1", "a2"}
    assert env.client.get("/v1/apps/myapp").json["instances_desired"] == 1  # unchanged
    r = env.client.post("/v1/apps/myapp/processes/web/scale", json={"instances": 4})
    assert r.status_code == 200


@pytest.mark.parametrize("body, words", [
    ({}, "say what to scale"),
    ({"instances": -1}, "instances must be a whole number"),
    ({"instances": "3"}, "instances must be a whole number"),
    ({"memory_mb": 1}, "memory must be a size from 16 MB to 64 GB"),
])
def test_bad_scale_is_refused(env, body, words):
    released(env)
    r = env.client.post("/v1/apps/myapp/processes/web/scale", json=body)
    assert r.status_code == 400 and words in r.json["error"]


def test_scaling_an_unknown_process_type_names_the_known_ones(env):
    released(env)
    r = env.client.post("/v1/apps/myapp/processes/clock/scale", json={"instances": 1})
    assert r.status_code == 404 and "web, worker" in r.json["error"]


def test_env_changes_make_releases_and_events_never_hold_values(env):
    released(env, options={"env": {"A": "1"}})
    r = env.client.patch("/v1/apps/myapp/env", json={"set": {"SECRET": "hunter2"}})
    assert r.status_code == 200 and r.json["changed"]
    assert r.json["release"]["version"] == 2
    assert r.json["release"]["description"] == "set SECRET"
    assert env.client.get("/v1/apps/myapp/env").json["env"] == {"A": "1", "SECRET": "hunter2"}
    r = env.client.patch("/v1/apps/myapp/env", json={"set": {"SECRET": "hunter2"}})
    assert not r.json["changed"]  # same value: no release
    r = env.client.patch("/v1/apps/myapp/env", json={"unset": ["A"]})
    assert r.json["release"]["version"] == 3
    assert env.client.get("/v1/apps/myapp/env").json["env"] == {"SECRET": "hunter2"}
    r = env.client.patch("/v1/apps/myapp/env", json={"unset": ["NOPE"]})
    assert r.status_code == 404 and "no variable NOPE" in r.json["error"]
    r = env.client.patch("/v1/apps/myapp/env", json={"set": {"1BAD": "x"}})
    assert r.status_code == 400
    from sqlalchemy import create_engine, text

    engine = create_engine(env.settings.sqlalchemy_url)
    with engine.connect() as conn:
        data = [row[0] for row in conn.execute(text("SELECT data FROM events"))]
    engine.dispose()
    assert not any("hunter2" in json.dumps(d) for d in data)


def test_rollback_makes_a_new_release_from_an_earlier_one(env):
    released(env, options={"env": {"V": "one"}})
    first_droplet = env.client.get("/v1/apps/myapp/releases").json["releases"][0]["droplet"]
    released(env)  # release 2: new droplet, env kept
    env.client.patch("/v1/apps/myapp/env", json={"set": {"V": "two"}})  # release 3
    r = env.client.post("/v1/apps/myapp/rollback", json={"version": 1})
    assert r.status_code == 201
    assert r.json["release"]["version"] == 4
    assert r.json["release"]["droplet"] == first_droplet
    assert r.json["release"]["description"] == "rollback to release 1"
    assert env.client.get("/v1/apps/myapp/env").json["env"] == {"V": "one"}
    assert env.client.post("/v1/apps/myapp/rollback", json={"version": 9}).status_code == 404
    listed = env.client.get("/v1/apps/myapp/releases").json["releases"]
    assert [r["version"] for r in listed] == [4, 3, 2, 1]
    assert listed[0]["current"] and not listed[1]["current"]


def test_rollback_without_a_version_needs_an_earlier_release_that_ran(env):
    released(env)
    r = env.client.post("/v1/apps/myapp/rollback", json={})
    assert r.status_code == 400 and "nothing to roll back to" in r.json["error"]


def test_restart_stop_start_and_configure(env):
    released(env)
    assert env.client.post("/v1/apps/myapp/restart").json["generation"] == 1
    assert env.client.post("/v1/apps/myapp/stop").json["state"] == "STOPPED"
    assert env.client.post("/v1/apps/myapp/start").json["state"] == "STARTED"
    r = env.client.patch("/v1/apps/myapp", json={
        "max_in_flight": 2, "crash_policy": {"immediate_restarts": 1},
        "health_check": {"type": "http", "endpoint": "/health", "timeout": 5, "interval": 1}})
    assert r.status_code == 200, r.json
    web = next(p for p in r.json["processes"] if p["type"] == "web")
    assert web["health_check"]["type"] == "http" and web["health_check"]["interval"] == 1.0
    assert r.json["max_in_flight"] == 2 and r.json["generation"] == 2
    assert r.json["crash_policy"] == {"immediate_restarts": 1}
    bad = env.client.patch("/v1/apps/myapp", json={"health_check": {"type": "tcp"}})
    assert bad.status_code == 400 and "port, http, process" in bad.json["error"]
    bad = env.client.patch("/v1/apps/myapp", json={"crash_policy": {"forever": 1}})
    assert bad.status_code == 400


def test_push_applies_manifest_processes_and_health_checks(env):
    released(env, options={"health_check_type": "http", "health_check_endpoint": "/up",
                           "timeout": 9, "processes": [
                               {"type": "worker", "instances": 2, "command": "work hard",
                                "health_check_type": "process"}]})
    app = env.client.get("/v1/apps/myapp").json
    procs = {p["type"]: p for p in app["processes"]}
    assert procs["web"]["health_check"] == {"type": "http", "endpoint": "/up", "timeout": 9,
                                            "interval": None, "probe_timeout": None}
    assert procs["worker"]["instances"] == 2 and procs["worker"]["command"] == "work hard"
    bad = push(env.client, "myapp", package(), {"processes": [{"type": "Bad Type"}]})
    assert bad.status_code == 400


def test_crashed_and_unplaced_indices_show_in_the_app(env):
    released(env, options={"instances": 3})
    guid = env.client.get("/v1/apps/myapp").json["guid"]
    env.redis.hset(keys.CRASHES, keys.crash_field(guid, "web", 1), json.dumps({
        "count": 4, "last_at": 1.0, "instance_guid": "x", "restart_at": 9e12,
        "exit_code": 3, "reason": "the app exited with code 3"}))
    env.redis.hset(keys.UNPLACED, keys.crash_field(guid, "web", 2),
                   json.dumps({"memory_mb": 256, "disk_mb": 1024}))
    rows = {i["index"]: i for i in env.client.get("/v1/apps/myapp").json["instances"]}
    assert rows[1]["state"] == "CRASHED" and rows[1]["crash_count"] == 4
    assert rows[1]["restart_in"] > 0
    assert rows[2]["state"] == "PENDING" and "no agent has room" in rows[2]["reason"]


def test_a_crashed_instance_being_stopped_shows_as_crashed(env) -> None:
    released(env)
    guid = env.client.get("/v1/apps/myapp").json["guid"]
    env.redis.hset(keys.CRASHES, keys.crash_field(guid, "web", 0), json.dumps({
        "count": 1, "last_at": 1.0, "instance_guid": "i0", "restart_at": 9e12,
        "exit_code": 7, "reason": "the app exited with code 7"}))
    stopping = InstanceReport(instance_guid="i0", app_guid=guid, app_name="myapp", release=1,
                              process_type="web", index=0, state="STOPPING", host_port=1,
                              since=0)
    agent(env, "a1", instances=[stopping])
    states = [i["state"] for i in env.client.get("/v1/apps/myapp").json["instances"]]
    assert sorted(states) == ["CRASHED", "STOPPING"]
    # An index whose crashed instance was replaced shows its new instance only.
    agent(env, "a1", instances=[replace(stopping, instance_guid="i1", state="RUNNING")])
    states = [i["state"] for i in env.client.get("/v1/apps/myapp").json["instances"]]
    assert states == ["RUNNING"]


def test_rebalance_only_when_the_spread_is_uneven(env):
    released(env)
    guid = env.client.get("/v1/apps/myapp").json["guid"]

    def running(index: int) -> InstanceReport:
        return InstanceReport(instance_guid=f"i{index}", app_guid=guid, app_name="myapp",
                              release=1, process_type="web", index=index, state="RUNNING",
                              host_port=1, since=0)

    agent(env, "a1", instances=[running(0), running(1)])
    agent(env, "a2", instances=[running(2)])
    r = env.client.post("/v1/apps/myapp/rebalance")
    assert not r.json["rebalancing"] and r.json["generation"] == 0
    agent(env, "a3")
    agent(env, "a1", instances=[running(0), running(1), running(2)])
    agent(env, "a2")
    r = env.client.post("/v1/apps/myapp/rebalance")
    assert r.json["rebalancing"] and r.json["generation"] == 1
    assert r.json["spread"] == {"a1": 3, "a2": 0, "a3": 0}
