"""Two teams on one platform: host names, private domains and certificates are one team's, and
another team's app, build, route or private domain answers as a name that does not exist."""

from __future__ import annotations

import io
import json
import re

import pytest

from contracts.routing import read_route_table
from controller.models import App, Build, Domain, Route
from tests.unit.test_controller_api import package
from tests.unit.test_observe import developer
from tests.unit.test_routes_api import certificate

GONE_APP = "there is no app named {!r}: 'paas apps' lists yours."


def push_as(env, headers: dict[str, str] | None, name: str, options: dict | None = None):
    form = {"options": json.dumps(options or {}),
            "package": (io.BytesIO(package()), "app.tar.gz")}
    return env.client.post(f"/v1/apps/{name}/push", data=form, headers=headers,
                           content_type="multipart/form-data")


@pytest.fixture
def teams(env):
    """Team A (app ``store`` on ``shop.localhost``, private domain ``a.test``) and team B (app
    ``bapp``); their developers' headers."""
    a, b = developer(env, "teama"), developer(env, "teamb")
    r = push_as(env, a, "store", {"routes": ["shop.localhost"]})
    assert r.status_code == 201, r.json
    assert env.client.post("/v1/domains", json={"name": "a.test"}, headers=a).status_code == 201
    r = env.client.post("/v1/apps/store/routes", json={"domain": "a.test", "hostname": "www"},
                        headers=a)
    assert r.status_code == 201, r.json
    assert push_as(env, b, "bapp").status_code == 201
    return type("Teams", (), {"a": a, "b": b})


def routes(env) -> dict[str, str]:
    return {r.url: r.app_name for r in read_route_table(env.redis).routes}


def rows(env, model: type) -> int:
    with env.app.extensions["paas.sessionmaker"]() as session:
        return session.query(model).count()


# -- host names ----------------------------------------------------------------------------

@pytest.mark.parametrize("body", [
    {"domain": "localhost", "hostname": "shop", "path": "/login"},
    {"domain": "localhost", "hostname": "shop"},
    {"url": "shop.localhost/login"},
    {"url": "https://SHOP.localhost/api/v1"},
])
def test_another_teams_host_name_is_refused_on_every_path(env, teams, body):
    before = routes(env)
    r = env.client.post("/v1/apps/bapp/routes", json=body, headers=teams.b)
    assert r.status_code == 409, r.json
    assert r.json["error"] == "shop.localhost is taken by another team: choose another hostname."
    assert routes(env) == before and rows(env, Route) == 3


def test_a_push_cannot_take_another_teams_host_name_and_an_admin_still_can(env, teams):
    r = push_as(env, teams.b, "bapp", {"routes": ["shop.localhost/admin"]})
    assert r.status_code == 409 and "shop.localhost is taken by another team" in r.json["error"]
    # App names are a team's, host names the platform's: the default route of team B's
    # "shop" (team A's host name) becomes shop-<team>.
    r = push_as(env, teams.b, "shop")
    assert r.status_code == 201, r.json
    assert r.json["app"]["urls"] == ["http://shop-teamb.localhost:8080"]
    assert env.client.delete("/v1/apps/shop", headers=teams.b).status_code == 200
    r = env.client.post("/v1/apps/bapp/routes", json={"domain": "localhost",
                                                      "hostname": "shop2", "path": "/x"},
                        headers=teams.b)
    assert r.status_code == 201  # a free host name is the first mapper's
    r = env.client.post("/v1/apps/store/routes", json={"domain": "localhost",
                                                       "hostname": "shop2"}, headers=teams.a)
    assert r.status_code == 409 and "shop2.localhost is taken" in r.json["error"]
    assert push_as(env, None, "adminapp", {"routes": ["shop.localhost/admin"]}).status_code \
        == 201


def test_a_wildcard_is_refused_where_another_team_routes_a_name_under_the_domain(env, teams):
    r = env.client.post("/v1/apps/bapp/routes", json={"domain": "localhost", "hostname": "*"},
                        headers=teams.b)
    assert r.status_code == 403 and "only platform admins" in r.json["error"]
    assert env.client.post("/v1/domains", json={"name": "b.test"},
                           headers=teams.b).status_code == 201
    # An admin may route team A's app under team B's domain; team B's * is then refused.
    r = env.client.post("/v1/apps/store/routes", json={"domain": "b.test", "hostname": "x"})
    assert r.status_code == 201
    r = env.client.post("/v1/apps/bapp/routes", json={"domain": "b.test", "hostname": "*"},
                        headers=teams.b)
    assert r.status_code == 409 and r.json["error"] == (
        "*.b.test is taken by another team: choose another hostname.")
    env.client.delete("/v1/apps/store/routes?domain=b.test&hostname=x")
    # ...and so is it over a private domain an admin made for team A under team B's.
    with env.app.extensions["paas.sessionmaker"]() as session:
        store = session.query(App).filter_by(name="store").one()
        session.add(Domain(name="a.b.test", team_id=store.team_id))
        session.commit()
    r = env.client.post("/v1/apps/bapp/routes", json={"domain": "b.test", "hostname": "*"},
                        headers=teams.b)
    assert r.status_code == 409 and "*.b.test is taken" in r.json["error"]
    with env.app.extensions["paas.sessionmaker"]() as session:
        session.delete(session.query(Domain).filter_by(name="a.b.test").one())
        session.commit()
    r = env.client.post("/v1/apps/bapp/routes", json={"domain": "b.test", "hostname": "*"},
                        headers=teams.b)
    assert r.status_code == 201


