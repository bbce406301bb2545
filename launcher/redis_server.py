"""The platform's own redis-server, behind a password (``make up`` and the test Sandbox).

The password is made once into a 0600 file in the data dir (:func:`ensure_password`) and
reaches redis-server through its standard input as a config file, never its command line,
which ``ps`` shows to every user. The platform's processes get it inside ``PAAS_REDIS_URL``
(``redis://:PASSWORD@127.0.0.1:PORT/0``), in their environment, which only their user reads.
"""

from __future__ import annotations

import os
import secrets
import subprocess
import time
from pathlib import Path
from urllib.parse import urlsplit

import redis

PASSWORD_FILE = "redis.password"


class RedisServerError(Exception):
    pass


def ensure_password(path: Path) -> str:
    """The password in ``path``, made (64 hex digits, file 0600) if there is none."""
    try:
        password = path.read_text().strip()
        if password:
            return password
    except FileNotFoundError:
        pass
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    password = secrets.token_hex(32)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(password + "\n")
    os.replace(tmp, path)
    return password


def redis_url(port: int, password: str, host: str = "127.0.0.1", db: int = 0) -> str:
    return f"redis://:{password}@{host}:{port}/{db}"


def has_password(url: str) -> bool:
    return bool(urlsplit(url).password)


def config_text(host: str, port: int, password: str, folder: Path) -> str:
    """redis-server's config: no persistence (the platform rebuilds what Redis holds), one
    address, a password."""
    if any(c in password for c in ' "\n\\'):
        raise RedisServerError("the Redis password may not hold spaces, quotes or backslashes")
    return "\n".join([
        f"bind {host}",
        f"port {port}",
        f'requirepass "{password}"',
        "protected-mode yes",
        'save ""',
        "appendonly no",
        f'dir "{folder}"',
        "",
    ])


class RedisServer:
    """One redis-server child process on ``host:port`` with ``password``."""

    def __init__(self, port: int, password: str, folder: Path, host: str = "127.0.0.1",
                 log: Path | None = None) -> None:
        self.host, self.port, self.password, self.folder = host, port, password, folder
        self.log = log
        self.process: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return redis_url(self.port, self.password, self.host)

    def start(self, timeout: float = 10.0) -> None:
        """Start it and wait until it answers with the password; RedisServerError if not."""
        out = subprocess.DEVNULL
        if self.log is not None:
            out = os.open(self.log, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        try:
            self.process = subprocess.Popen(
                ["redis-server", "-"], stdin=subprocess.PIPE, stdout=out,
                stderr=subprocess.STDOUT, start_new_session=True)
        except FileNotFoundError as e:
            raise RedisServerError("redis-server is not installed: run 'make up' (it installs "
                                   "it), or apt-get install redis-server.") from e
        finally:
            if self.log is not None:
                os.close(out)  # type: ignore[arg-type]
        assert self.process.stdin is not None
        self.process.stdin.write(
            config_text(self.host, self.port, self.password, self.folder).encode())
        self.process.stdin.close()
        client = redis.Redis(host=self.host, port=self.port, password=self.password)
        deadline = time.monotonic() + timeout
        try:
            while True:
                try:
                    client.ping()
                    return
                except redis.ConnectionError as e:
                    if time.monotonic() > deadline or self.process.poll() is not None:
                        self.stop()
                        where = f" (its log: {self.log})" if self.log else ""
                        raise RedisServerError(
                            f"redis-server did not start on {self.host}:{self.port}{where}: "
                            "is the port taken? Free it or set PAAS_REDIS_URL.") from e
                    time.sleep(0.05)
        finally:
            client.close()

    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def stop(self, sig: int | None = None, timeout: float = 10.0) -> None:
        """Stop it (SIGTERM, or ``sig``) and wait; nothing if it is not running."""
        if self.process is None:
            return
        if self.process.poll() is None:
            if sig is None:
                self.process.terminate()
            else:
                self.process.send_signal(sig)
        try:
            self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(timeout)
        self.process = None
