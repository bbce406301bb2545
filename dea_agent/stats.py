"""Resource use of the agent's containers: CPU %, memory used/limit, disk.

The sampler reads each container's cgroup files directly (microseconds each) rather than
``docker stats``, which takes one to two seconds per container because it waits for two
samples. It finds a container's cgroup through ``/proc/<pid>/cgroup`` of the container's
init process, for cgroup v1 (``memory/``, ``cpuacct/`` hierarchies) and v2 (one unified
tree). Where neither is readable (an agent inside a container without the host's ``/proc``)
it falls back to Docker's one-shot stats. Disk is the container's writable layer (Docker's
``SizeRw``), which is slow to compute, so it is sampled rarely.

Sampling runs in its own thread every couple of seconds and publishes the last values; the
monitor loop only hands it the containers to watch and reads what it found. The parsing and
arithmetic below are pure functions, tested on fixture files.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from contracts.messages import Heartbeat, InstanceReport

log = logging.getLogger("paas.agent.stats")

CGROUP_ROOT = Path("/sys/fs/cgroup")
PROC_ROOT = Path("/proc")
# A v1 memory limit this high (or v2's "max") means "no limit".
UNLIMITED = 1 << 60


@dataclass(frozen=True)
class Usage:
    """One container's last published numbers (None: not known yet)."""

    cpu_percent: float | None = None  # 100 = one core busy
    memory_bytes: int | None = None
    memory_limit_bytes: int | None = None
    disk_bytes: int | None = None


@dataclass(frozen=True)
class CgroupSample:
    at: float  # time.monotonic() of the reading
    cpu_usec: int  # CPU time used since the container started
    memory_bytes: int
    memory_limit_bytes: int | None


@dataclass(frozen=True)
class CgroupFiles:
    """Where one container's counters are: cgroup v2 keeps both in one directory."""

    memory: Path
    cpu: Path
    v2: bool


# -- pure parts -------------------------------------------------------------------------
def cpu_percent(before: CgroupSample | None, after: CgroupSample) -> float | None:
    """CPU use between two samples, in percent of one core (two busy cores: 200)."""
    if before is None:
        return None
    wall = after.at - before.at
    used = after.cpu_usec - before.cpu_usec
    if wall <= 0 or used < 0:  # same instant, or the counter restarted
        return None
    return round(used / (wall * 1e6) * 100, 1)


def parse_proc_cgroup(text: str) -> dict[str, str]:
    """``/proc/<pid>/cgroup`` as controller -> path; the v2 unified entry is under ``""``.

    Lines read ``hierarchy-id:controller[,controller]:path``; each controller of a
    comma-joined hierarchy gets its own key.
    """
    found: dict[str, str] = {}
    for line in text.splitlines():
        parts = line.strip().split(":", 2)
        if len(parts) != 3:
            continue
        _, controllers, path = parts
        if not controllers:
            found[""] = path
            continue
        for name in controllers.split(","):
            found[name] = path
        found.setdefault(controllers, path)  # "cpu,cpuacct" as mounted by some distros
    return found


def parse_flat_keyed(text: str) -> dict[str, int]:
    """``memory.stat`` and ``cpu.stat``: one ``name value`` pair per line."""
    values: dict[str, int] = {}
    for line in text.splitlines():
        name, _, raw = line.partition(" ")
        try:
            values[name] = int(raw.strip())
        except ValueError:
            continue
    return values


def parse_limit(text: str) -> int | None:
    """A memory limit file (v1 ``memory.limit_in_bytes``, v2 ``memory.max``)."""
    text = text.strip()
    if text in ("", "max"):
        return None
    value = int(text)
    return None if value >= UNLIMITED else value


def memory_in_use(usage: int, stat: dict[str, int], v2: bool) -> int:
    """Memory the app really holds: the usage counter less reclaimable page cache (what
    ``docker stats`` shows)."""
    inactive = stat.get("inactive_file" if v2 else "total_inactive_file",
                        stat.get("inactive_file", 0))
    return usage - inactive if 0 <= inactive < usage else usage


