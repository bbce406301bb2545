"""``paas-up`` (what ``make up`` runs): the whole platform on one host, in the foreground.

Starts the controller, health manager, stager, one agent (or ``--agents N``) and the router as
child processes, waits until they answer, logs the local ``paas`` in, and prints how to push a
first app. Ctrl-C stops the platform's processes; app containers keep running, and the next
start's agent re-adopts them.

Agent services are named ``agent``, ``agent-1``, ``agent-2``, ...; each has its own agent id
(``<agent_id>``, ``<agent_id>-1``, ...), its own share of the host-port range and its own log
file ``logs/<service>.log``.
"""

from __future__ import annotations

import ctypes
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any
from urllib.parse import urlsplit

import click
import requests

from contracts import settings as settings_mod
from contracts.settings import Settings, as_env
from launcher.redis_server import (
    PASSWORD_FILE,
    RedisServer,
    RedisServerError,
    ensure_password,
    has_password,
    redis_url,
)

PR_SET_PDEATHSIG = 1
AGENT = "agent"
SERVICES: dict[str, str] = {
    "controller": "controller.serve",
    "health": "controller.health",
    "stager": "buildpacks.stager",
    AGENT: "dea_agent.main",
    "router": "router.main",
}


class LaunchError(Exception):
    pass


def agent_service(index: int) -> str:
    """Service name of the ``index``-th agent: ``agent``, ``agent-1``, ``agent-2``, ..."""
    return AGENT if index == 0 else f"{AGENT}-{index}"


def agent_index(name: str) -> int | None:
    """Inverse of :func:`agent_service`; None for a service that is not an agent."""
    if name == AGENT:
        return 0
    prefix, _, number = name.partition("-")
    if prefix == AGENT and number.isdigit() and int(number) > 0 and number[0] != "0":
        return int(number)
    return None


def service_module(name: str) -> str:
    """The module ``python -m`` runs for service ``name``."""
    if agent_index(name) is not None:
        return SERVICES[AGENT]
    try:
        return SERVICES[name]
    except KeyError:
        raise LaunchError(f"no service called {name!r}") from None


def split_port_range(port_min: int, port_max: int, count: int) -> list[tuple[int, int]]:
    """``count`` equal, disjoint slices of ``port_min..port_max`` (both ends included)."""
    if count < 1:
        raise LaunchError(f"the platform needs at least one agent, not {count}")
    size = (port_max - port_min + 1) // count
    if size < 1:
        raise LaunchError(f"ports {port_min}-{port_max} cannot be shared by {count} agents")
    return [(port_min + i * size, port_min + (i + 1) * size - 1) for i in range(count)]


def agent_overrides(settings: Settings, count: int,
                    port_blocks: list[tuple[int, int]] | None = None,
                    ) -> dict[str, dict[str, Any]]:
    """Per-agent settings changes: an agent id each and disjoint host-port ranges.

    The first agent keeps ``settings.agent_id``; the others get ``<agent_id>-1``, ... The port
    ranges are ``port_blocks`` if given (one per agent), else equal shares of the settings' range.
    """
    blocks = port_blocks if port_blocks is not None else split_port_range(
        settings.agent_port_min, settings.agent_port_max, count)
    if len(blocks) != count:
        raise LaunchError(f"{count} agents need {count} port ranges, not {len(blocks)}")
    return {
        agent_service(i): {
            "agent_id": settings.agent_id if i == 0 else f"{settings.agent_id}-{i}",
            "agent_port_min": lo,
            "agent_port_max": hi,
        }
        for i, (lo, hi) in enumerate(blocks)
    }


@dataclass
class Service:
    name: str
    module: str
    settings: Settings | None = None
    process: subprocess.Popen | None = None
    restarts: int = 0
    pump: threading.Thread | None = None
    # Stopped on purpose (kill, stop_service): supervise() leaves it down, wait_ready ignores it.
    held: bool = False


