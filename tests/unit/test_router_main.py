"""Router: follows the route table and the backends, reloads only on change (and not too
often), survives Redis going away or restarting without dropping a backend."""

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
from contracts.messages import Backend
from contracts.routing import Certificate, MappedRoute, RouteTable
from contracts.secretbox import SecretBox, ensure_key, load_box
from contracts.settings import load
from router.main import Router
from tests.unit.fakes import FakePipeline


class FakePubSub:
    def __init__(self, server: FakeRedis) -> None:
        self.server = server
        self.messages: collections.deque[str] = collections.deque()
        self.channels: set[str] = set()

    def subscribe(self, channel: str) -> None:
        self.server.check()
        self.channels.add(channel)
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
        self.published: list[tuple[str, str]] = []
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

    def get(self, key: str) -> str | None:
        self.check()
        return self.values.get(key)

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

    def delete(self, key: str) -> None:
        self.check()
        self.hashes.pop(key, None)
        self.values.pop(key, None)

    def hset(self, key: str, mapping: dict[str, str]) -> None:
        self.check()
        self.hashes.setdefault(key, {}).update(mapping)

    def pipeline(self) -> FakePipeline:
        return FakePipeline(self)

    def pubsub(self, ignore_subscribe_messages: bool = False) -> FakePubSub:
        return FakePubSub(self)

    def publish(self, channel: str, data: str) -> None:
        self.published.append((channel, data))
        for sub in self.subscribers:
            if channel in sub.channels:
                sub.messages.append(data)

    def add(self, agent: str, backend: Backend) -> None:
        self.hashes.setdefault(keys.routes(agent), {})[backend.instance_guid] = backend.to_json()

    def publish_table(self, agent: str, revision: int, *backends: Backend) -> None:
        """What an agent does: rewrite its whole table with its revision."""
        self.hashes[keys.routes(agent)] = {
            keys.REVISION_FIELD: str(revision), **{b.instance_guid: b.to_json() for b in backends}}

    def applied(self) -> dict[str, str]:
        return dict(self.hashes.get(keys.ROUTER_APPLIED, {}))

    def converges(self) -> int:
        return sum(1 for channel, _ in self.published if channel == keys.CONVERGE)

    def map(self, *routes: MappedRoute, certificates: list[Certificate] | None = None) -> None:
        """What the controller does: write the whole route table."""
        table = RouteTable(revision=time.time_ns(), routes=list(routes),
                           certificates=certificates or [])
        self.values[keys.ROUTE_TABLE] = table.to_json()

    def serve(self, agent: str, host: str, port: int, guid: str = "g1") -> None:
        """Map ``host`` to an app of its own (if not yet) and register one instance of it."""
        table = RouteTable.from_json(self.values.get(keys.ROUTE_TABLE) or '{"revision": 0}')
        routes = {r.host: r for r in table.routes}
        routes.setdefault(host, mapped(host))
        self.map(*routes.values(), certificates=table.certificates)
        self.add(agent, backend(host, port, guid))


class FakeNginx:
    def __init__(self, runtime_dir: Path) -> None:
        self.runtime_dir = runtime_dir
        self.live: str | None = None
        self.applied: list[str] = []
        self.applied_at: list[float] = []
        self.running = False
        self.stopped = False
        self.returncode: int | None = None

    def start(self, config_text: str, *, listen: tuple[str, int] | None = None) -> None:
        self.live, self.running = config_text, True

    def apply(self, config_text: str) -> bool:
        self.applied.append(config_text)
        self.applied_at.append(time.monotonic())
        if "REJECT" in config_text:
            return False
        self.live = config_text
        return True

    def is_running(self) -> bool:
        return self.running

    def stop(self) -> None:
        self.running, self.stopped = False, True


def app_guid(host: str) -> str:
    return "app-" + host.split(".")[0]


def mapped(host: str, **kw: object) -> MappedRoute:
    return MappedRoute(guid="r-" + host, host=host, domain="localhost", app_guid=app_guid(host),
                       app_name=host.split(".")[0], **kw)  # type: ignore[arg-type]


def backend(host: str, port: int, guid: str = "g1") -> Backend:
    return Backend(backend=f"127.0.0.1:{port}", app_guid=app_guid(host), app_name="app",
                   instance_guid=guid)


