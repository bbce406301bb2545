"""Run nginx as a child process: check a config, start, reload gracefully, stop.

Every config is checked with ``nginx -t`` before nginx sees it; the live file is replaced
only by a config that passed, so nginx always keeps a good config to serve.
"""

from __future__ import annotations

import ctypes
import errno
import hashlib
import logging
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterable
from pathlib import Path

from router.errors import NginxConfigError, NginxNotFoundError, NginxStartError, RouterError
from router.render import retired_marker

log = logging.getLogger("paas.router")

_BIND_ERROR = re.compile(r"bind\(\) to (\S+) failed \((\d+): ([^)]*)\)")
_HINTS = {
    errno.EADDRINUSE: "set PAAS_ROUTER_PORT to a free port",
    errno.EACCES: "ports below 1024 need root; set PAAS_ROUTER_PORT to a port above 1023",
    errno.EADDRNOTAVAIL: "set PAAS_ROUTER_HOST to an address of this machine",
}
_PR_SET_PDEATHSIG = 1
# Seconds a retirement marker is kept: longer than render's worker_shutdown_timeout, after
# which no worker of that config is left to look for it.
RETIRED_MARKER_TTL = 330.0


def _retired_dir(runtime_dir: Path) -> Path:
    """Where retirement markers go: a folder nginx's workers can reach (they run as
    ``nobody`` when nginx starts as root, and the runtime dir may be private, 0700), under
    /run (or the temp dir), named for the runtime dir. Made at the first reload."""
    digest = hashlib.sha256(str(runtime_dir).encode()).hexdigest()[:16]
    base = "/run" if os.access("/run", os.W_OK) else tempfile.gettempdir()
    return Path(base) / f"paas-router-{digest}"


def _listen_error(address: str, err: int, reason: str, log_text: str = "") -> NginxStartError:
    hint = _HINTS.get(err, "set PAAS_ROUTER_HOST and PAAS_ROUTER_PORT to a usable address")
    return NginxStartError(
        f"nginx could not listen on {address}: {reason.lower()}; {hint}",
        address=address,
        reason=reason,
        log=log_text,
    )


def _die_with_parent() -> None:  # pragma: no cover - runs in the child between fork and exec
    """Have the kernel stop nginx if the router dies without stopping it (Linux only)."""
    try:
        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)
    except (OSError, AttributeError):
        pass


def _probe_host(host: str) -> str:
    """Where to connect to reach a listener bound to ``host``."""
    return {"*": "127.0.0.1", "0.0.0.0": "127.0.0.1", "::": "::1"}.get(host, host)


def _accepts(host: str, port: int) -> bool:
    try:
        with socket.create_connection((_probe_host(host), port), timeout=0.2):
            return True
    except OSError:
        return False


def check_can_listen(host: str, port: int) -> None:
    """Raise :class:`NginxStartError` if ``host:port`` cannot be bound right now."""
    bind_host = "0.0.0.0" if host == "*" else host
    family = socket.AF_INET6 if ":" in bind_host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((bind_host, port))
        except OSError as e:
            raise _listen_error(f"{host}:{port}", e.errno or 0, e.strerror or str(e)) from e


def _wait_can_listen(host: str, port: int, grace: float) -> None:
    deadline = time.monotonic() + grace
    while True:
        try:
            return check_can_listen(host, port)
        except NginxStartError:
            if time.monotonic() >= deadline:
                raise
            time.sleep(0.05)


