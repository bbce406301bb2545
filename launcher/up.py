"""``paas-up`` (what ``make up`` runs): the whole platform on one host, in the foreground.

Starts the controller, health manager, stager, one agent and the router as child processes,
waits until they answer, logs the local ``paas`` in, and prints how to push a first app.
Ctrl-C stops the platform's processes; app containers keep running, and the next start's
agent re-adopts them.
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
from typing import IO

import click
import requests

from contracts import settings as settings_mod
from contracts.settings import Settings, as_env

PR_SET_PDEATHSIG = 1
SERVICES: dict[str, str] = {
    "controller": "controller.serve",
    "health": "controller.health",
    "stager": "buildpacks.worker",
    "agent": "dea_agent.main",
    "router": "router.main",
}


class LaunchError(Exception):
    pass


@dataclass
class Service:
    name: str
    module: str
    process: subprocess.Popen | None = None
    restarts: int = 0
    pump: threading.Thread | None = None


@dataclass
class Platform:
    """The platform's processes, started and stopped together."""

    settings: Settings
    echo: bool = False
    services: dict[str, Service] = field(default_factory=dict)
    stopping: bool = False

    @property
    def log_dir(self) -> Path:
        return Path(self.settings.data_dir) / "logs"

    def prepare(self) -> str:
        """Migrate the database and return the admin token (created the first time)."""
        from controller.admin import ensure_admin_token, migrate

        Path(self.settings.data_dir).mkdir(parents=True, exist_ok=True)
        self.log_dir.mkdir(exist_ok=True)
        migrate(self.settings)
        return ensure_admin_token(self.settings)

    def start(self, names: tuple[str, ...] = tuple(SERVICES)) -> None:
        for name in names:
            self.services[name] = service = Service(name, SERVICES[name])
            self._spawn(service)

    def _spawn(self, service: Service) -> None:
        env = {**os.environ, **as_env(self.settings), "PYTHONUNBUFFERED": "1"}
        log = (self.log_dir / f"{service.name}.log").open("ab")
        service.process = subprocess.Popen(
            [sys.executable, "-m", service.module], env=env, stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True,
            preexec_fn=_die_with_parent)
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
            if service.process and service.process.poll() is not None:
                tail = _tail(self.log_dir / f"{service.name}.log")
                raise LaunchError(f"{service.name} exited with code "
                                  f"{service.process.returncode} while starting:\n{tail}")

    def supervise(self) -> None:
        """Restart a service that dies (after a pause that grows), until stop() is called."""
        while not self.stopping:
            for service in self.services.values():
                proc = service.process
                if proc is not None and proc.poll() is not None and not self.stopping:
                    service.restarts += 1
                    delay = min(30, 2 ** min(service.restarts, 5))
                    print(f"paas-up: {service.name} exited with code {proc.returncode}; "
                          f"restarting in {delay} s (log: {self.log_dir}/{service.name}.log)",
                          flush=True)
                    time.sleep(delay)
                    if not self.stopping:
                        self._spawn(service)
            time.sleep(0.5)

    def stop(self, timeout: float = 15.0) -> None:
        self.stopping = True
        procs = [s.process for s in self.services.values() if s.process]
        for proc in procs:
            if proc.poll() is None:
                try:
                    os.killpg(proc.pid, signal.SIGTERM)
                except ProcessLookupError:
                    pass
        deadline = time.monotonic() + timeout
        for proc in procs:
            try:
                proc.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                try:
                    os.killpg(proc.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
                proc.wait()
        for service in self.services.values():
            if service.pump:
                service.pump.join(timeout=2)


def _die_with_parent() -> None:
    """In the child: get SIGTERM when the launcher dies, however it dies (Linux)."""
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


def _check_ports(settings: Settings) -> None:
    for what, host, port, var in (
            ("the API", settings.api_host, settings.api_port, "PAAS_API_PORT"),
            ("the router", settings.router_host, settings.router_port, "PAAS_ROUTER_PORT")):
        if _port_open(host, port):
            raise LaunchError(f"port {port} on {host}, wanted for {what}, is already in use "
                              f"(is the platform already running?): stop what uses it or set "
                              f"{var} to a free port.")


@click.command()
@click.option("--quiet", is_flag=True, help="Only write the services' logs to files.")
@click.option("--no-login", is_flag=True, help="Do not log the local paas CLI in.")
def main(quiet: bool, no_login: bool) -> None:
    """Run the whole platform in the foreground until Ctrl-C."""
    settings = settings_mod.load()
    platform = Platform(settings, echo=not quiet)
    stop = threading.Event()

    def _stop(*_: object) -> None:
        stop.set()
        platform.stopping = True

    signal.signal(signal.SIGINT, _stop)
    signal.signal(signal.SIGTERM, _stop)
    try:
        _check_ports(settings)
        token = platform.prepare()
        platform.start()
        platform.wait_ready(stop=stop)
    except LaunchError as e:
        platform.stop()
        raise click.ClickException(str(e)) from e
    except BaseException:
        platform.stop()
        raise
    if stop.is_set():
        platform.stop()
        return
    if not no_login:
        from cli.config import Config

        Config(target=settings.api_url, token=token).save()
    port = "" if settings.router_port == 80 else f":{settings.router_port}"
    click.echo(f"""
  The platform is up.
    API:          {settings.api_url}
    admin token:  {token}
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
    platform.stop()
    click.echo("paas-up: stopped")


if __name__ == "__main__":
    main()