@pytest.fixture
def fakes(tmp_path: Path) -> tuple[Router, FakeRedis, FakeNginx]:
    server, nginx = FakeRedis(), FakeNginx(tmp_path)
    settings = load(env={}, data_dir=str(tmp_path), router_port=8791, heartbeat_ttl=1.0,
                    router_reload_interval=0.0)
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

    server.serve("agent-a", "a.localhost", 61001)
    assert router.sync() is True
    assert "server_name a.localhost;" in nginx.live
    assert router.sync() is False
    assert len(nginx.applied) == 1

    rendered = []
    render = router.render
    router.render = lambda *a, **kw: rendered.append(1) or render(*a, **kw)
    assert router.sync() is False
    assert rendered == []  # nothing changed: the config is not made again
    server.serve("agent-a", "b.localhost", 61002)
    assert router.sync() is True and rendered == [1]

    status = json.loads(server.values[keys.ROUTER_STATUS])
    assert status["routes"] == 2
    assert status["reloaded_at"] == pytest.approx(time.time(), abs=5)


def test_bad_entries_are_skipped_not_fatal(fakes: tuple, caplog) -> None:
    router, server, nginx = fakes
    server.serve("agent-a", "a.localhost", 61001)
    server.add("agent-a", Backend(backend="127.0.0.1:61002;}", app_guid="app-a", app_name="a",
                                  instance_guid="g2"))
    server.hashes[keys.routes("agent-a")]["g3"] = "{not json"
    server.hashes[keys.routes("agent-a")]["g4"] = '{"host": "x.localhost"}'
    assert [b.instance_guid for b in router.read_backends()] == ["g1"]
    assert [b.instance_guid for b in router.read_backends()] == ["g1"]
    warnings = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert len(warnings) == 3  # once each, not once per read
    assert any("'127.0.0.1:61002;}' is not ip:port" in w for w in warnings)

    server.map(mapped("a.localhost"), mapped("evil.localhost;}"))
    table = router.read_table()
    assert table is not None and len(table.routes) == 2
    assert router.sync() is True
    assert "server_name a.localhost;" in nginx.live and "evil" not in nginx.live
    assert any("'evil.localhost;}'" in r.getMessage() for r in caplog.records)


def test_a_missing_route_table_keeps_the_routes_and_an_unreadable_one_too(
    fakes: tuple, caplog
) -> None:
    router, server, nginx = fakes
    router.start()  # no table yet: no routes
    server.serve("agent-a", "a.localhost", 61001)
    assert router.sync() is True
    assert "server_name a.localhost;" in nginx.live

    del server.values[keys.ROUTE_TABLE]  # e.g. Redis restarted; the controller rewrites it
    assert router.sync() is False
    assert "server_name a.localhost;" in nginx.live

    server.values[keys.ROUTE_TABLE] = '{"revision": 1, "routes": [{"host": 1}]}'
    assert router.sync() is False
    assert "server_name a.localhost;" in nginx.live
    assert any("route table in Redis is not readable" in r.getMessage()
               for r in caplog.records)

    server.map()  # an empty table is a real "no routes"
    assert router.sync() is True
    assert "server_name a.localhost;" not in nginx.live


def test_routes_join_backends_by_app_guid(fakes: tuple) -> None:
    router, server, nginx = fakes
    server.map(mapped("a.localhost"), mapped("b.localhost"),
               MappedRoute(guid="r-a2", host="www.example.com", domain="example.com",
                           app_guid="app-a", app_name="a"))
    server.add("agent-a", backend("a.localhost", 61001))
    server.add("agent-b", backend("a.localhost", 61002, guid="g2"))
    router.start()
    upstream = nginx.live.split("    upstream ")[1].split("}")[0]
    assert "server 127.0.0.1:61001;" in upstream and "server 127.0.0.1:61002;" in upstream
    assert nginx.live.count("    upstream app_") == 1  # b has no instance: 503, no upstream
    assert "server_name www.example.com;" in nginx.live
    b_server = nginx.live.split("server_name b.localhost;")[1].split("\n    }")[0]
    assert "return 503;" in b_server
    status = json.loads(server.values[keys.ROUTER_STATUS])
    assert (status["hosts"], status["routes"], status["backends"]) == (3, 3, 2)


