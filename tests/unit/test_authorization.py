"""Who may call what: every endpoint of the API, called by each kind of caller (no token, a
viewer, a developer and a manager of team A, a developer of team B, a platform admin, and
team A's manager with a read-scope and a deploy-scope token), is allowed or refused exactly as
the one table, controller.auth.RULES, says.

The expectation of each call is worked out from RULES (the least role and scope of the
endpoint's declared permission), never written by hand; what is written by hand is only how
to call each endpoint (its URL with real names, a body) and whose team the object it acts on
is. The same matrix runs against the real platform in tests/integration/test_authorization.py,
through the :class:`World` below.
"""

from __future__ import annotations

import io
import itertools
import json
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from types import SimpleNamespace

import pytest
from argon2 import PasswordHasher
from sqlalchemy import func, select

from contracts import keys
from contracts.messages import StageResult
from contracts.settings import load
from controller import accounts
from controller.admin import ensure_admin, migrate
from controller.app import create_app
from controller.auth import RULES, Permission, permission_table
from controller.models import Event, Role, Scope
from tests.unit.fakes import FakeCelery, FakeRedis
from tests.unit.test_controller_api import _settle, buildpack_tarball, package
from tests.unit.test_routes_api import certificate
from tests.unit.test_runtime_api import agent
from tests.unit.test_tasks import StreamRedis

# -- who calls ----------------------------------------------------------------------------

TEAM_A, OWN = "team A", "own team"  # whose object an endpoint acts on (None: no team's)


@dataclass(frozen=True)
class Caller:
    key: str
    role_a: str | None = None  # the role in team A
    own_role: str | None = None  # the role in the team its requests mean (its only team)
    admin: bool = False
    scope: str | None = Scope.ADMIN  # the token's (None: no token at all)
    login: bool = True  # the token is a login's (else one made with POST /v1/tokens)

    def __str__(self) -> str:
        return self.key


ANON = Caller("no-token", scope=None, login=False)
VIEWER = Caller("viewer", Role.VIEWER, Role.VIEWER)
DEVELOPER = Caller("developer", Role.DEVELOPER, Role.DEVELOPER)
MANAGER = Caller("manager", Role.MANAGER, Role.MANAGER)
OTHER = Caller("other-team-developer", None, Role.DEVELOPER)
ADMIN = Caller("platform-admin", admin=True)
READ_TOKEN = Caller("manager-read-token", Role.MANAGER, Role.MANAGER, scope=Scope.READ,
                    login=False)
DEPLOY_TOKEN = Caller("manager-deploy-token", Role.MANAGER, Role.MANAGER, scope=Scope.DEPLOY,
                      login=False)
CALLERS = (ANON, VIEWER, DEVELOPER, MANAGER, OTHER, ADMIN, READ_TOKEN, DEPLOY_TOKEN)


def refusal_words(caller: Caller, permission: str, context: str | None,
                  team: str) -> str:
    """What the sentence of a refusal :func:`expected` gives must say (``team``: the name of
    the team whose object it is): why, and whom to ask or what to make."""
    status = expected(caller, permission, context)
    rule = RULES.get(permission)
    if status == 401:
        return "paas login"
    if status == 404:
        return "there is no "
    if Scope.rank(caller.scope or "") < Scope.rank(rule.scope):
        return (f"this token's scope {caller.scope!r} does not allow this (it needs "
                f"{rule.scope!r}): create one with 'paas create-token NAME --scope {rule.scope}'")
    if permission == Permission.PLATFORM_ADMIN:
        return "only platform admins may do this"
    role = caller.role_a if context == TEAM_A else caller.own_role
    return (f"your role {role!r} in team {team!r} may not {rule.doing}: ask a manager of the "
            f"team for the {rule.role} role.")


def expected(caller: Caller, permission: str, context: str | None) -> int | None:
    """The status RULES gives ``caller`` for ``permission`` on an object of ``context``'s
    team: None when allowed, else 401 (no token), 403 (too little) or 404 (not its team's)."""
    if permission == Permission.PUBLIC:
        return None
    if caller.scope is None:
        return 401
    rule = RULES[permission]
    if Scope.rank(caller.scope) < Scope.rank(rule.scope):
        return 403
    if permission == Permission.PLATFORM_ADMIN:
        return None if caller.admin else 403
    if caller.admin or rule.role is None:
        return None
    role = caller.role_a if context == TEAM_A else caller.own_role
    if role is None:
        return 404
    return None if Role.rank(role) >= Role.rank(rule.role) else 403