def find_cgroup_files(proc_cgroup: str, root: Path = CGROUP_ROOT) -> CgroupFiles | None:
    """The directories with a container's memory and CPU counters, from the
    ``/proc/<pid>/cgroup`` of a process in it; None when they are not readable here."""
    paths = parse_proc_cgroup(proc_cgroup)
    memory_path = paths.get("memory")
    if memory_path is not None:  # cgroup v1 (or hybrid): one hierarchy per controller
        memory = root / "memory" / memory_path.lstrip("/")
        cpu = None
        for mount in ("cpuacct", "cpu,cpuacct", "cpuacct,cpu", "cpu"):
            path = paths.get("cpuacct") or paths.get(mount)
            if path is None:
                continue
            candidate = root / mount / path.lstrip("/")
            if (candidate / "cpuacct.usage").is_file():
                cpu = candidate
                break
        if cpu is not None and (memory / "memory.usage_in_bytes").is_file():
            return CgroupFiles(memory=memory, cpu=cpu, v2=False)
        return None
    unified = paths.get("")
    if unified is not None:
        folder = root / unified.lstrip("/")
        if (folder / "memory.current").is_file() and (folder / "cpu.stat").is_file():
            return CgroupFiles(memory=folder, cpu=folder, v2=True)
    return None


def guess_cgroup_files(container_id: str, root: Path = CGROUP_ROOT) -> CgroupFiles | None:
    """Docker's usual places when the container's process is not visible in ``/proc``."""
    v1_memory = root / "memory" / "docker" / container_id
    v1_cpu = root / "cpuacct" / "docker" / container_id
    if (v1_memory / "memory.usage_in_bytes").is_file() and \
            (v1_cpu / "cpuacct.usage").is_file():
        return CgroupFiles(memory=v1_memory, cpu=v1_cpu, v2=False)
    for folder in (root / "system.slice" / f"docker-{container_id}.scope",
                   root / "docker" / container_id):
        if (folder / "memory.current").is_file() and (folder / "cpu.stat").is_file():
            return CgroupFiles(memory=folder, cpu=folder, v2=True)
    return None


def read_cgroup(files: CgroupFiles, now: float) -> CgroupSample:
    """One reading of a container's counters (OSError once the container is gone)."""
    if files.v2:
        usage = int((files.memory / "memory.current").read_text())
        limit = parse_limit((files.memory / "memory.max").read_text())
        cpu_usec = parse_flat_keyed((files.cpu / "cpu.stat").read_text()).get("usage_usec", 0)
    else:
        usage = int((files.memory / "memory.usage_in_bytes").read_text())
        limit = parse_limit((files.memory / "memory.limit_in_bytes").read_text())
        cpu_usec = int((files.cpu / "cpuacct.usage").read_text()) // 1000  # ns
    stat = parse_flat_keyed((files.memory / "memory.stat").read_text())
    return CgroupSample(at=now, cpu_usec=cpu_usec, memory_bytes=memory_in_use(usage, stat,
                                                                              files.v2),
                        memory_limit_bytes=limit)


def usage_from_docker_stats(stats: dict[str, Any]) -> Usage:
    """Docker's one-shot ``stats`` answer (it carries the previous sample as ``precpu``)."""
    cpu, pre = stats.get("cpu_stats") or {}, stats.get("precpu_stats") or {}
    cpu_delta = (cpu.get("cpu_usage") or {}).get("total_usage", 0) - \
        (pre.get("cpu_usage") or {}).get("total_usage", 0)
    system_delta = cpu.get("system_cpu_usage", 0) - pre.get("system_cpu_usage", 0)
    cores = cpu.get("online_cpus") or len((cpu.get("cpu_usage") or {}).get(
        "percpu_usage") or []) or 1
    percent = round(cpu_delta / system_delta * cores * 100, 1) \
        if system_delta > 0 and cpu_delta >= 0 and pre else None
    memory = stats.get("memory_stats") or {}
    used = memory.get("usage")
    if used is not None:
        inner = memory.get("stats") or {}
        used = memory_in_use(used, inner, v2="total_inactive_file" not in inner)
    limit = memory.get("limit")
    return Usage(cpu_percent=percent, memory_bytes=used,
                 memory_limit_bytes=limit if limit and limit < UNLIMITED else None)


