"""A whole platform on free ports with its own data dir, for tests and benchmarks.

Everything it makes is labelled with its own platform id, and :meth:`Sandbox.close`
removes every container, image and volume with that label.

Each agent gets its own block of host ports, above the kernel's ephemeral range, reserved
with a lock file so that sandboxes in other processes (parallel pytest runs) never get the
same block; the lock goes away with the process, however it ends.
"""

from __future__ import annotations

import errno
import fcntl
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

import docker
import docker.errors

from confinement.networks import remove_networks
from contracts.labels import LABEL_PLATFORM
from contracts.settings import Settings, as_env, load
from launcher.redis_server import (
    PASSWORD_FILE,
    RedisServer,
    RedisServerError,
    ensure_password,
    redis_url,
)
from launcher.up import Platform, agent_overrides

# Agents' host ports: blocks of PORT_BLOCK_SIZE from PORT_BLOCKS_FIRST up, all above Linux's
# default ephemeral range (32768-60999, where free_port() picks from) and above the 61000-61999
# of a developer's ``make up``.
PORT_BLOCK_SIZE = 40
PORT_BLOCKS_FIRST = 62000
PORT_BLOCKS_LAST = 65535


def paas_command() -> str:
    """The ``paas`` script installed beside this Python (the venv's), else the one on PATH."""
    beside = Path(sys.executable).parent / "paas"
    return str(beside) if beside.exists() else (shutil.which("paas") or "paas")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def free_ports(count: int) -> list[int]:
    """``count`` distinct free ports on 127.0.0.1 (all held until all are found)."""
    socks = []
    try:
        for _ in range(count):
            s = socket.socket()
            s.bind(("127.0.0.1", 0))
            socks.append(s)
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def port_blocks(first: int = PORT_BLOCKS_FIRST, last: int = PORT_BLOCKS_LAST,
                size: int = PORT_BLOCK_SIZE) -> list[tuple[int, int]]:
    """Every whole block of ``size`` ports in ``first..last``, as (min, max) pairs."""
    return [(lo, lo + size - 1) for lo in range(first, last - size + 2, size)]


@dataclass
class PortLease:
    """A block of host ports held by this process until :meth:`release` (or its exit)."""

    port_min: int
    port_max: int
    fd: int | None

    def release(self) -> None:
        if self.fd is not None:
            os.close(self.fd)  # closing drops the flock
            self.fd = None


def _ports_free(lo: int, hi: int, host: str = "127.0.0.1") -> bool:
    for port in range(lo, hi + 1):
        with socket.socket() as s:
            try:
                s.bind((host, port))
            except OSError:
                return False
    return True


def reserve_port_blocks(count: int, lock_dir: Path | None = None,
                        blocks: list[tuple[int, int]] | None = None) -> list[PortLease]:
    """Reserve ``count`` blocks of host ports nobody else holds, one per agent.

    A block is taken when this or another process holds the flock on its file in
    ``lock_dir`` (default ``$TMPDIR/paas-port-blocks``), or when one of its ports is bound
    already (say by a container some other platform left behind).
    """
    lock_dir = lock_dir or Path(tempfile.gettempdir()) / "paas-port-blocks"
    lock_dir.mkdir(parents=True, exist_ok=True)
    blocks = port_blocks() if blocks is None else blocks
    start = os.getpid() % len(blocks) if blocks else 0  # spread processes out a little
    leases: list[PortLease] = []
    for lo, hi in blocks[start:] + blocks[:start]:
        if len(leases) == count:
            break
        try:
            fd = os.open(lock_dir / f"{lo}-{hi}.lock", os.O_RDWR | os.O_CREAT, 0o666)
        except OSError:
            continue  # someone else's lock file we may not open: theirs
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as e:
            os.close(fd)
            if e.errno in (errno.EWOULDBLOCK, errno.EACCES):
                continue
            raise
        if not _ports_free(lo, hi):
            os.close(fd)
            continue
        leases.append(PortLease(lo, hi, fd))
    if len(leases) < count:
        for lease in leases:
            lease.release()
        raise RuntimeError(f"no {count} free blocks of host ports for agents in "
                           f"{blocks[0][0] if blocks else '?'}-{blocks[-1][1] if blocks else '?'}"
                           f" (locks in {lock_dir})")
    return leases


