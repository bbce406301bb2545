"""The agent's side of route table revisions (contracts.revisions): each changed table takes
the next revision, instances report the revision of the first table that had them, and a stop
waits (bounded) until the router serves a table without the instance."""

from __future__ import annotations

import fnmatch
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from contracts import keys, revisions
from contracts.messages import Heartbeat, InstanceState
from contracts.settings import load
from dea_agent.agent import Agent
from dea_agent.instances import Instance
from tests.unit.fakes import FakePipeline

AGENT = "agent-t"


class FakeRedis:
    """The calls the agent makes to publish and to wait for the router (text values)."""

    def __init__(self) -> None:
        self.values: dict[str, str] = {}
        self.hashes: dict[str, dict[str, str]] = {}
        self.published: list[tuple[str, str]] = []

    def incr(self, key: str) -> int:
        return self.incrby(key, 1)

    def incrby(self, key: str, amount: int) -> int:
        self.values[key] = str(int(self.values.get(key, "0")) + amount)
        return int(self.values[key])

    def set(self, key: str, value: str, **_: Any) -> None:
        self.values[key] = value

    def delete(self, key: str) -> None:
        self.hashes.pop(key, None)
        self.values.pop(key, None)

    def hset(self, key: str, mapping: dict[str, str]) -> None:
        self.hashes.setdefault(key, {}).update(mapping)

    def hgetall(self, key: str) -> dict[str, str]:
        return dict(self.hashes.get(key, {}))

    def pexpire(self, key: str, ms: int) -> None:
        pass

    def publish(self, channel: str, message: str) -> None:
        self.published.append((channel, message))

    def scan_iter(self, match: str, count: int = 0) -> list[str]:
        return [k for k in self.hashes if fnmatch.fnmatchcase(k, match)]

    def pipeline(self) -> FakePipeline:
        return FakePipeline(self)

    # -- what the test reads
    def table_revision(self) -> int:
        return int(self.hashes[keys.routes(AGENT)][keys.REVISION_FIELD])

    def routes_revs(self) -> dict[str, int]:
        beat = Heartbeat.from_json(self.values[keys.agent(AGENT)])
        return {i.instance_guid: i.routes_rev for i in beat.instances}


class FakeContainer:
    def __init__(self) -> None:
        self.stopped_at: float | None = None

    def stop(self, timeout: int = 10) -> None:
        self.stopped_at = time.monotonic()

    def remove(self, force: bool = False) -> None:
        pass


class FakeDocker:
    def __init__(self) -> None:
        self.container = FakeContainer()
        self.containers = self

    def get(self, container_id: str) -> FakeContainer:
        return self.container


@pytest.fixture
def agent(tmp_path: Path) -> Agent:
    settings = load(env={}, data_dir=str(tmp_path), agent_id=AGENT, heartbeat_ttl=5.0)
    return Agent(settings, FakeDocker(), FakeRedis())  # type: ignore[arg-type]


def add(agent: Agent, guid: str, process_type: str = "web", state: str = "RUNNING",
        port: int = 61001) -> Instance:
    instance = Instance(guid=guid, container_id=f"c-{guid}", app_guid="app-1", app_name="web",
                        release=1, process_type=process_type, index=0, host_port=port,
                        routes=[], start_timeout=60.0, started_at=time.time(), state=state)
    agent.instances[guid] = instance
    return instance


def test_a_changed_table_takes_the_next_revision_and_instances_keep_their_first(
    agent: Agent,
) -> None:
    server: FakeRedis = agent.redis  # type: ignore[assignment]
    server.values[keys.ROUTES_REVISION] = "40"  # other agents published before
    add(agent, "w1")
    add(agent, "worker", process_type="worker", port=61002)
    add(agent, "s1", state=InstanceState.STARTING, port=61003)
    assert agent.publish() == 41
    assert server.table_revision() == 41
    assert server.routes_revs() == {"w1": 41, "worker": 0, "s1": 0}

    assert agent.publish() == 41  # unchanged: rewritten with the same revision
    assert server.values[keys.ROUTES_REVISION] == "41"

    agent.instances["s1"].state = InstanceState.RUNNING
    assert agent.publish() == 42
    assert server.routes_revs() == {"w1": 41, "worker": 0, "s1": 42}

    agent.instances["w1"].ready = False  # fails its health check: out of the table
    assert agent.publish() == 43
    assert server.routes_revs()["w1"] == 0
    agent.instances["w1"].ready = True  # back: routed only by the newer table
    assert agent.publish() == 44
    assert server.routes_revs() == {"w1": 44, "worker": 0, "s1": 42}