# -- how to call each endpoint --------------------------------------------------------------

@dataclass
class Req:
    path: str
    json: object = None
    form: dict[str, str] | None = None
    files: dict[str, tuple[str, bytes]] | None = None
    token: str | None = None  # instead of the caller's usual token
    # A 404 whose sentence starts so comes from the view, past the authorization.
    ok_404: str | None = None


@dataclass
class Answer:
    status: int
    body: dict | None

    @property
    def error(self) -> str | None:
        return self.body.get("error") if isinstance(self.body, dict) else None


class World:
    """Team A (an app with a build, a release and a finished task, a private domain with a
    certificate) and team B, the callers' tokens, and fresh objects on demand, over some API
    (:meth:`send`)."""

    prefix = "authz-"
    shared_domain = "localhost"
    # Allowed means a 2xx (else anything but 401, 403, 404 and 5xx, as where a recipe has an
    # allowed caller refused by validation, past the authorization).
    allowed_means_2xx = True

    def __init__(self) -> None:
        self.counter = itertools.count(1)
        self.tokens: dict[str, str] = {}
        self.users: dict[str, str] = {}
        self.made: list[tuple[str, str, str | None]] = []  # (kind, name, team) to clean up
        self.admin_token = ""
        self.team_a = self.team_b = self.app = self.build = self.task = self.domain = ""
        self.spare = ""
        self.password = "authz-password-1"

    # The API this world talks to.
    def send(self, token: str | None, method: str, path: str, *, json: object = None,
             form: dict[str, str] | None = None, files: dict[str, tuple[str, bytes]] | None
             = None, headers: dict[str, str] | None = None) -> Answer:
        raise NotImplementedError

    def package(self) -> bytes:
        raise NotImplementedError

    def unique(self, kind: str) -> str:
        return f"{self.prefix}{kind}-{next(self.counter)}"

    def admin(self, method: str, path: str, token: str | None = None, **kw: object) -> dict:
        """A call that must succeed (as the platform admin unless ``token``)."""
        answer = self.send(token or self.admin_token, method, path, **kw)  # type: ignore[arg-type]
        assert 200 <= answer.status < 300, (method, path, answer)
        return answer.body or {}

    # -- users and teams -------------------------------------------------------------------
    def make_team(self, viewer_logs: bool = True) -> str:
        name = self.unique("team")
        self.admin("POST", "/v1/teams", json={"name": name, "viewer_logs": viewer_logs})
        self.made.append(("team", name, None))
        return name

    def make_user(self, team: str | None = None, role: str | None = None, admin: bool = False,
                  password: bool = True) -> str:
        name = self.unique("user")
        body: dict[str, object] = {"username": name, "admin": admin}
        if password:
            body["password"] = self.password
        self.admin("POST", "/v1/users", json=body)
        self.made.append(("user", name, None))
        if team:
            self.admin("PUT", f"/v1/teams/{team}/members/{name}", json={"role": role})
        return name

    def login(self, username: str) -> str:
        return self.admin("POST", "/v1/login", json={"username": username,
                                                     "password": self.password})["token"]

    def scoped(self, token: str, scope: str) -> str:
        return self.admin("POST", "/v1/tokens", token=token,
                          json={"name": self.unique("token"), "scope": scope})["token"]

    def fresh_caller(self, caller: Caller) -> str | None:
        """The token of a new user just like ``caller`` (for what changes the user itself)."""
        if caller.scope is None:
            return None
        team = self.team_b if caller.own_role and not caller.role_a else self.team_a
        name = self.make_user(team if caller.own_role else None, caller.own_role, caller.admin)
        token = self.login(name)
        return token if caller.login else self.scoped(token, caller.scope)

    def another_token(self, caller: Caller) -> str | None:
        """Another token of ``caller``'s user with the same scope (for what revokes it)."""
        if caller.scope is None:
            return None
        return self.scoped(self.tokens[caller.key], caller.scope)

    def own_team(self, caller: Caller) -> str:
        if caller.admin:
            return "default"
        return self.team_b if caller.own_role and not caller.role_a else self.team_a

    def populate(self) -> None:
        """The teams, the callers and team A's objects (the app is pushed by :meth:`push_app`,
        which a world does in its own way)."""
        self.team_a, self.team_b = self.make_team(), self.make_team()
        for caller in CALLERS:
            if caller.scope is None or not caller.login:
                continue
            team = self.team_a if caller.role_a else self.team_b if caller.own_role else None
            name = self.make_user(team, caller.own_role, caller.admin)
            self.users[caller.key], self.tokens[caller.key] = name, self.login(name)
        for caller in (READ_TOKEN, DEPLOY_TOKEN):
            self.users[caller.key] = self.users[MANAGER.key]
            self.tokens[caller.key] = self.scoped(self.tokens[MANAGER.key], caller.scope)
        self.spare = self.make_user()
        self.domain = self.fresh_domain(certified=True)

    # -- fresh objects -------------------------------------------------------------------
    def push(self, token: str, name: str, team: str | None = None) -> Answer:
        return self.send(token, "POST", f"/v1/apps/{name}/push",
                         form={"options": json.dumps({"no_route": True})},
                         files={"package": ("app.tar.gz", self.package())},
                         headers={"X-Paas-Team": team} if team else None)

    def fresh_app(self) -> str:
        name = self.unique("app")
        answer = self.push(self.admin_token, name, self.team_a)
        assert answer.status == 201, answer
        self.made.append(("app", name, self.team_a))
        return name

    def fresh_domain(self, certified: bool = False) -> str:
        name = f"{self.unique('dom')}.test"
        self.admin("POST", "/v1/domains", json={"name": name},
                   headers={"X-Paas-Team": self.team_a})
        self.made.append(("domain", name, self.team_a))
        if certified:
            cert, key = certificate([name, f"*.{name}"])
            self.admin("PUT", f"/v1/certificates/{name}", json={"cert": cert, "key": key})
        return name

    def fresh_route(self) -> str:
        hostname = self.unique("host")
        self.admin("POST", f"/v1/apps/{self.app}/routes",
                   json={"domain": self.shared_domain, "hostname": hostname})
        return hostname

    def fresh_member(self) -> str:
        return self.make_user(self.team_a, Role.VIEWER, password=False)

    def fresh_buildpack(self) -> Req:
        name = self.unique("bp")
        self.admin("POST", "/v1/buildpacks", form={"name": name},
                   files={"buildpack": ("bp.tar.gz", BUILDPACK)})
        return Req(f"/v1/buildpacks/{name}")

    def new_buildpack(self) -> Req:
        return Req("/v1/buildpacks", form={"name": self.unique("bp")},
                   files={"buildpack": ("bp.tar.gz", BUILDPACK)})

    def task_body(self) -> dict[str, str]:
        return {"command": "true"}

    def mark(self) -> int:
        """The id of the newest event (for :meth:`acted_since`)."""
        raise NotImplementedError

    def acted_since(self, caller: Caller, mark: int) -> bool:
        """True if an event after ``mark`` names ``caller``'s user as its actor."""
        raise NotImplementedError