def test_a_burst_of_changes_is_one_reload_and_reloads_keep_their_distance(
    fakes: tuple,
) -> None:
    router, server, nginx = fakes
    router.reload_interval = 0.3
    stop = threading.Event()
    thread = threading.Thread(target=router.run, args=(stop,))
    thread.start()
    try:
        eventually(lambda: nginx.running and server.subscribers)
        time.sleep(0.35)  # past the start's reload interval
        started = time.monotonic()
        for i in range(10):
            server.serve("agent-a", f"h{i}.localhost", 61000 + i, guid=f"g{i}")
            server.publish(keys.ROUTES_CHANGED, "agent-a")
        eventually(lambda: "server_name h9.localhost;" in (nginx.live or ""), timeout=1.0)
        assert time.monotonic() - started < 1.0
        assert len(nginx.applied) == 1
        for i in range(10, 16):  # a change every 0.05 s: batched, 0.3 s apart
            server.serve("agent-a", f"h{i}.localhost", 61000 + i, guid=f"g{i}")
            server.publish(keys.ROUTES_CHANGED, "agent-a")
            time.sleep(0.05)
        eventually(lambda: "server_name h15.localhost;" in nginx.live, timeout=1.0)
    finally:
        stop.set()
        thread.join(5)
    gaps = [b - a for a, b in zip(nginx.applied_at, nginx.applied_at[1:], strict=False)]
    assert len(nginx.applied) <= 3
    assert all(gap >= 0.29 for gap in gaps), gaps


def test_next_sync_waits_for_the_reload_interval(fakes: tuple) -> None:
    router, _, _ = fakes
    router.reload_interval = 0.25
    router._last_reload = 100.0
    assert router.next_sync_at(periodic_at=101.0, changed_at=None) == 101.0
    assert router.next_sync_at(periodic_at=101.0, changed_at=100.1) == 100.25
    assert router.next_sync_at(periodic_at=101.0, changed_at=100.5) == pytest.approx(100.52)
    assert router.next_sync_at(periodic_at=100.1, changed_at=None) == 100.25


def self_signed(tmp_path: Path, name: str) -> tuple[str, str]:
    import shutil
    import subprocess

    if shutil.which("openssl") is None:
        pytest.skip("openssl is not installed")
    key, cert = tmp_path / f"{name}.key", tmp_path / f"{name}.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
                    "-subj", f"/CN={name}", "-addext", f"subjectAltName=DNS:{name}",
                    "-keyout", str(key), "-out", str(cert)], check=True, capture_output=True)
    return cert.read_text(), key.read_text()


def test_certificates_are_written_private_and_removed_when_unused(
    fakes: tuple, tmp_path: Path
) -> None:
    router, server, nginx = fakes
    cert, key = self_signed(tmp_path, "example.com")
    route = MappedRoute(guid="r1", host="www.example.com", domain="example.com",
                        app_guid="app-a", app_name="a")
    ensure_key(router.settings)
    sealed = load_box(router.settings).seal(key)
    server.map(route, certificates=[Certificate("example.com", cert, "f" * 64, sealed),
                                    Certificate("bad domain;", cert, "f" * 64, sealed)])
    server.add("agent-a", backend("a.localhost", 61001))
    router.start()
    certs = router.certs_dir
    files = sorted(certs.iterdir())
    assert [f.suffix for f in files] == [".key", ".pem"]
    assert files[0].stem == files[1].stem and len(files[0].stem) == 64
    assert files[0].read_text() == key and files[1].read_text() == cert
    assert oct(certs.stat().st_mode & 0o777) == "0o700"
    assert all(oct(f.stat().st_mode & 0o777) == "0o600" for f in files)
    assert f'ssl_certificate "{files[1]}";' in nginx.live
    assert f'ssl_certificate_key "{files[0]}";' in nginx.live
    assert "listen 127.0.0.1:8443 ssl http2;" in nginx.live

    server.map(route)  # the certificate was deleted
    assert router.sync() is True
    assert "ssl_certificate " not in nginx.live
    assert list(certs.iterdir()) == []