@dataclass
class Platform:
    """The platform's processes, started and stopped together (or one at a time).

    ``overrides`` maps a service name to settings changes for that service only; they apply
    on top of the per-agent defaults of :func:`agent_overrides`.
    """

    settings: Settings
    echo: bool = False
    agents: int = 1
    overrides: dict[str, dict[str, Any]] = field(default_factory=dict)
    services: dict[str, Service] = field(default_factory=dict)
    stopping: bool = False

    def __post_init__(self) -> None:
        given = [self.overrides.get(agent_service(i), {}) for i in range(self.agents)]
        blocks = None
        if all("agent_port_min" in o and "agent_port_max" in o for o in given):
            blocks = [(o["agent_port_min"], o["agent_port_max"]) for o in given]
        merged = agent_overrides(self.settings, self.agents, blocks)
        for name, changes in self.overrides.items():
            merged[name] = {**merged.get(name, {}), **changes}
        self.overrides = merged
        self.admin_password: str | None = None  # set by prepare() when the admin is new

    @property
    def service_names(self) -> tuple[str, ...]:
        agents = tuple(agent_service(i) for i in range(self.agents))
        return ("controller", "health", "stager", *agents, "router")

    @property
    def agent_ids(self) -> list[str]:
        return [self.settings_for(agent_service(i)).agent_id for i in range(self.agents)]

    def agent_service(self, agent_id: str) -> str:
        """The service name of the agent with ``agent_id``."""
        for i in range(self.agents):
            if self.settings_for(agent_service(i)).agent_id == agent_id:
                return agent_service(i)
        raise LaunchError(f"no agent {agent_id!r} in this platform (agents: {self.agent_ids})")

    def settings_for(self, name: str) -> Settings:
        """The settings service ``name`` runs with."""
        return self.settings.replace(**self.overrides.get(name, {}))

    @property
    def log_dir(self) -> Path:
        return Path(self.settings.data_dir) / "logs"

    def prepare(self) -> str:
        """Migrate the database and return the admin's token (created the first time, with
        the admin's password, kept in ``admin_password`` to be shown once)."""
        from controller.admin import ensure_admin, migrate

        Path(self.settings.data_dir).mkdir(parents=True, exist_ok=True, mode=0o700)
        self.log_dir.mkdir(exist_ok=True, mode=0o700)
        self.log_dir.chmod(0o700)
        migrate(self.settings)  # also makes the secret key and sets the data dir's modes
        token, self.admin_password = ensure_admin(self.settings)
        return token

    def start(self, names: tuple[str, ...] | None = None) -> None:
        """Spawn ``names`` (default: every service of this platform)."""
        for name in self.service_names if names is None else names:
            self.services[name] = service = Service(
                name, service_module(name), settings=self.settings_for(name))
            self._spawn(service)

    def start_service(self, name: str) -> None:
        """Spawn one service again (after :meth:`kill` or :meth:`stop_service`)."""
        service = self.services.get(name)
        if service is None:
            if name not in self.service_names:
                raise LaunchError(f"no service called {name!r} in this platform "
                                  f"(services: {', '.join(self.service_names)})")
            self.services[name] = service = Service(
                name, service_module(name), settings=self.settings_for(name))
        elif service.process is not None and service.process.poll() is None:
            raise LaunchError(f"{name} is already running (pid {service.process.pid})")
        if service.pump is not None:
            service.pump.join(timeout=2)
        service.held = False
        self._spawn(service)

    def kill(self, name: str, sig: int = signal.SIGKILL, timeout: float = 10.0) -> int | None:
        """Send ``sig`` to one service's process group and wait for it to exit.

        The service stays down (``supervise()`` does not restart it) until
        :meth:`start_service`. Returns the exit status (negative: the signal), or None if it
        was not running.
        """
        service = self._service(name)
        service.held = True
        proc = service.process
        if proc is None or proc.poll() is not None:
            return None if proc is None else proc.returncode
        family = _family(proc.pid)
        _signal_group(proc.pid, sig)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired as e:
            raise LaunchError(f"{name} (pid {proc.pid}) did not exit within {timeout:.0f} s "
                              f"of {signal.Signals(sig).name}") from e
        _wait_gone(family)
        return proc.returncode

    def stop_service(self, name: str, timeout: float = 15.0) -> None:
        """Stop one service gracefully: SIGTERM, then SIGKILL after ``timeout`` seconds."""
        service = self._service(name)
        service.held = True
        self._terminate([service], timeout)

    def restart(self, name: str, timeout: float = 15.0) -> None:
        """Stop one service gracefully (see :meth:`stop_service`), then spawn it again."""
        self.stop_service(name, timeout)
        self.start_service(name)

    def _service(self, name: str) -> Service:
        try:
            return self.services[name]
        except KeyError:
            raise LaunchError(f"{name} was never started (started: "
                              f"{', '.join(self.services) or 'nothing'})") from None

    def _command(self, service: Service) -> list[str]:
        return [sys.executable, "-m", service.module]

    def _spawn(self, service: Service) -> None:
        settings = service.settings or self.settings_for(service.name)
        env = {**os.environ, **as_env(settings), "PYTHONUNBUFFERED": "1"}
        log = os.fdopen(os.open(self.log_dir / f"{service.name}.log",
                                os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600), "ab")
        service.process = subprocess.Popen(
            self._command(service), env=env, stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True,
            preexec_fn=_child_setup)
        service.pump = threading.Thread(target=self._pump, daemon=True,
                                        args=(service.name, service.process.stdout, log))
        service.pump.start()

    def _pump(self, name: str, stream: IO[bytes], log: IO[bytes]) -> None:
        with log, stream:
            for line in stream:
                log.write(line)
                log.flush()
                if self.echo:
                    sys.stdout.write(f"{name:>10} | {line.decode('utf-8', 'replace')}")
                    sys.stdout.flush()

    def wait_ready(self, timeout: float = 60.0, stop: threading.Event | None = None) -> None:
        deadline = time.monotonic() + timeout
        api = f"{self.settings.api_url}/v1/info"
        while not (stop and stop.is_set()):
            self._check_alive()
            ok_api = _answers(api)
            ok_router = _port_open(self.settings.router_host, self.settings.router_port)
            if ok_api and ok_router:
                return
            if time.monotonic() > deadline:
                waiting = [n for n, ok in (("controller", ok_api), ("router", ok_router))
                           if not ok]
                raise LaunchError(f"{', '.join(waiting)} did not answer within {timeout:.0f} s:"
                                  f" see the logs in {self.log_dir}")
            time.sleep(0.1)

    def _check_alive(self) -> None:
        for service in self.services.values():
            if not service.held and service.process and service.process.poll() is not None:
                tail = _tail(self.log_dir / f"{service.name}.log")
                raise LaunchError(f"{service.name} exited with code "
                                  f"{service.process.returncode} while starting:\n{tail}")

    def supervise(self) -> None:
        """Restart a service that dies (after a pause that grows), until stop() is called."""
        while not self.stopping:
            for service in list(self.services.values()):
                proc = service.process
                if (proc is not None and proc.poll() is not None and not service.held
                        and not self.stopping):
                    service.restarts += 1
                    delay = min(30, 2 ** min(service.restarts, 5))
                    print(f"paas-up: {service.name} exited with code {proc.returncode}; "
                          f"restarting in {delay} s (log: {self.log_dir}/{service.name}.log)",
                          flush=True)
                    time.sleep(delay)
                    # Not if it was stopped, or started again by someone else, meanwhile.
                    if not (self.stopping or service.held or service.process is not proc):
                        self._spawn(service)
            time.sleep(0.5)

    def stop(self, timeout: float = 15.0) -> None:
        """Stop every service: SIGTERM all, SIGKILL what is left after ``timeout`` seconds."""
        self.stopping = True
        self._terminate(list(self.services.values()), timeout)

    def _terminate(self, services: list[Service], timeout: float) -> None:
        procs = [s.process for s in services if s.process]
        family: set[int] = set()
        for proc in procs:
            if proc.poll() is None:
                family |= _family(proc.pid)
                _signal_group(proc.pid, signal.SIGTERM)
        deadline = time.monotonic() + timeout
        for proc in procs:
            try:
                proc.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                _signal_group(proc.pid, signal.SIGKILL)
                proc.wait()
        for proc in procs:
            # The leader may exit before the rest of its group (gunicorn workers).
            _signal_group(proc.pid, signal.SIGKILL)
        _wait_gone(family)
        for service in services:
            if service.pump:
                service.pump.join(timeout=2)


