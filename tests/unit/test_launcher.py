"""Launcher: per-agent settings and port blocks, and stopping or restarting one service."""

from __future__ import annotations

import signal
import sys
import threading
import time
from pathlib import Path

import pytest

from contracts.settings import load
from launcher.sandbox import port_blocks, reserve_port_blocks
from launcher.up import (
    LaunchError,
    Platform,
    Service,
    agent_index,
    agent_overrides,
    agent_service,
    service_module,
    split_port_range,
)


def _disjoint(ranges: list[tuple[int, int]]) -> bool:
    ports = [p for lo, hi in ranges for p in range(lo, hi + 1)]
    return len(ports) == len(set(ports))


def test_agent_service_names_round_trip() -> None:
    assert [agent_service(i) for i in range(3)] == ["agent", "agent-1", "agent-2"]
    assert [agent_index(n) for n in ("agent", "agent-1", "agent-12")] == [0, 1, 12]
    assert [agent_index(n) for n in ("router", "agent-0", "agent-x", "agent-01")] == [None] * 4
    assert service_module("agent-2") == service_module("agent") == "dea_agent.main"
    with pytest.raises(LaunchError, match="no service called 'nope'"):
        service_module("nope")


def test_split_port_range_gives_equal_disjoint_shares() -> None:
    assert split_port_range(61000, 61999, 1) == [(61000, 61999)]
    shares = split_port_range(61000, 61999, 3)
    assert shares == [(61000, 61332), (61333, 61665), (61666, 61998)]
    assert _disjoint(shares)
    with pytest.raises(LaunchError, match="cannot be shared by 3 agents"):
        split_port_range(100, 101, 3)
    with pytest.raises(LaunchError, match="at least one agent"):
        split_port_range(100, 200, 0)


def test_one_agent_keeps_todays_settings() -> None:
    settings = load(env={}, agent_id="a", agent_port_min=62000, agent_port_max=62039)
    platform = Platform(settings)
    assert platform.service_names == ("controller", "health", "stager", "agent", "router")
    assert platform.settings_for("agent") == settings
    assert platform.settings_for("controller") == settings
    assert platform.agent_ids == ["a"]


def test_each_agent_has_its_own_id_and_ports() -> None:
    settings = load(env={}, agent_id="a", agent_port_min=61000, agent_port_max=61999)
    platform = Platform(settings, agents=3)
    assert platform.service_names == (
        "controller", "health", "stager", "agent", "agent-1", "agent-2", "router")
    assert platform.agent_ids == ["a", "a-1", "a-2"]
    assert platform.agent_service("a-2") == "agent-2"
    with pytest.raises(LaunchError, match="no agent 'b'"):
        platform.agent_service("b")
    agents = [platform.settings_for(agent_service(i)) for i in range(3)]
    ranges = [(s.agent_port_min, s.agent_port_max) for s in agents]
    assert _disjoint(ranges)
    assert all(61000 <= lo <= hi <= 61999 for lo, hi in ranges)
    # Everything else is shared.
    assert {s.replace(agent_id="", agent_port_min=0, agent_port_max=0) for s in agents} == {
        settings.replace(agent_id="", agent_port_min=0, agent_port_max=0)}


def test_given_port_blocks_and_overrides_win() -> None:
    settings = load(env={}, agent_id="a")
    blocks = [(62000, 62039), (62400, 62439)]
    overrides = agent_overrides(settings, 2, blocks)
    overrides["agent-1"]["heartbeat_interval"] = 0.5
    overrides["router"] = {"router_port": 9999}
    platform = Platform(settings, agents=2, overrides=overrides)
    one = platform.settings_for("agent-1")
    assert (one.agent_id, one.agent_port_min, one.agent_port_max) == ("a-1", 62400, 62439)
    assert one.heartbeat_interval == 0.5
    assert platform.settings_for("agent").heartbeat_interval == settings.heartbeat_interval
    assert platform.settings_for("router").router_port == 9999
    with pytest.raises(LaunchError, match="2 agents need 2 port ranges, not 1"):
        agent_overrides(settings, 2, blocks[:1])


