"""Routes, domains and certificates: the API with a real SQLite database and a Redis stand-in
holding the route table the router reads."""

from __future__ import annotations

import datetime as dt

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from contracts import keys
from contracts.routing import RouteTable, read_route_table, write_route_table
from contracts.secretbox import load_box
from controller import routing
from controller.health.manager import HealthManager
from tests.unit.fakes import FakeCelery
from tests.unit.test_controller_api import package, push
from tests.unit.test_observe import developer


def table(env) -> dict[str, tuple[str, str, str, bool]]:
    """The route table in Redis: url -> (app, balance, domain, https redirect)."""
    stored = read_route_table(env.redis)
    assert stored is not None, "no route table in Redis"
    return {r.url: (r.app_name, r.balance, r.domain, r.https_redirect) for r in stored.routes}


def test_a_new_app_gets_its_default_route_in_the_router_table(env):
    assert push(env.client, "myapp", package()).status_code == 201
    assert table(env) == {"myapp.localhost": ("myapp", "round-robin", "localhost", False)}
    app = env.client.get("/v1/apps/myapp").json
    assert app["urls"] == ["http://myapp.localhost:8080"] and app["routes"] == ["myapp.localhost"]
    assert (keys.ROUTES_CHANGED, "route-table") in env.redis.published


def test_map_routes_under_shared_and_private_domains_with_paths_and_options(env):
    push(env.client, "myapp", package())
    r = env.client.post("/v1/domains", json={"name": "Example.COM"})
    assert r.status_code == 201 and r.json["shared"] is False and r.json["name"] == "example.com"
    for body, url in (
        ({"domain": "example.com"}, "example.com"),
        ({"domain": "example.com", "hostname": "*"}, "*.example.com"),
        ({"domain": "example.com", "hostname": "api", "path": "v1/", "balance":
          "least-connections"}, "api.example.com/v1"),
        ({"url": "https://api.example.com/v2"}, "api.example.com/v2"),
        ({"domain": "localhost", "hostname": "www"}, "www.localhost"),
    ):
        r = env.client.post("/v1/apps/myapp/routes", json=body)
        assert r.status_code == 201, r.json
        assert r.json["url"] == url
    assert table(env)["api.example.com/v1"] == ("myapp", "least-connections", "example.com",
                                                 False)
    assert len(table(env)) == 6
    # Mapping it again changes its options only.
    r = env.client.post("/v1/apps/myapp/routes", json={"domain": "example.com",
                                                       "hostname": "api", "path": "/v1",
                                                       "https_redirect": True})
    assert r.status_code == 200 and r.json["balance"] == "least-connections"
    assert table(env)["api.example.com/v1"][3] is True
    listed = env.client.get("/v1/routes").json["routes"]
    assert [x["url"] for x in listed][:2] == ["*.example.com", "api.example.com/v1"]


def test_a_route_belongs_to_one_app_at_a_time(env):
    push(env.client, "one", package())
    push(env.client, "two", package())
    r = env.client.post("/v1/apps/two/routes", json={"domain": "localhost", "hostname": "one"})
    assert r.status_code == 409
    assert "mapped to app 'one'" in r.json["error"] and "unmap" in r.json["error"]
    assert table(env)["one.localhost"][0] == "one"
    # A new app whose default route is taken is refused before anything is made.
    env.client.post("/v1/apps/two/routes", json={"domain": "localhost", "hostname": "three"})
    r = push(env.client, "three", package())
    assert r.status_code == 409 and "--no-route" in r.json["error"]
    assert env.client.get("/v1/apps/three").status_code == 404
    # Once unmapped, it can move.
    r = env.client.delete("/v1/apps/one/routes?domain=localhost&hostname=one")
    assert r.status_code == 200 and r.json["unmapped"] == "one.localhost"
    assert env.client.post("/v1/apps/two/routes",
                           json={"domain": "localhost", "hostname": "one"}).status_code == 201
    assert table(env)["one.localhost"][0] == "two"
    r = env.client.delete("/v1/apps/one/routes?domain=localhost&hostname=one")
    assert r.status_code == 404 and "paas routes" in r.json["error"]


@pytest.mark.parametrize(("body", "status", "words"), [
    ({"domain": "localhost"}, 400, "give a hostname"),
    ({"domain": "nowhere.test", "hostname": "a"}, 404, "no domain"),
    ({"domain": "localhost", "hostname": "a.b"}, 400, "not a hostname"),
    ({"domain": "localhost", "hostname": "a", "path": "/x y"}, 400, "not a route path"),
    ({"domain": "localhost", "hostname": "a", "path": "/$host"}, 400, "not a route path"),
    ({"domain": "localhost", "hostname": "a", "balance": "random"}, 400, "load balancing"),
    ({"domain": "localhost", "hostname": "a", "https_redirect": "yes"}, 400, "true or false"),
    ({"url": "a.localhost:8080/x"}, 400, "has a port"),
    ({"url": "a.nowhere.test"}, 400, "no domain"),
])
def test_bad_routes_get_a_clear_error_and_change_nothing(env, body, status, words):
    push(env.client, "myapp", package())
    before = table(env)
    r = env.client.post("/v1/apps/myapp/routes", json=body)
    assert r.status_code == status and words in r.json["error"], r.json
    assert table(env) == before