# -- private domains -----------------------------------------------------------------------

@pytest.mark.parametrize(("name", "status", "words"), [
    ("a.test", 409, "a.test is taken by another team"),  # equal to team A's
    ("test", 409, "test is taken by another team"),  # above it
    ("x.a.test", 409, "x.a.test is taken by another team"),  # under it
    ("www.a.test", 409, "www.a.test is taken by another team"),  # a host team A routes
    ("shop.localhost", 409, "shop.localhost is taken by another team"),
    ("x.shop.localhost", 409, "x.shop.localhost is taken by another team"),
    ("free.localhost", 403, "under the shared domain localhost"),  # pre-registration
    ("localhost", 409, "the domain localhost exists already"),
])
def test_a_private_domain_over_other_names_is_refused(env, teams, name, status, words):
    r = env.client.post("/v1/domains", json={"name": name}, headers=teams.b)
    assert r.status_code == status and words in r.json["error"], r.json
    assert rows(env, Domain) == 2


def test_a_private_domain_above_a_shared_one_is_refused_but_an_admin_may(env, teams):
    env.client.post("/v1/domains", json={"name": "apps.corp.test", "shared": True})
    r = env.client.post("/v1/domains", json={"name": "corp.test"}, headers=teams.b)
    assert r.status_code == 403 and "above the shared domain apps.corp.test" in r.json["error"]
    assert env.client.post("/v1/domains", json={"name": "corp.test"}).status_code == 201
    assert env.client.post("/v1/domains", json={"name": "b.test"},
                           headers=teams.b).status_code == 201
    assert env.client.post("/v1/domains", json={"name": "x.b.test"},
                           headers=teams.b).status_code == 201  # under its own: fine


def test_another_teams_private_domain_answers_as_one_that_does_not_exist(env, teams):
    cert = dict(zip(("cert", "key"), certificate(["a.test"]), strict=True))
    for method, path, body in (
        ("delete", "/v1/domains/{}", None),
        ("put", "/v1/certificates/{}", cert),
        ("delete", "/v1/certificates/{}", None),
        ("post", "/v1/apps/bapp/routes", {"domain": "{}"}),
        ("post", "/v1/apps/bapp/routes", {"domain": "{}", "hostname": "api"}),
        ("delete", "/v1/apps/bapp/routes?domain={}", None),
    ):
        answers = []
        for name in ("a.test", "nosuch.test"):
            sent = json.loads(json.dumps(body).replace("{}", name)) if body else None
            r = getattr(env.client, method)(path.format(name), json=sent, headers=teams.b)
            answers.append((r.status_code, r.json["error"].replace(name, "NAME")))
        assert answers[0] == answers[1] and answers[0][0] == 404, (method, path, answers)
    names = [d["name"] for d in env.client.get("/v1/domains", headers=teams.b).json["domains"]]
    assert names == ["localhost"]
    r = env.client.post("/v1/apps/bapp/routes", json={"url": "api.a.test"}, headers=teams.b)
    r2 = env.client.post("/v1/apps/bapp/routes", json={"url": "api.b.test"}, headers=teams.b)
    assert r.status_code == r2.status_code == 400
    assert r.json["error"].replace("a.test", "b.test") == r2.json["error"]
    assert rows(env, Domain) == 2 and rows(env, Route) == 3


# -- certificates --------------------------------------------------------------------------

@pytest.mark.parametrize(("names", "foreign"), [
    (["a.test", "shop2.localhost"], "shop2.localhost"),  # a name nobody routes yet
    (["a.test", "bapp.localhost"], "bapp.localhost"),  # team B's host name
    (["a.test", "*.localhost"], "*.localhost"),  # every name of the shared domain
    (["*.a.test", "*.test"], "*.test"),
    (["a.test", "b.test"], "b.test"),
])
def test_a_certificate_covering_names_that_are_not_the_teams_is_refused(env, teams, names,
                                                                          foreign):
    env.client.post("/v1/domains", json={"name": "b.test"}, headers=teams.b)
    cert, key = certificate(names)
    r = env.client.put("/v1/certificates/a.test", json={"cert": cert, "key": key},
                       headers=teams.a)
    assert r.status_code == 400, r.json
    assert r.json["error"].startswith(f"the certificate also covers {foreign}, not your team's")
    assert not read_route_table(env.redis).certificates


