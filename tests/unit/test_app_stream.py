"""An app's event stream: what the health manager tells it, and what the API publishes and
serves (the SSE endpoint, resumed with Last-Event-ID)."""

from __future__ import annotations

import json
from dataclasses import replace

import pytest

from cli.client import COMMENT, SseParser, split_lines
from contracts import keys
from contracts.appevents import AppEvent
from contracts.messages import InstanceReport, StageResult
from controller import appstream
from controller.api import stream as stream_api
from controller.convergence import DesiredApp, DesiredProcess, DesiredRelease
from controller.health.watch import instance_events, routed_events, routed_rollouts
from tests.unit.test_controller_api import _settle, package, push
from tests.unit.test_tasks import StreamRedis


def report(guid: str, state: str = "RUNNING", ready: bool = True, release: int = 1,
           generation: int = 0, process_type: str = "web", index: int = 0,
           ) -> InstanceReport:
    return InstanceReport(instance_guid=guid, app_guid="app-1", app_name="shop",
                          release=release, process_type=process_type, index=index,
                          state=state, host_port=1, since=0.0, agent_id="a1", ready=ready,
                          generation=generation)


def desired(instances: int = 2, version: int = 1, generation: int = 0,
            routes: tuple[str, ...] = ("http://shop.localhost",)) -> DesiredApp:
    return DesiredApp(guid="app-1", name="shop", started=True, routes=routes,
                      release=DesiredRelease(version, "DEPLOYED", "img"),
                      processes=(DesiredProcess("web", instances, 64, "serve"),),
                      generation=generation)


def kinds(found: list) -> list[tuple[str, str]]:
    return [(e.type, e.data.get("instance", "")) for _guid, e in found]


def test_instance_events_tell_each_change_once() -> None:
    found, seen = instance_events({}, [report("i1", "STARTING", ready=False)])
    assert kinds(found) == [("instance.starting", "i1")]
    # Running but not yet healthy is still starting: nothing new to tell.
    found, seen = instance_events(seen, [report("i1", "RUNNING", ready=False)])
    assert found == []
    found, seen = instance_events(seen, [report("i1"), report("i2", "STARTING", index=1)])
    assert kinds(found) == [("instance.running", "i1"), ("instance.starting", "i2")]
    found, seen = instance_events(seen, [report("i1"), replace(
        report("i2", "CRASHED", index=1), reason="the app exited with code 3", exit_code=3)])
    [(app_guid, crashed)] = found
    assert app_guid == "app-1" and crashed.type == "instance.crashed"
    assert crashed.data["reason"] == "the app exited with code 3"
    assert crashed.data["exit_code"] == 3 and crashed.data["index"] == 1
    # A stopping instance is told when it is gone.
    found, seen = instance_events(seen, [report("i1", "STOPPING")])
    assert kinds(found) == [("instance.stopped", "i2")]
    found, seen = instance_events(seen, [])
    assert kinds(found) == [("instance.stopped", "i1")] and seen == {}


def ready(inst: InstanceReport) -> bool:
    return inst.state == "RUNNING" and inst.ready


def test_a_rollout_is_routed_once_its_instances_alone_serve() -> None:
    app = desired(instances=2, version=2)
    new = [report("n1", release=2), report("n2", release=2, index=1)]
    # An old instance still there: not yet.
    assert routed_rollouts([app], [*new, report("o1", release=1)], ready) == {}
    # Not enough ready ones: not yet.
    assert routed_rollouts([app], [new[0], replace(new[1], ready=False)], ready) == {}
    # A crashed old one gets no traffic: it does not hold the rollout back.
    routed = routed_rollouts([app], [*new, report("o1", "CRASHED", release=1)], ready)
    assert routed == {"app-1": (2, 0, 2)}
    # An app without routes, stopped, or scaled to 0 is never "routed".
    assert routed_rollouts([desired(routes=())], new, ready) == {}
    assert routed_rollouts([replace(app, started=False)], new, ready) == {}
    assert routed_rollouts([desired(instances=0, version=2)], new, ready) == {}


def test_routed_is_told_once_per_rollout_and_again_after_a_gap() -> None:
    app = desired(version=2)
    found, marks, gone = routed_events([app], {"app-1": (2, 0, 2)}, {})
    [(guid, event)] = found
    assert guid == "app-1" and event.type == "app.routed"
    assert event.data["release"] == 2 and event.data["urls"] == ["http://shop.localhost"]
    assert event.data["instances"] == 2
    assert marks == {"app-1": "2/0/2"} and gone == set()
    assert routed_events([app], {"app-1": (2, 0, 2)}, marks) == ([], {}, set())
    found, marks, _ = routed_events([app], {"app-1": (2, 1, 2)}, marks)  # a restart
    assert [e.data["generation"] for _g, e in found] == [1] and marks == {"app-1": "2/1/2"}
    # Scaled to 3: told when the third is routed too.
    found, marks, _ = routed_events([app], {"app-1": (2, 1, 3)}, marks)
    assert [e.data["instances"] for _g, e in found] == [3]
    # Stopped (or below its count): the mark goes, so a start is told again.
    assert routed_events([app], {}, marks) == ([], {}, {"app-1"})
    found, _, _ = routed_events([app], {"app-1": (2, 1, 3)}, {})
    assert len(found) == 1