def _signal_group(pgid: int, sig: int) -> None:
    try:
        os.killpg(pgid, sig)
    except ProcessLookupError:
        pass


def _processes() -> dict[int, tuple[str, int, int]]:
    """pid -> (state, ppid, pgrp) of every process, from /proc (Linux); {} without /proc."""
    table: dict[int, tuple[str, int, int]] = {}
    try:
        pids = [int(e.name) for e in os.scandir("/proc") if e.name.isdigit()]
    except OSError:
        return table
    for pid in pids:
        try:
            stat = Path(f"/proc/{pid}/stat").read_text()
        except OSError:
            continue
        after = stat[stat.rindex(")") + 2:].split()  # state, ppid, pgrp, ...
        if len(after) > 2:
            table[pid] = (after[0], int(after[1]), int(after[2]))
    return table


def _family(leader: int) -> set[int]:
    """The leader's process group and all its descendants (nginx runs in its own session)."""
    table = _processes()
    family = {pid for pid, (_, _, pgrp) in table.items() if pgrp == leader} | {leader}
    grew = True
    while grew:
        children = {pid for pid, (_, ppid, _) in table.items() if ppid in family}
        grew = not children <= family
        family |= children
    return family


def _wait_gone(pids: set[int], timeout: float = 5.0) -> None:
    """Wait (a little) until none of ``pids`` is alive, so the ports they held are free."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        table = _processes()
        if not any(pid in table and table[pid][0] != "Z" for pid in pids):
            return  # zombies hold no ports
        time.sleep(0.02)


def _child_setup() -> None:
    """In the child: files it makes are its user's alone (umask 077: the database, blobs,
    keys; what others must read is given its mode explicitly), and it gets SIGTERM when the
    launcher dies, however it dies (Linux)."""
    os.umask(0o077)
    try:
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
    except OSError:
        pass


def _answers(url: str) -> bool:
    try:
        return requests.get(url, timeout=1).status_code == 200
    except requests.RequestException:
        return False


def _port_open(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=0.5):
            return True
    except OSError:
        return False


def _tail(path: Path, lines: int = 15) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


def own_redis(settings: Settings) -> tuple[Settings, RedisServer | None]:
    """The platform's own redis-server behind a password (made once into
    ``<data_dir>/redis.password``, 0600) on the address of ``settings.redis_url``, and the
    settings whose URL carries the password; a URL with a password already names a Redis of
    the operator's, used as it is."""
    if has_password(settings.redis_url):
        return settings, None
    parts = urlsplit(settings.redis_url)
    data = Path(settings.data_dir)
    password = ensure_password(data / PASSWORD_FILE)
    (data / "logs").mkdir(parents=True, exist_ok=True, mode=0o700)
    server = RedisServer(parts.port or 6379, password, data, host=parts.hostname or "127.0.0.1",
                         log=data / "logs" / "redis.log")
    return settings.replace(redis_url=redis_url(server.port, password, server.host,
                                                int(parts.path.strip("/") or 0))), server


