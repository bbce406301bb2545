"""Nginx: rendered configs pass the real ``nginx -t``; bad configs never replace good ones."""

from __future__ import annotations

import http.client
import http.server
import os
import shutil
import signal
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from contracts.messages import Backend
from contracts.routing import MappedRoute
from router.errors import NginxConfigError, NginxNotFoundError, NginxStartError
from router.nginx import Nginx
from router.render import render_nginx_config

NGINX = shutil.which("nginx") or shutil.which("nginx", path="/usr/sbin:/usr/local/sbin")
needs_nginx = pytest.mark.skipif(NGINX is None, reason="nginx is not installed")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


Route = tuple[MappedRoute, Backend]


def render(routes: list[Route], runtime_dir: Path, port: int = 8080, **kw: object) -> str:
    return render_nginx_config(
        [r for r, _ in routes], [b for _, b in routes], listen_host="127.0.0.1",
        listen_port=port, runtime_dir=str(runtime_dir), **kw,  # type: ignore[arg-type]
    )


def route(host: str, backend: str) -> Route:
    """``host`` mapped to an app of its own with one instance at ``backend``."""
    guid = "app-" + host.replace(".", "-")[:60]
    return (MappedRoute(guid="r-" + guid, host=host, domain="localhost", app_guid=guid,
                        app_name="app"),
            Backend(backend=backend, app_guid=guid, app_name="app",
                    instance_guid="i-" + backend.replace(":", "-").strip("[]")))


@pytest.fixture
def nginx(tmp_path: Path) -> Iterator[Nginx]:
    n = Nginx(NGINX or "nginx", tmp_path / "router")
    yield n
    n.stop(timeout=5)


@pytest.fixture
def backend() -> Iterator[int]:
    """A loopback HTTP server answering ``hello from <Host>``; yields its port."""

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            body = f"hello from {self.headers['Host']}".encode()
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server.server_address[1]
    server.shutdown()
    server.server_close()
    thread.join()


def get(port: int, host: str) -> tuple[int, dict[str, str], str]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    try:
        conn.request("GET", "/", headers={"Host": host})
        resp = conn.getresponse()
        return resp.status, dict(resp.getheaders()), resp.read().decode()
    finally:
        conn.close()


@needs_nginx
@pytest.mark.parametrize(
    "routes",
    [
        [],
        [route("a.localhost", "127.0.0.1:61001")],
        [
            route("a.localhost", "127.0.0.1:61001"),
            route("a.localhost", "127.0.0.1:61002"),
            route("b.example.com", "[::1]:61003"),
            route("x" * 63 + "." + "y" * 63 + ".localhost", "10.0.0.1:80"),
        ],
        [route(".".join(["a" * 63] * 3 + ["b" * 61]), "127.0.0.1:80")],  # 253 characters
        [route(f"app{i}.localhost", f"127.0.0.1:{20000 + i}") for i in range(500)],
    ],
    ids=["empty", "one", "several", "longest-host", "500-hosts"],
)
def test_rendered_configs_pass_nginx_t(nginx: Nginx, tmp_path: Path, routes: list[Route]) -> None:
    nginx.check(render(routes, nginx.runtime_dir))


@needs_nginx
def test_apply_of_an_invalid_config_returns_false_and_keeps_the_old_file(nginx: Nginx) -> None:
    good = render([route("a.localhost", "127.0.0.1:61001")], nginx.runtime_dir)
    assert nginx.apply(good) is True
    assert nginx.config_path.read_text() == good

    assert nginx.apply(good.replace("keepalive_timeout 1s;", "keepalive_timeout nope;")) is False
    # A config render_nginx_config wrote, whose certificate file is gone.
    missing = render([route("a.localhost", "127.0.0.1:61001")], nginx.runtime_dir,
                     https_port=8443, certificates={"localhost": ("/nonexistent.pem",
                                                                 "/nonexistent.key")})
    assert "ssl_certificate" in missing
    assert nginx.apply(missing) is False
    assert nginx.apply("this is not nginx config") is False
    assert nginx.config_path.read_text() == good
    assert not list(nginx.runtime_dir.glob("*.candidate"))


@needs_nginx
def test_a_rejected_config_leaves_nginx_serving_the_old_one(nginx: Nginx, backend: int) -> None:
    port = free_port()
    good = render([route("a.localhost", f"127.0.0.1:{backend}")], nginx.runtime_dir, port)
    nginx.start(good, listen=("127.0.0.1", port))
    bad = render([route("b.localhost", f"127.0.0.1:{backend}")], nginx.runtime_dir, port,
                 https_port=free_port(),
                 certificates={"localhost": ("/nonexistent.pem", "/nonexistent.key")})
    assert nginx.apply(bad) is False
    assert nginx.is_running() and nginx.config_path.read_text() == good
    assert get(port, "a.localhost")[0] == 200
    assert get(port, "b.localhost")[0] == 404


@needs_nginx
def test_a_certificate_nginx_cannot_load_is_reported(nginx: Nginx, tmp_path: Path) -> None:
    import subprocess

    pairs = []
    for name in ("one", "two"):
        key, cert = tmp_path / f"{name}.key", tmp_path / f"{name}.pem"
        subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
                        "-subj", f"/CN={name}.example.com", "-keyout", str(key), "-out",
                        str(cert)], check=True, capture_output=True)
        pairs.append((str(cert), str(key)))
    nginx.check_certificate(*pairs[0])
    with pytest.raises(NginxConfigError):
        nginx.check_certificate(pairs[0][0], pairs[1][1])  # another certificate's key
    (tmp_path / "junk.pem").write_text("not a certificate")
    with pytest.raises(NginxConfigError):
        nginx.check_certificate(str(tmp_path / "junk.pem"), pairs[0][1])