def test_an_empty_table_is_published_with_its_revision(agent: Agent) -> None:
    server: FakeRedis = agent.redis  # type: ignore[assignment]
    add(agent, "w1")
    agent.publish()
    agent.instances["w1"].state = InstanceState.STOPPING
    revision = agent.publish()
    assert server.hashes[keys.routes(AGENT)] == {keys.REVISION_FIELD: str(revision)}


def test_revisions_keep_growing_after_redis_lost_the_counter(agent: Agent) -> None:
    server: FakeRedis = agent.redis  # type: ignore[assignment]
    server.values[keys.ROUTES_REVISION] = "57"
    add(agent, "w1")
    assert agent.publish() == 58
    server.values.clear()  # Redis restarted without its data
    server.hashes.clear()
    assert agent.publish() == 58  # the same table, republished with its revision
    add(agent, "w2", port=61002)
    assert agent.publish() == 59  # not 1: the router may have acknowledged 58
    assert revisions.next_revision(server, 100) == 101


def test_a_heartbeat_from_before_revisions_still_parses() -> None:
    old = ('{"agent_id": "a", "address": "127.0.0.1", "sent_at": 1.0, "memory_mb": 1, '
           '"memory_used_mb": 0, "instances": [{"instance_guid": "i", "app_guid": "g", '
           '"app_name": "n", "release": 1, "process_type": "web", "index": 0, '
           '"state": "RUNNING", "host_port": 1, "since": 1.0}]}')
    assert Heartbeat.from_json(old).instances[0].routes_rev == 0


def test_a_stop_signals_the_instance_only_once_the_router_serves_a_table_without_it(
    agent: Agent,
) -> None:
    server: FakeRedis = agent.redis  # type: ignore[assignment]
    container: FakeContainer = agent.docker.container  # type: ignore[attr-defined]
    add(agent, "w1")
    agent.publish()
    server.hashes[keys.ROUTER_APPLIED] = {AGENT: str(server.table_revision())}
    thread = threading.Thread(target=agent.stop, args=("w1",))
    thread.start()
    time.sleep(0.3)
    assert container.stopped_at is None  # the router still serves the table with it
    without = server.table_revision()
    assert "w1" not in server.hashes[keys.routes(AGENT)]
    acked_at = time.monotonic()
    server.hashes[keys.ROUTER_APPLIED] = {AGENT: str(without)}
    thread.join(5)
    assert container.stopped_at is not None and container.stopped_at >= acked_at
    assert "w1" not in agent.instances


def test_the_wait_for_the_router_is_bounded_and_never_hangs_on_lost_state(agent: Agent) -> None:
    server: FakeRedis = agent.redis  # type: ignore[assignment]
    assert agent._wait_for_router(9, timeout=5.0)  # no router wrote anything: none runs
    server.hashes[keys.ROUTER_APPLIED] = {AGENT: "12"}
    assert agent._wait_for_router(9, timeout=5.0)  # a newer table applied already
    server.hashes[keys.ROUTER_APPLIED] = {"other-agent": "30"}  # not this agent's yet
    started = time.monotonic()
    assert agent._wait_for_router(9, timeout=0.3) is False
    assert 0.3 <= time.monotonic() - started < 2


def test_a_worker_stop_does_not_wait_for_the_router(agent: Agent) -> None:
    server: FakeRedis = agent.redis  # type: ignore[assignment]
    add(agent, "worker", process_type="worker")
    agent.publish()
    server.hashes[keys.ROUTER_APPLIED] = {AGENT: "0", "other-agent": "1"}
    started = time.monotonic()
    agent.stop("worker")
    assert time.monotonic() - started < 1
