"""Layered settings: defaults in code, then ``PAAS_*`` environment variables, then overrides.

Nothing is read at import time; each process builds one :class:`Settings` at start-up with
:func:`load` and passes it down.
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any


def _default_data_dir() -> str:
    return str(Path.cwd() / ".paas-data")


@dataclass(frozen=True)
class Settings:
    # Where the controller keeps its SQLite file and blobstore, the router its nginx config.
    data_dir: str = field(default_factory=_default_data_dir)
    # SQLAlchemy URL; empty means a SQLite file under data_dir.
    database_url: str = ""
    redis_url: str = "redis://127.0.0.1:6379/0"
    # Labels every container, image and volume the platform makes, so one host can run
    # several platforms (a developer's and the tests') side by side.
    platform_id: str = "default"

    # Controller API.
    api_host: str = "127.0.0.1"
    api_port: int = 8700
    api_workers: int = 2
    max_upload_bytes: int = 1024 * 1024 * 1024

    # Routing.
    domain: str = "localhost"
    router_host: str = "127.0.0.1"
    router_port: int = 8080
    nginx_binary: str = "nginx"

    # Stacks: images built locally by ``launcher.stack``; empty means "the current recipe's".
    stack_run_image: str = ""
    stack_build_image: str = ""
    staging_ca_bundle: str = "/etc/ssl/certs/ca-certificates.crt"
    staging_timeout: float = 900.0
    staging_memory_mb: int = 2048
    staging_output_bytes: int = 4 * 1024 * 1024  # build output shown; the rest is counted
    # Built-in buildpacks may skip the staging container when nothing needs installing.
    staging_fast_path: bool = True

    # Agent.
    agent_id: str = "agent-0"
    agent_address: str = "127.0.0.1"
    agent_port_min: int = 61000
    agent_port_max: int = 61999
    agent_memory_mb: int = 8192
    heartbeat_interval: float = 2.0
    heartbeat_ttl: float = 6.0
    stop_grace_seconds: float = 10.0

    # Instances.
    default_memory_mb: int = 256
    default_disk_mb: int = 1024
    default_instances: int = 1
    start_timeout: float = 60.0

    # Health manager.
    health_interval: float = 1.0

    @property
    def sqlalchemy_url(self) -> str:
        if self.database_url:
            return self.database_url
        return f"sqlite:///{Path(self.data_dir) / 'paas.db'}"

    @property
    def blobstore_dir(self) -> Path:
        return Path(self.data_dir) / "blobs"

    @property
    def router_dir(self) -> Path:
        return Path(self.data_dir) / "router"

    @property
    def api_url(self) -> str:
        return f"http://{self.api_host}:{self.api_port}"

    def replace(self, **changes: Any) -> Settings:
        return dataclasses.replace(self, **changes)


def _coerce(kind: Any, raw: str) -> Any:
    if kind in (int, "int"):
        return int(raw)
    if kind in (float, "float"):
        return float(raw)
    if kind in (bool, "bool"):
        return raw.strip().lower() in ("1", "true", "yes", "on")
    return raw


def load(env: dict[str, str] | None = None, **overrides: Any) -> Settings:
    """Defaults, then ``PAAS_<NAME>`` variables from ``env`` (``os.environ``), then overrides."""
    env = os.environ if env is None else env
    values: dict[str, Any] = {}
    for f in fields(Settings):
        raw = env.get(f"PAAS_{f.name.upper()}")
        if raw is not None and raw != "":
            try:
                values[f.name] = _coerce(f.type, raw)
            except ValueError as e:
                raise ValueError(
                    f"PAAS_{f.name.upper()}={raw!r} is not a valid {f.type}"
                ) from e
    values.update(overrides)
    return Settings(**values)


def as_env(settings: Settings) -> dict[str, str]:
    """The ``PAAS_*`` variables that reproduce ``settings`` in a child process."""
    return {
        f"PAAS_{f.name.upper()}": str(getattr(settings, f.name))
        for f in fields(Settings)
    }