def _check_ports(settings: Settings, redis_server: RedisServer | None = None) -> None:
    if redis_server is not None and _port_open(redis_server.host, redis_server.port):
        raise LaunchError(
            f"port {redis_server.port} on {redis_server.host}, wanted for the platform's Redis, "
            "is already in use (by a redis-server without a password that an earlier set-up "
            f"started? stop it with 'redis-cli -p {redis_server.port} shutdown nosave'): free "
            "it, or set PAAS_REDIS_URL to another address (make up runs its Redis there) or "
            "to a Redis of yours with its password in the URL.")
    for what, host, port, var in (
            ("the API", settings.api_host, settings.api_port, "PAAS_API_PORT"),
            ("the router", settings.router_host, settings.router_port, "PAAS_ROUTER_PORT"),
            ("the router's HTTPS", settings.router_host, settings.router_https_port,
             "PAAS_ROUTER_HTTPS_PORT (0 turns HTTPS off)")):
        if port and _port_open(host, port):
            raise LaunchError(f"port {port} on {host}, wanted for {what}, is already in use "
                              f"(is the platform already running?): stop what uses it or set "
                              f"{var} to a free port.")


def _stop_all(platform: Platform, redis_server: RedisServer | None) -> None:
    platform.stop()
    if redis_server is not None:
        redis_server.stop()