class Nginx:
    """One nginx master process with its config, pid, logs and temp files in ``runtime_dir``."""

    def __init__(self, binary: str, runtime_dir: str | os.PathLike[str]) -> None:
        self.binary = binary
        self.runtime_dir = Path(runtime_dir).absolute()
        self.config_path = self.runtime_dir / "nginx.conf"
        self.error_log = self.runtime_dir / "error.log"
        self._proc: subprocess.Popen[bytes] | None = None
        self.retired_dir = _retired_dir(self.runtime_dir)

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None else None

    @property
    def returncode(self) -> int | None:
        """Exit status of the last nginx process, or None while it runs (or never ran)."""
        return self._proc.poll() if self._proc is not None else None

    def is_running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def resolve_binary(self) -> str:
        """Absolute path of the nginx binary (Debian keeps it in /usr/sbin, often not on PATH)."""
        found = shutil.which(self.binary) or shutil.which(
            self.binary, path="/usr/sbin:/usr/local/sbin:/sbin"
        )
        if found is None:
            raise NginxNotFoundError(self.binary)
        return found

    def _args(self, config: Path) -> list[str]:
        return [
            "-c", str(config),
            "-p", f"{self.runtime_dir}/",
            "-e", str(self.error_log),
        ]  # fmt: skip

    def test(self, config: Path) -> None:
        """Run ``nginx -t`` on ``config``; raise :class:`NginxConfigError` if it fails."""
        try:
            done = subprocess.run(
                [self.resolve_binary(), "-t", "-q", *self._args(config)],
                capture_output=True,
                text=True,
                errors="replace",
                timeout=30,
                check=False,
            )
        except subprocess.TimeoutExpired as e:
            raise NginxConfigError(str(config), "nginx -t did not finish within 30 s") from e
        if done.returncode != 0:
            raise NginxConfigError(str(config), done.stderr or done.stdout)

    def check(self, config_text: str) -> None:
        """Validate ``config_text`` with ``nginx -t`` without touching the live config."""
        candidate = self._write_candidate(config_text)
        try:
            self.test(candidate)
        finally:
            candidate.unlink(missing_ok=True)

    def _write_candidate(self, config_text: str) -> Path:
        self.runtime_dir.mkdir(parents=True, exist_ok=True, mode=0o755)
        fd, name = tempfile.mkstemp(prefix="nginx.conf.", suffix=".candidate", dir=self.runtime_dir)
        with os.fdopen(fd, "w") as f:
            f.write(config_text)
        os.chmod(name, 0o644)
        return Path(name)

    def start(
        self, config_text: str, *, listen: tuple[str, int] | None = None, timeout: float = 5.0
    ) -> None:
        """Check and install ``config_text``, start nginx, wait until ``listen`` accepts TCP."""
        if self.is_running():
            raise RouterError(f"nginx is already running (pid {self.pid})")
        # A master that died leaves its workers holding the port: kill them, wait for the port.
        grace = 2.0 if self._proc is not None else 0.0
        self._kill()
        binary = self.resolve_binary()
        if listen is not None:
            _wait_can_listen(*listen, grace=grace)
        candidate = self._write_candidate(config_text)
        try:
            self.test(candidate)
            os.replace(candidate, self.config_path)
        finally:
            candidate.unlink(missing_ok=True)
        offset = self.error_log.stat().st_size if self.error_log.exists() else 0
        self._proc = subprocess.Popen(
            [binary, *self._args(self.config_path)],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            start_new_session=True,  # terminal signals go to the router, which stops nginx
            preexec_fn=_die_with_parent if sys.platform == "linux" else None,
        )
        self._wait_started(offset, listen, timeout)
        log.info("nginx started (pid %s) with %s", self.pid, self.config_path)

    def _new_log(self, offset: int) -> str:
        try:
            with open(self.error_log, encoding="utf-8", errors="replace") as f:
                f.seek(offset)
                return f.read()
        except OSError:
            return ""

    def _wait_started(self, offset: int, listen: tuple[str, int] | None, timeout: float) -> None:
        assert self._proc is not None
        started = time.monotonic()
        while True:
            text = self._new_log(offset)
            bind = _BIND_ERROR.search(text)
            if bind:
                self._kill()
                raise _listen_error(bind[1], int(bind[2]), bind[3], text)
            if self._proc.poll() is not None:
                rc = self._proc.returncode
                self._kill()
                detail = " ".join(text.split()[-40:]) or "no error output"
                raise NginxStartError(
                    f"nginx exited with status {rc} right after starting: {detail}", log=text
                )
            elapsed = time.monotonic() - started
            if listen is None and elapsed >= 0.3:
                return
            if listen is not None and _accepts(*listen):
                return
            if elapsed > timeout:
                self._kill()
                where = f"{listen[0]}:{listen[1]}" if listen else "its address"
                raise NginxStartError(
                    f"nginx did not accept connections on {where} within {timeout:g} s; "
                    f"see {self.error_log}",
                    address=where,
                    log=text,
                )
            time.sleep(0.05)

    def apply(self, config_text: str) -> bool:
        """Install ``config_text`` if ``nginx -t`` accepts it and reload nginx gracefully.

        Returns False (and keeps the live config) if nginx rejects it.
        """
        candidate = self._write_candidate(config_text)
        try:
            self.test(candidate)
            old_marker = self._retire_live_config()
            os.replace(candidate, self.config_path)
        except NginxConfigError as e:
            log.error("new nginx config rejected, keeping the old one: %s", e.output.strip())
            return False
        finally:
            candidate.unlink(missing_ok=True)  # already gone if it became the live config
        if self.is_running():
            assert self._proc is not None
            if old_marker is not None and client_connections(self.client_ports) != 0:
                # The live workers now answer with "Connection: close": give busy keep-alive
                # clients time for one more request, so none is idle when they retire. (A
                # connection opened from now on has its first answer say so: with none open
                # now, there is nothing to wait for, and the change goes live at once.)
                time.sleep(self.close_keepalive_for)
            old_workers = child_pids(self._proc.pid)
            self._proc.send_signal(signal.SIGHUP)
            _wait_not_accepting(old_workers, timeout=self.drain_timeout)
        return True

    # How long the workers of a config being replaced close keep-alive connections after
    # each answer before they are retired (added to the time a change takes to go live).
    close_keepalive_for = 0.2
    # The ports clients connect on (the router sets them): with no connection on them, a
    # reload need not wait ``close_keepalive_for``. Empty: always wait.
    client_ports: tuple[int, ...] = ()

    def _retire_live_config(self) -> Path | None:
        """Create the retirement marker of the config nginx serves (see
        :func:`router.render.retired_marker`); drop markers of configs long gone."""
        if not self.is_running():
            return None
        try:
            live = self.config_path.read_text()
        except OSError:
            return None
        marker = retired_marker(live, str(self.retired_dir))
        if marker is None:
            return None
        folder = self.retired_dir
        now = time.time()
        try:
            folder.mkdir(mode=0o755, exist_ok=True)  # stop() removes it
            info = folder.stat()
            if info.st_uid != os.getuid() or info.st_mode & 0o022:
                log.warning("%s is not this user's own folder; reloads may reset a few "
                            "keep-alive requests", folder)
                return None
            folder.chmod(0o755)  # whatever the umask: nginx's workers must get in
            for old in folder.iterdir():  # old workers are gone after worker_shutdown_timeout
                if now - old.stat().st_mtime > RETIRED_MARKER_TTL:
                    old.unlink(missing_ok=True)
            Path(marker).touch()
        except OSError as e:
            log.warning("could not mark the old config's workers to close keep-alive "
                        "connections (%s); this reload may reset a few", e)
            return None
        return Path(marker)

    # How long apply() waits at most for the workers of the old config to stop accepting
    # connections (they then finish their open requests on their own); until then a new
    # connection may still meet the old config.
    drain_timeout = 2.0

    def reopen_logs(self) -> None:
        """Have nginx reopen its log files (after one was renamed), as SIGUSR1 does."""
        if self.is_running():
            assert self._proc is not None
            self._proc.send_signal(signal.SIGUSR1)

    def check_certificate(self, cert_path: str, key_path: str) -> None:
        """Raise :class:`NginxConfigError` unless nginx can load this certificate and key
        (PEM, and the key is the certificate's), so a bad one cannot block every config."""
        folder = self.runtime_dir / "cert-check"
        folder.mkdir(parents=True, exist_ok=True, mode=0o700)
        text = (
            f'pid "{folder}/nginx.pid";\n'
            f'error_log "{folder}/error.log" warn;\n'
            "events {}\n"
            "http {\n"
            f'    client_body_temp_path "{folder}/client_body_temp";\n'
            f'    proxy_temp_path "{folder}/proxy_temp";\n'
            f'    fastcgi_temp_path "{folder}/fastcgi_temp";\n'
            f'    uwsgi_temp_path "{folder}/uwsgi_temp";\n'
            f'    scgi_temp_path "{folder}/scgi_temp";\n'
            "    server {\n"
            "        listen 127.0.0.1:1 ssl;\n"
            f'        ssl_certificate "{cert_path}";\n'
            f'        ssl_certificate_key "{key_path}";\n'
            "    }\n"
            "}\n"
        )
        candidate = self._write_candidate(text)
        try:
            self.test(candidate)
        finally:
            candidate.unlink(missing_ok=True)

    def stop(self, timeout: float = 10.0) -> None:
        """Graceful stop (SIGQUIT: finish open requests); SIGTERM, then SIGKILL, on timeout."""
        proc = self._proc
        if proc is None:
            return
        if proc.poll() is not None:  # died on its own: its workers may linger
            self._kill()
            return
        proc.send_signal(signal.SIGQUIT)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            log.warning("nginx did not stop within %g s; terminating it", timeout)
            proc.terminate()
            try:
                proc.wait(5)
            except subprocess.TimeoutExpired:
                self._kill()
        self._proc = None
        shutil.rmtree(self.retired_dir, ignore_errors=True)  # no worker looks in it now
        log.info("nginx stopped")

    def _kill(self) -> None:
        """Kill nginx and its workers at once (they share its process group), even orphans."""
        proc = self._proc
        if proc is None:
            return
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass  # the whole group is gone
        proc.wait()
        self._proc = None


