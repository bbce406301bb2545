"""The router through real nginx: request headers, JSON error pages, RTR lines in ``paas logs``."""

from __future__ import annotations

import json
import re

import pytest
import requests

from tests.integration.runtime_helpers import runtime_app, wait_for

pytestmark = pytest.mark.usefixtures("dump_logs_on_failure")
NAME = "rtr-headers"

# Answers every GET with the request headers it received, as JSON.
ECHO_SERVER = '''\
import json
import os
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def do_GET(self):
        body = json.dumps(dict(self.headers)).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


ThreadingHTTPServer(("0.0.0.0", int(os.environ["PORT"])), Handler).serve_forever()
'''


@pytest.fixture(scope="module")
def echo_app(platform, tmp_path_factory):
    folder = runtime_app(tmp_path_factory.mktemp("rtr"))
    (folder / "server.py").write_text(ECHO_SERVER)
    pushed = platform.paas("push", NAME, "-p", str(folder))
    assert pushed.returncode == 0, pushed.stdout + pushed.stderr
    host = platform.app_host(NAME)
    assert wait_for(lambda: platform.router_get(host).status_code == 200, timeout=15)
    yield host
    platform.paas("delete", NAME, "-f")


def get(platform, host: str, path: str = "/", **headers: str) -> requests.Response:
    return requests.get(f"http://127.0.0.1:{platform.settings.router_port}{path}",
                        headers={"Host": host, **headers}, timeout=5)


def test_request_id_and_start_reach_the_app_and_the_id_comes_back(platform, echo_app):
    r = get(platform, echo_app, **{"X-Request-Id": "client-id.42", "Keep-Alive": "300",
                                   "Proxy-Connection": "keep-alive"})
    assert r.status_code == 200
    seen = {k.lower(): v for k, v in r.json().items()}
    assert seen["x-request-id"] == "client-id.42"
    assert r.headers["X-Request-Id"] == "client-id.42"
    assert re.fullmatch(r"t=\d{13}", seen["x-request-start"])
    assert seen["x-forwarded-host"] == echo_app
    assert "keep-alive" not in seen and "proxy-connection" not in seen  # hop-by-hop

    r = get(platform, echo_app, **{"X-Request-Id": "not a token!"})
    seen = {k.lower(): v for k, v in r.json().items()}
    assert re.fullmatch(r"\d+\.\d{3}-\d+-\d+-\d+", seen["x-request-id"])  # made here
    assert r.headers["X-Request-Id"] == seen["x-request-id"]


def test_json_clients_get_a_json_404(platform):
    r = get(platform, "nobody-here.localhost", Accept="application/json")
    assert r.status_code == 404
    assert r.headers["X-Paas-Router-Error"] == "unknown_route"
    assert r.headers["Content-Type"] == "application/json"
    assert r.json()["error"] == "unknown_route"
    html = get(platform, "nobody-here.localhost")
    assert html.status_code == 404 and "<h1>404 Not Found</h1>" in html.text


def test_requests_show_as_rtr_lines_in_paas_logs(platform, echo_app):
    r = get(platform, echo_app, "/rtr-probe?x=1", **{"X-Request-Id": "probe-7"})
    assert r.status_code == 200

    def rtr_lines() -> list[str]:
        shown = platform.paas("logs", NAME, "--recent", "--source", "RTR")
        assert shown.returncode == 0, shown.stderr
        return [x for x in shown.stdout.splitlines() if "/rtr-probe?x=1" in x]

    lines = wait_for(rtr_lines, timeout=10)
    assert lines, platform.paas("logs", NAME, "--recent").stdout
    [line] = lines
    assert "[RTR] GET /rtr-probe?x=1 200 " in line
    assert "instance 0 request-id probe-7" in line
    shown = platform.paas("logs", NAME, "--recent", "--json", "--source", "RTR")
    objs = [json.loads(x) for x in shown.stdout.splitlines() if "rtr-probe" in x]
    assert objs[0]["source"] == "RTR" and objs[0]["instance"] == 0


def test_a_body_over_the_limit_gets_the_413_page(platform, echo_app):
    """nginx refuses on Content-Length alone, before any body is read."""
    import socket

    limit = platform.settings.router_max_body_mb
    request = (f"POST / HTTP/1.1\r\nHost: {echo_app}\r\nAccept: application/json\r\n"
               f"Content-Length: {(limit + 1) * 1024 * 1024}\r\nConnection: close\r\n\r\n")
    with socket.create_connection(("127.0.0.1", platform.settings.router_port), 10) as s:
        s.sendall(request.encode())
        answer = b""
        while chunk := s.recv(65536):
            answer += chunk
    head, _, body = answer.decode().partition("\r\n\r\n")
    assert head.startswith("HTTP/1.1 413"), head
    assert "X-Paas-Router-Error: body_too_large" in head
    assert json.loads(body)["error"] == "body_too_large"
    assert f"{limit} MB" in json.loads(body)["detail"]