@click.command()
@click.option("--quiet", is_flag=True, help="Only write the services' logs to files.")
@click.option("--no-login", is_flag=True, help="Do not log the local paas CLI in.")
@click.option("--agents", type=click.IntRange(min=1), default=1, show_default=True,
              envvar="PAAS_AGENTS",
              help="How many agents to run; they share the agent port range equally.")
def main(quiet: bool, no_login: bool, agents: int) -> None:
    """Run the whole platform in the foreground until Ctrl-C."""
    settings, redis_server = own_redis(settings_mod.load())
    try:
        platform = Platform(settings, echo=not quiet, agents=agents)
    except LaunchError as e:
        raise click.ClickException(str(e)) from e
    stop = threading.Event()

    def _stop(*_: object) -> None:
        stop.set()
        platform.stopping = True

    signal.signal(signal.SIGINT, _stop)
    signal.signal(signal.SIGTERM, _stop)
    try:
        _check_ports(settings, redis_server)
        if redis_server is not None:
            redis_server.start()
        token = platform.prepare()
        platform.start()
        platform.wait_ready(stop=stop)
    except (LaunchError, RedisServerError) as e:
        _stop_all(platform, redis_server)
        raise click.ClickException(str(e)) from e
    except BaseException:
        _stop_all(platform, redis_server)
        raise
    if stop.is_set():
        _stop_all(platform, redis_server)
        return
    if not no_login:
        from cli.config import Config

        config = Config.load()
        config.target, config.token, config.team = settings.api_url, token, None
        config.save()
    port = "" if settings.router_port == 80 else f":{settings.router_port}"
    password = (f"{platform.admin_password}   (shown this once: change it with 'paas passwd')"
                if platform.admin_password else "(set before; 'paas-admin set-password admin' "
                "sets a new one)")
    click.echo(f"""
  The platform is up.
    API:          {settings.api_url}
    admin user:   admin
    password:     {password}
    admin token:  {token}   (the CLI here is logged in with it)
    apps at:      http://<app>.{settings.domain}{port}
    logs:         {platform.log_dir}/

  Push your first app (from another terminal):
    cd tests/fixtures/flask-hello
    ../../../.venv/bin/paas push hello
    curl http://hello.{settings.domain}{port}/

  Ctrl-C stops the platform; app containers keep running and are re-adopted next time.
""", err=False)
    supervisor = threading.Thread(target=platform.supervise, daemon=True)
    supervisor.start()
    stop.wait()
    click.echo("\npaas-up: stopping the platform's processes (app containers keep running)")
    _stop_all(platform, redis_server)
    click.echo("paas-up: stopped")


if __name__ == "__main__":
    main()