@needs_nginx
def test_start_routes_reloads_and_stops(nginx: Nginx, backend: int) -> None:
    port = free_port()
    config = render([route("a.localhost", f"127.0.0.1:{backend}")], nginx.runtime_dir, port)
    nginx.start(config, listen=("127.0.0.1", port))
    assert nginx.is_running()

    status, headers, body = get(port, "a.localhost")
    assert (status, body) == (200, "hello from a.localhost")
    assert "X-Paas-Router-Error" not in headers
    status, headers, body = get(port, "A.Localhost")
    assert (status, body) == (200, "hello from a.localhost")

    status, headers, body = get(port, "nobody.localhost")
    assert status == 404
    assert headers["X-Paas-Router-Error"] == "unknown_route"
    assert "No app is at <b>nobody.localhost</b>" in body

    assert nginx.apply(render([], nginx.runtime_dir, port)) is True
    # The reload is asynchronous: the old worker may take a few more connections first.
    deadline = time.monotonic() + 5
    while any(get(port, "a.localhost")[0] != 404 for _ in range(5)):
        assert time.monotonic() < deadline, "nginx still routes a.localhost after reload"
        time.sleep(0.05)

    nginx.stop(timeout=5)
    assert not nginx.is_running()
    with pytest.raises(OSError):
        socket.create_connection(("127.0.0.1", port), timeout=1).close()


@needs_nginx
def test_dead_backend_gives_503_page(nginx: Nginx) -> None:
    port, dead = free_port(), free_port()
    config = render([route("a.localhost", f"127.0.0.1:{dead}")], nginx.runtime_dir, port)
    nginx.start(config, listen=("127.0.0.1", port))
    status, headers, body = get(port, "a.localhost")
    assert status == 503
    assert headers["X-Paas-Router-Error"] == "backend_unavailable"
    assert "no instance answering" in body
    assert get(port, "b.localhost")[0] == 404


@needs_nginx
def test_restart_after_the_master_was_killed_frees_the_port(nginx: Nginx, backend: int) -> None:
    port = free_port()
    config = render([route("a.localhost", f"127.0.0.1:{backend}")], nginx.runtime_dir, port)
    nginx.start(config, listen=("127.0.0.1", port))
    assert nginx.pid is not None
    os.kill(nginx.pid, signal.SIGKILL)  # its worker survives and keeps the port open
    deadline = time.monotonic() + 5
    while nginx.is_running():
        assert time.monotonic() < deadline
        time.sleep(0.01)

    nginx.start(config, listen=("127.0.0.1", port))
    assert get(port, "a.localhost")[0] == 200


@needs_nginx
@pytest.mark.parametrize("precheck", [True, False], ids=["precheck", "nginx-log"])
def test_busy_port_is_a_clear_error(nginx: Nginx, precheck: bool) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        listen = ("127.0.0.1", port) if precheck else None
        with pytest.raises(NginxStartError) as info:
            nginx.start(render([], nginx.runtime_dir, port), listen=listen)
    message = str(info.value)
    assert f"nginx could not listen on 127.0.0.1:{port}: address already in use" in message
    assert "PAAS_ROUTER_PORT" in message
    assert not nginx.is_running()


def test_missing_binary_is_a_clear_error(tmp_path: Path) -> None:
    n = Nginx("no-such-nginx-binary", tmp_path)
    with pytest.raises(NginxNotFoundError, match="PAAS_NGINX_BINARY"):
        n.start(render([], tmp_path))


@needs_nginx
def test_a_reload_does_not_wait_for_old_workers_to_finish_open_connections(
    nginx: Nginx,
) -> None:
    """A WebSocket or stream keeps an old worker alive; the next change must not wait for it."""
    port = free_port()
    config = render([], nginx.runtime_dir, port)
    nginx.start(config, listen=("127.0.0.1", port))
    with socket.create_connection(("127.0.0.1", port), timeout=5) as busy:
        busy.sendall(b"GET / HTTP/1.1\r\nHost: a.localhost\r\n")  # not finished yet
        time.sleep(0.2)
        for n in range(2):
            started = time.monotonic()
            assert nginx.apply(config.replace("# hosts:", f"# reload {n}, hosts:")) is True
            assert time.monotonic() - started < nginx.drain_timeout / 2


def test_client_connections_count_connections_on_the_ports_asked_about() -> None:
    from router.nginx import client_connections

    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen()
    port = server.getsockname()[1]
    assert client_connections([port]) == 0
    outgoing = socket.create_connection(("127.0.0.1", port))
    accepted, _ = server.accept()
    try:
        # The accepted end is on the port (the client's end is not: nginx's own connections
        # to apps do not count either).
        assert client_connections([port]) == 1
        assert client_connections([outgoing.getsockname()[1]]) == 1  # that end, asked for
    finally:
        accepted.close()
        outgoing.close()
        server.close()
    assert client_connections([]) is None  # nothing asked: cannot tell
