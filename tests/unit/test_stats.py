"""Container stats: CPU % from two samples, cgroup v1 and v2 files, the sampler, and what a
heartbeat carries. Cgroup trees and /proc are fixture folders; Docker is a stand-in."""

from __future__ import annotations

import threading
from pathlib import Path

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from contracts.messages import Heartbeat, InstanceReport
from dea_agent.stats import (
    CapacityCollector,
    CgroupSample,
    StatsSampler,
    Usage,
    annotate,
    cpu_percent,
    find_cgroup_files,
    parse_limit,
    parse_proc_cgroup,
    read_cgroup,
    usage_from_docker_stats,
)

CID = "c0ffee" * 10 + "abcd"
V1_PROC = "\n".join([
    f"12:cpu,cpuacct:/docker/{CID}",
    f"9:memory:/docker/{CID}",
    f"1:name=systemd:/docker/{CID}",
    f"0::/docker/{CID}",
]) + "\n"
V2_PROC = f"0::/system.slice/docker-{CID}.scope\n"
MiB = 1 << 20


def v1_tree(root: Path, usage: int = 80 * MiB, inactive: int = 30 * MiB,
            limit: str = str(256 * MiB), cpu_ns: int = 0) -> None:
    memory = root / "memory" / "docker" / CID
    cpu = root / "cpu,cpuacct" / "docker" / CID
    memory.mkdir(parents=True, exist_ok=True)
    cpu.mkdir(parents=True, exist_ok=True)
    (memory / "memory.usage_in_bytes").write_text(f"{usage}\n")
    (memory / "memory.limit_in_bytes").write_text(limit + "\n")
    (memory / "memory.stat").write_text(
        f"cache 40000000\nrss 50000000\ninactive_file 1\ntotal_inactive_file {inactive}\n")
    (cpu / "cpuacct.usage").write_text(f"{cpu_ns}\n")


def v2_tree(root: Path, usage: int = 64 * MiB, inactive: int = 4 * MiB, limit: str = "max",
            cpu_usec: int = 0) -> None:
    folder = root / "system.slice" / f"docker-{CID}.scope"
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "memory.current").write_text(f"{usage}\n")
    (folder / "memory.max").write_text(limit + "\n")
    (folder / "memory.stat").write_text(f"anon 1000\nfile 2000\ninactive_file {inactive}\n")
    (folder / "cpu.stat").write_text(
        f"usage_usec {cpu_usec}\nuser_usec {cpu_usec // 2}\nsystem_usec 0\n")


def sample(at: float, cpu_usec: int) -> CgroupSample:
    return CgroupSample(at=at, cpu_usec=cpu_usec, memory_bytes=0, memory_limit_bytes=None)


def test_cpu_percent_is_the_cpu_time_over_the_wall_time_between_two_samples():
    assert cpu_percent(None, sample(1.0, 5)) is None  # one sample says nothing yet
    assert cpu_percent(sample(10.0, 0), sample(12.0, 1_000_000)) == 50.0
    assert cpu_percent(sample(10.0, 0), sample(11.0, 2_000_000)) == 200.0  # two cores
    assert cpu_percent(sample(10.0, 0), sample(10.5, 0)) == 0.0
    assert cpu_percent(sample(10.0, 5), sample(10.0, 9)) is None  # no time passed
    assert cpu_percent(sample(10.0, 900), sample(11.0, 5)) is None  # counter restarted


def test_proc_cgroup_lines_are_read_per_controller():
    paths = parse_proc_cgroup(V1_PROC)
    assert paths["memory"] == paths["cpuacct"] == paths["cpu"] == f"/docker/{CID}"
    assert paths["cpu,cpuacct"] == f"/docker/{CID}"
    assert paths[""] == f"/docker/{CID}"
    assert parse_proc_cgroup(V2_PROC) == {"": f"/system.slice/docker-{CID}.scope"}


def test_limits_without_a_limit_read_as_none():
    assert parse_limit("max\n") is None
    assert parse_limit("9223372036854771712\n") is None  # cgroup v1's "unlimited"
    assert parse_limit("268435456\n") == 256 * MiB