def test_teams_own_their_private_domains(env):
    dev = developer(env)
    assert push(env.client, "ours", package()).status_code == 201
    r = env.client.post("/v1/domains", json={"name": "theirs.test"}, headers=dev)
    assert r.status_code == 201 and r.json["team"] == "other"
    r = env.client.post("/v1/domains", json={"name": "shared.test", "shared": True}, headers=dev)
    assert r.status_code == 403 and "admins" in r.json["error"]
    assert push_as(env, dev, "theirs").status_code == 201
    r = env.client.post("/v1/apps/theirs/routes", json={"domain": "localhost",
                                                         "hostname": "*"}, headers=dev)
    assert r.status_code == 403 and "wildcard" in r.json["error"]
    r = env.client.post("/v1/apps/theirs/routes", json={"domain": "theirs.test"}, headers=dev)
    assert r.status_code == 201
    # ...and the other team sees its own domains and the shared ones only.
    env.client.post("/v1/domains", json={"name": "admins.test"})
    names = [d["name"] for d in env.client.get("/v1/domains", headers=dev).json["domains"]]
    assert names == ["localhost", "theirs.test"]
    r = env.client.post("/v1/domains", json={"name": "x.admins.test"}, headers=dev)
    assert r.status_code == 409 and "x.admins.test is taken by another team" in r.json["error"]
    r = env.client.delete("/v1/domains/theirs.test", headers=dev)
    assert r.status_code == 409 and "theirs" in r.json["error"]
    r = env.client.delete("/v1/domains/localhost")
    assert r.status_code == 409 and "default domain" in r.json["error"]
    env.client.delete("/v1/apps/theirs/routes?domain=theirs.test", headers=dev)
    assert env.client.delete("/v1/domains/theirs.test", headers=dev).status_code == 200


def push_as(env, headers: dict[str, str], name: str):
    import io
    import json

    form = {"options": json.dumps({}), "package": (io.BytesIO(package()), "app.tar.gz")}
    return env.client.post(f"/v1/apps/{name}/push", data=form, headers=headers,
                           content_type="multipart/form-data")


def test_push_maps_manifest_routes_or_none(env):
    env.client.post("/v1/domains", json={"name": "example.com"})
    r = push(env.client, "myapp", package(), {"routes": ["example.com/shop", "www.localhost"]})
    assert r.status_code == 201, r.json
    assert set(table(env)) == {"example.com/shop", "www.localhost"}
    r = push(env.client, "myapp", package(), {"no_route": True})
    assert r.status_code == 201 and table(env) == {}
    assert env.client.get("/v1/apps/myapp").json["urls"] == []
    r = push(env.client, "myapp", package(), {"no_route": True, "routes": ["a.localhost"]})
    assert r.status_code == 400 and "not both" in r.json["error"]
    types = [e["type"] for e in env.client.get("/v1/apps/myapp/events?order=asc").json["events"]]
    assert types.count("route.mapped") == 2 and types.count("route.unmapped") == 2


def test_deleting_an_app_takes_its_routes_out_of_the_table(env):
    push(env.client, "myapp", package())
    env.client.post("/v1/apps/myapp/routes", json={"domain": "localhost", "hostname": "www"})
    assert env.client.delete("/v1/apps/myapp").status_code == 200
    assert table(env) == {}
    assert env.client.get("/v1/routes").json["routes"] == []


def certificate(names: list[str], *, days: int = 30, key=None):
    key = key or ec.generate_private_key(ec.SECP256R1())
    now = dt.datetime.now(dt.UTC)
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, names[0])])
    cert = (x509.CertificateBuilder().subject_name(subject).issuer_name(subject)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(days=2))
            .not_valid_after(now + dt.timedelta(days=days))
            .add_extension(x509.SubjectAlternativeName([x509.DNSName(n) for n in names]),
                           critical=False)
            .sign(key, hashes.SHA256()))
    pem_key = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                serialization.NoEncryption()).decode()
    return cert.public_bytes(serialization.Encoding.PEM).decode(), pem_key