class Sandbox:
    """A platform of its own: data dir, ports, a private redis-server, a platform id.

    ``agents`` agent processes run, each with its own agent id and block of host ports
    (unless ``agent_port_min``/``agent_port_max`` are given: then they share that range).
    """

    def __init__(self, agents: int = 1, **overrides: object) -> None:
        self.root = Path(tempfile.mkdtemp(prefix="paas-sandbox-"))
        self.root.chmod(0o711)  # nginx's workers pass through to their temp folders
        self.platform_id = f"sandbox-{uuid.uuid4().hex[:8]}"
        self.redis_port = free_port()
        # Its redis-server wants a password, kept as make up keeps it (launcher.redis_server).
        data = self.root / "data"
        data.mkdir(mode=0o700)
        self.redis_password = ensure_password(data / PASSWORD_FILE)
        self.redis_server = RedisServer(self.redis_port, self.redis_password, self.root)
        own_ports = "agent_port_min" not in overrides and "agent_port_max" not in overrides
        self.port_leases = reserve_port_blocks(agents) if own_ports else []
        defaults: dict[str, object] = dict(
            data_dir=str(self.root / "data"),
            redis_url=redis_url(self.redis_port, self.redis_password),
            platform_id=self.platform_id,
            api_port=free_port(),
            router_port=free_port(),
            router_https_port=free_port(),
            agent_id=f"agent-{self.platform_id}",
            start_timeout=20.0,
            stop_grace_seconds=3.0,
            health_interval=0.5,
        )
        if self.port_leases:
            defaults.update(agent_port_min=self.port_leases[0].port_min,
                            agent_port_max=self.port_leases[0].port_max)
        defaults.update(overrides)
        self.settings: Settings = load(env={}, **defaults)
        self.home = self.root / "home"
        per_agent = agent_overrides(
            self.settings, agents,
            [(lease.port_min, lease.port_max) for lease in self.port_leases] or None)
        self.platform = Platform(self.settings, agents=agents, overrides=per_agent)
        self.token = ""

    @property
    def agent_ids(self) -> list[str]:
        """The agents' ids, in order: the first is ``settings.agent_id``."""
        return self.platform.agent_ids

    def agent_service(self, agent_id: str) -> str:
        """The service name (for ``platform.kill``, ``restart``, ...) of agent ``agent_id``."""
        return self.platform.agent_service(agent_id)

    def start(self) -> Sandbox:
        self._start_redis()
        self.token = self.platform.prepare()
        self.platform.start()
        self.platform.wait_ready()
        self.home.mkdir(parents=True, exist_ok=True)
        (self.home / "config").write_text(json.dumps(
            {"target": self.settings.api_url, "token": self.token}))
        return self

    @property
    def redis(self) -> subprocess.Popen | None:
        """The private redis-server's process (None when stopped)."""
        return self.redis_server.process

    def _start_redis(self) -> None:
        try:
            self.redis_server.start()
        except RedisServerError as e:
            raise RuntimeError(str(e)) from e

    def stop_redis(self, sig: int = signal.SIGKILL) -> None:
        """Stop the private redis-server (SIGKILL by default: a crash). Its data is lost."""
        self.redis_server.stop(sig)

    def start_redis(self) -> None:
        """Start an empty redis-server on the sandbox's Redis port; wait until it answers."""
        if self.redis_server.running():
            raise RuntimeError(f"redis-server is already running on port {self.redis_port}")
        self._start_redis()

    def restart_redis(self, sig: int = signal.SIGKILL, down_for: float = 0.0) -> None:
        """Lose Redis (``sig``, no persistence) and start an empty one on the same port.

        The platform's processes are left alone: they must reconnect and republish.
        """
        self.stop_redis(sig)
        if down_for:
            time.sleep(down_for)
        self.start_redis()

    def __enter__(self) -> Sandbox:
        try:
            return self.start()
        except BaseException:
            self.close()
            raise

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- using it --------------------------------------------------------------------------
    def cli_env(self) -> dict[str, str]:
        return {**os.environ, "PAAS_HOME": str(self.home)}

    def paas(self, *args: str, timeout: float = 600, cwd: str | None = None,
             ) -> subprocess.CompletedProcess[str]:
        """Run the real ``paas`` command against this platform."""
        return subprocess.run([paas_command(), *args], env=self.cli_env(),
                              capture_output=True, text=True, timeout=timeout, cwd=cwd)

    def create_token(self, name: str, team: str, role: str = "developer") -> str:
        """A new token of ``team`` (made if missing), as an operator makes one: ``paas-admin
        create-token`` run with this platform's settings."""
        admin = Path(paas_command()).with_name("paas-admin")
        made = subprocess.run(
            [str(admin), "create-token", name, "--team", team, "--role", role],
            env={**self.cli_env(), **as_env(self.settings)}, capture_output=True, text=True,
            timeout=120)
        if made.returncode != 0:
            raise RuntimeError(f"paas-admin create-token {name} failed: {made.stderr.strip()}")
        return made.stdout.strip()

    def router_get(self, host: str, path: str = "/", timeout: float = 5.0):
        import requests

        return requests.get(f"http://127.0.0.1:{self.settings.router_port}{path}",
                            headers={"Host": host}, timeout=timeout)

    def app_host(self, name: str) -> str:
        return f"{name}.{self.settings.domain}"

    def logs(self) -> str:
        out = []
        for path in sorted((Path(self.settings.data_dir) / "logs").glob("*.log")):
            out.append(f"==== {path.name}\n" + "\n".join(
                path.read_text(errors="replace").splitlines()[-60:]))
        return "\n".join(out)

    # -- cleaning up -----------------------------------------------------------------------
    def close(self) -> None:
        self.platform.stop()
        self.stop_redis(signal.SIGTERM)
        remove_labelled(self.platform_id)
        shutil.rmtree(self.root, ignore_errors=True)
        for lease in self.port_leases:
            lease.release()


def remove_labelled(platform_id: str) -> None:
    """Remove every container, image, volume and network labelled with ``platform_id``."""
    client = docker.from_env(timeout=120)
    label = {"label": f"{LABEL_PLATFORM}={platform_id}"}
    try:
        for container in client.containers.list(ignore_removed=True, all=True, filters=label):
            try:
                container.remove(force=True)
            except docker.errors.APIError:
                pass
        # Images stand on each other: remove what can go, then what that freed.
        for _ in range(4):
            images = client.images.list(filters=label)
            if not images:
                break
            for image in images:
                try:
                    client.images.remove(image.id, force=True)
                except docker.errors.APIError:
                    pass  # has children still, or is used by another platform's image
        for volume in client.volumes.list(filters=label):
            try:
                volume.remove(force=True)
            except docker.errors.APIError:
                pass
        remove_networks(client, platform_id)  # and their firewall chains
    finally:
        client.close()