def test_cgroup_v1_files_give_memory_less_page_cache_and_cpu_time(tmp_path):
    v1_tree(tmp_path, usage=80 * MiB, inactive=30 * MiB, cpu_ns=1_500_000_000)
    files = find_cgroup_files(V1_PROC, tmp_path)
    assert files is not None and not files.v2
    got = read_cgroup(files, now=7.0)
    assert got.memory_bytes == 50 * MiB  # usage less total_inactive_file, as docker stats
    assert got.memory_limit_bytes == 256 * MiB
    assert got.cpu_usec == 1_500_000 and got.at == 7.0


def test_cgroup_v2_files_are_found_in_the_unified_tree(tmp_path):
    v2_tree(tmp_path, usage=64 * MiB, inactive=4 * MiB, cpu_usec=42)
    files = find_cgroup_files(V2_PROC, tmp_path)
    assert files is not None and files.v2
    got = read_cgroup(files, now=1.0)
    assert got.memory_bytes == 60 * MiB and got.memory_limit_bytes is None
    assert got.cpu_usec == 42


def test_no_readable_cgroup_is_none(tmp_path):
    assert find_cgroup_files(V1_PROC, tmp_path) is None
    assert find_cgroup_files(V2_PROC, tmp_path) is None
    assert find_cgroup_files("", tmp_path) is None


def test_docker_one_shot_stats_are_understood():
    stats = {
        "cpu_stats": {"cpu_usage": {"total_usage": 3_000_000_000}, "online_cpus": 2,
                      "system_cpu_usage": 20_000_000_000},
        "precpu_stats": {"cpu_usage": {"total_usage": 2_000_000_000},
                         "system_cpu_usage": 16_000_000_000},
        "memory_stats": {"usage": 100 * MiB, "limit": 512 * MiB,
                         "stats": {"total_inactive_file": 20 * MiB}},
    }
    got = usage_from_docker_stats(stats)
    assert got == Usage(cpu_percent=50.0, memory_bytes=80 * MiB, memory_limit_bytes=512 * MiB)
    first = usage_from_docker_stats({**stats, "precpu_stats": {}})
    assert first.cpu_percent is None and first.memory_bytes == 80 * MiB


class FakeApi:
    def __init__(self, pid: int = 4242, size: int = 12 * MiB) -> None:
        self.pid, self.size = pid, size
        self.inspects: list[tuple[str, bool]] = []
        self.stats_calls = 0

    def inspect_container(self, container_id: str) -> dict:
        self.inspects.append((container_id, False))
        return {"Id": container_id, "State": {"Pid": self.pid}}

    def containers(self, all: bool = False, size: bool = False,
                   filters: dict | None = None) -> list[dict]:
        self.inspects.append((filters["id"], size))
        return [{"Id": filters["id"], "SizeRw": self.size if size else None}]

    def stats(self, container_id: str, stream: bool = True) -> dict:
        self.stats_calls += 1
        return {"memory_stats": {"usage": 7 * MiB, "limit": 64 * MiB, "stats": {}}}


class FakeDocker:
    def __init__(self, api: FakeApi) -> None:
        self.api = api


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_the_sampler_reads_cgroups_by_the_containers_pid(tmp_path):
    root, proc = tmp_path / "cgroup", tmp_path / "proc"
    (proc / "4242").mkdir(parents=True)
    (proc / "4242" / "cgroup").write_text(V1_PROC)
    v1_tree(root, cpu_ns=0)
    api, clock = FakeApi(), Clock()
    sampler = StatsSampler(FakeDocker(api), disk_interval=30.0, root=root, proc=proc,
                           clock=clock)
    sampler.track({"guid-1": CID})
    sampler.sample_once()
    first = sampler.get("guid-1")
    assert first == Usage(cpu_percent=None, memory_bytes=50 * MiB,
                          memory_limit_bytes=256 * MiB, disk_bytes=12 * MiB)
    clock.now += 2.0
    v1_tree(root, cpu_ns=500_000_000)  # half a second of CPU in two seconds
    api.size = 20 * MiB
    sampler.sample_once()
    second = sampler.get("guid-1")
    assert second.cpu_percent == 25.0
    assert second.disk_bytes == 12 * MiB  # disk is sampled rarely: not again yet
    clock.now += 30.0
    sampler.sample_once()
    assert sampler.get("guid-1").disk_bytes == 20 * MiB
    assert api.stats_calls == 0  # never the slow Docker stats when cgroups are readable
    # An instance no longer tracked is forgotten, caches and all.
    sampler.track({})
    sampler.sample_once()
    assert sampler.get("guid-1") is None and not sampler.files and not sampler.previous


