"""Router: follows the route table, reloads only on change, survives Redis going away."""

from __future__ import annotations

import collections
import fnmatch
import json
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import redis

from contracts import keys
from contracts.messages import Route
from contracts.settings import load
from router.main import Router


class FakePubSub:
    def __init__(self, server: FakeRedis) -> None:
        self.server = server
        self.messages: collections.deque[str] = collections.deque()

    def subscribe(self, channel: str) -> None:
        self.server.check()
        self.server.subscribers.append(self)

    def get_message(self, timeout: float = 0.0) -> dict[str, str] | None:
        self.server.check()
        if self.messages:
            return {"type": "message", "data": self.messages.popleft()}
        time.sleep(min(timeout, 0.01))
        return None

    def close(self) -> None:
        if self in self.server.subscribers:
            self.server.subscribers.remove(self)


class FakeRedis:
    """The few Redis calls the router makes; ``down = True`` makes each one fail."""

    def __init__(self) -> None:
        self.hashes: dict[str, dict[str, str]] = {}
        self.values: dict[str, str] = {}
        self.subscribers: list[FakePubSub] = []
        self.down = False

    def check(self) -> None:
        if self.down:
            raise redis.ConnectionError("Connection refused")

    def scan_iter(self, match: str, count: int = 10) -> Iterator[str]:
        self.check()
        return iter([k for k in sorted(self.hashes) if fnmatch.fnmatchcase(k, match)])

    def hgetall(self, key: str) -> dict[str, str]:
        self.check()
        return dict(self.hashes.get(key, {}))

    def set(self, key: str, value: str) -> None:
        self.check()
        self.values[key] = value

    def pubsub(self, ignore_subscribe_messages: bool = False) -> FakePubSub:
        return FakePubSub(self)

    def publish(self, channel: str, data: str) -> None:
        for sub in self.subscribers:
            sub.messages.append(data)

    def add(self, agent: str, route: Route) -> None:
        self.hashes.setdefault(keys.routes(agent), {})[route.instance_guid] = route.to_json()


class FakeNginx:
    def __init__(self, runtime_dir: Path) -> None:
        self.runtime_dir = runtime_dir
        self.live: str | None = None
        self.applied: list[str] = []
        self.running = False
        self.stopped = False
        self.returncode: int | None = None

    def start(self, config_text: str, *, listen: tuple[str, int] | None = None) -> None:
        self.live, self.running = config_text, True

    def apply(self, config_text: str) -> bool:
        self.applied.append(config_text)
        if "REJECT" in config_text:
            return False
        self.live = config_text
        return True

    def is_running(self) -> bool:
        return self.running

    def stop(self) -> None:
        self.running, self.stopped = False, True


def route(host: str, port: int, guid: str = "g1") -> Route:
    return Route(host=host, backend=f"127.0.0.1:{port}", app_name="app", instance_guid=guid)


@pytest.fixture
def fakes(tmp_path: Path) -> tuple[Router, FakeRedis, FakeNginx]:
    server, nginx = FakeRedis(), FakeNginx(tmp_path)
    settings = load(env={}, data_dir=str(tmp_path), router_port=8791)
    router = Router(settings, redis_client=server, nginx=nginx, interval=0.05)  # type: ignore[arg-type]
    return router, server, nginx


def eventually(check: Callable[[], bool], timeout: float = 3.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.01)


def test_sync_reloads_only_when_the_table_changes(fakes: tuple) -> None:
    router, server, nginx = fakes
    router.start()
    assert "listen 127.0.0.1:8791 default_server;" in nginx.live
    assert router.sync() is False

    server.add("agent-a", route("a.localhost", 61001))
    assert router.sync() is True
    assert "server_name a.localhost;" in nginx.live
    assert router.sync() is False
    assert len(nginx.applied) == 1

    status = json.loads(server.values[keys.ROUTER_STATUS])
    assert status["routes"] == 1
    assert status["reloaded_at"] == pytest.approx(time.time(), abs=5)


def test_bad_entries_are_skipped_not_fatal(fakes: tuple) -> None:
    router, server, nginx = fakes
    server.add("agent-a", route("a.localhost", 61001))
    server.add("agent-a", route("evil.localhost;}", 61002, guid="g2"))
    server.hashes[keys.routes("agent-a")]["g3"] = "{not json"
    server.hashes[keys.routes("agent-a")]["g4"] = '{"host": "x.localhost"}'
    assert [r.instance_guid for r in router.read_routes()] == ["g1"]


def test_a_config_nginx_rejects_is_not_retried(fakes: tuple, monkeypatch) -> None:
    router, server, nginx = fakes
    router.start()
    monkeypatch.setattr(router, "render", lambda routes: "REJECT")
    assert router.sync() is False
    assert router.sync() is False
    assert nginx.applied == ["REJECT"]


def test_run_follows_changes_and_survives_redis_outage(fakes: tuple) -> None:
    router, server, nginx = fakes
    stop = threading.Event()
    thread = threading.Thread(target=router.run, args=(stop,))
    thread.start()
    try:
        eventually(lambda: nginx.running and server.subscribers)
        server.add("agent-a", route("a.localhost", 61001))
        server.publish(keys.ROUTES_CHANGED, "agent-a")
        eventually(lambda: "server_name a.localhost;" in (nginx.live or ""))

        server.down = True
        time.sleep(0.2)
        assert thread.is_alive() and nginx.running
        assert "server_name a.localhost;" in nginx.live

        server.down = False
        del server.hashes[keys.routes("agent-a")]  # expired while Redis was away
        eventually(lambda: "server_name a.localhost;" not in nginx.live)
    finally:
        stop.set()
        thread.join(5)
    assert not thread.is_alive()
    assert nginx.stopped


def test_nginx_that_died_is_restarted_with_the_last_config(fakes: tuple) -> None:
    router, server, nginx = fakes
    server.add("agent-a", route("a.localhost", 61001))
    router.start()
    served = nginx.live
    nginx.running, nginx.live = False, None
    router._ensure_nginx()
    assert nginx.running and nginx.live == served