def test_a_certificate_of_the_teams_own_names_is_accepted(env, teams):
    cert, key = certificate(["a.test", "*.a.test", "deep.www.a.test", "shop.localhost"])
    r = env.client.put("/v1/certificates/a.test", json={"cert": cert, "key": key},
                       headers=teams.a)
    assert r.status_code == 201, r.json
    assert [c.domain for c in read_route_table(env.redis).certificates] == ["a.test"]
    assert env.client.get("/v1/certificates", headers=teams.b).json["certificates"] == []
    # An admin may give the shared domain a certificate for all of its names.
    cert, key = certificate(["*.localhost"])
    r = env.client.put("/v1/certificates/localhost", json={"cert": cert, "key": key})
    assert r.status_code == 201, r.json


def test_the_router_serves_a_teams_certificate_only_for_that_teams_hosts(env, teams):
    from controller import routing
    from router.render import render_nginx_config

    env.client.post("/v1/domains", json={"name": "b.test"}, headers=teams.b)
    env.client.post("/v1/apps/bapp/routes", json={"domain": "b.test"}, headers=teams.b)
    cert, key = certificate(["b.test"])
    assert env.client.put("/v1/certificates/b.test", json={"cert": cert, "key": key},
                          headers=teams.b).status_code == 201
    with env.app.extensions["paas.sessionmaker"]() as session:
        table = routing.route_table(session)
    conf = render_nginx_config(table.routes, [], listen_host="127.0.0.1", listen_port=8080,
                  runtime_dir="/tmp/rt", https_port=8443,
                  certificates={c.domain: ("/c/b.pem", "/c/b.key") for c in table.certificates})
    servers = {m.group(1): m.group(0) for m in re.finditer(
        r"server_name (\S+);.*?(?=server_name|\Z)", conf, re.S)}
    assert "/c/b.pem" in servers["b.test"]
    assert not any("/c/b.pem" in text for host, text in servers.items() if host != "b.test")


# -- another team's things are 404 everywhere ----------------------------------------------

def _fill(rule: str, name: str, build: str) -> str:
    return (rule.replace("<name>", name).replace("<process_type>", "web")
            .replace("<int:version>", "1").replace("<guid>", build))


def test_every_app_endpoint_answers_another_team_as_for_an_app_that_does_not_exist(env, teams):
    with env.app.extensions["paas.sessionmaker"]() as session:
        app = session.query(App).filter_by(name="store").one()
        build_guid = session.query(Build).filter_by(app_id=app.id).one().guid
    checked = 0
    for rule in env.app.url_map.iter_rules():
        if not rule.rule.startswith(("/v1/apps/<name>", "/v1/builds/<guid>")):
            continue
        for method in sorted(rule.methods - {"HEAD", "OPTIONS"}):
            answers = []
            for name, guid in (("store", build_guid), ("nosuchapp", "nosuchbuild")):
                url = _fill(rule.rule, name, guid)
                body = {} if method in ("POST", "PUT", "PATCH") else None
                r = env.client.open(url, method=method, json=body, headers=teams.b)
                text = json.dumps(r.json).replace(name, "NAME").replace(guid, "GUID")
                answers.append((r.status_code, text))
            assert answers[0] == answers[1], (method, rule.rule, answers)
            if rule.endpoint not in ("v1.push", "v1.resource_match"):
                assert answers[0][0] == 404, (method, rule.rule, answers)
            checked += 1
    assert checked >= 20
    # Nothing changed, and team A and the admin still see the app.
    assert env.client.get("/v1/apps/store", headers=teams.a).status_code == 200
    assert env.client.get("/v1/apps/store").status_code == 200
    assert rows(env, App) == 2 and rows(env, Route) == 3


def test_another_teams_app_name_is_a_new_app_of_ones_own_matching_none_of_theirs(env, teams):
    r = env.client.post("/v1/apps/store/resource_match", json={"resources": []},
                        headers=teams.b)
    assert r.status_code == 200 and r.json == {"resources": []}
    r = push_as(env, teams.b, "store")
    assert r.status_code == 201, r.json
    assert rows(env, App) == 3 and rows(env, Build) == 3
    mine = env.client.get("/v1/apps/store", headers=teams.b).json
    theirs = env.client.get("/v1/apps/store", headers=teams.a).json
    assert mine["guid"] != theirs["guid"]
    assert mine["urls"] == ["http://store.localhost:8080"] and theirs["urls"] == [
        "http://shop.localhost:8080", "http://www.a.test:8080"]


def test_other_teams_lists_show_nothing_of_team_a(env, teams):
    b = teams.b
    assert [a["name"] for a in env.client.get("/v1/apps", headers=b).json["apps"]] == ["bapp"]
    assert [r["url"] for r in env.client.get("/v1/routes", headers=b).json["routes"]] == [
        "bapp.localhost"]
    assert env.client.get("/v1/events", headers=b).status_code == 403  # admins' only