def test_the_sampler_falls_back_to_docker_stats_without_cgroup_files(tmp_path):
    api = FakeApi()
    sampler = StatsSampler(FakeDocker(api), root=tmp_path / "none", proc=tmp_path / "none")
    sampler.track({"guid-1": CID})
    sampler.sample_once()
    assert sampler.get("guid-1") == Usage(cpu_percent=None, memory_bytes=7 * MiB,
                                          memory_limit_bytes=64 * MiB, disk_bytes=12 * MiB)
    assert api.stats_calls == 1


def test_a_container_without_a_process_is_not_sampled_through_docker(tmp_path):
    # Docker's stats of a container that has just exited can hang, and the agent's stop of
    # it behind them: an exited container is left alone until it runs again.
    api = FakeApi(pid=0)
    sampler = StatsSampler(FakeDocker(api), root=tmp_path / "none", proc=tmp_path / "none")
    sampler.track({"guid-1": CID})
    sampler.sample_once()
    assert sampler.get("guid-1") is None and api.stats_calls == 0
    assert CID not in sampler.files  # looked up again next round
    api.pid = 4242
    sampler.sample_once()
    assert sampler.get("guid-1") is not None and api.stats_calls == 1


def test_the_sampler_thread_publishes_and_stops(tmp_path):
    sampler = StatsSampler(FakeDocker(FakeApi()), interval=0.01, root=tmp_path,
                           proc=tmp_path)
    sampler.track({"g": CID})
    stop = threading.Event()
    sampler.start(stop)
    deadline = threading.Event()
    for _ in range(200):
        if sampler.get("g") is not None:
            break
        deadline.wait(0.01)
    stop.set()
    sampler.thread.join(timeout=2)
    assert sampler.get("g") is not None and not sampler.thread.is_alive()


def report(state: str = "RUNNING") -> InstanceReport:
    return InstanceReport(instance_guid="g", app_guid="a", app_name="web-app", release=1,
                          process_type="web", index=0, state=state, host_port=61000, since=0)


def test_heartbeats_carry_the_numbers_of_live_instances_only():
    usage = Usage(cpu_percent=3.5, memory_bytes=40 * MiB, memory_limit_bytes=256 * MiB,
                  disk_bytes=MiB)
    running = annotate(report(), usage)
    assert (running.cpu_percent, running.memory_bytes, running.memory_limit_bytes,
            running.disk_bytes) == (3.5, 40 * MiB, 256 * MiB, MiB)
    assert annotate(report("CRASHED"), usage).memory_bytes is None
    assert annotate(report(), None).memory_bytes is None
    beat = Heartbeat(agent_id="a1", address="127.0.0.1", sent_at=1.0, memory_mb=1024,
                     memory_used_mb=256, instances=[running])
    back = Heartbeat.from_json(beat.to_json())
    assert back.instances[0].memory_bytes == 40 * MiB and back.instances[0].cpu_percent == 3.5


def test_agent_capacity_is_prometheus_text():
    usage = Usage(cpu_percent=3.5, memory_bytes=40 * MiB)
    beat = Heartbeat(agent_id="a1", address="127.0.0.1", sent_at=1.0, memory_mb=1024,
                     memory_used_mb=256, instances=[annotate(report(), usage)],
                     slots=10, slots_used=1)
    registry = CollectorRegistry()
    registry.register(CapacityCollector(lambda: beat))
    text = generate_latest(registry).decode()
    samples = {(s.name, tuple(sorted(s.labels.items()))): s.value
               for family in text_string_to_metric_families(text) for s in family.samples}
    assert samples[("paas_agent_memory_bytes", ())] == 1024 * MiB
    assert samples[("paas_agent_memory_used_bytes", ())] == 256 * MiB
    assert samples[("paas_agent_slots_used", ())] == 1
    assert samples[("paas_agent_instances", (("state", "RUNNING"),))] == 1
    key = (("app", "web-app"), ("app_guid", beat.instances[0].app_guid), ("index", "0"),
           ("process_type", "web"))
    assert samples[("paas_instance_memory_bytes", key)] == 40 * MiB
    assert samples[("paas_instance_cpu_percent", key)] == 3.5
