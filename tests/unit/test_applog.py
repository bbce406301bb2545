"""The app log stream: the writer's cap, cut and rate limit, its format, and the API."""

from __future__ import annotations

import io
import json
import struct
from typing import Any

import logpipe
from contracts import keys
from controller.accounts import member_token
from controller.events import log_line
from controller.models import Role
from dea_agent.logs import frames
from logpipe import AppLogWriter, DockerTime, LogLine, cut
from tests.unit.fakes import FakeRedis
from tests.unit.test_controller_api import package, push


class StreamRedis(FakeRedis):
    """FakeRedis with the pipeline the writer uses."""

    def pipeline(self, transaction: bool = True) -> StreamRedis._Pipe:
        return self._Pipe(self)

    class _Pipe:
        def __init__(self, owner: FakeRedis) -> None:
            self.owner, self.calls = owner, []

        def xadd(self, *a: Any, **kw: Any) -> None:
            self.calls.append(lambda: self.owner.xadd(*a, **kw))

        def hset(self, key: str, mapping: dict[str, str]) -> None:
            self.calls.append(lambda: [self.owner.hset(key, k, v) for k, v in mapping.items()])

        def execute(self) -> list:
            return [call() for call in self.calls]


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def lines_of(client: FakeRedis, app_guid: str = "a1") -> list[LogLine]:
    return [LogLine.from_fields(f) for _, f in client.xrange(keys.app_log(app_guid))]


def app_line(text: str, idx: str = "0", fd: str = "out") -> LogLine:
    return LogLine(1764442862.5, logpipe.APP, text, "web", idx, fd)


def test_the_stream_keeps_at_most_the_cap():
    client = StreamRedis()
    writer = AppLogWriter(client, max_lines=50, max_bytes=4096, rate=1e9)
    writer.write("a1", [app_line(f"line {n}") for n in range(500)])
    kept = lines_of(client)
    assert len(kept) == 50
    assert kept[-1].line == "line 499" and kept[0].line == "line 450"


def test_a_long_line_is_cut_with_a_marker_saying_how_long_it_was():
    assert cut("short", 10) == "short"
    text = "é" * 3000  # 6000 bytes
    shortened = cut(text, 4096)
    assert shortened.endswith(" [cut: 6000 bytes]")
    assert len(shortened.split(" [cut")[0].encode()) <= 4096
    client = StreamRedis()
    AppLogWriter(client, 100, 4096, 1e9).write("a1", [app_line("x" * 10_000)])
    assert lines_of(client)[0].line.endswith("[cut: 10000 bytes]")


def test_the_rate_limit_drops_the_excess_and_says_how_many_once_it_lets_up():
    clock = Clock()
    client = StreamRedis()
    writer = AppLogWriter(client, 10_000, 4096, rate=100, clock=clock)
    passed = sum(writer.add("a1", app_line(f"n{n}")) for n in range(250))
    assert passed == 100  # a burst of one second's worth
    writer.flush()
    assert len(lines_of(client)) == 100  # nothing said yet: lines are still being dropped
    clock.now += 0.5  # 50 tokens back
    writer.add("a1", app_line("after the flood"))
    writer.flush()
    kept = [line.line for line in lines_of(client)]
    assert kept[-2:] == ["150 lines dropped (rate limit 100 lines/s)", "after the flood"]


def test_dropped_lines_are_reported_even_when_no_line_follows():
    clock = Clock()
    client = StreamRedis()
    writer = AppLogWriter(client, 10_000, 4096, rate=10, clock=clock)
    for n in range(15):
        writer.add("a1", app_line(f"n{n}"))
    writer.add("b2", app_line("another app has its own budget"))
    clock.now += 1
    writer.flush()
    assert lines_of(client)[-1].line == "5 lines dropped (rate limit 10 lines/s)"
    assert [x.line for x in lines_of(client, "b2")] == ["another app has its own budget"]


def test_lines_read_like_cloud_foundry_s():
    assert app_line("hello", "2").format() == "2025-11-29T19:01:02.500Z [APP/WEB/2] hello"
    assert app_line("oops", fd="err").format().endswith("[APP/WEB/0] ERR oops")
    staged = LogLine(1764442862.5, logpipe.STG, "-----> Staging")
    assert staged.format() == "2025-11-29T19:01:02.500Z [STG] -----> Staging"
    assert staged.to_dict("5-0")["instance"] is None
    assert app_line("x", "3").to_dict("5-0")["instance"] == 3