def annotate(report: InstanceReport, usage: Usage | None) -> InstanceReport:
    """The report with the instance's last numbers (a crashed one has none)."""
    if usage is None or report.state not in ("RUNNING", "STARTING"):
        return report
    return replace(report, cpu_percent=usage.cpu_percent, memory_bytes=usage.memory_bytes,
                   memory_limit_bytes=usage.memory_limit_bytes, disk_bytes=usage.disk_bytes)


# -- the sampler ------------------------------------------------------------------------
class _NotRunning(Exception):
    """The container has no process to sample."""


class StatsSampler:
    """Samples the containers it is told to watch, in its own thread, and keeps the last
    numbers per instance."""

    def __init__(self, docker_client: Any, interval: float = 2.0, disk_interval: float = 30.0,
                 root: Path = CGROUP_ROOT, proc: Path = PROC_ROOT,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.docker = docker_client
        self.interval = interval
        self.disk_interval = disk_interval
        self.root, self.proc, self.clock = root, proc, clock
        self.lock = threading.Lock()
        self.targets: dict[str, str] = {}  # instance guid -> container id
        self.usage: dict[str, Usage] = {}  # instance guid -> last numbers
        self.files: dict[str, CgroupFiles | None] = {}  # container id -> where (None: API)
        self.previous: dict[str, CgroupSample] = {}
        self.disk: dict[str, tuple[float, int | None]] = {}  # container id -> (at, bytes)
        self.thread: threading.Thread | None = None

    def track(self, targets: dict[str, str]) -> None:
        """The instances to watch now (guid -> container id); cheap, for the monitor loop."""
        with self.lock:
            self.targets = dict(targets)

    def get(self, instance_guid: str) -> Usage | None:
        with self.lock:
            return self.usage.get(instance_guid)

    def start(self, stop: threading.Event) -> None:
        if self.thread is None or not self.thread.is_alive():
            self.thread = threading.Thread(target=self.run, args=(stop,), name="stats",
                                           daemon=True)
            self.thread.start()

    def run(self, stop: threading.Event) -> None:
        while not stop.is_set():
            try:
                self.sample_once()
            except Exception:  # never let stats take the agent down
                log.exception("sampling container stats failed (retrying)")
            stop.wait(self.interval)

    def sample_once(self) -> None:
        with self.lock:
            targets = dict(self.targets)
        found: dict[str, Usage] = {}
        for guid, container_id in targets.items():
            usage = self._sample(container_id)
            if usage is not None:
                found[guid] = usage
        self._forget(set(targets.values()))
        with self.lock:
            self.usage = found

    def _forget(self, live: Iterable[str]) -> None:
        live = set(live)
        for cache in (self.files, self.previous, self.disk):
            for container_id in [c for c in cache if c not in live]:
                del cache[container_id]

    def _sample(self, container_id: str) -> Usage | None:
        now = self.clock()
        disk = self._disk(container_id, now)
        if container_id not in self.files:
            try:
                self.files[container_id] = self._locate(container_id)
            except _NotRunning:
                return None  # nothing to sample; the next round looks again
        files = self.files[container_id]
        if files is None:
            return self._from_api(container_id, disk)
        try:
            sample = read_cgroup(files, now)
        except (OSError, ValueError):  # gone, or restarted into another cgroup
            self.files.pop(container_id, None)
            self.previous.pop(container_id, None)
            return None
        cpu = cpu_percent(self.previous.get(container_id), sample)
        self.previous[container_id] = sample
        return Usage(cpu_percent=cpu, memory_bytes=sample.memory_bytes,
                     memory_limit_bytes=sample.memory_limit_bytes, disk_bytes=disk)

    def _inspect(self, container_id: str) -> dict[str, Any] | None:
        try:
            return self.docker.api.inspect_container(container_id)
        except Exception as e:  # gone, or Docker busy: try again next round
            log.debug("inspecting %s failed: %s", container_id[:12], e)
            return None

    def _size(self, container_id: str) -> int | None:
        """The writable layer's size (Docker walks the layer: slow, so rarely)."""
        try:
            found = self.docker.api.containers(all=True, size=True,
                                               filters={"id": container_id})
        except Exception as e:
            log.debug("sizing %s failed: %s", container_id[:12], e)
            return None
        if not found:
            return None
        # Docker leaves SizeRw out when it is 0 (nothing written yet).
        return int(found[0].get("SizeRw") or 0)

    def _locate(self, container_id: str) -> CgroupFiles | None:
        """The container's cgroup files, or None to sample it through Docker.

        Raises _NotRunning for a container without a process (exited, or not yet
        started): Docker's stats of a container that has just exited can block for as long
        as the client waits, and the daemon's other calls on it (the agent's stop and
        remove) with it.
        """
        attrs = self._inspect(container_id) or {}
        pid = (attrs.get("State") or {}).get("Pid") or 0
        if not pid:
            raise _NotRunning(container_id)
        try:
            files = find_cgroup_files((self.proc / str(pid) / "cgroup").read_text(), self.root)
        except OSError:  # another pid namespace, or it has just exited
            files = None
        if files is not None:
            return files
        files = guess_cgroup_files(container_id, self.root)
        if files is None:
            log.info("no readable cgroup for container %s: sampling it through Docker",
                     container_id[:12])
        return files

    def _disk(self, container_id: str, now: float) -> int | None:
        at, size = self.disk.get(container_id, (None, None))
        if at is not None and now - at < self.disk_interval:
            return size
        size = self._size(container_id)
        self.disk[container_id] = (now, size)
        return size

    def _from_api(self, container_id: str, disk: int | None) -> Usage | None:
        try:
            stats = self.docker.api.stats(container_id, stream=False)
        except Exception as e:
            log.debug("stats of %s failed: %s", container_id[:12], e)
            return None
        return replace(usage_from_docker_stats(stats), disk_bytes=disk)


# -- Prometheus -------------------------------------------------------------------------
class CapacityCollector:
    """Prometheus collector of an agent's capacity and its instances' use, read from the
    heartbeat it would send now (so a scrape always sees current numbers)."""

    def __init__(self, heartbeat: Callable[[], Heartbeat]) -> None:
        self.heartbeat = heartbeat

    def collect(self):
        from prometheus_client.core import GaugeMetricFamily

        beat = self.heartbeat()
        for name, doc, value in (
                ("paas_agent_memory_bytes", "Memory the agent offers", beat.memory_mb << 20),
                ("paas_agent_memory_used_bytes", "Memory reserved by its instances",
                 beat.memory_used_mb << 20),
                ("paas_agent_disk_bytes", "Disk the agent offers", beat.disk_mb << 20),
                ("paas_agent_disk_used_bytes", "Disk reserved by its instances",
                 beat.disk_used_mb << 20),
                ("paas_agent_slots", "Instances the agent may hold", beat.slots),
                ("paas_agent_slots_used", "Instances it holds", beat.slots_used)):
            yield GaugeMetricFamily(name, doc, value=value)
        states = GaugeMetricFamily("paas_agent_instances", "Instances by state",
                                   labels=["state"])
        counts: dict[str, int] = {}
        for inst in beat.instances:
            counts[inst.state] = counts.get(inst.state, 0) + 1
        for state, count in sorted(counts.items()):
            states.add_metric([state], count)
        yield states
        # App names are a team's (two teams may both have "api"): the guid tells them apart.
        labels = ["app", "app_guid", "process_type", "index"]
        memory = GaugeMetricFamily("paas_instance_memory_bytes", "Memory in use", labels=labels)
        cpu = GaugeMetricFamily("paas_instance_cpu_percent", "CPU use (100 = one core)",
                                labels=labels)
        for inst in beat.instances:
            key = [inst.app_name, inst.app_guid, inst.process_type, str(inst.index)]
            if inst.memory_bytes is not None:
                memory.add_metric(key, inst.memory_bytes)
            if inst.cpu_percent is not None:
                cpu.add_metric(key, inst.cpu_percent)
        yield memory
        yield cpu
