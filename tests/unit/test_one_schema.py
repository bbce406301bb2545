"""One schema per concept (contracts.options): the same bad option gives the same sentence
through the manifest, the CLI's flags (before any request) and the raw API; push options are
a typed record, and the actor of a build is a column of its own (migration 0007)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import click
import pytest
import requests
from alembic import command
from click.testing import CliRunner
from sqlalchemy import create_engine, select, text

from cli.main import main
from cli.manifest import load as load_manifest
from contracts import options
from contracts.messages import StageResult
from contracts.options import InvalidOption, ProcessOptions, PushOptions
from contracts.secretbox import ensure_key, is_sealed, load_box
from contracts.settings import load
from controller.admin import alembic_config, secure_data_dir
from controller.models import Build, Release
from tests.unit.test_controller_api import _settle, package, push


class Door:
    """One way in for a bad value: a manifest line, CLI arguments, an API request."""

    def __init__(self, manifest: str, cli: list[list[str]], api: list[tuple[str, str, Any]]):
        self.manifest, self.cli, self.api = manifest, cli, api


# The mistake -> (the sentence every door gives, how each door is fed it). API requests:
# ("push", app name, push options) or (method, path, JSON body) on the released app myapp.
CASES = {
    "101 instances": (
        "instances must be a whole number from 0 to 100, not 101",
        Door("  instances: 101\n", [["push", "myapp", "-i", "101"],
                                    ["scale", "myapp", "-i", "101"]],
             [("push", "myapp", {"instances": 101}),
              ("POST", "/v1/apps/myapp/processes/web/scale", {"instances": 101})])),
    "a timeout of 0": (
        "timeout must be a whole number of seconds from 1 to 600, not 0",
        Door("  timeout: 0\n", [["configure", "myapp", "--timeout", "0"]],
             [("push", "myapp", {"timeout": 0}),
              ("PATCH", "/v1/apps/myapp", {"health_check": {"timeout": 0}})])),
    "a bad app name": (
        "'Bad_Name' is not a valid app name: use 1 to 63 lower-case letters, digits and "
        "hyphens, starting and ending with a letter or digit (it becomes part of the URL)",
        Door("", [["push", "Bad_Name"]], [("push", "Bad_Name", {})])),
    "a bad health check type": (
        "health-check-type must be one of port, http, process, not 'tcp'",
        Door("  health-check-type: tcp\n", [["configure", "myapp", "--health-check-type", "tcp"]],
             [("push", "myapp", {"health_check_type": "tcp"}),
              ("PATCH", "/v1/apps/myapp", {"health_check": {"type": "tcp"}})])),
    "a memory size too small": (
        "memory must be a size from 16 MB to 64 GB, such as 256M or 1G, not 8 MB",
        Door("  memory: 8M\n", [["push", "myapp", "-m", "8M"], ["scale", "myapp", "-m", "8M"]],
             [("push", "myapp", {"memory_mb": 8}),
              ("POST", "/v1/apps/myapp/processes/web/scale", {"memory_mb": 8})])),
    "a bad env var name": (
        "'1BAD' is not a valid environment variable name: use letters, digits and _, not "
        "starting with a digit",
        Door("  env:\n    1BAD: x\n", [["set-env", "myapp", "1BAD", "x"]],
             [("push", "myapp", {"env": {"1BAD": "x"}}),
              ("PATCH", "/v1/apps/myapp/env", {"set": {"1BAD": "x"}})])),
}


@pytest.fixture
def cli(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[CliRunner, list]]:
    """A CLI with a target and a token, whose every HTTP request is recorded (and refused)."""
    home = tmp_path / "home"
    home.mkdir()
    (home / "config").write_text(json.dumps({"target": "http://127.0.0.1:9", "token": "t"}))
    monkeypatch.setenv("PAAS_HOME", str(home))
    sent: list[tuple[str, str]] = []

    def refuse(self: requests.Session, method: str, url: str, **kwargs: Any) -> None:
        sent.append((method, url))
        raise requests.ConnectionError("the test's CLI sends nothing")

    monkeypatch.setattr(requests.Session, "request", refuse)
    yield CliRunner(), sent


def _app_folder(tmp_path: Path, manifest: str | None = None) -> Path:
    folder = tmp_path / "app"
    folder.mkdir(exist_ok=True)
    (folder / "requirements.txt").write_text("flask\n")
    if manifest is not None:
        (folder / "manifest.yml").write_text(manifest)
    return folder


@pytest.mark.parametrize("case", sorted(CASES))
def test_the_manifest_gives_the_sentence_at_the_line(tmp_path: Path, case: str) -> None:
    sentence, door = CASES[case]
    name = "Bad_Name" if case == "a bad app name" else "myapp"
    path = tmp_path / "manifest.yml"
    path.write_text(f"applications:\n- name: {name}\n{door.manifest}")
    with pytest.raises(click.ClickException) as caught:
        load_manifest(path, None)
    line = 2 if case == "a bad app name" else 3
    assert caught.value.format_message() == \
        f"manifest.yml line {line}: {sentence} (nothing was uploaded)"


@pytest.mark.parametrize("case", sorted(CASES))
def test_each_cli_flag_gives_the_sentence_before_any_request(
        cli: tuple[CliRunner, list], tmp_path: Path, case: str) -> None:
    runner, sent = cli
    sentence, door = CASES[case]
    folder = _app_folder(tmp_path)
    for args in door.cli:
        if args[0] == "push":
            args = [*args, "-p", str(folder)]
        result = runner.invoke(main, args)
        assert result.exit_code in (1, 2), (args, result.output)
        assert sentence in " ".join(result.output.split()), (args, result.output)
        assert sent == [], f"{args} sent {sent} before refusing"


@pytest.mark.parametrize("case", sorted(CASES))
def test_the_raw_api_gives_the_sentence(env: Any, case: str) -> None:
    sentence, door = CASES[case]
    _release(env)
    for method, where, body in door.api:
        if method == "push":
            r = push(env.client, where, package(), body)
        else:
            r = env.client.open(where, method=method, json=body)
        assert r.status_code == 400, (where, body, r.json)
        assert r.json["error"] == f"{sentence}.", (where, body)
    app = env.client.get("/v1/apps/myapp").json
    assert app["instances_desired"] == 1 and app["release"]["version"] == 1  # nothing changed


def test_the_manifest_with_a_bad_option_stops_the_push_with_the_same_sentence(
        cli: tuple[CliRunner, list], tmp_path: Path) -> None:
    runner, sent = cli
    sentence, door = CASES["101 instances"]
    folder = _app_folder(tmp_path, f"applications:\n- name: myapp\n{door.manifest}")
    result = runner.invoke(main, ["push", "-p", str(folder)])
    assert result.exit_code == 1 and sentence in result.output and sent == []


def _release(env: Any, options_: dict[str, Any] | None = None) -> dict[str, Any]:
    build = push(env.client, "myapp", package(), options_ or {}).json["build"]
    _settle(env, build["guid"], StageResult(
        ok=True, droplet_digest="d" * 64, droplet_path="droplets/d.tar", droplet_size=10,
        image="paas/droplet:ddd", buildpack="python",
        process_types={"web": "gunicorn app:app", "worker": "python work.py"}))
    return build


# -- the limits are the API's everywhere --------------------------------------------------
@pytest.mark.parametrize("check, good, bad", [
    (options.instances, [0, 100], [-1, 101, 1.5, True, "3"]),
    (options.memory_mb, [16, 65536], [15, 65537, "256M", None]),
    (options.disk_mb, [64, 1024 * 1024], [63, 1024 * 1024 + 1]),
    (options.start_timeout, [1, 600], [0, 601, 2.5]),
    (options.health_check_interval, [0.2, 600], [0.1, 601, False]),
    (options.health_check_probe_timeout, [0.1, 60], [0, 61]),
    (options.app_name, ["a", "my-app-2", "x" * 63], ["", "-a", "a-", "A", "x" * 64, 3]),
    (options.hostname, ["", "*", "api", "API"], ["a_b", "a.b", "-x"]),
    (options.env_name, ["A", "_x", "DATABASE_URL"], ["1A", "A-B", "", 7]),
    (options.process_type, ["web", "worker-2"], ["Web", "1web", "", "w" * 32]),
])
def test_each_concept_keeps_its_limits(check: Any, good: list, bad: list) -> None:
    for value in good:
        check(value)
    for value in bad:
        with pytest.raises(InvalidOption):
            check(value)


@pytest.mark.parametrize("text, mb", [("256M", 256), ("1G", 1024), ("512", 512), ("2gb", 2048)])
def test_sizes_as_people_write_them(text: str, mb: int) -> None:
    assert options.memory(text) == mb


def test_the_manifest_takes_the_apis_limits_now(tmp_path: Path) -> None:
    """It took any instance count from 0 and any timeout from 1 before; now 0..100, 1..600."""
    path = tmp_path / "manifest.yml"
    path.write_text("applications:\n- name: a\n  instances: 100\n  timeout: 600\n"
                    "  health-check-type: none\n")
    app = load_manifest(path, None)
    assert (app.instances, app.timeout, app.health_check_type) == (100, 600, "process")
    path.write_text("applications:\n- name: a\n  timeout: 601\n")
    with pytest.raises(click.ClickException, match="line 3: timeout must be a whole number of "
                                                   "seconds from 1 to 600, not 601"):
        load_manifest(path, None)


def test_a_bad_process_option_names_its_own_line(tmp_path: Path) -> None:
    path = tmp_path / "manifest.yml"
    path.write_text("applications:\n- name: a\n  processes:\n  - type: worker\n"
                    "    instances: 101\n")
    with pytest.raises(click.ClickException, match="line 5: process worker: instances must be "
                                                   "a whole number from 0 to 100, not 101"):
        load_manifest(path, None)


# -- the typed record ---------------------------------------------------------------------
def test_push_options_round_trip_through_their_json() -> None:
    given = PushOptions.from_json({
        "instances": 2, "memory_mb": 512, "command": "default", "health_check_type": "none",
        "routes": ["a.example.com"], "env": {"A": "1"},
        "processes": [{"type": "worker", "instances": 1, "command": "python w.py"}]})
    assert given.command is None and given.command_given  # back to the Procfile's
    assert given.health_check_type == "process"
    assert given.processes == [ProcessOptions(type="worker", instances=1,
                                              command="python w.py", command_given=True)]
    assert PushOptions.from_json(given.to_json(), stored=True) == given
    assert "command" not in PushOptions.from_json({"command": None}).to_json()  # not given


def test_a_request_may_not_name_a_stored_blob_or_both_routes_and_no_route() -> None:
    with pytest.raises(InvalidOption, match="buildpack_blob is set by the platform"):
        PushOptions.from_json({"buildpack_blob": "buildpacks/x.tar.gz"})
    with pytest.raises(InvalidOption, match="routes or no-route, not both"):
        PushOptions.from_json({"routes": ["a.b"], "no_route": True})
    with pytest.raises(InvalidOption, match="a process takes only type"):
        PushOptions.from_json({"processes": [{"type": "w", "memory": "1G"}]})


def test_the_build_keeps_its_actor_in_a_column_and_the_release_is_made_in_their_name(
        env: Any) -> None:
    build = _release(env, {"instances": 2, "env": {"SECRET": "v"}, "command": "serve"})
    sessions = env.app.extensions["paas.sessionmaker"]
    with sessions() as session:
        row = session.scalar(select(Build).where(Build.guid == build["guid"]))
        assert row.actor == "admin"
        assert "actor" not in row.requested
        assert row.options == PushOptions(instances=2, env={"SECRET": "v"}, command="serve",
                                          command_given=True)
        release = session.scalar(select(Release).where(Release.app_id == row.app_id))
        assert release.created_by == "admin"
    r = env.client.post("/v1/apps/myapp/restage", json={"no_cache": True})
    assert r.status_code == 201
    with sessions() as session:
        row = session.scalar(select(Build).where(Build.guid == r.json["build"]["guid"]))
        assert row.actor == "admin" and row.options.no_cache


# -- migration 0007 -----------------------------------------------------------------------
NOW = "2026-12-01 10:00:00.000000"


@pytest.fixture
def at_0006(tmp_path: Path) -> Iterator[tuple[Any, Any, Any]]:
    """The alembic config, an engine and the secret box of a database at 0006 with builds
    whose sealed push options hold the actor (one without, as restages left them)."""
    settings = load(env={}, data_dir=str(tmp_path), router_port=8080)
    secure_data_dir(settings)
    ensure_key(settings)
    cfg = alembic_config(settings)
    command.upgrade(cfg, "0006")
    box = load_box(settings)
    engine = create_engine(settings.sqlalchemy_url)
    blobs = {1: {"instances": 2, "command": None, "env": {"K": "v"}, "actor": "ci"},
             2: {"buildpack": "python", "no_cache": True}}
    with engine.begin() as conn:
        run = conn.execute
        run(text("INSERT INTO teams (id, guid, name, created_at) VALUES (1, 't', 'default', "
                 ":t)"), {"t": NOW})
        run(text("INSERT INTO apps (id, guid, name, team_id, state, created_at, updated_at) "
                 "VALUES (1, 'app-1', 'web', 1, 'STARTED', :t, :t)"), {"t": NOW})
        run(text("INSERT INTO packages (id, guid, app_id, blob_path, digest, size, created_at) "
                 "VALUES (1, 'p', 1, 'packages/p.tar.gz', 'd', 1, :t)"), {"t": NOW})
        for build_id, blob in blobs.items():
            run(text("INSERT INTO builds (id, guid, app_id, package_id, state, requested, "
                     "created_at) VALUES (:i, :g, 1, 1, 'STAGING', :r, :t)"),
                {"i": build_id, "g": f"build-{build_id}", "t": NOW,
                 "r": json.dumps(box.seal_json(blob))})
    yield cfg, engine, box
    engine.dispose()


def _builds(engine: Any, box: Any, actor: bool = True) -> list[tuple]:
    column = ", actor" if actor else ""
    with engine.connect() as conn:
        rows = conn.execute(text(f"SELECT id, requested{column} FROM builds ORDER BY id"))
        return [(r[0], box.open_json(json.loads(r[1])), *r[2:]) for r in rows]


def test_migration_0007_moves_the_actor_out_of_the_sealed_options(at_0006: Any) -> None:
    cfg, engine, box = at_0006
    command.upgrade(cfg, "head")
    assert _builds(engine, box) == [
        (1, {"instances": 2, "command": None, "env": {"K": "v"}}, "ci"),
        (2, {"buildpack": "python", "no_cache": True}, None)]
    read = PushOptions.from_json(_builds(engine, box)[0][1], stored=True)
    assert read == PushOptions(instances=2, command=None, command_given=True, env={"K": "v"})
    with engine.connect() as conn:
        raw = conn.execute(text("SELECT requested FROM builds WHERE id = 1")).scalar()
    assert is_sealed(json.loads(raw)) and '"actor"' not in raw  # sealed again


def test_migration_0007_down_puts_the_actor_back(at_0006: Any) -> None:
    cfg, engine, box = at_0006
    before = _builds(engine, box, actor=False)
    command.upgrade(cfg, "head")
    command.downgrade(cfg, "0006")
    assert _builds(engine, box, actor=False) == before
    with engine.connect() as conn:
        columns = [r[1] for r in conn.execute(text("PRAGMA table_info(builds)"))]
    assert "actor" not in columns
    command.upgrade(cfg, "head")
    assert [r[2] for r in _builds(engine, box)] == ["ci", None]


def test_manifest_processes_reach_the_api_in_its_words(tmp_path: Path) -> None:
    from cli.apps import _push_options

    path = tmp_path / "manifest.yml"
    path.write_text("applications:\n- name: a\n  memory: 1G\n  processes:\n  - type: worker\n"
                    "    memory: 512M\n    disk_quota: 2G\n    command: default\n"
                    "    health-check-type: none\n    timeout: 30\n")
    sent = _push_options(load_manifest(path, None), None, 3, None, None)
    read = PushOptions.from_json(json.loads(json.dumps(sent)))
    assert (read.instances, read.memory_mb) == (3, 1024)  # the flag wins over the manifest
    assert read.processes == [ProcessOptions(
        type="worker", memory_mb=512, disk_mb=2048, command=None, command_given=True,
        health_check_type="process", timeout=30)]