def test_port_blocks_are_whole_and_above_the_ephemeral_range() -> None:
    blocks = port_blocks()
    assert blocks[0] == (62000, 62039)
    assert all(hi - lo == 39 for lo, hi in blocks)
    assert blocks[-1][1] <= 65535
    assert _disjoint(blocks)
    assert port_blocks(100, 179, 40) == [(100, 139), (140, 179)]
    assert port_blocks(100, 178, 40) == [(100, 139)]


def test_reserved_port_blocks_are_not_given_twice(tmp_path: Path) -> None:
    # Four blocks no platform on this host uses while the test runs (a fixed range could
    # hold the ports of a platform running beside it, the integration tests' own included).
    held = reserve_port_blocks(4)
    blocks = sorted((lease.port_min, lease.port_max) for lease in held)
    first = reserve_port_blocks(3, tmp_path, blocks)
    try:
        second = reserve_port_blocks(1, tmp_path, blocks)
        taken = {(lease.port_min, lease.port_max) for lease in first}
        assert len(taken) == 3
        assert (second[0].port_min, second[0].port_max) not in taken
        with pytest.raises(RuntimeError, match="no 1 free blocks"):
            reserve_port_blocks(1, tmp_path, blocks)
        second[0].release()
        again = reserve_port_blocks(1, tmp_path, blocks)
        assert (again[0].port_min, again[0].port_max) == (second[0].port_min, second[0].port_max)
        again[0].release()
    finally:
        for lease in first + held:
            lease.release()


class SleepingPlatform(Platform):
    """Every service is a Python that sleeps until signalled."""

    def _command(self, service: Service) -> list[str]:
        return [sys.executable, "-c", "import time; time.sleep(120)"]


@pytest.fixture
def sleeping(tmp_path: Path):
    platform = SleepingPlatform(load(env={}, data_dir=str(tmp_path)), agents=2)
    platform.log_dir.mkdir(parents=True)
    platform.start()
    yield platform
    platform.stop(timeout=5)


def _running(platform: Platform, name: str) -> bool:
    proc = platform.services[name].process
    return proc is not None and proc.poll() is None


def test_kill_stops_one_service_and_start_service_brings_it_back(sleeping: Platform) -> None:
    assert all(_running(sleeping, n) for n in sleeping.service_names)
    old_pid = sleeping.services["agent-1"].process.pid
    assert sleeping.kill("agent-1") == -signal.SIGKILL
    assert not _running(sleeping, "agent-1")
    assert all(_running(sleeping, n) for n in sleeping.service_names if n != "agent-1")
    sleeping._check_alive()  # a killed service is not a failed start
    sleeping.start_service("agent-1")
    assert _running(sleeping, "agent-1")
    assert sleeping.services["agent-1"].process.pid != old_pid
    with pytest.raises(LaunchError, match="agent-1 is already running"):
        sleeping.start_service("agent-1")


def test_restart_stops_gracefully_then_spawns(sleeping: Platform) -> None:
    old = sleeping.services["controller"].process
    sleeping.restart("controller", timeout=5)
    assert old.returncode == -signal.SIGTERM
    assert _running(sleeping, "controller")
    assert sleeping.services["controller"].process.pid != old.pid
    with pytest.raises(LaunchError, match="never started"):
        sleeping.restart("agent-7")


def test_supervise_leaves_a_killed_service_down(sleeping: Platform) -> None:
    sleeping.kill("stager")
    supervisor = threading.Thread(target=sleeping.supervise, daemon=True)
    supervisor.start()
    time.sleep(1.0)
    assert not _running(sleeping, "stager")
    sleeping.stopping = True
    supervisor.join(timeout=5)
