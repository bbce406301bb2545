"""Router: follows the route table, reloads only on change, survives Redis going away or
restarting without dropping a backend."""

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
        self.run_id = "run-1"

    def restart(self) -> None:
        """What a Redis without persistence looks like after a restart: empty, new run_id."""
        self.hashes.clear()
        self.values.clear()
        self.run_id += "-restarted"

    def check(self) -> None:
        if self.down:
            raise redis.ConnectionError("Connection refused")

    def scan_iter(self, match: str, count: int = 10) -> Iterator[str]:
        self.check()
        return iter([k for k in sorted(self.hashes) if fnmatch.fnmatchcase(k, match)])

    def hgetall(self, key: str) -> dict[str, str]:
        self.check()
        return dict(self.hashes.get(key, {}))

    def info(self, section: str) -> dict[str, str]:
        self.check()
        return {"run_id": self.run_id}

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
    settings = load(env={}, data_dir=str(tmp_path), router_port=8791, heartbeat_ttl=1.0)
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
        server.add("agent-b", route("b.localhost", 61002))  # new while Redis was away
        eventually(lambda: "server_name b.localhost;" in nginx.live)
        assert "server_name a.localhost;" in nginx.live  # held for the grace period
        eventually(lambda: "server_name a.localhost;" not in nginx.live)  # then removed
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


def grace_over(router: Router) -> None:
    """Move the router's clock past the grace period without sleeping through it."""
    router._grace.reconnected_at -= router._grace.period


def test_a_normal_removal_is_applied_at_once(fakes: tuple) -> None:
    router, server, nginx = fakes
    server.add("agent-a", route("a.localhost", 61001))
    router.start()
    assert router.sync() is False
    del server.hashes[keys.routes("agent-a")]
    assert router.sync() is True
    assert "server_name a.localhost;" not in nginx.live


def test_a_redis_restart_between_two_reads_removes_nothing_until_the_grace_is_over(
    fakes: tuple,
) -> None:
    router, server, nginx = fakes
    server.add("agent-a", route("a.localhost", 61001))
    server.add("agent-a", route("c.localhost", 61003, guid="g3"))
    router.start()
    router.sync()

    server.restart()  # no error seen: the client reconnected between two reads
    assert router.sync() is False
    assert "server_name a.localhost;" in nginx.live
    server.add("agent-b", route("b.localhost", 61002))  # additions go live at once
    assert router.sync() is True
    assert "server_name a.localhost;" in nginx.live and "server_name b.localhost;" in nginx.live
    server.add("agent-a", route("a.localhost", 61001))  # agent-a republished, without c

    grace_over(router)
    assert router.sync() is True
    assert "server_name a.localhost;" in nginx.live and "server_name b.localhost;" in nginx.live
    assert "server_name c.localhost;" not in nginx.live


def test_after_an_outage_nothing_is_removed_for_the_grace_period(fakes: tuple) -> None:
    router, server, nginx = fakes
    server.add("agent-a", route("a.localhost", 61001))
    router.start()
    served = nginx.live

    server.down = True
    with pytest.raises(redis.ConnectionError):
        router.sync()
    router._redis_lost(redis.ConnectionError("Connection refused"))
    server.down = False
    server.hashes.clear()  # expired while Redis was away; run_id unchanged
    assert router.sync() is False
    assert nginx.live == served and nginx.applied == []

    grace_over(router)
    assert router.sync() is True
    assert "server_name a.localhost;" not in nginx.live


def test_router_synced_is_written_again_after_a_restart_and_never_runs_ahead(
    fakes: tuple,
) -> None:
    router, server, nginx = fakes
    server.add("agent-a", route("a.localhost", 61001))
    server.add("agent-a", route("c.localhost", 61003, guid="g3"))
    router.start()
    router.sync()
    before = float(server.values[keys.ROUTER_SYNCED])

    server.restart()
    server.add("agent-a", route("a.localhost", 61001))  # c.localhost is held, not in Redis
    router.sync()
    # nginx still routes c.localhost, so it is not equal to any table read since the restart
    assert float(server.values[keys.ROUTER_SYNCED]) == before

    server.add("agent-a", route("c.localhost", 61003, guid="g3"))  # republished in full
    router.sync()
    assert float(server.values[keys.ROUTER_SYNCED]) > before


def test_redis_away_at_start_then_back(fakes: tuple) -> None:
    router, server, nginx = fakes
    server.down = True
    router.start()
    assert nginx.running and "server_name a.localhost;" not in nginx.live
    server.down = False
    server.add("agent-a", route("a.localhost", 61001))
    assert router.sync() is True
    assert "server_name a.localhost;" in nginx.live
    assert keys.ROUTER_SYNCED in server.values