def child_pids(pid: int) -> set[int]:
    """The processes whose parent is ``pid`` (nginx's workers), read from /proc."""
    found = set()
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                stat = f.read()
        except OSError:
            continue
        # "pid (comm) state ppid ...": comm may hold spaces, so split after the last ")".
        fields = stat.rpartition(")")[2].split()
        if len(fields) > 1 and fields[1] == str(pid):
            found.add(int(entry))
    return found


def client_connections(ports: Iterable[int]) -> int | None:
    """How many established TCP connections are on ``ports`` (the router's own), by the
    kernel's count (``ss``, whose filter runs in the kernel: reading /proc/net/tcp takes
    tens of milliseconds on a host with tens of thousands of sockets). None when it cannot
    tell."""
    ports = sorted(set(ports))
    ss = shutil.which("ss") or shutil.which("ss", path="/usr/sbin:/sbin:/usr/bin:/bin")
    if not ports or ss is None:
        return None
    wanted = " or ".join(f"sport = :{port}" for port in ports)
    try:
        done = subprocess.run([ss, "-Htn", "state", "established", f"( {wanted} )"],
                              capture_output=True, text=True, timeout=5, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return None
    if done.returncode != 0:
        return None
    return sum(1 for line in done.stdout.splitlines() if line.strip())


def _wait_not_accepting(pids: set[int], timeout: float) -> None:
    """Wait until each old worker has exited or is shutting down (it then has closed its
    listening sockets), or ``timeout``. An old worker keeps serving the connections it has
    (WebSockets, streams, requests in flight) until they end, which can take long."""
    deadline = time.monotonic() + timeout
    while pids and time.monotonic() < deadline:
        pids = {p for p in pids if not _zombie(p) and not _shutting_down(p)}
        if pids:
            time.sleep(0.005)
    if not pids:
        time.sleep(0.005)  # nginx retitles itself just before it closes its sockets


def _shutting_down(pid: int) -> bool:
    """True if ``pid`` is an nginx worker that took the signal to stop (its title says so)."""
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return b"shutting down" in f.read()
    except OSError:
        return True


def _zombie(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rpartition(")")[2].split()[0] == "Z"
    except OSError:
        return True
