"""Routes through the whole platform: the CLI maps them, the controller writes the table, the
router serves it through real nginx, with instances in real containers."""

from __future__ import annotations

import subprocess
import time
from collections import Counter

import docker
import pytest
import requests

from contracts.labels import LABEL_APP_NAME, LABEL_INDEX, LABEL_PLATFORM
from tests.integration.runtime_helpers import runtime_app, wait_for

pytestmark = pytest.mark.usefixtures("dump_logs_on_failure")
A, B = "rt-a", "rt-b"


@pytest.fixture(scope="module")
def apps(platform, tmp_path_factory):
    root = tmp_path_factory.mktemp("routes")
    pushed = platform.paas("push", A, "-p", str(runtime_app(root, "va")), "-i", "3")
    assert pushed.returncode == 0, pushed.stdout + pushed.stderr
    pushed = platform.paas("push", B, "-p", str(runtime_app(root, "vb")), "--no-route")
    assert pushed.returncode == 0, pushed.stdout + pushed.stderr
    assert "with no route" in pushed.stdout
    yield
    for name in (A, B):
        platform.paas("delete", name, "-f")


def get(platform, host: str, path: str = "/", session=None, **kw):
    return (session or requests).get(
        f"http://127.0.0.1:{platform.settings.router_port}{path}", headers={"Host": host},
        timeout=5, allow_redirects=False, **kw)


def body(platform, host: str, path: str = "/") -> str:
    r = get(platform, host, path)
    return r.text if r.status_code == 200 else f"{r.status_code}"


def test_three_instances_answer_in_turn(platform, apps):
    host = f"{A}.localhost"
    assert wait_for(lambda: len({body(platform, host) for _ in range(6)}) == 3, timeout=30)
    seen = Counter(body(platform, host) for _ in range(60))
    assert sorted(seen) == [f"va - index={i}\n" for i in range(3)]
    assert all(10 <= n <= 30 for n in seen.values()), seen  # round-robin, not one favourite


def test_path_routes_go_to_their_app_and_move_only_once_unmapped(platform, apps):
    host = f"{A}.localhost"
    assert get(platform, f"{B}.localhost").status_code == 404  # pushed with no route
    mapped = platform.paas("map-route", B, "localhost", "--hostname", A, "--path", "/api")
    assert mapped.returncode == 0, mapped.stderr
    assert wait_for(lambda: body(platform, host, "/api").startswith("vb "), timeout=5)
    assert body(platform, host, "/api/users/1").startswith("vb ")
    assert body(platform, host, "/").startswith("va ")
    assert body(platform, host, "/apix").startswith("va ")  # a path prefix is whole segments
    listed = platform.paas("routes")
    assert f"{A}.localhost/api" in listed.stdout and B in listed.stdout
    taken = platform.paas("map-route", A, "localhost", "--hostname", A, "--path", "/api")
    assert taken.returncode != 0 and f"mapped to app '{B}'" in taken.stderr
    unmapped = platform.paas("unmap-route", B, "localhost", "--hostname", A, "--path", "/api")
    assert unmapped.returncode == 0, unmapped.stderr
    assert wait_for(lambda: body(platform, host, "/api").startswith("va "), timeout=5)


def test_a_killed_instance_is_retried_on_another(platform, apps):
    host = f"{A}.localhost"
    assert wait_for(lambda: len({body(platform, host) for _ in range(6)}) == 3, timeout=30)
    container = _container(platform, A, 1)
    container.kill()
    statuses = Counter(get(platform, host).status_code for _ in range(30))
    assert statuses == {200: 30}, statuses
    assert wait_for(lambda: len({body(platform, host) for _ in range(6)}) == 3, timeout=30)


def test_a_session_cookie_pins_the_client_to_its_instance(platform, apps):
    host = f"{A}.localhost"
    assert wait_for(lambda: len({body(platform, host) for _ in range(6)}) == 3, timeout=30)
    session = requests.Session()
    first = get(platform, host, "/session", session=session)
    assert first.status_code == 200 and "JSESSIONID" in session.cookies
    assert "__PAAS_INSTANCE" in session.cookies, first.headers
    pinned = {get(platform, host, session=session).text for _ in range(12)}
    assert pinned == {first.text}
    # Without the cookie the instances still take turns.
    assert len({body(platform, host) for _ in range(6)}) == 3
    # The pinned instance goes: the client lands on another one, without an error.
    index = int(first.text.rsplit("=", 1)[1])
    _container(platform, A, index).kill()
    statuses = Counter(get(platform, host, session=session).status_code for _ in range(10))
    assert statuses == {200: 10}, statuses


def test_https_for_a_private_domain_with_wildcard_and_redirect(platform, apps, tmp_path):
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
                    "-subj", "/CN=secure.test", "-addext",
                    "subjectAltName=DNS:secure.test,DNS:*.secure.test",
                    "-keyout", str(key), "-out", str(cert)], check=True, capture_output=True)
    assert platform.paas("create-domain", "secure.test").returncode == 0
    wrong = platform.paas("create-certificate", "secure.test", "--cert", str(cert),
                          "--key", str(cert))
    assert wrong.returncode != 0 and "not an unencrypted PEM private key" in wrong.stderr
    made = platform.paas("create-certificate", "secure.test", "--cert", str(cert),
                         "--key", str(key))
    assert made.returncode == 0, made.stderr
    for args in ((A, "secure.test", "--hostname", "www", "--redirect-https"),
                 (B, "secure.test", "--hostname", "*")):
        mapped = platform.paas("map-route", *args)
        assert mapped.returncode == 0, mapped.stderr
    port = platform.settings.router_https_port

    def https(host: str) -> str:
        done = subprocess.run(
            ["curl", "-sS", "--max-time", "5", "--cacert", str(cert), "--resolve",
             f"{host}:{port}:127.0.0.1", f"https://{host}:{port}/"],
            capture_output=True, text=True)
        return done.stdout if done.returncode == 0 else done.stderr

    assert wait_for(lambda: https("www.secure.test").startswith("va "), timeout=5), \
        https("www.secure.test")
    assert wait_for(lambda: https("any.secure.test").startswith("vb "), timeout=5), \
        https("any.secure.test")
    redirect = get(platform, "www.secure.test", "/x?y=1")
    assert redirect.status_code == 308
    assert redirect.headers["Location"] == f"https://www.secure.test:{port}/x?y=1"
    assert body(platform, "other.secure.test").startswith("vb ")  # no redirect asked
    shown = platform.paas("app", A, "--json")
    assert f"https://www.secure.test:{port}" in shown.stdout


def _container(platform, app: str, index: int):
    client = docker.from_env()
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        found = client.containers.list(filters={"label": [
            f"{LABEL_PLATFORM}={platform.platform_id}", f"{LABEL_APP_NAME}={app}",
            f"{LABEL_INDEX}={index}"]})
        if found:
            return found[0]
        time.sleep(0.2)
    raise AssertionError(f"no container for {app} #{index}")