BUILDPACK = buildpack_tarball({"bin/detect": "#!/bin/sh\nexit 1\n", "bin/compile": "#!/bin/sh\n"})
Make = Callable[[World, Caller, bool], Req]


@dataclass(frozen=True)
class Target:
    context: str | None  # whose object: TEAM_A, OWN (what the caller makes), None
    make: Make = field(compare=False)


def _app(tail: str = "", **kw: object) -> Make:
    return lambda w, c, ok: Req(f"/v1/apps/{w.app}{tail}", **kw)  # type: ignore[arg-type]


def _cert(w: World, c: Caller, ok: bool) -> Req:
    cert, key = certificate([w.domain, f"*.{w.domain}"])
    return Req(f"/v1/certificates/{w.domain}", json={"cert": cert, "key": key})


RECIPES: dict[str, Target] = {
    # public
    "index": Target(None, lambda w, c, ok: Req("/")),
    "v1.info": Target(None, lambda w, c, ok: Req("/v1/info")),
    "v1.openapi": Target(None, lambda w, c, ok: Req("/v1/openapi.json")),
    "v1.login": Target(None, lambda w, c, ok: Req("/v1/login", json={
        "username": w.spare, "password": w.password})),
    # the caller's own
    "v1.whoami": Target(None, lambda w, c, ok: Req("/v1/whoami")),
    "v1.logout": Target(None, lambda w, c, ok: Req("/v1/logout", token=w.another_token(c))),
    "v1.change_password": Target(None, lambda w, c, ok: Req(
        "/v1/user/password", token=w.fresh_caller(c),
        json={"current_password": w.password, "new_password": w.password})),
    "v1.list_tokens": Target(None, lambda w, c, ok: Req("/v1/tokens")),
    "v1.create_token": Target(None, lambda w, c, ok: Req("/v1/tokens", json={
        "name": w.unique("token"), "scope": "read"})),
    "v1.revoke_token": Target(None, lambda w, c, ok: _revoke(w, c)),
    "v1.list_teams": Target(None, lambda w, c, ok: Req("/v1/teams")),
    "v1.list_apps": Target(None, lambda w, c, ok: Req("/v1/apps")),
    "v1.list_routes": Target(None, lambda w, c, ok: Req("/v1/routes")),
    "v1.list_domains": Target(None, lambda w, c, ok: Req("/v1/domains")),
    "v1.list_certificates": Target(None, lambda w, c, ok: Req("/v1/certificates")),
    "v1.list_buildpacks": Target(None, lambda w, c, ok: Req("/v1/buildpacks")),
    # team A's app and what hangs off it
    "v1.show_app": Target(TEAM_A, _app()),
    "v1.update_app": Target(TEAM_A, _app(json={"max_in_flight": 1})),
    "v1.delete_app": Target(TEAM_A, lambda w, c, ok: Req(
        f"/v1/apps/{w.fresh_app() if ok else w.app}")),
    "v1.show_env": Target(TEAM_A, _app("/env")),
    "v1.change_env": Target(TEAM_A, _app("/env", json={"set": {"AUTHZ": "1"}})),
    "v1.app_events": Target(TEAM_A, _app("/events")),
    "v1.app_logs": Target(TEAM_A, _app("/logs?recent=1")),
    "v1.app_stream": Target(TEAM_A, _app("/stream?since=0&follow=false")),
    "v1.scale": Target(TEAM_A, _app("/processes/web/scale", json={"instances": 0})),
    "v1.rebalance": Target(TEAM_A, _app("/rebalance")),
    "v1.list_releases": Target(TEAM_A, _app("/releases")),
    "v1.show_release": Target(TEAM_A, _app("/releases/1")),
    "v1.restage": Target(TEAM_A, _app("/restage")),
    "v1.restart": Target(TEAM_A, _app("/restart")),
    "v1.rollback": Target(TEAM_A, _app("/rollback", json={"version": 1})),
    "v1.start": Target(TEAM_A, _app("/start")),
    "v1.stop": Target(TEAM_A, _app("/stop")),
    "v1.run_task": Target(TEAM_A, lambda w, c, ok: Req(f"/v1/apps/{w.app}/tasks",
                                                       json=w.task_body())),
    "v1.app_routes": Target(TEAM_A, _app("/routes")),
    "v1.map_route": Target(TEAM_A, lambda w, c, ok: Req(f"/v1/apps/{w.app}/routes", json={
        "domain": w.shared_domain, "hostname": w.unique("host")})),
    "v1.unmap_route": Target(TEAM_A, lambda w, c, ok: Req(
        f"/v1/apps/{w.app}/routes?domain={w.shared_domain}&hostname={w.fresh_route()}")),
    "v1.show_build": Target(TEAM_A, lambda w, c, ok: Req(f"/v1/builds/{w.build}")),
    "v1.build_log": Target(TEAM_A, lambda w, c, ok: Req(f"/v1/builds/{w.build}/log")),
    "v1.task_log": Target(TEAM_A, lambda w, c, ok: Req(f"/v1/tasks/{w.task}/log")),
    # what the caller makes in its own team
    "v1.push": Target(OWN, lambda w, c, ok: Req(
        f"/v1/apps/{_new_app(w, c, ok)}/push", form={"options": '{"no_route": true}'},
        files={"package": ("app.tar.gz", w.package())})),
    "v1.resource_match": Target(OWN, lambda w, c, ok: Req(
        f"/v1/apps/{w.unique('app')}/resource_match", json={"resources": []})),
    "v1.create_domain": Target(OWN, lambda w, c, ok: _new_domain(w, c, ok)),
    # team A's domain
    "v1.delete_domain": Target(TEAM_A, lambda w, c, ok: Req(
        f"/v1/domains/{w.fresh_domain()}")),
    "v1.put_certificate": Target(TEAM_A, _cert),
    "v1.delete_certificate": Target(TEAM_A, lambda w, c, ok: Req(
        f"/v1/certificates/{w.fresh_domain(certified=True)}")),
    # team A
    "v1.show_team": Target(TEAM_A, lambda w, c, ok: Req(f"/v1/teams/{w.team_a}")),
    "v1.list_members": Target(TEAM_A, lambda w, c, ok: Req(f"/v1/teams/{w.team_a}/members")),
    "v1.update_team": Target(TEAM_A, lambda w, c, ok: Req(f"/v1/teams/{w.team_a}",
                                                          json={"viewer_logs": True})),
    "v1.put_member": Target(TEAM_A, lambda w, c, ok: Req(
        f"/v1/teams/{w.team_a}/members/{w.spare}", json={"role": Role.VIEWER})),
    "v1.remove_member": Target(TEAM_A, lambda w, c, ok: Req(
        f"/v1/teams/{w.team_a}/members/{w.fresh_member()}")),
    # the platform
    "metrics": Target(None, lambda w, c, ok: Req("/metrics")),
    "v1.status": Target(None, lambda w, c, ok: Req("/v1/status")),
    "v1.all_events": Target(None, lambda w, c, ok: Req("/v1/events?limit=5")),
    "v1.list_users": Target(None, lambda w, c, ok: Req("/v1/users")),
    "v1.create_user": Target(None, lambda w, c, ok: _new_user(w, c, ok)),
    "v1.delete_user": Target(None, lambda w, c, ok: Req(
        f"/v1/users/{w.make_user(password=False)}")),
    "v1.set_password": Target(None, lambda w, c, ok: Req(
        f"/v1/users/{w.make_user(password=False)}/password", json={"password": w.password})),
    "v1.create_team": Target(None, lambda w, c, ok: _new_team(w, c, ok)),
    "v1.delete_team": Target(None, lambda w, c, ok: Req(f"/v1/teams/{w.make_team()}")),
    "v1.set_quota": Target(None, lambda w, c, ok: Req(f"/v1/teams/{w.team_a}/quota",
                                                      json={"services": None})),
    "v1.create_buildpack": Target(None, lambda w, c, ok: w.new_buildpack()),
    "v1.delete_buildpack": Target(None, lambda w, c, ok: w.fresh_buildpack()),
}


