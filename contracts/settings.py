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
    # The API under abuse (controller.serve, controller.ratelimit). Each worker serves up to
    # api_worker_connections connections at once (gevent: an idle one costs no thread).
    api_worker_connections: int = 1000
    # Seconds a client has to send a request's line and headers (and, between requests, to
    # start the next one); a slower client is dropped.
    api_header_timeout: int = 5
    # Seconds a read of a request body, or a write of a response, may wait for the client.
    api_io_timeout: float = 30.0
    # Requests per second per token (per address without a token), with bursts of
    # api_rate_burst, counted in each worker; past it a 429 with Retry-After. 0: no limit.
    api_rate_per_second: float = 100.0
    api_rate_burst: int = 500
    # Log follows (paas logs) one token may hold open at once; the next gets a 429.
    api_follows_per_token: int = 10
    # Users (controller.accounts): a token from 'paas login' lives this many seconds (30
    # days); failed logins are limited per user name and per client address, each to this
    # many in login_window_seconds (across workers, in Redis); the next gets a 429.
    login_token_ttl: float = 30 * 86400.0
    login_failures_per_user: int = 5
    login_failures_per_address: int = 20
    login_window_seconds: int = 60
    # Garbage collection (paas-admin gc): each app's last N releases keep their droplets and
    # images (the window 'paas rollback' works in); older ones are removed.
    gc_keep_releases: int = 5
    # Nothing younger is removed: longer than any build (staging_timeout), whose blobs and
    # image exist before its droplet's row does.
    gc_min_age_seconds: float = 1200.0
    # The active health manager collects every this many seconds (the first time one interval
    # after it starts); 0: only when an operator runs paas-admin gc.
    gc_interval_seconds: float = 3600.0

    # Routing.
    domain: str = "localhost"
    router_host: str = "127.0.0.1"
    router_port: int = 8080
    nginx_binary: str = "nginx"
    # Largest request body the router passes to an app; larger ones get a 413 page.
    router_max_body_mb: int = 100
    # HTTPS listener for routes whose domain has a certificate; 0 turns it off.
    router_https_port: int = 8443
    # Session cookies that pin a client to an instance (comma-separated), as gorouter does
    # for JSESSIONID: the router adds its own instance cookie beside one of these.
    router_sticky_cookies: str = "JSESSIONID"
    # Least seconds between two nginx reloads: changes arriving faster are batched.
    router_reload_interval: float = 0.25

    # Stacks: images built locally by ``launcher.stack``; empty means "the current recipe's".
    stack_run_image: str = ""
    stack_build_image: str = ""
    staging_ca_bundle: str = "/etc/ssl/certs/ca-certificates.crt"
    staging_timeout: float = 900.0
    staging_memory_mb: int = 2048
    staging_output_bytes: int = 4 * 1024 * 1024  # build output shown; the rest is counted
    # Built-in buildpacks may skip the staging container when nothing needs installing.
    staging_fast_path: bool = True
    # Hostile uploads (uploads/, buildpacks/stager/staging.py). The interpreter that runs built-in
    # buildpacks' fast path on the stager host, isolated (-I, empty HOME); empty: the
    # stager's own. The largest app part or layer a staging container may hand back.
    staging_fast_path_python: str = ""
    staging_max_droplet_bytes: int = 8 * 1024**3

    # Agent.
    agent_id: str = "agent-0"
    agent_address: str = "127.0.0.1"
    agent_port_min: int = 61000
    agent_port_max: int = 61999
    agent_memory_mb: int = 8192
    agent_disk_mb: int = 100 * 1024
    agent_slots: int = 250
    heartbeat_interval: float = 2.0
    heartbeat_ttl: float = 6.0
    stop_grace_seconds: float = 10.0

    # Container networks and limits (confinement/). Each team's instances and tasks run on
    # a Docker network of their own, staging on another, inter-container traffic off; the
    # firewall keeps them off the host's own ports and the denied networks (private ranges and
    # the metadata address), except DNS and what an operator allows ("10.1.2.3:5432,
    # 10.9.0.0/16"). Staging reaches only the TCP ports in staging_ports (package indexes).
    # Turning isolation off (hosts without iptables) leaves containers on Docker's bridge.
    network_isolation: bool = True
    network_pool: str = "10.213.0.0/16"
    network_deny: str = "10.0.0.0/8,172.16.0.0/12,192.168.0.0/16,169.254.0.0/16,100.64.0.0/10"
    network_allow: str = ""
    staging_allow: str = ""
    staging_ports: str = "80,443"
    # CPU weight of an app container per MB of its memory limit (a 1 GB instance weighs as
    # much as a process outside Docker), and the longest a one-off task may run.
    cpu_shares_per_gb: int = 1024
    task_timeout: float = 3600.0
    # The OCI runtime of app containers: "runc", or "runsc" (gVisor, for untrusted code;
    # scripts/setup.sh registers it with dockerd). Per team and per app: "team=runsc,...",
    # "app=runsc,..." (a team's runtime wins over its apps').
    container_runtime: str = "runc"
    container_runtime_teams: str = ""
    container_runtime_apps: str = ""

    # Instances.
    default_memory_mb: int = 256
    default_disk_mb: int = 1024
    default_instances: int = 1
    start_timeout: float = 60.0
    health_check_interval: float = 2.0
    health_probe_timeout: float = 1.0
    # Failed health checks in a row after which a running instance is restarted (the first
    # failure already takes it out of the router).
    liveness_failures: int = 3

    # Health manager.
    health_interval: float = 1.0
    # Crash policy (an app may override it): restarts at once, then a doubling back-off.
    crash_immediate_restarts: int = 3
    crash_backoff_base: float = 30.0
    crash_backoff_max: float = 960.0
    crash_reset_after: float = 300.0
    # Rolling deploys: new instances started at once before old ones stop (per app setting).
    max_in_flight: int = 1

    # Prometheus text endpoints (GET /metrics), one port per service; 0 turns one off. The
    # controller's is always on, at /metrics on the API port. Several agents on one host
    # need ports of their own.
    metrics_host: str = "127.0.0.1"
    metrics_port_health: int = 0
    metrics_port_stager: int = 0
    metrics_port_agent: int = 0
    metrics_port_router: int = 0
    # Container stats: how often the agent samples CPU and memory, and disk (slower).
    stats_interval: float = 2.0
    stats_disk_interval: float = 30.0

    # App event streams (controller.appstream): events kept per app for followers that
    # resume (a push produces a few dozen).
    app_stream_length: int = 1000

    # App log streams (logpipe).
    # Lines kept per app (all sources together); older ones are trimmed.
    log_lines_per_app: int = 10_000
    # A longer line is cut, with a marker saying how long it was.
    log_line_max_bytes: int = 4096
    # Lines per second per app a writer lets through (bursts of one second's worth); the
    # excess is dropped and counted in an "N lines dropped" line.
    log_rate_per_app: float = 1000.0
    # Instances write stdout and stderr to files the agent reads (dea_agent.logs), not
    # through Docker's logging, which costs more than the rest of the log path together.
    # The folder must be the same path on the Docker host as in the agent ("" is
    # <data_dir>/instance-logs). False: Docker's json-file logs, as before.
    instance_log_files: bool = True
    instance_logs_dir: str = ""

    # Secrets (contracts.secretbox). The platform key seals env values and TLS keys in the
    # database and in Redis: a file made on first use ("" is <data_dir>/secret.key, 0600), or
    # the key itself (PAAS_SECRET_KEY, for containers). Every process needs the same one.
    secret_key_file: str = ""
    secret_key: str = field(default="", repr=False)
    # Bearer token a Prometheus scraper sends for the controller's /metrics; an admin token
    # works too. Empty: admin tokens only.
    metrics_token: str = field(default="", repr=False)

    @property
    def sqlalchemy_url(self) -> str:
        if self.database_url:
            return self.database_url
        return f"sqlite:///{Path(self.data_dir) / 'paas.db'}"

    @property
    def blobstore_dir(self) -> Path:
        return Path(self.data_dir) / "blobs"

    @property
    def instance_logs_path(self) -> Path:
        return Path(self.instance_logs_dir or Path(self.data_dir) / "instance-logs").absolute()

    @property
    def router_dir(self) -> Path:
        return Path(self.data_dir) / "router"

    @property
    def api_url(self) -> str:
        return f"http://{self.api_host}:{self.api_port}"

    def runtime_for(self, team: str, app: str) -> str:
        """The OCI runtime of ``app``'s containers (``""`` for Docker's default, runc)."""
        for pairs, key in ((self.container_runtime_teams, team),
                           (self.container_runtime_apps, app)):
            for pair in pairs.split(","):
                name, _, runtime = pair.strip().partition("=")
                if name == key and runtime.strip():
                    return "" if runtime.strip() == "runc" else runtime.strip()
        return "" if self.container_runtime == "runc" else self.container_runtime

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
