"""A whole platform on free ports with its own data dir, for tests and benchmarks.

Everything it makes is labelled with its own platform id, and :meth:`Sandbox.close`
removes every container, image and volume with that label.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import docker
import docker.errors
import redis

from contracts.messages import LABEL_PLATFORM
from contracts.settings import Settings, load
from launcher.up import Platform


def paas_command() -> str:
    """The ``paas`` script installed beside this Python (the venv's), else the one on PATH."""
    beside = Path(sys.executable).parent / "paas"
    return str(beside) if beside.exists() else (shutil.which("paas") or "paas")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Sandbox:
    """A platform of its own: data dir, ports, a private redis-server, a platform id."""

    def __init__(self, **overrides: object) -> None:
        self.root = Path(tempfile.mkdtemp(prefix="paas-sandbox-"))
        self.platform_id = f"sandbox-{uuid.uuid4().hex[:8]}"
        self.redis_port = free_port()
        self.redis: subprocess.Popen | None = None
        base = 62000 + (os.getpid() % 50) * 40
        defaults: dict[str, object] = dict(
            data_dir=str(self.root / "data"),
            redis_url=f"redis://127.0.0.1:{self.redis_port}/0",
            platform_id=self.platform_id,
            api_port=free_port(),
            router_port=free_port(),
            agent_id=f"agent-{self.platform_id}",
            agent_port_min=base,
            agent_port_max=base + 39,
            start_timeout=20.0,
            stop_grace_seconds=3.0,
            health_interval=0.5,
        )
        defaults.update(overrides)
        self.settings: Settings = load(env={}, **defaults)
        self.home = self.root / "home"
        self.platform = Platform(self.settings)
        self.token = ""

    def start(self) -> Sandbox:
        self._start_redis()
        self.token = self.platform.prepare()
        self.platform.start()
        self.platform.wait_ready()
        self.home.mkdir(parents=True, exist_ok=True)
        (self.home / "config").write_text(json.dumps(
            {"target": self.settings.api_url, "token": self.token}))
        return self

    def _start_redis(self) -> None:
        self.redis = subprocess.Popen(
            ["redis-server", "--bind", "127.0.0.1", "--port", str(self.redis_port),
             "--save", "", "--appendonly", "no", "--dir", str(self.root)],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        client = redis.Redis(port=self.redis_port)
        deadline = time.monotonic() + 10
        while True:
            try:
                client.ping()
                break
            except redis.ConnectionError as e:
                if time.monotonic() > deadline or self.redis.poll() is not None:
                    raise RuntimeError(
                        f"redis-server did not start on port {self.redis_port}") from e
                time.sleep(0.05)
            finally:
                client.close()

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

    def router_get(self, host: str, path: str = "/", timeout: float = 5.0):  # noqa: ANN201
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
        if self.redis is not None:
            self.redis.terminate()
            self.redis.wait(10)
        remove_labelled(self.platform_id)
        shutil.rmtree(self.root, ignore_errors=True)


def remove_labelled(platform_id: str) -> None:
    """Remove every container, image and volume labelled with ``platform_id``."""
    client = docker.from_env(timeout=120)
    label = {"label": f"{LABEL_PLATFORM}={platform_id}"}
    try:
        for container in client.containers.list(all=True, filters=label):
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
    finally:
        client.close()