def _revoke(w: World, c: Caller) -> Req:
    if c.scope is None:
        return Req(f"/v1/tokens/{w.unique('token')}")
    name = w.unique("token")
    w.admin("POST", "/v1/tokens", token=w.tokens[c.key], json={"name": name, "scope": "read"})
    return Req(f"/v1/tokens/{name}")


def _new_app(w: World, c: Caller, ok: bool) -> str:
    name = w.unique("app")
    if ok:
        w.made.append(("app", name, w.own_team(c)))
    return name


def _new_domain(w: World, c: Caller, ok: bool) -> Req:
    name = f"{w.unique('dom')}.test"
    if ok:
        w.made.append(("domain", name, w.own_team(c)))
    return Req("/v1/domains", json={"name": name})


def _new_user(w: World, c: Caller, ok: bool) -> Req:
    name = w.unique("user")
    if ok:
        w.made.append(("user", name, None))
    return Req("/v1/users", json={"username": name, "password": w.password})


def _new_team(w: World, c: Caller, ok: bool) -> Req:
    name = w.unique("team")
    if ok:
        w.made.append(("team", name, None))
    return Req("/v1/teams", json={"name": name})


# -- the check --------------------------------------------------------------------------

@dataclass(frozen=True)
class Endpoint:
    name: str
    method: str
    rule: str
    permission: str | None


