"""An app's event stream on the real platform: a push told in order, from its build to the
router serving it, and a follow that loses its connection resumes with Last-Event-ID without
missing or repeating an event."""

from __future__ import annotations

import pytest
import requests

from cli.client import COMMENT, SseParser
from tests.integration.runtime_helpers import runtime_app

pytestmark = pytest.mark.usefixtures("dump_logs_on_failure")
APP = "streamed"


def paas_ok(platform, *args: str) -> str:
    result = platform.paas(*args)
    assert result.returncode == 0, result.stdout + result.stderr
    return result.stdout


def api(platform, path: str) -> str:
    return f"{platform.settings.api_url}/v1{path}"


def auth(platform) -> dict[str, str]:
    return {"Authorization": f"Bearer {platform.token}"}


def parse(lines) -> list[dict]:
    """Server-sent events from text lines, read by the CLI's own parser: [{id, type, data}]."""
    parser, found = SseParser(), []
    for line in lines:
        event = parser.feed(line)
        if event is not None and event.type != COMMENT:
            found.append({"id": event.id, "type": event.type, "data": event.data})
    return found


def kept(platform, since: str = "0") -> list[dict]:
    r = requests.get(api(platform, f"/apps/{APP}/stream"), params={
        "since": since, "follow": "false"}, headers=auth(platform), timeout=30)
    assert r.status_code == 200, r.text
    return parse(r.text.split("\n"))


def follow_until(platform, last_id: str, done, limit: int | None = None,
                 ) -> list[dict]:
    """Follow the stream after ``last_id`` until ``done(event)`` (or ``limit`` events, then
    drop the connection)."""
    r = requests.get(api(platform, f"/apps/{APP}/stream"), stream=True, timeout=60,
                     headers={**auth(platform), "Last-Event-ID": last_id})
    assert r.status_code == 200 and r.headers["Content-Type"].startswith("text/event-stream")
    parser, found = SseParser(), []
    try:
        for line in r.iter_lines(decode_unicode=True):
            event = parser.feed(line)
            if event is None or event.type == COMMENT:
                continue
            found.append({"id": event.id, "type": event.type, "data": event.data})
            if done(found[-1]) or (limit is not None and len(found) >= limit):
                break
    finally:
        r.close()  # the connection drops here, as a client's would
    return found


@pytest.fixture(scope="module")
def pushed(platform, tmp_path_factory):
    folder = runtime_app(tmp_path_factory.mktemp("streamed"))
    paas_ok(platform, "push", APP, "-p", str(folder))
    yield APP
    platform.paas("delete", APP, "-f")


def test_a_push_is_told_in_order_from_build_to_routed(platform, pushed) -> None:
    events = kept(platform)
    types = [e["type"] for e in events]
    story = ["app.pushed", "build.started", "release.created", "build.succeeded",
             "instance.starting", "instance.running", "release.deployed", "app.routed"]
    missing = [t for t in story if t not in types]
    assert not missing, types
    assert [types.index(t) for t in story] == sorted(types.index(t) for t in story), types
    ids = [tuple(map(int, e["id"].split("-"))) for e in events]
    assert ids == sorted(ids) and len(set(ids)) == len(ids)
    build = next(e for e in events if e["type"] == "build.started")["data"]["build"]
    done = next(e for e in events if e["type"] == "build.succeeded")["data"]
    assert done["build"] == build and done["release"] == 1
    routed = next(e for e in events if e["type"] == "app.routed")["data"]
    assert routed["release"] == 1 and routed["urls"]
    running = next(e for e in events if e["type"] == "instance.running")["data"]
    assert running["app"] == APP and running["process_type"] == "web" and running["release"] == 1
    assert all(e["data"]["app"] == APP for e in events)


def test_a_dropped_follow_resumes_without_a_gap_or_a_repeat(platform, pushed) -> None:
    start = kept(platform)[-1]["id"]
    r = requests.post(api(platform, f"/apps/{APP}/restart"), headers=auth(platform),
                      timeout=30)
    assert r.status_code == 200, r.text
    assert r.json()["stream_id"] == start
    generation = r.json()["generation"]

    def rolled_out(event: dict) -> bool:
        return event["type"] == "app.routed" and event["data"]["generation"] == generation

    first = follow_until(platform, start, rolled_out, limit=2)  # then the connection drops
    assert len(first) == 2 and first[0]["type"] == "app.restarted"
    rest = follow_until(platform, first[-1]["id"], rolled_out)
    assert rest and rolled_out(rest[-1])
    followed = first + rest
    # What was followed in two connections is exactly what the stream kept, in order.
    assert followed == kept(platform, since=start)[:len(followed)]
    assert len({e["id"] for e in followed}) == len(followed)
    types = [e["type"] for e in followed]
    assert "instance.starting" in types and "instance.running" in types
