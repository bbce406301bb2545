"""The router through real nginx and a real Redis, with small real backends on 127.0.0.1.

One private ``redis-server``, one :class:`router.main.Router` (in a thread, with its real
nginx) and stdlib backends (see :mod:`tests.integration.router_backends`) for the module.
The tests write the route table and the backends into Redis the way the controller and the
agents do, then send requests through nginx.
"""

from __future__ import annotations

import json
import multiprocessing
import re
import shutil
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
import requests

from contracts import keys, revisions
from contracts.messages import Backend
from contracts.routing import (
    LEAST_CONNECTIONS,
    Certificate,
    MappedRoute,
    RouteTable,
    write_route_table,
)
from contracts.secretbox import ensure_key, load_box
from contracts.settings import load
from launcher.sandbox import free_port
from logpipe import AppLogWriter
from router.accesslog import AccessLogListener
from router.main import Router
from tests.integration.router_backends import SSE_PAUSE, AppServer, websocket_echo

NGINX = shutil.which("nginx") or shutil.which("nginx", path="/usr/sbin:/usr/local/sbin")
pytestmark = pytest.mark.skipif(
    NGINX is None or shutil.which("redis-server") is None or shutil.which("openssl") is None,
    reason="needs nginx, redis-server and openssl",
)
AGENT = "agent-test"
MAX_BODY_MB = 1


class Platform:
    """What the controller and the agents would write, and a client for the router."""

    def __init__(self, client: redis.Redis, router: Router, port: int, https_port: int) -> None:
        self.redis = client
        self.router = router
        self.port = port
        self.https_port = https_port
        self.routes: dict[str, MappedRoute] = {}
        self.certificates: list[Certificate] = []
        self.servers: list[AppServer] = []
        self.table_revision = 0  # of the last route table written
        self.agent_revision = 0  # of the agent's last backend table
        self._lock = threading.Lock()

    # -- the controller's side
    def map(self, *routes: MappedRoute) -> None:
        with self._lock:
            for r in routes:
                self.routes[r.guid] = r
            self._write()

    def unmap(self, *guids: str) -> None:
        with self._lock:
            for guid in guids:
                self.routes.pop(guid, None)
            self._write()

    def add_certificate(self, cert: Certificate) -> None:
        with self._lock:
            self.certificates.append(cert)
            self._write()

    def _write(self) -> None:
        self.table_revision = time.time_ns()
        write_route_table(self.redis, RouteTable(revision=self.table_revision,
                                                 routes=list(self.routes.values()),
                                                 certificates=list(self.certificates)))

    # -- the agents' side
    def start_instance(self, app: str, index: int = 0) -> AppServer:
        server = AppServer(f"{app}-{index}")
        self.servers.append(server)
        self.register(app, server, index)
        return server

    def register(self, app: str, server: AppServer, index: int = 0) -> None:
        backend = Backend(backend=server.address, app_guid=f"guid-{app}", app_name=app,
                          instance_guid=f"inst-{server.name}", index=index)
        self._change_table(lambda pipe: pipe.hset(keys.routes(AGENT), backend.instance_guid,
                                                  backend.to_json()))

    def deregister(self, server: AppServer) -> None:
        self._change_table(lambda pipe: pipe.hdel(keys.routes(AGENT), f"inst-{server.name}"))

    def _change_table(self, change: Any) -> None:
        """Change the agent's table with its next revision, as an agent does."""
        with self._lock:
            self.agent_revision = revisions.next_revision(self.redis, self.agent_revision)
            pipe = self.redis.pipeline()
            change(pipe)
            pipe.hset(keys.routes(AGENT), keys.REVISION_FIELD, str(self.agent_revision))
            pipe.publish(keys.ROUTES_CHANGED, AGENT)
            pipe.execute()

    # -- a client
    def get(self, host: str, path: str = "/", session: Any = requests, **kw: Any,
            ) -> requests.Response:
        headers = {"Host": host, **kw.pop("headers", {})}
        return session.get(f"http://127.0.0.1:{self.port}{path}", headers=headers, timeout=10,
                           allow_redirects=False, **kw)

    def wait_answer(self, host: str, path: str = "/", name: str | None = None,
                    status: int = 200, timeout: float = 5.0) -> float:
        """Seconds until ``host`` answers ``status`` (from instance ``name``, if given), once
        the router says nginx serves every change written so far."""
        started = time.monotonic()
        self.wait_synced(timeout)
        while True:
            r = self.get(host, path)
            if r.status_code == status and (name is None or r.json()["name"] == name):
                return time.monotonic() - started
            assert time.monotonic() - started < timeout, (
                f"{host}{path} still answers {r.status_code} {r.text[:200]}")
            time.sleep(0.02)


    def wait_synced(self, timeout: float = 5.0) -> None:
        """Wait until the router acknowledges the last revisions written (what agents wait
        for): nginx then serves them, and old workers take no new connection."""
        deadline = time.monotonic() + timeout
        while True:
            applied = revisions.read_applied(self.redis)
            if applied.get(AGENT, 0) >= self.agent_revision and \
                    applied.get(keys.APPLIED_ROUTE_TABLE, 0) >= self.table_revision:
                return
            assert time.monotonic() < deadline, "the router did not sync in time"
            time.sleep(0.01)


