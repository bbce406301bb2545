"""Two teams on the real platform, team B attacking team A: B cannot take A's host names,
domains or certificates, and A's app answers B as an app that does not exist, on every endpoint
of the API and in the CLI."""

from __future__ import annotations

import hashlib
import io
import json
import socket
import ssl
import subprocess
import tarfile
from dataclasses import dataclass
from pathlib import Path

import pytest
import requests
from flask import Flask

from launcher.sandbox import paas_command
from tests.integration.runtime_helpers import wait_for
from tests.unit.test_routes_api import certificate

pytestmark = pytest.mark.usefixtures("dump_logs_on_failure")
FIXTURE = Path(__file__).parents[1] / "fixtures" / "procfile-only"
STORE, SHOP = "tn-store", "tn-shop"  # team A's app, and the host name it answers on
BAPP = "tn-bapp"  # team B's app
GONE = "tn-nosuch"  # an app nobody has


@dataclass
class Tenant:
    token: str
    home: Path

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}"}


def cli(platform, who: Tenant, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([paas_command(), *args], env={**platform.cli_env(),
                                                        "PAAS_HOME": str(who.home)},
                          capture_output=True, text=True, timeout=600)


def api(platform, who: Tenant, method: str, path: str, **kw) -> requests.Response:
    return requests.request(method, f"{platform.settings.api_url}{path}", headers=who.headers,
                            timeout=15, **kw)


def tiny_package() -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        for name in ("Procfile", "serve.sh"):
            data = (FIXTURE / name).read_bytes()
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


@pytest.fixture(scope="module")
def teams(platform, tmp_path_factory):
    """Team A pushed STORE (answering on SHOP.localhost) and owns the domain a-corp.test; team B
    made BAPP (through the API: its build need not finish) and owns b-corp.test."""
    root = tmp_path_factory.mktemp("tenancy")
    made = {}
    for who in ("a", "b"):
        home = root / who
        home.mkdir()
        token = platform.create_token(f"dev-{who}", f"tenancy-{who}")
        (home / "config").write_text(json.dumps({"target": platform.settings.api_url,
                                                 "token": token}))
        made[who] = Tenant(token, home)
    a, b = made["a"], made["b"]
    pushed = cli(platform, a, "push", STORE, "-p", str(FIXTURE), "--route", f"{SHOP}.localhost")
    assert pushed.returncode == 0, pushed.stdout + pushed.stderr
    assert api(platform, a, "POST", "/v1/domains", json={"name": "a-corp.test"}).status_code \
        == 201
    r = api(platform, b, "POST", f"/v1/apps/{BAPP}/push",
            files={"package": ("app.tar.gz", tiny_package())},
            data={"options": json.dumps({"no_route": True})})
    assert r.status_code == 201, r.text
    assert api(platform, b, "POST", "/v1/domains", json={"name": "b-corp.test"}).status_code \
        == 201
    yield type("Teams", (), {"a": a, "b": b})
    for who, app, domain in ((a, STORE, "a-corp.test"), (b, BAPP, "b-corp.test")):
        cli(platform, who, "delete", app, "-f")
        api(platform, who, "DELETE", f"/v1/domains/{domain}")


def answers_as_a(platform) -> str:
    r = requests.get(f"http://127.0.0.1:{platform.settings.router_port}/hello.txt",
                     headers={"Host": f"{SHOP}.localhost"}, timeout=5)
    return r.text if r.status_code == 200 else str(r.status_code)


# -- routes, domains, certificates ---------------------------------------------------------

def test_team_b_cannot_serve_a_path_on_team_as_host_name(platform, teams):
    assert wait_for(lambda: answers_as_a(platform) != "503", timeout=30)
    before = answers_as_a(platform)
    for body in ({"domain": "localhost", "hostname": SHOP, "path": "/login"},
                 {"url": f"{SHOP}.localhost/hello.txt"}):
        r = api(platform, teams.b, "POST", f"/v1/apps/{BAPP}/routes", json=body)
        assert r.status_code == 409, r.text
        assert r.json()["error"] == (f"{SHOP}.localhost is taken by another team: choose "
                                     "another hostname.")
    shown = cli(platform, teams.b, "map-route", BAPP, "localhost", "--hostname", SHOP,
                "--path", "/hello.txt")
    assert shown.returncode == 1 and "taken by another team" in shown.stderr
    assert STORE not in shown.stdout + shown.stderr
    r = api(platform, teams.b, "POST", f"/v1/apps/{BAPP}/routes",
            json={"domain": "localhost", "hostname": "*"})
    assert r.status_code == 403 and "only platform admins" in r.json()["error"]
    assert answers_as_a(platform) == before  # still team A's app
    listed = api(platform, teams.b, "GET", "/v1/routes").json()["routes"]
    assert all(SHOP not in route["url"] for route in listed)


@pytest.mark.parametrize(("name", "status", "words"), [
    ("localhost", 409, "exists already"),
    (f"{SHOP}.localhost", 409, "taken by another team"),  # a host team A routes
    ("tn-free.localhost", 403, "under the shared domain localhost"),  # pre-registration
    ("a-corp.test", 409, "taken by another team"),
    ("test", 409, "taken by another team"),  # above team A's domain
    ("x.a-corp.test", 409, "taken by another team"),
])
def test_team_b_cannot_make_a_domain_over_other_names(platform, teams, name, status, words):
    r = api(platform, teams.b, "POST", "/v1/domains", json={"name": name})
    assert r.status_code == status and words in r.json()["error"], r.text
    names = {d["name"] for d in api(platform, teams.b, "GET", "/v1/domains").json()["domains"]}
    assert names == {"localhost", "b-corp.test"}


def _served_fingerprint(platform, host: str) -> str | None:
    """The sha256 of the certificate the router presents for ``host`` (None: it refuses)."""
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    try:
        with socket.create_connection(("127.0.0.1", platform.settings.router_https_port),
                                      timeout=5) as raw, \
                context.wrap_socket(raw, server_hostname=host) as tls:
            return hashlib.sha256(tls.getpeercert(binary_form=True)).hexdigest()
    except (ssl.SSLError, ConnectionError):
        return None


def test_a_certificate_covers_only_the_teams_names_and_is_served_only_for_them(platform, teams):
    for names in (["b-corp.test", f"{SHOP}.localhost"], ["b-corp.test", "*.localhost"],
                  ["b-corp.test", "a-corp.test"]):
        cert, key = certificate(names)
        r = api(platform, teams.b, "PUT", "/v1/certificates/b-corp.test",
                json={"cert": cert, "key": key})
        assert r.status_code == 400, r.text
        assert r.json()["error"].startswith(f"the certificate also covers {names[1]}, not "
                                            "your team's")
    cert, key = certificate(["b-corp.test", "*.b-corp.test"])
    r = api(platform, teams.b, "PUT", "/v1/certificates/b-corp.test",
            json={"cert": cert, "key": key})
    assert r.status_code == 201, r.text
    r = api(platform, teams.b, "POST", f"/v1/apps/{BAPP}/routes", json={"domain": "b-corp.test"})
    assert r.status_code == 201, r.text
    listed = api(platform, teams.b, "GET", "/v1/certificates").json()["certificates"]
    fingerprint = listed[0]["fingerprint"]
    assert wait_for(lambda: _served_fingerprint(platform, "b-corp.test") == fingerprint,
                    timeout=15)
    assert _served_fingerprint(platform, f"{SHOP}.localhost") != fingerprint
    assert api(platform, teams.a, "GET", "/v1/certificates").json()["certificates"] == []
    r = api(platform, teams.b, "PUT", "/v1/certificates/a-corp.test",
            json={"cert": cert, "key": key})
    assert r.status_code == 404 and "there is no domain 'a-corp.test'" in r.json()["error"]


# -- team A's app does not exist for team B ------------------------------------------------

def _endpoints() -> list[tuple[str, str, str]]:
    """(method, rule, endpoint) of every API route about one app or one build."""
    from controller.api import v1

    flask_app = Flask("endpoints")
    flask_app.register_blueprint(v1)
    found = []
    for rule in flask_app.url_map.iter_rules():
        if rule.rule.startswith(("/v1/apps/<name>", "/v1/builds/<guid>")):
            found += [(m, rule.rule, rule.endpoint)
                      for m in sorted(rule.methods - {"HEAD", "OPTIONS"})]
    return found


def test_every_endpoint_answers_team_b_about_team_as_app_as_about_no_app(platform, teams):
    events = api(platform, teams.a, "GET", f"/v1/apps/{STORE}/events").json()["events"]
    build = next(e["data"]["build"] for e in events if "build" in (e.get("data") or {}))
    endpoints = _endpoints()
    assert len(endpoints) >= 20, endpoints
    for method, rule, endpoint in endpoints:
        seen = []
        for name, guid in ((STORE, build), (GONE, "0" * 8 + build[8:])):
            url = (rule.replace("<name>", name).replace("<process_type>", "web")
                   .replace("<int:version>", "1").replace("<guid>", guid))
            body = {} if method in ("POST", "PUT", "PATCH") else None
            r = api(platform, teams.b, method, url, json=body)
            assert r.headers["Content-Type"].startswith("application/json"), (method, url)
            seen.append((r.status_code, r.text.replace(name, "NAME").replace(guid, "GUID")))
        assert seen[0] == seen[1], (method, rule, seen)
        if endpoint == "v1.resource_match":  # as for a new name: the caller's own cache
            continue
        assert seen[0][0] != 403 and not 200 <= seen[0][0] < 300, (method, rule, seen)
        if endpoint != "v1.push":  # a push without a package: the same 400 either way
            assert seen[0][0] == 404, (method, rule, seen)
    # A real push of that name: app names are a team's, so it makes team B's own app and
    # leaves team A's as it was.
    r = api(platform, teams.b, "POST", f"/v1/apps/{STORE}/push",
            files={"package": ("app.tar.gz", tiny_package())}, data={"options": "{}"})
    assert r.status_code == 201, r.text
    shown = api(platform, teams.a, "GET", f"/v1/apps/{STORE}")
    assert shown.status_code == 200 and shown.json()["routes"] == [f"{SHOP}.localhost"]
    assert shown.json()["guid"] != r.json()["app"]["guid"]
    assert api(platform, teams.b, "DELETE", f"/v1/apps/{STORE}").status_code == 200


@pytest.mark.parametrize("command", [("app",), ("logs", "--recent"), ("logs",),
                                     ("delete", "-f")])
def test_the_cli_tells_team_b_that_team_as_app_does_not_exist(platform, teams, command):
    outs = []
    for name in (STORE, GONE):
        shown = cli(platform, teams.b, command[0], name, *command[1:])
        assert shown.returncode == 1, shown.stdout + shown.stderr
        outs.append((shown.stdout + shown.stderr).replace(name, "NAME"))
    assert outs[0] == outs[1] and "there is no app named 'NAME'" in outs[0]
    assert cli(platform, teams.a, "app", STORE).returncode == 0
