"""The API under abuse, on the real platform: a hundred log follows held open and twenty
slowloris clients do not stop `paas apps`; a token past its cap of follows gets a 429 with a
sentence and Retry-After, in the API and in the CLI."""

from __future__ import annotations

import json
import select
import shutil
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests

from contracts.settings import as_env
from controller.models.team import DEFAULT_TEAM
from launcher.sandbox import Sandbox, paas_command
from tests.integration.runtime_helpers import FIXTURES, wait_for

pytestmark = pytest.mark.usefixtures("dump_logs_on_failure")
NAME = "abuse-logs"
TOKENS = 10


@pytest.fixture(scope="module")
def followed(platform: Sandbox, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    folder = tmp_path_factory.mktemp("abuse") / "log-app"
    shutil.copytree(FIXTURES / "log-app", folder)
    pushed = platform.paas("push", NAME, "-p", str(folder))
    assert pushed.returncode == 0, pushed.stdout + pushed.stderr
    yield NAME
    platform.paas("delete", NAME, "-f")


@pytest.fixture(scope="module")
def tokens(platform: Sandbox) -> list[str]:
    """Developer tokens of the app's team, as an operator issues them."""
    admin = Path(paas_command()).with_name("paas-admin")
    made = []
    for i in range(TOKENS):
        issued = subprocess.run(
            [str(admin), "create-token", f"abuse-{i}", "--team", DEFAULT_TEAM],
            env={**platform.cli_env(), **as_env(platform.settings)},
            capture_output=True, text=True, timeout=120)
        assert issued.returncode == 0, issued.stderr
        made.append(issued.stdout.strip())
    return made


def open_follow(platform: Sandbox, token: str, timeout: float = 10.0,
                ) -> tuple[socket.socket, bytes]:
    """A raw HTTP log follow: the socket, kept open, and what came first (its status line
    and, for a 200, the first ping)."""
    sock = socket.create_connection(("127.0.0.1", platform.settings.api_port), timeout=timeout)
    sock.sendall((f"GET /v1/apps/{NAME}/logs?follow=1 HTTP/1.1\r\n"
                  f"Host: 127.0.0.1\r\nAuthorization: Bearer {token}\r\n\r\n").encode())
    head = b""

    def complete() -> bool:
        headers, found, body = head.partition(b"\r\n\r\n")
        if not found:
            return False
        if head.startswith(b"HTTP/1.1 200"):
            return b'"ping"' in body
        length = [line for line in headers.lower().split(b"\r\n")
                  if line.startswith(b"content-length:")]
        return not length or len(body) >= int(length[0].split(b":")[1])

    while not complete():
        chunk = sock.recv(4096)
        if not chunk:
            break
        head += chunk
    return sock, head


def api_apps(platform: Sandbox, timeout: float) -> tuple[int, float]:
    started = time.monotonic()
    answer = requests.get(f"{platform.settings.api_url}/v1/apps", timeout=timeout,
                          headers={"Authorization": f"Bearer {platform.token}"})
    return answer.status_code, time.monotonic() - started


def cli_apps(platform: Sandbox) -> float:
    started = time.monotonic()
    shown = platform.paas("apps", timeout=30)
    assert shown.returncode == 0, shown.stderr
    assert NAME in shown.stdout
    return time.monotonic() - started


def test_a_hundred_log_follows_leave_the_api_answering_and_past_the_cap_get_429(
        platform: Sandbox, followed: str, tokens: list[str], tmp_path: Path) -> None:
    held: list[socket.socket] = []
    try:
        for token in tokens:
            for _ in range(10):
                sock, head = open_follow(platform, token)
                held.append(sock)
                assert head.startswith(b"HTTP/1.1 200"), (len(held), head[:300])
        assert len(held) == 100
        # With every follow open (a thread each would have stopped the API at 16):
        status, took = api_apps(platform, timeout=3.0)
        assert status == 200
        print(f"GET /v1/apps with 100 follows open: {took * 1000:.0f} ms")
        print(f"paas apps with 100 follows open: {cli_apps(platform):.2f} s (CLI start incl.)")

        # The 11th follow of one token: 429, a sentence, Retry-After.
        sock, head = open_follow(platform, tokens[0])
        sock.close()
        assert head.startswith(b"HTTP/1.1 429"), head[:300]
        headers, _, body = head.partition(b"\r\n\r\n")
        assert b"\r\nretry-after: 10\r\n" in headers.lower() + b"\r\n", headers
        assert "already follows 10 log streams" in json.loads(body)["error"]
        # ... and the CLI says it and exits non-zero, without retrying for ever.
        home = tmp_path / "capped"
        home.mkdir()
        (home / "config").write_text(json.dumps({"target": platform.settings.api_url,
                                                 "token": tokens[0]}))
        shown = subprocess.run([paas_command(), "logs", NAME], capture_output=True, text=True,
                               env={**platform.cli_env(), "PAAS_HOME": str(home)}, timeout=30)
        assert shown.returncode == 1, shown.stdout + shown.stderr
        assert "already follows 10 log streams" in shown.stderr
        assert "try again in 10 s" in shown.stderr
    finally:
        for sock in held:
            sock.close()
    # Clients that left free their slots (noticed at the next ping, every 10 s).
    assert wait_for(lambda: follow_answers(platform, tokens[0]), timeout=30, interval=1.0)


def follow_answers(platform: Sandbox, token: str) -> bool:
    """Whether a new follow of ``token`` gets a 200 (it is closed at once)."""
    sock, head = open_follow(platform, token)
    sock.close()
    return head.startswith(b"HTTP/1.1 200")


def slowloris(platform: Sandbox, closed_after: list[float], stop: threading.Event) -> None:
    """Send a request's head one byte every half second; note when the server hangs up."""
    sock = socket.create_connection(("127.0.0.1", platform.settings.api_port), timeout=5)
    started = time.monotonic()
    payload = (f"GET /v1/apps HTTP/1.1\r\nHost: 127.0.0.1\r\n"
               f"Authorization: Bearer {platform.token}\r\nX-Slow: {'x' * 200}").encode()
    try:
        for byte in payload:
            if stop.is_set():
                return
            readable, _, _ = select.select([sock], [], [], 0.5)
            if readable and not sock.recv(4096):
                closed_after.append(time.monotonic() - started)
                return
            sock.sendall(bytes([byte]))
    except OSError:  # reset by the server
        closed_after.append(time.monotonic() - started)
    finally:
        sock.close()


def test_twenty_slowloris_clients_do_not_stop_the_api_and_are_dropped(
        platform: Sandbox, followed: str) -> None:
    closed_after: list[float] = []
    stop = threading.Event()
    clients = [threading.Thread(target=slowloris, args=(platform, closed_after, stop))
               for _ in range(20)]
    for client in clients:
        client.start()
    try:
        time.sleep(1.0)  # every one of them is connected and sending
        status, took = api_apps(platform, timeout=3.0)
        assert status == 200
        print(f"GET /v1/apps with 20 slowloris clients: {took * 1000:.0f} ms")
        print(f"paas apps with 20 slowloris clients: {cli_apps(platform):.2f} s")
        limit = platform.settings.api_header_timeout
        # Each is dropped once its head took longer than the header timeout (its payload
        # would take 100 s at this pace).
        assert wait_for(lambda: len(closed_after) == 20, timeout=limit + 15), closed_after
        assert max(closed_after) < limit + 10, closed_after
    finally:
        stop.set()
        for client in clients:
            client.join(10)
