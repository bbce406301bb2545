"""The CLI follows an app's event stream (``GET /v1/apps/<name>/stream``): the server-sent
events parser, the reconnection with Last-Event-ID, and what push, restage, set-env and scale
print from a scripted stream, against a fake API on 127.0.0.1."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
from click.testing import CliRunner, Result

from cli import client as client_mod
from cli.client import COMMENT, ApiError, Client, SseParser, StreamEvent, split_lines
from cli.config import Config
from cli.main import main


# -- the parser -------------------------------------------------------------------------------
def parse(text: str, chunk: int | None = None) -> tuple[list[StreamEvent], SseParser]:
    raw = text.encode()
    pieces = [raw] if chunk is None else [raw[i:i + chunk] for i in range(0, len(raw), chunk)]
    parser = SseParser()
    found = [e for line in split_lines(pieces) if (e := parser.feed(line)) is not None]
    return found, parser


STREAM = ("retry: 1000\n\n"
          "id: 1-0\nevent: build.started\ndata: {\"build\": \"b1\"}\n\n"
          ": ping\n\n"
          "id: 2-0\r\nevent: release.created\r\ndata: {\"release\": 2,\r\ndata: "
          "\"description\": \"caf\u00e9\"}\r\n\r\n"
          "id: 3-0\revent: app.routed\rdata:{\"release\": 2}\r\r"
          "event: message-without-id\ndata: not json\nunknown: field\n\n"
          "id: 4-0\nevent: half\ndata: {\"never\": \"ended\"}\n")


@pytest.mark.parametrize("chunk", [None, 1, 2, 3, 7])
def test_the_parser_reads_ids_types_multi_line_data_comments_and_retry(chunk: int | None):
    found, parser = parse(STREAM, chunk)
    assert found == [
        StreamEvent("1-0", "build.started", {"build": "b1"}),
        StreamEvent("1-0", COMMENT, {"text": "ping"}),
        # two data lines are one JSON text, joined by a newline; CRLF ends lines as LF does
        StreamEvent("2-0", "release.created", {"release": 2, "description": "caf\u00e9"}),
        # CR alone ends lines too; "data:" without its space
        StreamEvent("3-0", "app.routed", {"release": 2}),
        # no id of its own: the last one seen; data that is not JSON is kept as text
        StreamEvent("3-0", "message-without-id", {"text": "not json"}),
    ]  # the last event has no blank line after it: it never happened
    assert parser.retry_ms == 1000


def test_a_blank_line_without_data_is_no_event_and_a_byte_order_mark_is_dropped():
    found, parser = parse("\ufeffid: 7-0\nevent: nothing\n\nretry: soon\n\n"
                          "event: x\ndata\n\n")
    # "data" with no colon is a data line with an empty value
    assert found == [StreamEvent("7-0", "x", {"text": ""})]
    assert parser.last_id == "7-0" and parser.retry_ms is None


def test_a_reset_forgets_a_half_received_event_but_not_the_last_id():
    parser = SseParser()
    for line in ("id: 5-0", "event: a", "data: {}", "", "id: 6-0", "event: b", "data: {"):
        parser.feed(line)
    parser.reset()  # the connection dropped in the middle of event 6
    assert parser.feed("") is None
    # What the reconnection sends: the last whole event's id, so the server sends 6 again.
    assert parser.last_id == "5-0"


# -- a fake API with an event stream ----------------------------------------------------------
@dataclass
class Fake:
    """Canned JSON answers by (method, path) (a function: called at each request); an app's
    stream of ``events`` (id, type, data) served after each connection's Last-Event-ID.
    Connection k sends at most
    ``drops[k]`` events and then breaks (``None``: it sends nothing and goes quiet); past the
    list, a connection sends what is left, then pings every 50 ms until the client leaves."""

    url: str = ""
    answers: dict[tuple[str, str], tuple[int, Any]] = field(default_factory=dict)
    lines: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    events: list[tuple[str, str, dict[str, Any]]] = field(default_factory=list)
    drops: list[int | None] = field(default_factory=list)
    stream_status: int = 200
    chunked: bool = True
    seen: list[tuple[str, str]] = field(default_factory=list)
    resumed_from: list[str | None] = field(default_factory=list)
    stop: threading.Event = field(default_factory=threading.Event)

    def answer(self, method: str, path: str, body: Any, status: int = 200) -> None:
        self.answers[(method, f"/v1{path}")] = (status, body)

    def add(self, type_: str, **data: Any) -> str:
        event_id = f"{len(self.events) + 1}-0"
        self.events.append((event_id, type_, {"app": "web", "at": 0, "by": "alice", **data}))
        return event_id

    def after(self, last: str | None) -> list[tuple[str, str, dict[str, Any]]]:
        def key(event_id: str) -> tuple[int, ...]:
            return tuple(int(p) for p in event_id.split("-"))
        if not last:  # "from now on": the tests always say where from
            return []
        return [e for e in self.events if key(e[0]) > key(last)]


def _handler(fake: Fake) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def _serve(self) -> None:
            parts = urlsplit(self.path)
            length = int(self.headers.get("Content-Length") or 0)
            if length:
                self.rfile.read(length)
            fake.seen.append((self.command, parts.path))
            if parts.path.endswith("/stream") and self.command == "GET":
                return self._stream()
            if parts.path in fake.lines:
                data = b"".join(json.dumps(line).encode() + b"\n"
                                for line in fake.lines[parts.path])
                return self._send(200, data, "application/x-ndjson")
            status, body = fake.answers.get(
                (self.command, parts.path),
                (404, {"error": f"the fake has no answer for {self.command} {parts.path}."}))
            if callable(body):  # an answer that changes from one request to the next
                body = body()
            self._send(status, json.dumps(body).encode(), "application/json")

        def _send(self, status: int, data: bytes, kind: str) -> None:
            self.send_response(status)
            self.send_header("Content-Type", kind)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def _stream(self) -> None:
            if fake.stream_status != 200:
                return self._send(fake.stream_status, json.dumps(
                    {"error": "the fake's stream is down"}).encode(), "application/json")
            last = self.headers.get("Last-Event-ID")
            connection = len(fake.resumed_from)
            fake.resumed_from.append(last)
            self.send_response(200)
            self.send_header("Content-Type", "text/event-stream")
            if fake.chunked:
                self.send_header("Transfer-Encoding", "chunked")
            else:
                self.send_header("Connection", "close")
            self.end_headers()
            self.close_connection = True
            self._write("retry: 20\n\n")
            budget = fake.drops[connection] if connection < len(fake.drops) else -1
            if budget is None:  # a connection that goes quiet: the client's read times out
                fake.stop.wait(5)
                return
            pending = fake.after(last)
            for event_id, type_, data in pending if budget < 0 else pending[:budget]:
                # half a line at a time: the client must put them together
                text = f"id: {event_id}\nevent: {type_}\ndata: {json.dumps(data)}\n\n"
                self._write(text[:9])
                self._write(text[9:])
            if budget >= 0:  # break the connection: no end of the chunked body
                return
            while not fake.stop.wait(0.05):
                try:
                    self._write(": ping\n\n")
                except OSError:
                    return

        def _write(self, text: str) -> None:
            data = text.encode()
            if fake.chunked:
                data = f"{len(data):x}\r\n".encode() + data + b"\r\n"
            self.wfile.write(data)
            self.wfile.flush()

        do_GET = do_POST = do_PATCH = _serve

        def log_message(self, *args: object) -> None:
            pass

    return Handler


@pytest.fixture
def fake(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Fake]:
    api = Fake()
    server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(api))
    server.daemon_threads = True
    api.url = f"http://127.0.0.1:{server.server_address[1]}"
    thread = threading.Thread(target=server.serve_forever, args=(0.02,), daemon=True)
    thread.start()
    home = tmp_path / "home"
    home.mkdir()
    (home / "config").write_text(json.dumps({"target": api.url, "token": "t"}))
    monkeypatch.setenv("PAAS_HOME", str(home))
    yield api
    api.stop.set()
    server.shutdown()
    server.server_close()


def follow(fake: Fake, since: str = "0", **kwargs: Any) -> Iterator[StreamEvent]:
    return Client(Config(target=fake.url)).events("/apps/web/stream", since, **kwargs)


# -- reconnection -----------------------------------------------------------------------------
@pytest.mark.parametrize("chunked", [True, False])
def test_a_dropped_stream_is_resumed_from_the_last_event_without_loss_or_repeat(
        fake: Fake, chunked: bool, monkeypatch: pytest.MonkeyPatch):
    fake.chunked = chunked
    ids = [fake.add("instance.running", index=i) for i in range(5)]
    fake.drops = [2, 0, None, 2]  # breaks after 2; at once; goes quiet; breaks after 2 again
    monkeypatch.setattr(client_mod, "STREAM_READ_TIMEOUT", 0.3)
    got = []
    for event in follow(fake, "0"):
        got.append(event)
        if len(got) == 5:
            break
    assert [e.id for e in got] == ids
    assert [e.data["index"] for e in got] == [0, 1, 2, 3, 4]
    assert fake.resumed_from == ["0", ids[1], ids[1], ids[1], ids[3]]


def test_the_stream_gives_up_after_a_few_tries_with_a_sentence(
        fake: Fake, monkeypatch: pytest.MonkeyPatch):
    waits: list[float] = []
    monkeypatch.setattr(client_mod.time, "sleep", waits.append)
    fake.stream_status = 503
    with pytest.raises(ApiError) as failed:
        list(follow(fake))
    assert waits == [1.0, 2.0, 4.0, 5.0]  # doubling from the default retry, capped
    assert str(failed.value) == (
        "lost the controller's event stream (the fake's stream is down) and could not get it "
        "back in 4 tries; what you started goes on without you watching: 'paas app web' shows "
        "where it stands.")


def test_the_back_off_starts_from_the_server_s_retry_and_a_good_event_resets_it(
        fake: Fake, monkeypatch: pytest.MonkeyPatch):
    waits: list[float] = []
    monkeypatch.setattr(client_mod.time, "sleep", waits.append)
    ids = [fake.add("instance.running", index=i) for i in range(3)]
    fake.drops = [1, 0, 1, 0, 0, 1]
    got = [e.id for _, e in zip(range(3), follow(fake), strict=False)]
    assert got == ids
    # retry: 20 (ms), doubled while connections fail in a row, from 20 again after an event
    assert waits == [0.02, 0.04, 0.02, 0.04, 0.08]


def test_a_refusal_is_not_retried(fake: Fake):
    fake.stream_status = 404
    with pytest.raises(ApiError, match="the fake's stream is down") as failed:
        list(follow(fake))
    assert failed.value.status == 404
    assert fake.seen.count(("GET", "/v1/apps/web/stream")) == 1


def test_the_stream_ends_at_its_deadline_and_pings_are_told_only_when_asked(fake: Fake):
    started = time.monotonic()
    assert list(follow(fake, deadline=time.monotonic() + 0.4)) == []
    assert 0.35 < time.monotonic() - started < 2
    pings = list(follow(fake, deadline=time.monotonic() + 0.3, comments=True))
    assert pings and {e.type for e in pings} == {COMMENT}


# -- what push and restage print --------------------------------------------------------------
APP = {"name": "web", "state": "STARTED", "urls": ["http://web.localhost:8080"],
       "release": {"version": 2, "status": "DEPLOYED"}, "instances_desired": 1,
       "instances_running": 1, "generation": 1,
       "processes": [{"type": "web", "instances": 1, "command": "gunicorn app:app"}],
       "instances": [{"process_type": "web", "index": 0, "state": "RUNNING", "since": None,
                      "release": 2, "generation": 1, "ready": True, "agent": "agent-a",
                      "reason": None, "routed": True}]}
LOG = [{"type": "log", "text": "-----> Installing requirements with pip"},
       {"type": "result", "state": "SUCCEEDED", "release": 2}]


@pytest.fixture
def pushed(fake: Fake) -> Fake:
    """The fake API of an app whose release 1 was deployed: an event before the change
    followed, which the CLI never sees."""
    fake.add("release.deployed", release=1)
    return fake


def paas(*args: str) -> Result:
    """The CLI (the tests that wait give it --wait-timeout 10: a broken one fails, not hangs)."""
    return CliRunner().invoke(main, list(args))


def restage(fake: Fake, *, log: list[dict[str, Any]] = LOG, app: dict[str, Any] = APP,
            before: dict[str, Any] | None = None,
            args: tuple[str, ...] = ("--wait-timeout", "10")) -> Result:
    """``paas restage web``; its answer's ``stream_id`` is the position of the earlier
    release's event that ``pushed`` added, before the change's."""
    fake.answer("POST", "/apps/web/restage", {
        "build": {"guid": "b2"}, "app": before or {"release": {"version": 1}},
        "stream_id": "1-0"})
    fake.lines["/v1/builds/b2/log"] = log
    fake.answer("GET", "/apps/web", app)
    return paas("restage", "web", *args)


def test_restage_prints_staging_then_ends_when_the_router_serves_the_release(pushed: Fake):
    pushed.add("build.started", build="b2")
    pushed.add("build.succeeded", build="b2", release=2, buildpack="python")
    pushed.add("instance.starting", process_type="web", index=0, release=2)
    pushed.add("instance.running", process_type="web", index=0, release=2)
    pushed.add("release.deployed", release=2)
    pushed.add("app.routed", release=2, generation=1, urls=APP["urls"])
    result = restage(pushed)
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert lines[0] == "   -----> Installing requirements with pip"
    assert lines[1] == "Release 2: starting instances"
    assert "web  state: STARTED  release: 2 (DEPLOYED)  instances: 1/1" in result.output
    assert lines[-1].startswith("web is running at http://web.localhost:8080 (in ")
    assert pushed.resumed_from == ["1-0"]  # from the answer's stream_id
    # release.deployed came first: one look at the app (routes?) then app.routed, one more
    assert pushed.seen.count(("GET", "/v1/apps/web")) == 2


def test_push_uploads_then_follows_the_same_way(pushed: Fake, tmp_path: Path):
    folder = tmp_path / "web"
    folder.mkdir()
    (folder / "app.py").write_text("print('hi')\n")
    pushed.answer("POST", "/apps/web/push", {"build": {"guid": "b2"}, "app": {},
                                            "stream_id": "0"})
    pushed.answer("POST", "/apps/web/resource_match", {"resources": []})
    pushed.lines["/v1/builds/b2/log"] = LOG
    pushed.answer("GET", "/apps/web", APP)
    pushed.add("build.succeeded", build="b2", release=2, buildpack="python")
    pushed.add("app.routed", release=2, generation=1, urls=APP["urls"])
    result = paas("push", "web", "-p", str(folder), "--wait-timeout", "10")
    assert result.exit_code == 0, result.output
    assert result.output.startswith("Pushing web (1 files, upload ")
    assert "Release 2: starting instances" in result.output
    assert "web is running at http://web.localhost:8080 (in " in result.output
    assert pushed.resumed_from == ["0"]


def test_a_build_that_fails_says_why_and_follows_nothing(pushed: Fake):
    result = restage(pushed, log=[{"type": "log", "text": "-----> no Python here"},
                                {"type": "result", "state": "FAILED",
                                 "error": "no buildpack detected this app"}])
    assert result.exit_code == 1
    assert result.output.splitlines()[-1] == "Error: staging failed: no buildpack detected " \
                                             "this app"
    assert pushed.resumed_from == []


def test_a_build_log_cut_short_learns_the_outcome_from_the_stream(pushed: Fake):
    pushed.add("build.failed", build="b1", error="an older build")
    pushed.add("build.failed", build="b2", error="the stager ran out of disk")
    result = restage(pushed, log=[{"type": "log", "text": "-----> Installing"}])
    assert result.exit_code == 1
    assert "Error: staging failed: the stager ran out of disk" in result.output


def test_a_release_that_fails_keeps_its_sentence_and_the_previous_one_serves(pushed: Fake):
    pushed.add("build.succeeded", build="b2", release=2, buildpack="python")
    pushed.add("instance.crashed", process_type="web", index=0, release=1,
             reason="an old instance: not told")
    pushed.add("instance.crashed", process_type="web", index=0, release=2,
             reason="http health check of /health: 404")
    pushed.add("release.failed", release=2, reason="web #0 never passed its http health check "
             "(404)", serving=1)
    result = restage(pushed)
    assert result.exit_code == 1
    assert "   web #0 crashed: http health check of /health: 404" in result.output
    assert "not told" not in result.output
    assert result.output.splitlines()[-1] == (
        "Error: release 2 did not start (the previous release keeps serving): web #0 never "
        "passed its http health check (404)")


def test_a_first_release_that_fails_says_nothing_serves(pushed: Fake):
    pushed.add("release.failed", release=2, reason="exited with code 1", serving=None)
    result = restage(pushed)
    assert result.exit_code == 1
    assert "release 2 did not start (nothing is serving): exited with code 1" in result.output


def test_a_pending_instance_is_told_once_with_its_reason(pushed: Fake):
    reason = ("no agent has room for 4096 MB memory and 1024 MB disk: scale something down "
              "or add an agent")
    for _ in range(3):
        pushed.add("instance.pending", process_type="web", index=1, reason=reason)
    pushed.add("release.deployed", release=2)
    pushed.add("app.routed", release=2, generation=1, urls=APP["urls"])
    result = restage(pushed)
    assert result.exit_code == 0, result.output
    assert result.output.count(f"   web #1 pending: {reason}") == 1


def test_an_app_without_a_route_is_done_when_its_release_is_deployed(pushed: Fake):
    pushed.add("release.deployed", release=2)  # no app.routed follows: the stream only pings
    result = restage(pushed, app={**APP, "urls": []})
    assert result.exit_code == 0, result.output
    assert "routes: none" in result.output
    assert "web is running, with no route (in " in result.output
    assert "'paas map-route web DOMAIN --hostname NAME' gives it one." in result.output


def test_the_wait_timeout_keeps_its_sentence(pushed: Fake):
    pushed.add("instance.starting", process_type="web", index=0, release=2)
    started = time.monotonic()
    result = restage(pushed, args=("--wait-timeout", "1"))
    assert result.exit_code == 1
    assert 0.9 < time.monotonic() - started < 5
    assert result.output.splitlines()[-1] == (
        "Error: release 2 was not serving after 1 s; 'paas app web' shows its instances.")


def test_a_newer_release_deployed_meanwhile_ends_the_wait(pushed: Fake):
    pushed.add("release.deployed", release=3)
    result = restage(pushed)
    assert result.exit_code == 1
    assert "release 2 was replaced by release 3 (a change made meanwhile) before it " \
           "served: 'paas releases web' lists them." in result.output


# -- runtime commands -------------------------------------------------------------------------
def test_set_env_follows_its_release_until_it_serves(fake: Fake):
    fake.add("release.deployed", release=2)
    answer = {"changed": True, "release": {"version": 3, "description": "set GREETING"},
              "stream_id": fake.events[-1][0]}
    fake.answer("PATCH", "/apps/web/env", answer)
    fake.answer("GET", "/apps/web", APP)
    fake.add("app.env_changed", names=["GREETING"], release=3)
    fake.add("release.deployed", release=3)
    fake.add("app.routed", release=3, generation=1, urls=APP["urls"])
    result = paas("set-env", "web", "GREETING", "hello", "--wait-timeout", "10")
    assert result.exit_code == 0, result.output
    assert result.output.splitlines() == ["Release 3 (set GREETING): rolling out",
                                          "Release 3 serves."]
    assert fake.resumed_from == ["1-0"]


def test_set_env_no_wait_returns_at_once(fake: Fake):
    fake.answer("PATCH", "/apps/web/env", {"changed": True, "stream_id": "0",
                                           "release": {"version": 3, "description": None}})
    result = paas("set-env", "web", "GREETING", "hello", "--no-wait")
    assert result.exit_code == 0, result.output
    assert result.output == "Release 3 (new release): rolling out\n"
    assert fake.resumed_from == []


def _instance(index: int, **values: Any) -> dict[str, Any]:
    return {**APP["instances"][0], "index": index, **values}


def test_scale_waits_until_every_wanted_instance_runs_and_is_routed(fake: Fake):
    three = {**APP, "processes": [{"type": "web", "instances": 3}], "instances_desired": 3}
    fake.answer("POST", "/apps/web/processes/web/scale", {
        **three, "processes": [{"type": "web", "instances": 3, "memory_mb": 256,
                                "disk_mb": 1024}], "stream_id": "0"})
    states = iter([
        {**three, "instances": [_instance(0)]},  # before following
        {**three, "instances": [_instance(0), _instance(1)]},  # after index 1 runs
        {**three, "instances": [_instance(0), _instance(1), _instance(2, routed=False)]},
        {**three, "instances": [_instance(0), _instance(1), _instance(2)]},  # after a ping
    ])
    fake.answer("GET", "/apps/web", lambda: next(states))
    fake.add("instance.running", process_type="web", index=1, release=2)
    fake.add("instance.running", process_type="web", index=2, release=2)
    result = paas("scale", "web", "-i", "3", "--wait-timeout", "10")
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert lines[:3] == ["Scaled web/web to 3 x 256 MB memory, 1024 MB disk",
                         "   web #1 running (release 2)", "   web #2 running (release 2)"]
    assert result.output.count("RUNNING") == 3  # the app as the last look found it


def test_scale_no_wait_follows_nothing(fake: Fake):
    fake.answer("POST", "/apps/web/processes/web/scale", {
        **APP, "processes": [{"type": "web", "instances": 2, "memory_mb": 256,
                              "disk_mb": 1024}], "stream_id": "0"})
    result = paas("scale", "web", "-i", "2", "--no-wait")
    assert result.exit_code == 0, result.output
    assert fake.resumed_from == [] and ("GET", "/v1/apps/web") not in fake.seen


def test_a_rollback_whose_release_fails_says_so_and_what_serves(fake: Fake):
    fake.answer("POST", "/apps/web/rollback", {
        "release": {"version": 4, "description": "rollback to 1"}, "stream_id": "0"})
    fake.add("release.failed", release=4, reason="web #0 exited with code 3", serving=3)
    result = paas("rollback", "web", "--to", "1", "--wait-timeout", "10")
    assert result.exit_code == 1
    assert result.output.splitlines() == [
        "Release 4 (rollback to 1): rolling out",
        "Error: release 4 did not start, so the previous release keeps serving: web #0 exited "
        "with code 3"]


def test_a_restart_that_never_rolls_out_shows_the_app_and_says_so(fake: Fake):
    fake.answer("POST", "/apps/web/restart", {**APP, "generation": 2, "stream_id": "0"})
    fake.answer("GET", "/apps/web", {**APP, "generation": 2})  # its instance is generation 1
    fake.add("instance.crashed", process_type="web", index=0, release=2, generation=2,
             reason="exited with code 1")
    result = paas("restart", "web", "--wait-timeout", "1")
    assert result.exit_code == 1
    assert "   web #0 crashed: exited with code 1" in result.output
    assert "web  state: STARTED" in result.output  # the app as it was when the time ran out
    assert result.output.splitlines()[-1] == (
        "Error: the instances were not all replaced after 1 s: 'paas app web' shows them; "
        "crashed ones say why.")


def test_an_app_deleted_while_followed_ends_the_wait(fake: Fake):
    fake.answer("POST", "/apps/web/start", {**APP, "stream_id": "0"})
    fake.answer("GET", "/apps/web", {**APP, "instances": []})
    fake.add("app.deleted")
    result = paas("start", "web", "--wait-timeout", "10")
    assert result.exit_code == 1
    assert "Error: web was deleted while its instances started." in result.output


def test_a_first_push_whose_build_failed_and_took_its_app_asks_the_build(fake: Fake):
    # The log ended without its result, and the app (with its stream) is gone: one look at
    # the build says why.
    fake.answer("POST", "/apps/web/restage", {"build": {"guid": "b2"}, "app": {},
                                              "stream_id": "0"})
    fake.lines["/v1/builds/b2/log"] = [{"type": "log", "text": "-----> Installing"}]
    fake.stream_status = 404
    fake.answer("GET", "/builds/b2", {"guid": "b2", "state": "FAILED",
                                      "error": "pip install failed"})
    result = paas("restage", "web", "--wait-timeout", "10")
    assert result.exit_code == 1
    assert result.output.splitlines()[-1] == "Error: staging failed: pip install failed"


def test_a_worker_only_release_ends_when_deployed_though_the_app_has_a_route(pushed: Fake):
    # A Procfile with only a worker: the web process has no command, so nothing is routed.
    worker_only = {**APP, "processes": [{"type": "web", "instances": 1, "command": None},
                                        {"type": "worker", "instances": 1, "command": "work"}]}
    pushed.add("build.succeeded", build="b2", release=2, buildpack="procfile")
    pushed.add("release.deployed", release=2)
    result = restage(pushed, app=worker_only)
    assert result.exit_code == 0, result.output


def test_a_result_line_still_staging_is_settled_from_the_stream(pushed: Fake):
    # The health manager was slow: the log's result says STAGING; the stream says the rest.
    pushed.add("build.succeeded", build="b2", release=2, buildpack="python")
    pushed.add("release.deployed", release=2)
    pushed.add("app.routed", release=2, generation=1, urls=APP["urls"])
    result = restage(pushed, log=[{"type": "log", "text": "-----> done"},
                                  {"type": "result", "state": "STAGING"}])
    assert result.exit_code == 0, result.output
    assert "Release 2: starting instances" in result.output