def endpoints() -> list[Endpoint]:
    """Every endpoint of the controller's Flask app (but static files), with its permission."""
    with tempfile.TemporaryDirectory() as data_dir:
        settings = load(env={}, data_dir=data_dir)
        migrate(settings)  # makes the platform key create_app needs
        app = create_app(settings, TESTING=True, REDIS=FakeRedis(), CELERY=FakeCelery())
        table = permission_table(app)
        found = [Endpoint(rule.endpoint, method, rule.rule, table[rule.endpoint])
                 for rule in app.url_map.iter_rules() if rule.endpoint != "static"
                 for method in sorted(rule.methods - {"HEAD", "OPTIONS"})]
        app.extensions["paas.engine"].dispose()
    return sorted(found, key=lambda e: (e.rule, e.method))


ENDPOINTS = endpoints()


# Where the controller is known to differ from RULES (the lead has the reproducers): strict
# xfails, so the test turns red when one is fixed and its line can go.
KNOWN: dict[str, str] = {}
# Endpoints whose refusals have sentences of their own (not the ones of controller.auth).
OWN_WORDS = {"metrics"}


def matrix_params() -> list:
    return [pytest.param(e, id=f"{e.method} {e.rule}", marks=pytest.mark.xfail(
        strict=True, reason=KNOWN[e.name])) if e.name in KNOWN else
        pytest.param(e, id=f"{e.method} {e.rule}") for e in ENDPOINTS]