# -- the API: events published when a change commits, served as server-sent events -------

@pytest.fixture
def fake_redis() -> StreamRedis:  # the shared ``env`` fixture, with streams
    return StreamRedis()


def read_sse(text: str) -> list[dict]:
    """The events of an SSE body, read by the CLI's own parser: [{id, event, data}]."""
    parser, found = SseParser(), []
    for line in split_lines([text.encode()]):
        event = parser.feed(line)
        if event is not None and event.type != COMMENT:
            found.append({"id": event.id, "event": event.type, "data": event.data})
    return found


def follow(env, name: str, last_id: str | None = None, query: str = "") -> list[dict]:
    headers = {"Last-Event-ID": last_id} if last_id else {}
    response = env.client.get(f"/v1/apps/{name}/stream{query}", headers=headers,
                              buffered=False)
    assert response.status_code == 200, response.get_data(as_text=True)
    assert response.mimetype == "text/event-stream"
    chunks = []
    for chunk in response.response:  # the stream never ends by itself: read what is there
        text = chunk.decode() if isinstance(chunk, bytes) else chunk
        if text.startswith(": ping"):
            break
        chunks.append(text)
    response.close()
    return read_sse("".join(chunks))


@pytest.fixture
def quick(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(stream_api, "QUIET_PING", 0.01)


def test_a_push_is_told_on_the_stream_in_order_and_resumes(env, quick) -> None:
    answer = push(env.client, "shop", package(), {"instances": 2})
    assert answer.status_code == 201 and answer.json["stream_id"] == "0"
    build = answer.json["build"]["guid"]
    _settle(env, build, StageResult(
        ok=True, droplet_digest="f" * 64, droplet_path="droplets/f.tar", image="img:f",
        buildpack="procfile", process_types={"web": "serve"}))
    events = follow(env, "shop", query="?since=0")
    types = [e["event"] for e in events]
    assert types[:1] == ["app.pushed"] and "build.succeeded" in types
    assert types.index("release.created") < types.index("build.succeeded")
    succeeded = next(e for e in events if e["event"] == "build.succeeded")
    assert succeeded["data"]["build"] == build and succeeded["data"]["release"] == 1
    assert all(e["data"]["app"] == "shop" for e in events)
    # Resuming after any event gives exactly the ones after it.
    for i, event in enumerate(events):
        assert follow(env, "shop", last_id=event["id"]) == events[i + 1:]
    # Without a position, only what comes next; a change answers where to follow from.
    assert follow(env, "shop") == []
    scaled = env.client.post("/v1/apps/shop/processes/web/scale", json={"instances": 3})
    assert scaled.json["stream_id"] == events[-1]["id"]
    after = follow(env, "shop", last_id=scaled.json["stream_id"])
    assert [e["event"] for e in after] == ["app.scaled"]


def test_a_rolled_back_change_is_never_told(env, quick) -> None:
    push(env.client, "shop", package())
    before = follow(env, "shop", query="?since=0")
    # A push over the team's quota is refused after its checks began: nothing is told.
    env.client.put("/v1/teams/default/quota", json={"instances": 1})
    refused = push(env.client, "shop", package(), {"instances": 5})
    assert refused.status_code == 422
    assert follow(env, "shop", query="?since=0") == before


def test_a_bad_event_id_is_a_400_with_a_sentence(env) -> None:
    push(env.client, "shop", package())
    r = env.client.get("/v1/apps/shop/stream", headers={"Last-Event-ID": "yesterday"})
    assert r.status_code == 400 and "is not an event id" in r.json["error"]


def test_an_event_id_redis_cannot_take_is_a_400(env) -> None:
    push(env.client, "shop", package())
    too_big = str(2**64)  # 20 digits, past what a Redis stream id holds
    r = env.client.get(f"/v1/apps/shop/stream?since={too_big}-0")
    assert r.status_code == 400 and "is not an event id" in r.json["error"]
    assert env.client.get(f"/v1/apps/shop/stream?since={2**64 - 1}-0&follow=false") \
        .status_code == 200


def test_a_failed_first_push_tells_its_deletion_and_every_event_has_its_time(env) -> None:
    build = push(env.client, "shop", package()).json["build"]["guid"]
    _settle(env, build, StageResult(ok=False, error="no buildpack fits"))
    entries = env.redis.streams[keys.app_events(answer_guid(env, build))]
    events = [AppEvent.from_entry(i, f) for i, f in entries]
    assert [e.type for e in events][-2:] == ["build.failed", "app.deleted"]
    assert events[-1].data["reason"] == "its first build failed"
    # What the health manager publishes without a time gets one.
    appstream.publish(env.redis, "some-app", [AppEvent("instance.stopped", {"index": 0})])
    [(_id, fields)] = env.redis.streams[keys.app_events("some-app")]
    assert "at" in json.loads(fields[b"data"])


def answer_guid(env, build_guid: str) -> str:
    """The app guid a build's events went to (the app itself is gone)."""
    for key, entries in env.redis.streams.items():
        if key.startswith("paas:app-events:") and any(
                build_guid.encode() in fields.get(b"data", b"") for _i, fields in entries):
            return key.rsplit(":", 1)[1]
    raise AssertionError("no stream has the build's events")