def test_docker_timestamps_become_nanoseconds():
    clock = DockerTime()
    assert clock.ns(b"1970-01-01T00:00:01.5Z") == 1_500_000_000
    assert clock.ns(b"2026-11-29T19:01:02.123456789Z") % 10**9 == 123456789
    assert clock.ns(b"1970-01-01T00:00:02Z") == 2_000_000_000


def test_docker_frames_keep_stdout_and_stderr_apart():
    payload = b"".join(struct.pack(">BxxxL", fd, len(p)) + p
                       for fd, p in [(1, b"ts out\n"), (2, b"ts err\n")])
    response = type("R", (), {"raw": io.BufferedReader(io.BytesIO(payload), 3)})()
    assert [f for batch in frames(response) for f in batch] == [(1, b"ts out\n"),
                                                                (2, b"ts err\n")]


def test_api_events_read_as_sentences_with_names_never_values():
    assert log_line("app.scaled", "admin", {
        "process_type": "web", "before": {"instances": 1, "memory_mb": 256},
        "after": {"instances": 3, "memory_mb": 256}}) == "scaled web to 3 instances (by admin)"
    text = log_line("app.env_changed", "dev", {"names": ["SECRET"], "release": 4})
    assert text == "changed env SECRET (release 4) (by dev)"
    assert log_line("build.succeeded", "stager", {}) is None


# -- the API ------------------------------------------------------------------------------
def _get(env, query: str, headers=None) -> list[dict]:
    r = env.client.get(f"/v1/apps/web1/logs?{query}", headers=headers)
    assert r.status_code == 200, r.get_data(as_text=True)
    return [json.loads(x) for x in r.get_data(as_text=True).splitlines() if x]


def _seed(env) -> str:
    assert push(env.client, "web1", package()).status_code < 300
    guid = _find_guid(env)
    for n in range(5):
        env.redis.xadd(keys.app_log(guid), app_line(f"out {n}", idx=str(n % 2)).fields())
    env.redis.xadd(keys.app_log(guid), LogLine(1.0, logpipe.STG, "-----> Staging").fields())
    return guid


def _find_guid(env) -> str:
    from controller.models import App

    with env.app.extensions["paas.sessionmaker"]() as session:
        return session.query(App).filter_by(name="web1").one().guid


def test_recent_lines_come_oldest_first_and_can_be_filtered(env):
    _seed(env)
    got = _get(env, "recent=1")
    texts = [x["text"] for x in got]
    assert texts[-6:] == ["out 0", "out 1", "out 2", "out 3", "out 4", "-----> Staging"]
    assert any(x["source"] == "API" and x["text"].startswith("pushed") for x in got)
    assert [x["text"] for x in _get(env, "recent=1&source=APP&instance=1")] == ["out 1", "out 3"]
    assert [x["text"] for x in _get(env, "recent=1&source=APP&lines=2")] == ["out 3", "out 4"]
    assert [x["text"] for x in _get(env, "recent=1&source=stg")] == ["-----> Staging"]


def test_after_resumes_past_the_last_line_received(env):
    _seed(env)
    got = _get(env, "recent=1&source=APP")
    rest = _get(env, f"after={got[2]['id']}&source=APP&recent=1")
    assert [x["text"] for x in rest][-2:] == ["out 3", "out 4"]


def test_bad_filters_are_refused_with_a_sentence(env):
    assert push(env.client, "web1", package()).status_code < 300
    r = env.client.get("/v1/apps/web1/logs?source=BOGUS")
    assert r.status_code == 400 and "APP, STG, RTR, API, HEALTH" in r.json["error"]
    assert env.client.get("/v1/apps/web1/logs?instance=x").status_code == 400


def test_another_teams_logs_are_a_404_as_for_an_app_that_does_not_exist(env):
    _seed(env)
    with env.app.extensions["paas.sessionmaker"]() as session:
        secret = member_token(session, "dev-" + "other", "other", Role.DEVELOPER)
    r = env.client.get("/v1/apps/web1/logs?recent=1",
                       headers={"Authorization": f"Bearer {secret}"})
    assert r.status_code == 404
    assert r.json["error"] == "there is no app named 'web1': 'paas apps' lists yours."


def test_paas_logs_prints_tagged_lines():
    from cli.logs import format_line

    obj = app_line("hi", "1", "err").to_dict("3-0")
    assert format_line(obj) == "2025-11-29T19:01:02.500Z [APP/WEB/1] ERR hi"