def check_endpoint(world: World, endpoint: Endpoint) -> list[str]:
    """Call ``endpoint`` as every caller; what differs from RULES, one line each."""
    target = RECIPES[endpoint.name]
    wrong = []
    for caller in CALLERS:
        want = expected(caller, endpoint.permission, target.context)
        req = target.make(world, caller, want is None)
        token = req.token if req.token is not None else world.tokens.get(caller.key)
        watched = want is not None and caller.key in world.users
        mark = world.mark() if watched else 0
        got = world.send(token, endpoint.method, req.path, json=req.json, form=req.form,
                         files=req.files)
        said = f"{caller}: {endpoint.method} {req.path} -> {got.status} {got.error or ''}"
        if want is None:
            own_404 = got.status == 404 and req.ok_404 and (got.error or "").startswith(
                req.ok_404)
            if (got.status in (401, 403, 404) and not own_404) or got.status >= 500 or (
                    world.allowed_means_2xx and not 200 <= got.status < 300):
                wrong.append(f"{said} (RULES allow it)")
            continue
        words = refusal_words(caller, endpoint.permission, target.context, world.team_a)
        if got.status != want:
            wrong.append(f"{said} (RULES say {want})")
        elif words not in (got.error or "") and endpoint.name not in OWN_WORDS:
            wrong.append(f"{said} (the refusal should say {words!r})")
        elif not (got.error or "").rstrip().endswith((".", ")")):
            wrong.append(f"{said} (a refusal is a sentence)")
        if watched and world.acted_since(caller, mark):
            wrong.append(f"{said} (refused, yet it recorded an event: something changed)")
    return wrong


def check_viewer_logs(world: World) -> None:
    """Viewers read the app's, its builds' and its tasks' logs only while team A's
    viewer_logs is on; developers always."""
    viewer, developer = world.tokens[VIEWER.key], world.tokens[DEVELOPER.key]
    manager = world.tokens[MANAGER.key]
    logs = (f"/v1/apps/{world.app}/logs?recent=1", f"/v1/builds/{world.build}/log",
            f"/v1/tasks/{world.task}/log")
    try:
        world.admin("PATCH", f"/v1/teams/{world.team_a}", token=manager,
                    json={"viewer_logs": False})
        for path in logs:
            refused = world.send(viewer, "GET", path)
            assert refused.status == 403, (path, refused)
            assert refused.error == (f"team {world.team_a!r} does not let viewers read its "
                                     "apps' logs: ask a manager of the team for the developer "
                                     "role.")
            assert world.send(developer, "GET", path).status == 200, path
    finally:
        world.admin("PATCH", f"/v1/teams/{world.team_a}", token=manager,
                    json={"viewer_logs": True})
    for path in logs:
        assert world.send(viewer, "GET", path).status == 200, path


def check_viewer_changes_nothing(world: World) -> None:
    """A viewer reads no env values, and every endpoint that changes something but the
    viewer's own user is refused to it."""
    viewer = world.tokens[VIEWER.key]
    refused = world.send(viewer, "GET", f"/v1/apps/{world.app}/env")
    assert refused.status == 403 and refused.error == (
        f"your role 'viewer' in team {world.team_a!r} may not read env values: ask a manager "
        "of the team for the developer role.")
    # What a viewer may change is only itself: its tokens, its password, its session.
    own = sorted(e.name for e in ENDPOINTS
                 if e.method != "GET" and e.permission == Permission.SELF)
    assert own == ["v1.change_password", "v1.create_token", "v1.logout", "v1.revoke_token"]
    for endpoint in ENDPOINTS:
        if endpoint.method == "GET" or endpoint.name in KNOWN or endpoint.permission in (
                Permission.SELF, Permission.PUBLIC):
            continue
        target = RECIPES[endpoint.name]
        req = target.make(world, VIEWER, False)
        mark = world.mark()
        got = world.send(viewer, endpoint.method, req.path, json=req.json, form=req.form,
                         files=req.files)
        assert got.status == 403, (endpoint.name, got)
        assert not world.acted_since(VIEWER, mark), endpoint.name