def route(host: str, app: str, path: str = "", **kw: Any) -> MappedRoute:
    domain = kw.pop("domain", host.split(".", 1)[1])
    return MappedRoute(guid=f"route-{app}-{abs(hash((host, path))) % 10**8}", host=host,
                       domain=domain, app_guid=f"guid-{app}", app_name=app, path=path, **kw)


def self_signed(folder: Path, domain: str) -> tuple[Path, Path]:
    cert, key = folder / f"{domain}.pem", folder / f"{domain}.key"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
                    "-subj", f"/CN={domain}",
                    "-addext", f"subjectAltName=DNS:{domain},DNS:*.{domain}",
                    "-keyout", str(key), "-out", str(cert)], check=True, capture_output=True)
    return cert, key


@pytest.fixture(scope="module")
def platform(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Platform]:
    root = tmp_path_factory.mktemp("router")
    redis_port = free_port()
    redis_server = subprocess.Popen(
        ["redis-server", "--bind", "127.0.0.1", "--port", str(redis_port), "--save", "",
         "--appendonly", "no", "--dir", str(root)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    client = redis.Redis(port=redis_port, decode_responses=True)
    deadline = time.monotonic() + 10
    while True:
        try:
            client.ping()
            break
        except redis.ConnectionError:
            assert time.monotonic() < deadline and redis_server.poll() is None, \
                "redis-server did not start"
            time.sleep(0.05)
    port, https_port = free_port(), free_port()
    settings = load(env={}, data_dir=str(root), redis_url=f"redis://127.0.0.1:{redis_port}/0",
                    router_port=port, router_https_port=https_port, nginx_binary=NGINX,
                    router_max_body_mb=MAX_BODY_MB, router_sticky_cookies="JSESSIONID,SESSION")
    ensure_key(settings)
    logs = AppLogWriter.from_settings(redis.Redis(port=redis_port), settings)
    router = Router(settings, redis_client=redis.Redis(port=redis_port, decode_responses=True),
                    access_log=AccessLogListener(logs, settings.router_dir / "access.log"))
    stop = threading.Event()
    thread = threading.Thread(target=router.run, args=(stop,), name="router", daemon=True)
    thread.start()
    p = Platform(client, router, port, https_port)
    try:
        deadline = time.monotonic() + 10
        while client.get(keys.ROUTER_STATUS) is None:
            assert time.monotonic() < deadline and thread.is_alive(), "the router did not start"
            time.sleep(0.05)
        yield p
    finally:
        stop.set()
        thread.join(15)
        for server in p.servers:
            server.stop()
        redis_server.terminate()
        redis_server.wait(10)
    assert not thread.is_alive(), "the router did not stop"


# -- routing ----------------------------------------------------------------------------------


def test_hosts_exact_and_wildcard(platform: Platform) -> None:
    for app in ("plain", "wild", "special"):
        platform.start_instance(app)
    platform.map(route("plain.localhost", "plain"), route("*.wild.localhost", "wild"),
                 route("special.wild.localhost", "special"))
    for host, name in (("plain.localhost", "plain-0"), ("a.wild.localhost", "wild-0"),
                       ("special.wild.localhost", "special-0")):
        platform.wait_answer(host, name=name)  # backends and table may arrive in two syncs
    assert platform.get("Plain.Localhost").json()["name"] == "plain-0"
    assert platform.get("a.wild.localhost").json()["name"] == "wild-0"
    assert platform.get("a.b.wild.localhost").json()["name"] == "wild-0"
    assert platform.get("special.wild.localhost").json()["name"] == "special-0"  # exact wins
    assert platform.get("wild.localhost").status_code == 404


def test_paths_longest_prefix_wins(platform: Platform) -> None:
    for app in ("front", "api", "apiv2", "docs"):
        platform.start_instance(app)
    platform.map(route("site.localhost", "front"), route("site.localhost", "api", "/api"),
                 route("site.localhost", "apiv2", "/api/v2"),
                 route("paths.localhost", "docs", "/docs"))
    platform.wait_answer("paths.localhost", "/docs", name="docs-0")
    for path, app in (("/", "front"), ("/api", "api"), ("/api/v2", "apiv2")):
        platform.wait_answer("site.localhost", path, name=f"{app}-0")
    expected = {"/": "front", "/x": "front", "/api": "api", "/api/": "api", "/api/x?q=1": "api",
                "/apix": "front", "/api/v2": "apiv2", "/api/v2/y": "apiv2", "/api/v20": "api"}
    for path, app in expected.items():
        r = platform.get("site.localhost", path)
        assert r.json()["name"] == f"{app}-0", path
        assert r.json()["path"] == path  # the app sees the whole path
    assert platform.get("paths.localhost", "/docs/intro").json()["name"] == "docs-0"
    other = platform.get("paths.localhost", "/other")
    assert other.status_code == 404 and other.headers["X-Paas-Router-Error"] == "unknown_route"


def test_three_instances_answer_in_turn(platform: Platform) -> None:
    for i in range(3):
        platform.start_instance("rr", i)
    platform.map(route("rr.localhost", "rr"))
    platform.wait_answer("rr.localhost")
    with requests.Session() as session:  # one connection: one nginx worker's turn order
        names = [platform.get("rr.localhost", session=session).json()["name"] for _ in range(9)]
    assert set(names) == {"rr-0", "rr-1", "rr-2"}
    assert names[3:6] == names[:3] and names[6:] == names[:3]


def test_least_connections_sends_new_requests_to_the_idle_instance(platform: Platform) -> None:
    for i in range(2):
        platform.start_instance("lc", i)
    platform.map(route("lc.localhost", "lc", balance=LEAST_CONNECTIONS))
    platform.wait_answer("lc.localhost")
    with requests.Session() as session:
        slow: dict[str, str] = {}
        t = threading.Thread(target=lambda: slow.update(
            platform.get("lc.localhost", "/slow?s=1.5", session=session).json()))
        t.start()
        time.sleep(0.3)
        with requests.Session() as other:  # nginx picks with the busy instance's count known
            names = [platform.get("lc.localhost", session=other).json()["name"]
                     for _ in range(4)]
        t.join()
    assert len(set(names)) == 1 and names[0] != slow["name"]


def test_a_killed_instance_is_retried_transparently(platform: Platform) -> None:
    servers = [platform.start_instance("kill", i) for i in range(3)]
    platform.map(route("kill.localhost", "kill"))
    platform.wait_answer("kill.localhost")
    servers[1].stop()  # still registered in Redis: nginx finds out by connecting
    answers = [platform.get("kill.localhost") for _ in range(12)]
    assert [r.status_code for r in answers] == [200] * 12
    assert {r.json()["name"] for r in answers} == {"kill-0", "kill-2"}


def test_headers_reach_the_app_and_the_client(platform: Platform) -> None:
    platform.start_instance("hdr")
    platform.map(route("hdr.localhost", "hdr"))
    platform.wait_answer("hdr.localhost")
    r = platform.get("hdr.localhost", headers={
        "X-Request-Id": "client-id.42", "X-Forwarded-For": "203.0.113.9",
        "Keep-Alive": "300", "Proxy-Connection": "keep-alive", "TE": "trailers",
        "Trailer": "X-Sum", "Proxy-Authorization": "Basic eA=="})
    seen = r.json()["headers"]
    assert seen["x-request-id"] == "client-id.42" and r.headers["X-Request-Id"] == "client-id.42"
    assert seen["x-forwarded-for"] == "203.0.113.9, 127.0.0.1"
    assert seen["x-forwarded-proto"] == "http"
    assert seen["x-forwarded-host"] == "hdr.localhost" and seen["host"] == "hdr.localhost"
    assert re.fullmatch(r"t=\d{13}", seen["x-request-start"])
    assert abs(int(seen["x-request-start"][2:]) / 1000 - time.time()) < 5
    for hop in ("keep-alive", "proxy-connection", "te", "trailer", "proxy-authorization",
                "upgrade"):
        assert hop not in seen, hop
    assert seen.get("connection", "keep-alive").lower() != "close"  # kept alive upstream

    made = platform.get("hdr.localhost", headers={"X-Request-Id": "not a token!"})
    made_id = made.json()["headers"]["x-request-id"]
    assert re.fullmatch(r"\d+\.\d{3}-\d+-\d+-\d+", made_id)
    assert made.headers["X-Request-Id"] == made_id
    # Made ids differ, on one connection and on another.
    with requests.Session() as session:
        ids = [session.get(f"http://127.0.0.1:{platform.port}/", headers={"Host": "hdr.localhost"},
                           timeout=5)
               .headers["X-Request-Id"] for _ in range(3)]
    assert len({made_id, *ids}) == 4


def test_access_lines_reach_the_apps_log_stream(platform: Platform) -> None:
    platform.start_instance("rtr", index=3)
    platform.map(route("rtr.localhost", "rtr"))
    platform.wait_answer("rtr.localhost")
    assert platform.get("rtr.localhost", "/probe?x=1",
                        headers={"X-Request-Id": "probe-7"}).status_code == 200

    def rtr_lines() -> list[str]:
        entries = platform.redis.xrange(keys.app_log("guid-rtr"))
        return [e["line"] for _, e in entries if e.get("src") == "RTR" and "probe" in e["line"]]

    deadline = time.monotonic() + 5
    while not rtr_lines():
        assert time.monotonic() < deadline, "no RTR line in the app's log stream"
        time.sleep(0.05)
    [line] = rtr_lines()
    assert line.startswith("GET /probe?x=1 200 ")
    assert "instance 3 request-id probe-7 host rtr.localhost" in line


def test_websocket_echo(platform: Platform) -> None:
    platform.start_instance("ws")
    platform.map(route("ws.localhost", "ws"))
    platform.wait_answer("ws.localhost")
    status, echoed = websocket_echo(platform.port, "ws.localhost", "hello through nginx")
    assert status.startswith("HTTP/1.1 101")
    assert echoed == "hello through nginx"


def test_server_sent_events_are_not_buffered(platform: Platform) -> None:
    server = platform.start_instance("sse")
    platform.map(route("sse.localhost", "sse"))
    platform.wait_answer("sse.localhost")
    with socket.create_connection(("127.0.0.1", platform.port), timeout=10) as s:
        started = time.monotonic()
        s.sendall(b"GET /events HTTP/1.1\r\nHost: sse.localhost\r\n"
                  b"Accept: text/event-stream\r\n\r\n")
        received = b""
        while b"data: first" not in received:
            chunk = s.recv(4096)
            assert chunk, received
            received += chunk
        first_at = time.monotonic()
        while b"data: second" not in received:
            received += s.recv(4096)
    assert b"HTTP/1.1 200" in received and b"text/event-stream" in received
    assert server.second_event_sent_at is not None
    assert first_at < server.second_event_sent_at  # arrived while the app still waited
    assert first_at - started < SSE_PAUSE / 2


# -- error pages ------------------------------------------------------------------------------


def test_unknown_host_gets_404_page_html_and_json(platform: Platform) -> None:
    html = platform.get("nobody.localhost")
    assert html.status_code == 404 and "<h1>404 Not Found</h1>" in html.text
    assert "nobody.localhost" in html.text
    assert html.headers["X-Paas-Router-Error"] == "unknown_route"
    as_json = platform.get("nobody.localhost", headers={"Accept": "application/json"})
    assert as_json.status_code == 404
    assert as_json.headers["Content-Type"] == "application/json"
    assert as_json.json()["error"] == "unknown_route"


def test_no_or_dead_instances_get_503_page_html_and_json(platform: Platform) -> None:
    platform.map(route("empty.localhost", "empty"))
    platform.wait_answer("empty.localhost", status=503)
    html = platform.get("empty.localhost")
    assert html.headers["X-Paas-Router-Error"] == "no_instances"
    assert "<h1>503 Service Unavailable</h1>" in html.text
    as_json = platform.get("empty.localhost", headers={"Accept": "application/json"})
    assert as_json.status_code == 503 and as_json.json()["error"] == "no_instances"

    dead = platform.start_instance("dead")
    dead.stop()
    platform.map(route("dead.localhost", "dead"))
    platform.wait_answer("dead.localhost", status=503)
    html = platform.get("dead.localhost")
    assert html.headers["X-Paas-Router-Error"] == "backend_unavailable"
    assert "no instance answering" in html.text
    as_json = platform.get("dead.localhost", headers={"Accept": "application/json"})
    assert as_json.json()["error"] == "backend_unavailable"
    # The same through the streaming location (its own error pages).
    sse = platform.get("dead.localhost", headers={"Accept": "text/event-stream"})
    assert sse.status_code == 503 and sse.headers["X-Paas-Router-Error"] == "backend_unavailable"


def complete(answer: bytes) -> bool:
    """True once ``answer`` holds a whole HTTP response with a Content-Length."""
    head, sep, body = answer.partition(b"\r\n\r\n")
    length = re.search(rb"(?im)^content-length: *(\d+)", head)
    return bool(sep) and length is not None and len(body) >= int(length[1])


def test_a_body_over_the_limit_gets_the_413_page(platform: Platform) -> None:
    platform.start_instance("big")
    platform.map(route("big.localhost", "big"))
    platform.wait_answer("big.localhost")
    small = requests.post(f"http://127.0.0.1:{platform.port}/", data=b"x" * 1000,
                          headers={"Host": "big.localhost"}, timeout=10)
    assert small.status_code == 200 and small.json()["body_length"] == 1000
    for accept, marker in (("text/html", b"<h1>413"), ("application/json", b'"body_too_large"')):
        request = (f"POST / HTTP/1.1\r\nHost: big.localhost\r\nAccept: {accept}\r\n"
                   f"Content-Length: {(MAX_BODY_MB + 1) << 20}\r\nConnection: close\r\n\r\n")
        with socket.create_connection(("127.0.0.1", platform.port), 10) as s:
            s.sendall(request.encode())
            s.shutdown(socket.SHUT_WR)  # no body follows: nginx need not linger for it
            answer = b""
            while not complete(answer):  # nginx may linger before it closes
                chunk = s.recv(65536)
                assert chunk, answer
                answer += chunk
        assert answer.startswith(b"HTTP/1.1 413"), answer[:200]
        assert b"X-Paas-Router-Error: body_too_large" in answer and marker in answer


# -- sticky sessions ------------------------------------------------------------------------------


def test_sticky_sessions_pin_the_client_and_fall_back_when_the_instance_is_gone(
    platform: Platform,
) -> None:
    servers = [platform.start_instance("sticky", i) for i in range(3)]
    platform.map(route("sticky.localhost", "sticky"))
    platform.wait_answer("sticky.localhost")
    with requests.Session() as jar:
        login = platform.get("sticky.localhost", "/login", session=jar)
        pinned = login.json()["name"]
        assert login.headers["Set-Cookie"].count("__PAAS_INSTANCE=") == 1
        assert jar.cookies["__PAAS_INSTANCE"] == f"inst-{pinned}"
        assert jar.cookies["JSESSIONID"] == f"{pinned}-session"
        for _ in range(3):  # new connections, too: any nginx worker
            with requests.Session() as fresh:
                fresh.cookies.update(jar.cookies)
                names = {platform.get("sticky.localhost", session=fresh).json()["name"]
                         for _ in range(3)}
            assert names == {pinned}
        # Without the cookie, requests are balanced as usual.
        assert len({platform.get("sticky.localhost").json()["name"] for _ in range(6)}) > 1

        gone = next(s for s in servers if s.name == pinned)
        platform.deregister(gone)
        gone.stop()
        platform.wait_synced()
        names = [platform.get("sticky.localhost", session=jar) for _ in range(6)]
        assert all(r.status_code == 200 for r in names)
        assert {r.json()["name"] for r in names} <= {s.name for s in servers} - {pinned}


# -- HTTPS --------------------------------------------------------------------------------------


def curl(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["curl", "-sS", "--max-time", "10", *args], capture_output=True,
                          text=True, check=False)


@pytest.mark.skipif(shutil.which("curl") is None, reason="needs curl")
def test_https_with_a_certificate_and_the_redirect(
    platform: Platform, tmp_path: Path
) -> None:
    cert, key = self_signed(tmp_path, "example.test")
    platform.start_instance("tls")
    # As the controller writes it: the key sealed with the platform key.
    sealed_key = load_box(platform.router.settings).seal(key.read_text())
    platform.add_certificate(Certificate("example.test", cert.read_text(), "f" * 64, sealed_key))
    platform.map(route("secure.example.test", "tls", https_redirect=True),
                 route("open.example.test", "tls"))
    platform.wait_answer("open.example.test")
    host, port = "secure.example.test", platform.https_port
    done = curl("--cacert", str(cert), "--resolve", f"{host}:{port}:127.0.0.1",
                f"https://{host}:{port}/x?y=1")
    assert done.returncode == 0, done.stderr
    seen = json.loads(done.stdout)
    assert seen["headers"]["x-forwarded-proto"] == "https" and seen["path"] == "/x?y=1"
    h2 = curl("--http2", "-s", "-o", "/dev/null", "-w", "%{http_version}", "--cacert",
              str(cert), "--resolve", f"{host}:{port}:127.0.0.1", f"https://{host}:{port}/")
    assert h2.stdout == "2", h2.stderr  # HTTP/2 when the client offers it

    redirect = platform.get(host, "/x?y=1")
    assert redirect.status_code == 308
    assert redirect.headers["Location"] == f"https://{host}:{port}/x?y=1"
    assert platform.get("open.example.test").status_code == 200  # no redirect asked

    unknown = curl("-k", "--resolve", f"nobody.test:{port}:127.0.0.1",
                   f"https://nobody.test:{port}/")
    assert unknown.returncode != 0  # no certificate for this name: handshake refused
    certs = platform.router.certs_dir
    assert oct(certs.stat().st_mode & 0o777) == "0o700"
    assert {f.suffix for f in certs.iterdir()} == {".pem", ".key"}


# -- live updates -------------------------------------------------------------------------------


def test_a_route_change_reaches_nginx_within_a_second(platform: Platform) -> None:
    """From the controller's write to the router's acknowledgement and nginx answering."""
    platform.start_instance("fast")
    platform.wait_synced()
    platform.map(route("fast.localhost", "fast"))
    assert platform.wait_answer("fast.localhost", timeout=3) < 1.0
    time.sleep(0.1)
    platform.unmap(route("fast.localhost", "fast").guid)
    assert platform.wait_answer("fast.localhost", status=404, timeout=3) < 1.0


def keep_alive_client(port: int, stop: Any, ready: Any, results: Any) -> None:
    """GETs on one keep-alive connection (requests never retries) until ``stop``; puts
    (answered, failures) on ``results``."""
    done, failures = 0, []
    with requests.Session() as session:
        session.get(f"http://127.0.0.1:{port}/", headers={"Host": "storm.localhost"}, timeout=10)
        ready.put(True)
        while not stop.is_set():
            try:
                r = session.get(f"http://127.0.0.1:{port}/", headers={"Host": "storm.localhost"},
                                timeout=10)
                if r.status_code != 200:
                    failures.append(f"{r.status_code} {r.text[:100]}")
                done += 1
            except requests.RequestException as e:
                failures.append(repr(e))
    results.put((done, failures))


def test_a_reload_storm_fails_no_request(platform: Platform) -> None:
    """Keep-alive clients that never retry (requests does not) see no error while the
    config changes every 0.2 s: before each reload the old workers close every connection
    after its answer, so none is idle when they are retired."""
    for i in range(2):
        platform.start_instance("storm", i)
    platform.start_instance("churn")
    platform.map(route("storm.localhost", "storm"))
    platform.wait_answer("storm.localhost")
    reloads_before = platform.router.reloads
    # Clients in processes of their own: in this process the router's thread would hold
    # them back (the GIL), and a client that pauses longer than the router's close window
    # is an idle keep-alive client, whose next request may meet any close (a timeout's too).
    ctx = multiprocessing.get_context("spawn")
    stop, ready, results = ctx.Event(), ctx.Queue(), ctx.Queue()
    clients = [ctx.Process(target=keep_alive_client, args=(platform.port, stop, ready, results))
               for _ in range(4)]
    for t in clients:
        t.start()
    for _ in clients:
        ready.get(timeout=60)
    try:
        end = time.monotonic() + 5
        n = 0
        while time.monotonic() < end:
            n += 1
            churn = route(f"churn{n % 3}.localhost", "churn")
            if n % 2:
                platform.map(churn)
            else:
                platform.unmap(*(r.guid for r in list(platform.routes.values())
                                 if r.app_name == "churn"))
            time.sleep(0.2)
    finally:
        stop.set()
        outcomes = [results.get(timeout=20) for _ in clients]
        for t in clients:
            t.join(10)
    failures = [f for _, fails in outcomes for f in fails]
    assert failures == []
    assert sum(n for n, _ in outcomes) > 100
    assert platform.router.reloads - reloads_before >= 10