def test_certificates_are_checked_stored_and_reach_the_router_table(env):
    env.client.post("/v1/domains", json={"name": "example.com"})
    cert, key = certificate(["*.example.com", "example.com"])
    other_cert, other_key = certificate(["example.com"])
    for body, words in (
        ({"cert": "nope", "key": key}, "not a PEM certificate"),
        ({"cert": cert, "key": "nope"}, "not an unencrypted PEM private key"),
        ({"cert": cert, "key": other_key}, "does not belong"),
        ({"cert": certificate(["other.test"])[0], "key": None}, "give both"),
    ):
        r = env.client.put("/v1/certificates/example.com", json=body)
        assert r.status_code == 400 and words in r.json["error"], r.json
    expired_key = ec.generate_private_key(ec.SECP256R1())
    r = env.client.put("/v1/certificates/example.com", json=dict(zip(
        ("cert", "key"), certificate(["example.com"], days=-1, key=expired_key), strict=True)))
    assert r.status_code == 400 and "expired" in r.json["error"]
    r = env.client.put("/v1/certificates/example.com", json=dict(zip(
        ("cert", "key"), certificate(["other.test"]), strict=True)))
    assert r.status_code == 400 and "not example.com" in r.json["error"]
    assert read_route_table(env.redis) is None or not read_route_table(env.redis).certificates

    r = env.client.put("/v1/certificates/example.com", json={"cert": cert, "key": key})
    assert r.status_code == 201, r.json
    assert r.json["names"] == ["*.example.com", "example.com"] and "key" not in r.json
    stored = read_route_table(env.redis)
    # The table names the certificate and carries its key sealed, never readable.
    [entry] = stored.certificates
    assert (entry.domain, entry.cert_pem, len(entry.fingerprint)) == ("example.com", cert, 64)
    assert key not in stored.to_json() and load_box(env.settings).open(entry.key_sealed) == key
    r = env.client.put("/v1/certificates/example.com",
                       json={"cert": other_cert, "key": other_key})
    assert r.status_code == 200
    listed = env.client.get("/v1/certificates").json["certificates"]
    assert [c["domain"] for c in listed] == ["example.com"] and "key_pem" not in listed[0]
    assert env.client.delete("/v1/certificates/example.com").status_code == 200
    assert read_route_table(env.redis).certificates == []


def test_the_health_manager_rewrites_a_lost_table_and_never_an_older_one(env):
    push(env.client, "myapp", package())
    manager = HealthManager(env.settings, env.app.extensions["paas.sessionmaker"], env.redis,
                            FakeCelery())
    env.redis.data.pop(keys.ROUTE_TABLE)  # Redis restarted
    manager._repair_route_table()
    assert table(env) == {"myapp.localhost": ("myapp", "round-robin", "localhost", False)}
    # A write read from the database earlier than the stored table loses.
    newer = read_route_table(env.redis)
    assert not write_route_table(env.redis, RouteTable(revision=newer.revision - 1))
    assert table(env) == {"myapp.localhost": ("myapp", "round-robin", "localhost", False)}
    with env.app.extensions["paas.sessionmaker"]() as session:
        assert not routing.republish(env.redis, session)  # equal: nothing written


class RecordingApi:
    """The CLI's API client, answering every call with ``answer`` and recording it."""

    def __init__(self, answer: dict) -> None:
        self.answer = answer
        self.asked: list[tuple[str, str, dict]] = []

    def __getattr__(self, method: str):
        def call(path: str, **kwargs: object) -> dict:
            self.asked.append((method, path, kwargs))
            return self.answer
        return call


def test_the_cli_sends_what_the_route_commands_say(monkeypatch, tmp_path):
    from click.testing import CliRunner

    import cli.main
    import cli.routes

    monkeypatch.setenv("PAAS_HOME", str(tmp_path / "home"))
    route = {"url": "api.example.com/v1", "balance": "least-connections",
             "https_redirect": True, "unmapped": "api.example.com/v1", "domain": "example.com",
             "names": ["example.com"], "not_after": "2030-01-01T00:00:00+00:00"}
    api = RecordingApi(route)
    monkeypatch.setattr(cli.routes, "client", lambda: api)
    run = CliRunner().invoke
    result = run(cli.main.main, ["map-route", "myapp", "example.com", "-n", "api", "--path",
                                 "/v1", "--least-connections", "--redirect-https"])
    assert result.exit_code == 0, result.output
    assert "api.example.com/v1 → myapp (least-connections, HTTPS only)" in result.output
    result = run(cli.main.main, ["unmap-route", "myapp", "example.com", "--hostname", "api",
                                 "--path", "/v1"])
    assert result.exit_code == 0, result.output
    (cert := tmp_path / "c.pem").write_text("CERT")
    (key := tmp_path / "k.pem").write_text("KEY")
    result = run(cli.main.main, ["create-certificate", "example.com", "--cert", str(cert),
                                 "--key", str(key)])
    assert result.exit_code == 0, result.output
    assert api.asked == [
        ("post", "/apps/myapp/routes", {"json": {"domain": "example.com", "hostname": "api",
                                                 "path": "/v1", "balance": "least-connections",
                                                 "https_redirect": True}}),
        ("delete", "/apps/myapp/routes", {"params": {"domain": "example.com",
                                                     "hostname": "api", "path": "/v1"}}),
        ("put", "/certificates/example.com", {"json": {"cert": "CERT", "key": "KEY"}}),
    ]
    result = run(cli.main.main, ["create-certificate", "example.com", "--cert",
                                 str(tmp_path / "missing.pem"), "--key", str(key)])
    assert result.exit_code != 0 and "missing.pem" in result.output