def check_another_teams_header(world: World) -> None:
    """Team B's developer naming team A (X-Paas-Team, as 'paas target --team' sends) is told,
    on every endpoint but the public ones, that there is no such team, and changes nothing."""
    token = world.tokens[OTHER.key]
    sentence = (f"there is no team named {world.team_a!r}: 'paas teams' lists yours ('paas "
                "target --team TEAM' picks one).")
    for endpoint in ENDPOINTS:
        if endpoint.permission == Permission.PUBLIC:
            continue
        req = RECIPES[endpoint.name].make(world, OTHER, False)
        mark = world.mark()
        got = world.send(req.token or token, endpoint.method, req.path, json=req.json,
                         form=req.form, files=req.files, headers={"X-Paas-Team": world.team_a})
        assert (got.status, got.error) == (404, sentence), (endpoint.name, got)
        assert not world.acted_since(OTHER, mark), endpoint.name


# -- the unit world: the Flask test client, fakes for Redis and Celery ---------------------

class LogRedis(StreamRedis):
    """StreamRedis whose xrevrange also takes the bounds ``paas logs --recent`` pages with
    (the app's log stream stays empty here, so they need not narrow anything)."""

    def xrevrange(self, key: str, max: str = "+", min: str = "-",
                  count: int | None = None) -> list:
        return super().xrevrange(key, count=count)


def cheap_hasher() -> PasswordHasher:
    """argon2id at its least cost: the matrix makes and logs in dozens of users."""
    return PasswordHasher(time_cost=1, memory_cost=8, parallelism=1)


class UnitWorld(World):
    def __init__(self, tmp: str) -> None:
        super().__init__()
        # No rate limit: the matrix sends hundreds of requests at once.
        self.settings = load(env={}, data_dir=tmp, router_port=8080, api_rate_per_second=0.0)
        migrate(self.settings)
        self.admin_token, _ = ensure_admin(self.settings)
        self.redis = LogRedis()
        self.flask = create_app(self.settings, TESTING=True, REDIS=self.redis,
                                CELERY=FakeCelery())
        self.client = self.flask.test_client()

    def send(self, token: str | None, method: str, path: str, *, json: object = None,
             form: dict[str, str] | None = None, files: dict[str, tuple[str, bytes]] | None
             = None, headers: dict[str, str] | None = None) -> Answer:
        headers = dict(headers or {})
        if token:
            headers["Authorization"] = f"Bearer {token}"
        kw: dict[str, object] = {"json": json} if json is not None else {}
        if form is not None or files is not None:
            data: dict[str, object] = dict(form or {})
            for key, (filename, blob) in (files or {}).items():
                data[key] = (io.BytesIO(blob), filename)
            kw = {"data": data, "content_type": "multipart/form-data"}
        response = self.client.open(path, method=method, headers=headers, **kw)
        try:
            body = response.get_json(silent=True)  # reads a (finite) stream to its end
        finally:
            response.close()
        return Answer(response.status_code, body)

    def package(self) -> bytes:
        return package()

    def mark(self) -> int:
        with self.flask.extensions["paas.sessionmaker"]() as session:
            return session.scalar(select(func.max(Event.id))) or 0

    def acted_since(self, caller: Caller, mark: int) -> bool:
        with self.flask.extensions["paas.sessionmaker"]() as session:
            return bool(session.scalar(select(func.count(Event.id)).where(
                Event.id > mark, Event.actor == self.users[caller.key])))

    def populate(self) -> None:
        super().populate()
        agent(self, "authz-agent", memory=1 << 20)
        self.app_name_pushed()

    def app_name_pushed(self) -> None:
        """Team A's app, pushed by its manager and staged (the stager's result faked), and a
        task of it that has ended."""
        self.app = self.unique("app")
        answer = self.push(self.tokens[MANAGER.key], self.app)
        assert answer.status == 201, answer
        self.build = answer.body["build"]["guid"]
        env = SimpleNamespace(redis=self.redis, app=self.flask, settings=self.settings)
        _settle(env, self.build, StageResult(
            ok=True, droplet_digest="d" * 64, droplet_path="droplets/d.tar",
            image="paas/droplet:authz", buildpack="procfile", process_types={"web": "serve"}))
        self.task = self.admin("POST", f"/v1/apps/{self.app}/tasks", json={"command": "true"},
                               token=self.tokens[MANAGER.key])["guid"]
        self.redis.xadd(keys.task_log(self.task), {"exit_code": "0"})
        self.redis.xadd(keys.task_log(self.task), {"end": "1"})


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[UnitWorld]:
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(accounts, "_hasher", cheap_hasher)
        made = UnitWorld(str(tmp_path_factory.mktemp("authz")))
        made.populate()
        yield made
    made.flask.extensions["paas.engine"].dispose()


