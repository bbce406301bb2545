"""Three agents on this host: losing one moves its instances, and restarting any part of the
platform (controller, health manager, Redis, an agent) never stops an app from answering."""

from __future__ import annotations

import signal
import time

import docker
import pytest

from launcher.sandbox import Sandbox
from tests.integration.runtime_helpers import Load, app_json, running, runtime_app, wait_for

pytestmark = pytest.mark.usefixtures("dump_logs_on_failure")


@pytest.fixture(scope="module")
def platform():  # overrides the session platform for this module
    sandbox = Sandbox(agents=3, start_timeout=12.0)
    try:
        sandbox.start()
        yield sandbox
    finally:
        sandbox.close()


def push(platform, name: str, folder, *args: str) -> None:
    result = platform.paas("push", name, "-p", str(folder), *args)
    assert result.returncode == 0, result.stdout + result.stderr


def answers_every_index(platform, name: str, count: int) -> bool:
    host = platform.app_host(name)
    seen = set()
    for _ in range(count * 4):
        r = platform.router_get(host)
        if r.status_code == 200:
            seen.add(r.text.split("index=")[1].strip())
    return seen == {str(i) for i in range(count)}


def test_lost_agent_instances_move_and_its_return_leaves_no_duplicates(platform, tmp_path):
    push(platform, "spread", runtime_app(tmp_path), "-i", "3")
    placed = running(platform, "spread")
    assert len({i["agent"] for i in placed}) == 3  # one instance on each agent
    lost = next(i["agent"] for i in placed if i["index"] == 0)

    # The host dies: its agent and its containers at once.
    killed_at = time.monotonic()
    platform.platform.kill(platform.agent_service(lost), signal.SIGKILL)
    client = docker.from_env()
    for container in client.containers.list(ignore_removed=True, filters={"label": [
            f"paas.platform={platform.platform_id}", f"paas.agent={lost}"]}):
        container.kill()

    def moved() -> bool:
        now = running(platform, "spread")
        return sorted(i["index"] for i in now) == [0, 1, 2] and \
            all(i["agent"] != lost for i in now)

    assert wait_for(moved, timeout=30), app_json(platform, "spread")["instances"]
    assert wait_for(lambda: answers_every_index(platform, "spread", 3), timeout=10)
    moves = platform.paas("events", "spread").stdout
    assert f"web #0 moved from {lost}" in moves, moves
    # Noticed after the heartbeat TTL (6 s), then started elsewhere: generous for a busy CI.
    assert time.monotonic() - killed_at < 20

    # It comes back: new placements may use it again, and no index runs twice.
    platform.platform.start_service(platform.agent_service(lost))
    assert wait_for(lambda: lost in {b for b in _agents(platform)}, timeout=20)
    time.sleep(3)
    now = running(platform, "spread")
    assert sorted(i["index"] for i in now) == [0, 1, 2], now
    # Rebalancing evens the spread again, one instance at a time.
    balanced = platform.paas("rebalance", "spread")
    assert balanced.returncode == 0, balanced.stdout + balanced.stderr
    assert "Rebalancing spread" in balanced.stdout
    assert len({i["agent"] for i in running(platform, "spread")}) == 3
    again = platform.paas("rebalance", "spread")
    assert again.returncode == 0 and "evenly already" in again.stdout
    assert platform.paas("delete", "spread", "-f").returncode == 0


def _agents(platform) -> list[str]:
    import redis

    client = redis.Redis.from_url(platform.settings.redis_url)
    try:
        return [k.decode().rsplit(":", 1)[1] for k in client.scan_iter("paas:agent:*")]
    finally:
        client.close()


def _rows(platform) -> dict[str, int]:
    from sqlalchemy import create_engine, text

    engine = create_engine(platform.settings.sqlalchemy_url)
    with engine.connect() as conn:
        counts = {t: conn.execute(text(f"SELECT count(*) FROM {t}")).scalar_one()
                  for t in ("apps", "releases", "droplets", "builds", "processes", "events")}
    engine.dispose()
    return counts


def test_restarting_each_part_never_stops_the_app(platform, tmp_path):
    push(platform, "steady", runtime_app(tmp_path), "-i", "2")
    before = _rows(platform)
    agent_of = {i["index"]: i for i in running(platform, "steady")}
    sandbox = platform.platform

    with Load(platform, platform.app_host("steady")) as load:
        sandbox.restart("controller")
        sandbox.wait_ready()
        time.sleep(2)
        sandbox.restart("health")
        time.sleep(3)
        platform.restart_redis()
        time.sleep(10)  # past the router's and health manager's hold after a Redis restart
        agent = agent_of[0]["agent"]
        sandbox.restart(platform.agent_service(agent))
        time.sleep(8)
        served = load.total
    assert served > 100
    assert load.failures == [], load.failures[:5]

    # The agent took its running containers back without restarting them.
    after = {i["index"]: i for i in running(platform, "steady")}
    assert after[0]["since"] == pytest.approx(agent_of[0]["since"])
    assert sorted(after) == [0, 1]
    rows = _rows(platform)
    assert {k: v for k, v in rows.items() if k != "events"} == \
        {k: v for k, v in before.items() if k != "events"}
    assert rows["events"] >= before["events"]
    # Everything still works after the restarts: queues, heartbeats, routes.
    scaled = platform.paas("scale", "steady", "-i", "3")
    assert scaled.returncode == 0, scaled.stdout + scaled.stderr
    assert wait_for(lambda: answers_every_index(platform, "steady", 3), timeout=15)
    assert platform.paas("delete", "steady", "-f").returncode == 0
