"""The authorization matrix against the real platform: every endpoint of the API, called over
HTTP by no token, a viewer, a developer and a manager of team A, a developer of team B, a
platform admin, and team A's manager with a read-scope and a deploy-scope token, answers as
controller.auth.RULES says (the matrix and its recipes are tests/unit/test_authorization.py's).

Team A's app is pushed for real with the paas CLI by its manager, then scaled to no instances
(start, stop, restart and rollback then run no containers). Pushes and app deletions get an
app of their own per allowed caller; a task run, a new buildpack and a buildpack deletion are
let through by the check and refused by the view (a 400, or the 404 of a buildpack that is not
there): no containers, and the platform's buildpacks stay as they are. Everything made is
deleted at the end.
"""

from __future__ import annotations

import io
import json
import subprocess
import tarfile
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests

from launcher.sandbox import paas_command
from tests.unit.test_authorization import (
    MANAGER,
    Answer,
    Caller,
    Endpoint,
    Req,
    World,
    check_another_teams_header,
    check_endpoint,
    check_viewer_changes_nothing,
    check_viewer_logs,
    matrix_params,
)

pytestmark = pytest.mark.usefixtures("dump_logs_on_failure")
FIXTURE = Path(__file__).parents[1] / "fixtures" / "procfile-only"


def procfile_package() -> bytes:
    """The procfile-only fixture as a push uploads it (stages in seconds: nothing to install)."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        for path in sorted(FIXTURE.iterdir()):
            tar.add(path, arcname=path.name)
    return buf.getvalue()


class LiveWorld(World):
    allowed_means_2xx = False  # some allowed calls are refused by validation on purpose

    def __init__(self, platform, home: Path) -> None:
        super().__init__()
        self.platform, self.home = platform, home
        self.api = platform.settings.api_url
        self.admin_token = platform.token
        self.blob = procfile_package()

    def send(self, token: str | None, method: str, path: str, *, json: object = None,
             form: dict[str, str] | None = None, files: dict[str, tuple[str, bytes]] | None
             = None, headers: dict[str, str] | None = None) -> Answer:
        headers = dict(headers or {})
        if token:
            headers["Authorization"] = f"Bearer {token}"
        r = requests.request(method, f"{self.api}{path}", headers=headers, json=json,
                             data=form, files=files, timeout=60)
        try:
            body = r.json()
        except ValueError:
            body = None
        return Answer(r.status_code, body)

    def package(self) -> bytes:
        return self.blob

    def mark(self) -> int:
        events = self.admin("GET", "/v1/events?limit=1")["events"]
        return events[0]["id"] if events else 0

    def acted_since(self, caller: Caller, mark: int) -> bool:
        events = self.admin("GET", f"/v1/events?after={mark}&limit=1000")["events"]
        return any(e["actor"] == self.users[caller.key] for e in events)

    # Let through by the check, refused by the view: no task container, no buildpack made.
    def task_body(self) -> dict[str, str]:
        return {"command": " "}

    def new_buildpack(self) -> Req:
        return Req("/v1/buildpacks", form={"name": "Not A Buildpack Name"},
                   files={"buildpack": ("bp.tar.gz", b"not a tarball")})

    def fresh_buildpack(self) -> Req:
        return Req(f"/v1/buildpacks/{self.unique('bp')}",
                   ok_404="there is no registered buildpack named")

    def cli(self, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([paas_command(), *args],
                              env={**self.platform.cli_env(), "PAAS_HOME": str(self.home)},
                              capture_output=True, text=True, timeout=600)

    def populate(self) -> None:
        super().populate()
        manager = self.tokens[MANAGER.key]
        (self.home / "config").write_text(json.dumps({"target": self.api, "token": manager,
                                                      "team": self.team_a}))
        self.app = self.unique("app")
        self.made.append(("app", self.app, self.team_a))
        pushed = self.cli("push", self.app, "-p", str(FIXTURE), "--no-route")
        assert pushed.returncode == 0, pushed.stdout + pushed.stderr
        self.admin("POST", f"/v1/apps/{self.app}/processes/web/scale", token=manager,
                   json={"instances": 0})
        events = self.admin("GET", f"/v1/apps/{self.app}/events", token=manager)["events"]
        self.build = next(e["data"]["build"] for e in events if "build" in (e["data"] or {}))
        # A task that has ended, for its log.
        self.task = self.admin("POST", f"/v1/apps/{self.app}/tasks", token=manager,
                               json={"command": "echo authz"})["guid"]
        log = requests.get(f"{self.api}/v1/tasks/{self.task}/log", timeout=120,
                           headers={"Authorization": f"Bearer {manager}"})
        assert log.status_code == 200 and '"exit_code": 0' in log.text, log.text

    def clean_up(self) -> list[str]:
        """Delete what the test made (apps, domains, teams, users); what would not go."""
        left = []
        order = {"app": 0, "domain": 1, "team": 2, "user": 3}
        for kind, name, team in sorted(self.made, key=lambda m: order[m[0]]):
            path = {"app": f"/v1/apps/{name}", "domain": f"/v1/domains/{name}",
                    "team": f"/v1/teams/{name}", "user": f"/v1/users/{name}"}[kind]
            headers = {"X-Paas-Team": team} if team else None
            if kind == "domain":  # its certificate first, if it has one
                self.send(self.admin_token, "DELETE", f"/v1/certificates/{name}",
                          headers=headers)
            r = self.send(self.admin_token, "DELETE", path, headers=headers)
            if r.status not in (200, 404):
                left.append(f"{kind} {name}: {r.status} {r.error}")
        listed = {"apps": self.admin("GET", "/v1/apps")["apps"],
                  "users": self.admin("GET", "/v1/users")["users"],
                  "teams": self.admin("GET", "/v1/teams")["teams"],
                  "domains": self.admin("GET", "/v1/domains")["domains"]}
        for kind, rows in listed.items():
            left += [f"{kind}: {row.get('name') or row.get('username')}" for row in rows
                     if (row.get("name") or row.get("username") or "").startswith(self.prefix)]
        return left


@pytest.fixture(scope="module")
def world(platform, tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveWorld]:
    made = LiveWorld(platform, tmp_path_factory.mktemp("authz"))
    try:
        made.populate()
        yield made
    finally:
        left = made.clean_up()
        assert not left, left


@pytest.mark.parametrize("endpoint", matrix_params())
def test_each_caller_is_allowed_or_refused_as_the_table_says(world: LiveWorld,
                                                              endpoint: Endpoint) -> None:
    wrong = check_endpoint(world, endpoint)
    assert not wrong, "\n".join(wrong)


def test_viewers_read_logs_only_while_the_team_lets_them(world: LiveWorld) -> None:
    check_viewer_logs(world)


def test_a_viewer_changes_nothing_of_the_team_and_reads_no_env_values(world: LiveWorld) -> None:
    check_viewer_changes_nothing(world)


def test_naming_another_team_finds_no_such_team(world: LiveWorld) -> None:
    check_another_teams_header(world)