# -- the tests ---------------------------------------------------------------------------

def test_every_endpoint_declares_a_known_permission() -> None:
    undeclared = [e.name for e in ENDPOINTS if e.permission is None]
    assert not undeclared, f"endpoints without @requires(...): {undeclared}"
    unknown = {e.name: e.permission for e in ENDPOINTS
               if e.permission != Permission.PUBLIC and e.permission not in RULES}
    assert not unknown, unknown
    assert len(ENDPOINTS) >= 60, len(ENDPOINTS)


def test_the_matrix_knows_how_to_call_every_endpoint() -> None:
    names = {e.name for e in ENDPOINTS}
    assert not names - set(RECIPES), f"add a recipe to RECIPES for {sorted(names - set(RECIPES))}"
    assert not set(RECIPES) - names, f"RECIPES names endpoints that are gone: " \
        f"{sorted(set(RECIPES) - names)}"


def test_the_expectations_follow_the_table() -> None:
    """A few rows of the design's table, spelled out, so that :func:`expected` itself is
    checked (the matrix takes all its answers from it)."""
    assert expected(VIEWER, Permission.APP_READ, TEAM_A) is None
    assert expected(VIEWER, Permission.APP_ENV, TEAM_A) == 403
    assert expected(VIEWER, Permission.APP_WRITE, OWN) == 403
    assert expected(DEVELOPER, Permission.APP_WRITE, TEAM_A) is None
    assert expected(DEVELOPER, Permission.TEAM_MANAGE, TEAM_A) == 403
    assert expected(MANAGER, Permission.TEAM_MANAGE, TEAM_A) is None
    assert expected(OTHER, Permission.APP_READ, TEAM_A) == 404
    assert expected(OTHER, Permission.APP_WRITE, OWN) is None
    assert expected(ADMIN, Permission.TEAM_MANAGE, TEAM_A) is None
    assert expected(MANAGER, Permission.PLATFORM_ADMIN, None) == 403
    assert expected(READ_TOKEN, Permission.APP_WRITE, TEAM_A) == 403
    assert expected(READ_TOKEN, Permission.APP_LOGS, TEAM_A) is None
    assert expected(DEPLOY_TOKEN, Permission.APP_ENV, TEAM_A) is None
    assert expected(DEPLOY_TOKEN, Permission.TEAM_MANAGE, TEAM_A) == 403
    assert expected(ANON, Permission.SELF, None) == 401
    assert expected(ANON, Permission.PUBLIC, None) is None


@pytest.mark.parametrize("endpoint", matrix_params())
def test_each_caller_is_allowed_or_refused_as_the_table_says(world: UnitWorld,
                                                              endpoint: Endpoint) -> None:
    wrong = check_endpoint(world, endpoint)
    assert not wrong, "\n".join(wrong)


def test_viewers_read_logs_only_while_the_team_lets_them(world: UnitWorld) -> None:
    check_viewer_logs(world)


def test_a_viewer_changes_nothing_of_the_team_and_reads_no_env_values(world: UnitWorld) -> None:
    check_viewer_changes_nothing(world)


def test_naming_another_team_finds_no_such_team(world: UnitWorld) -> None:
    check_another_teams_header(world)


def test_a_viewer_may_not_match_resources_for_a_new_app(world: UnitWorld) -> None:
    """The first bug this matrix found: a name with no app took the request's team without
    checking the caller's role in it."""
    got = world.send(world.tokens[VIEWER.key], "POST",
                     f"/v1/apps/{world.unique('app')}/resource_match", json={"resources": []})
    assert got.status == 403 and "may not change the team's apps" in got.error, got