def test_a_certificate_key_sealed_with_another_key_is_skipped_with_a_warning(
    fakes: tuple, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    router, server, nginx = fakes
    cert, key = self_signed(tmp_path, "example.com")
    ensure_key(router.settings)
    route = MappedRoute(guid="r1", host="www.example.com", domain="example.com",
                        app_guid="app-a", app_name="a")
    server.map(route, certificates=[
        Certificate("example.com", cert, "f" * 64, SecretBox.generate().seal(key))])
    server.add("agent-a", backend("a.localhost", 61001))
    with caplog.at_level("WARNING"):
        router.start()
    assert "ssl_certificate " not in nginx.live
    assert not router.certs_dir.exists() or not list(router.certs_dir.glob("*.key"))
    assert "skipping the certificate of example.com: a sealed value cannot be opened" \
        in caplog.text


def test_a_config_nginx_rejects_is_not_retried(fakes: tuple, monkeypatch) -> None:
    router, server, nginx = fakes
    router.start()
    monkeypatch.setattr(router, "render", lambda routes, backends, certs: "REJECT")
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
        server.serve("agent-a", "a.localhost", 61001)
        server.publish(keys.ROUTES_CHANGED, "agent-a")
        eventually(lambda: "server 127.0.0.1:61001;" in (nginx.live or ""))

        server.down = True
        time.sleep(0.2)
        assert thread.is_alive() and nginx.running
        assert "server 127.0.0.1:61001;" in nginx.live

        server.down = False
        del server.hashes[keys.routes("agent-a")]  # expired while Redis was away
        server.serve("agent-b", "b.localhost", 61002)  # new while Redis was away
        eventually(lambda: "server 127.0.0.1:61002;" in nginx.live)
        assert "server 127.0.0.1:61001;" in nginx.live  # held for the grace period
        eventually(lambda: "server 127.0.0.1:61001;" not in nginx.live)  # then removed
    finally:
        stop.set()
        thread.join(5)
    assert not thread.is_alive()
    assert nginx.stopped


def test_nginx_that_died_is_restarted_with_the_last_config(fakes: tuple) -> None:
    router, server, nginx = fakes
    server.serve("agent-a", "a.localhost", 61001)
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
    server.serve("agent-a", "a.localhost", 61001)
    router.start()
    assert router.sync() is False
    del server.hashes[keys.routes("agent-a")]
    assert router.sync() is True
    assert "server 127.0.0.1:61001;" not in nginx.live


def test_a_redis_restart_between_two_reads_removes_nothing_until_the_grace_is_over(
    fakes: tuple,
) -> None:
    router, server, nginx = fakes
    server.serve("agent-a", "a.localhost", 61001)
    server.serve("agent-a", "c.localhost", 61003, guid="g3")
    router.start()
    router.sync()

    server.restart()  # no error seen: the client reconnected between two reads
    assert router.sync() is False  # the route table is missing: routes kept
    server.map(*(mapped(f"{h}.localhost") for h in "abc"))  # the controller rewrites it
    assert "server 127.0.0.1:61001;" in nginx.live
    server.serve("agent-b", "b.localhost", 61002)  # additions go live at once
    assert router.sync() is True
    assert "server 127.0.0.1:61001;" in nginx.live and "server 127.0.0.1:61002;" in nginx.live
    server.serve("agent-a", "a.localhost", 61001)  # agent-a republished, without c

    grace_over(router)
    assert router.sync() is True
    assert "server 127.0.0.1:61001;" in nginx.live and "server 127.0.0.1:61002;" in nginx.live
    assert "server 127.0.0.1:61003;" not in nginx.live


def test_after_an_outage_nothing_is_removed_for_the_grace_period(fakes: tuple) -> None:
    router, server, nginx = fakes
    server.serve("agent-a", "a.localhost", 61001)
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
    assert "server 127.0.0.1:61001;" not in nginx.live


def test_each_agents_revision_is_acknowledged_once_nginx_serves_its_table(
    fakes: tuple,
) -> None:
    router, server, nginx = fakes
    server.map(mapped("a.localhost"), mapped("b.localhost"))
    server.publish_table("agent-a", 3, backend("a.localhost", 61001))
    server.publish_table("agent-b", 5, backend("b.localhost", 61002, guid="g2"))
    router.start()
    revision = json.loads(server.values[keys.ROUTE_TABLE])["revision"]
    assert server.applied() == {"agent-a": "3", "agent-b": "5",
                                keys.APPLIED_ROUTE_TABLE: str(revision)}
    assert server.converges() == 1  # the health manager looks at once

    assert router.sync() is False
    assert server.converges() == 1  # nothing new acknowledged: no wake-up

    server.publish_table("agent-a", 7)  # its last instance stops: an empty table
    assert router.sync() is True
    assert "server 127.0.0.1:61001;" not in nginx.live
    assert server.applied()["agent-a"] == "7" and server.applied()["agent-b"] == "5"
    assert server.converges() == 2

    del server.hashes[keys.routes("agent-b")]  # its heartbeat TTL ran out
    router.sync()
    assert "agent-b" not in server.applied()


def test_a_config_nginx_rejects_is_not_acknowledged(fakes: tuple, monkeypatch) -> None:
    router, server, nginx = fakes
    server.serve("agent-a", "a.localhost", 61001)
    server.publish_table("agent-a", 3, backend("a.localhost", 61001))
    router.start()
    render = router.render
    monkeypatch.setattr(router, "render", lambda *a: "REJECT" if len(list(a[1])) > 1
                        else render(*a))
    served = server.applied()[keys.APPLIED_ROUTE_TABLE]
    server.publish_table("agent-a", 4, backend("a.localhost", 61001),
                         backend("a.localhost", 61002, guid="g2"))
    server.map(mapped("a.localhost"), mapped("b.localhost"))
    assert router.sync() is False
    assert router.sync() is False
    assert server.applied()["agent-a"] == "3"  # nginx still serves revision 3
    assert server.applied()[keys.APPLIED_ROUTE_TABLE] == served  # and the old route table
    server.publish_table("agent-a", 5, backend("a.localhost", 61001))
    assert router.sync() is True  # nginx accepts this one
    assert server.applied()["agent-a"] == "5"
    assert server.applied()[keys.APPLIED_ROUTE_TABLE] == str(
        json.loads(server.values[keys.ROUTE_TABLE])["revision"]) != served


def test_after_a_redis_restart_an_agent_with_held_backends_is_acknowledged_only_in_full(
    fakes: tuple,
) -> None:
    router, server, nginx = fakes
    server.serve("agent-a", "a.localhost", 61001)
    server.serve("agent-a", "c.localhost", 61003, guid="g3")
    server.serve("agent-b", "b.localhost", 61002, guid="g2")
    server.publish_table("agent-a", 8, backend("a.localhost", 61001),
                         backend("c.localhost", 61003, guid="g3"))
    server.publish_table("agent-b", 9, backend("b.localhost", 61002, guid="g2"))
    router.start()
    router.sync()
    assert server.applied()["agent-a"] == "8"

    server.restart()  # the counter is gone too: agents go on from their last revision
    server.map(*(mapped(f"{h}.localhost") for h in "abc"))
    server.publish_table("agent-a", 10, backend("a.localhost", 61001))  # c is held
    server.publish_table("agent-b", 9, backend("b.localhost", 61002, guid="g2"))
    router.sync()
    assert "server 127.0.0.1:61003;" in nginx.live
    # nginx serves more of agent-a than any table read since the restart: no entry, so its
    # stop waits (bounded) and its instances are not counted as routed meanwhile.
    assert "agent-a" not in server.applied() and server.applied()["agent-b"] == "9"

    grace_over(router)
    router.sync()
    assert "server 127.0.0.1:61003;" not in nginx.live
    assert server.applied()["agent-a"] == "10"


def test_applied_revisions_are_written_again_after_redis_lost_them(fakes: tuple) -> None:
    router, server, nginx = fakes
    server.serve("agent-a", "a.localhost", 61001)
    server.publish_table("agent-a", 3, backend("a.localhost", 61001))
    router.start()
    del server.hashes[keys.ROUTER_APPLIED]
    router.sync()
    assert server.applied()["agent-a"] == "3"


def test_redis_away_at_start_then_back(fakes: tuple) -> None:
    router, server, nginx = fakes
    server.down = True
    router.start()
    assert nginx.running and "server 127.0.0.1:61001;" not in nginx.live
    server.down = False
    server.serve("agent-a", "a.localhost", 61001)
    assert router.sync() is True
    assert "server 127.0.0.1:61001;" in nginx.live
    assert keys.APPLIED_ROUTE_TABLE in server.applied()
