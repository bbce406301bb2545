"""The controller API with a real SQLite database and stand-ins for Redis and Celery."""

from __future__ import annotations

import io
import json
import tarfile

import pytest

from contracts import keys
from contracts.messages import STAGE_TASK, StageResult, dump
from controller import staging
from controller.accounts import member_token
from controller.models import App, Build, Release, Role
from tests.unit.fakes import FakeCelery


def package(files: dict[str, str] | None = None, extra: tarfile.TarInfo | None = None) -> bytes:
    files = files if files is not None else {
        "requirements.txt": "flask\n", "Procfile": "web: gunicorn app:app\n"}
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        for name, text in files.items():
            data = text.encode()
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
        if extra is not None:
            tar.addfile(extra, io.BytesIO(b"x" * extra.size) if extra.size else None)
    return buf.getvalue()


def push(client, name: str, data: bytes | None = None, options: dict | None = None):
    form = {"options": json.dumps(options or {})}
    if data is not None:
        form["package"] = (io.BytesIO(data), "app.tar.gz")
    return client.post(f"/v1/apps/{name}/push", data=form, content_type="multipart/form-data")


def test_info_needs_no_token(env):
    response = env.client.get("/v1/info", headers={"Authorization": ""})
    assert response.status_code == 200
    assert response.json["domain"] == "localhost"


@pytest.mark.parametrize("header", ["", "Bearer", "Bearer nope", "Basic abc"])
def test_requests_without_a_valid_token_get_401(env, header):
    response = env.client.get("/v1/apps", headers={"Authorization": header})
    assert response.status_code == 401
    assert "paas login" in response.json["error"]


def test_push_creates_app_build_and_enqueues_staging(env):
    response = push(env.client, "myapp", package(), {"instances": 2})
    assert response.status_code == 201, response.json
    build = response.json["build"]
    assert build["state"] == "STAGING"
    [(name, args, queue)] = env.celery.sent
    assert name == STAGE_TASK and queue == "staging"
    assert args[0]["app_name"] == "myapp" and args[0]["build_guid"] == build["guid"]
    listed = env.client.get("/v1/apps").json["apps"]
    assert [a["name"] for a in listed] == ["myapp"]
    assert listed[0]["urls"] == ["http://myapp.localhost:8080"]


def test_push_with_invalid_name_is_refused(env):
    response = push(env.client, "My_App", package())
    assert response.status_code == 400
    assert "not a valid app name" in response.json["error"]
    assert env.celery.sent == []


def test_push_without_package_is_refused(env):
    response = push(env.client, "myapp", None)
    assert response.status_code == 400
    assert env.client.get("/v1/apps").json["apps"] == []


@pytest.mark.parametrize("entry, words", [
    (tarfile.TarInfo("../escape.txt"), "points outside the app folder"),
    (tarfile.TarInfo("/etc/passwd"), "points outside the app folder"),
])
def test_package_escaping_the_app_folder_is_refused(env, entry, words):
    entry.size = 1
    response = push(env.client, "myapp", package(extra=entry))
    assert response.status_code == 400
    assert words in response.json["error"]
    assert env.client.get("/v1/apps").json["apps"] == []  # nothing half-made
    assert not list((env.settings.blobstore_dir / "packages").glob("*"))


def test_symlink_out_of_the_app_is_refused(env):
    link = tarfile.TarInfo("data")
    link.type, link.linkname, link.size = tarfile.SYMTYPE, "../../etc/shadow", 0
    response = push(env.client, "myapp", package(extra=link))
    assert response.status_code == 400
    assert "symlink 'data' points outside" in response.json["error"]


def test_bad_options_are_refused(env):
    response = push(env.client, "myapp", package(), {"instances": -1})
    assert response.status_code == 400
    assert "instances must be" in response.json["error"]


def test_push_when_the_queue_is_down_leaves_nothing(env):
    env.app.extensions["paas.celery"] = FakeCelery(fail=True)
    response = push(env.client, "myapp", package())
    assert response.status_code == 503
    assert "redis-server" in response.json["error"]
    assert env.client.get("/v1/apps").json["apps"] == []


def test_unknown_app_is_404_with_a_hint(env):
    response = env.client.get("/v1/apps/ghost")
    assert response.status_code == 404
    assert "paas apps" in response.json["error"]


def _settle(env, build_guid: str, result: StageResult) -> None:
    env.redis.set(keys.build_result(build_guid), json.dumps(dump(result)))
    sessions = env.app.extensions["paas.sessionmaker"]
    with sessions() as session:
        from sqlalchemy import select

        build = session.scalar(select(Build).where(Build.guid == build_guid))
        assert staging.settle(session, env.redis, env.settings, build)
        assert not staging.settle(session, env.redis, env.settings, build)  # idempotent


def test_successful_build_makes_a_release(env):
    build = push(env.client, "myapp", package(), {"instances": 3}).json["build"]
    _settle(env, build["guid"], StageResult(
        ok=True, droplet_digest="d" * 64, droplet_path="droplets/d.tar", droplet_size=10,
        image="paas/droplet:ddd", buildpack="python", process_types={"web": "gunicorn app:app"}))
    shown = env.client.get("/v1/apps/myapp").json
    assert shown["release"]["version"] == 1
    assert shown["release"]["status"] == "DEPLOYING"
    assert shown["instances_desired"] == 3
    assert env.client.get(f"/v1/builds/{build['guid']}").json["state"] == "SUCCEEDED"
    assert env.client.get("/v1/apps/myapp/releases/1").json["current"] is True


def test_failed_first_build_removes_the_app(env):
    build = push(env.client, "myapp", package()).json["build"]
    _settle(env, build["guid"], StageResult(ok=False, error="no buildpack recognises this app"))
    assert env.client.get("/v1/apps/myapp").status_code == 404
    assert not list((env.settings.blobstore_dir / "packages").glob("*"))


def test_failed_later_build_keeps_the_release(env):
    first = push(env.client, "myapp", package()).json["build"]
    _settle(env, first["guid"], StageResult(
        ok=True, droplet_digest="d" * 64, droplet_path="droplets/d.tar", image="img",
        process_types={"web": "x"}))
    second = push(env.client, "myapp", package()).json["build"]
    _settle(env, second["guid"], StageResult(ok=False, error="pip failed"))
    shown = env.client.get("/v1/apps/myapp").json
    assert shown["release"]["version"] == 1
    assert env.client.get(f"/v1/builds/{second['guid']}").json["error"] == "pip failed"


def test_delete_removes_the_app(env):
    push(env.client, "myapp", package())
    assert env.client.delete("/v1/apps/myapp").status_code == 200
    assert env.client.get("/v1/apps/myapp").status_code == 404
    assert ("paas:converge", "1") in env.redis.published


def test_a_developer_cannot_touch_another_teams_app(env):
    push(env.client, "theirs", package())
    sessions = env.app.extensions["paas.sessionmaker"]
    with sessions() as session:
        secret = member_token(session, "dev-" + "other", "other", Role.DEVELOPER)
    headers = {"Authorization": f"Bearer {secret}"}
    for r in (env.client.get("/v1/apps/theirs", headers=headers),
              env.client.delete("/v1/apps/theirs", headers=headers)):
        assert r.status_code == 404, r.json
        assert r.json["error"] == "there is no app named 'theirs': 'paas apps' lists yours."
    assert env.client.get("/v1/apps", headers=headers).json["apps"] == []
    with sessions() as session:
        assert session.query(App).count() == 1
        assert session.query(Release).count() == 0


def buildpack_tarball(files: dict[str, str], top: str = "") -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        for name, text in files.items():
            data = text.encode()
            info = tarfile.TarInfo(f"{top}{name}")
            info.size, info.mode = len(data), 0o755
            tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def create_buildpack(client, name: str, data: bytes, headers=None):
    return client.post("/v1/buildpacks", data={"name": name, "buildpack": (
        io.BytesIO(data), "bp.tar.gz")}, content_type="multipart/form-data", headers=headers)


def test_admin_registers_lists_and_deletes_buildpacks(env):
    good = buildpack_tarball({"bin/compile": "#!/bin/sh\n", "bin/detect": "#!/bin/sh\n"},
                             top="mybp-main/")
    assert create_buildpack(env.client, "mine", good).status_code == 201
    listed = env.client.get("/v1/buildpacks").json["buildpacks"]
    assert [b["name"] for b in listed][-1] == "mine"
    assert listed[0] == {"name": "python", "position": 1, "kind": "built-in"}
    again = create_buildpack(env.client, "mine", good)
    assert again.status_code == 409 and "already a buildpack" in again.json["error"]
    # A push's staging request lists it for detection.
    push(env.client, "myapp", package())
    assert env.celery.sent[-1][1][0]["custom_buildpacks"][0]["name"] == "mine"
    assert env.client.delete("/v1/buildpacks/mine").status_code == 200
    assert env.client.delete("/v1/buildpacks/mine").status_code == 404


def test_buildpack_without_compile_is_refused(env):
    bad = buildpack_tarball({"README": "no scripts"})
    response = create_buildpack(env.client, "broken", bad)
    assert response.status_code == 400 and "no bin/compile" in response.json["error"]


def test_only_admins_register_buildpacks(env):
    sessions = env.app.extensions["paas.sessionmaker"]
    with sessions() as session:
        secret = member_token(session, "dev", "default", Role.DEVELOPER)
    good = buildpack_tarball({"bin/compile": "#!/bin/sh\n"})
    response = create_buildpack(env.client, "mine", good,
                                headers={"Authorization": f"Bearer {secret}"})
    assert response.status_code == 403 and "only platform admins" in response.json["error"]


def test_push_with_an_uploaded_buildpack(env):
    bp = buildpack_tarball({"bin/compile": "#!/bin/sh\n"})
    form = {"options": json.dumps({"buildpack": "mine"}), "package": (
        io.BytesIO(package()), "app.tar.gz"), "buildpack": (io.BytesIO(bp), "bp.tar.gz")}
    response = env.client.post("/v1/apps/myapp/push", data=form,
                               content_type="multipart/form-data")
    assert response.status_code == 201, response.json
    request = env.celery.sent[-1][1][0]
    assert request["buildpack"] == "mine"
    assert request["buildpack_blob"].startswith("buildpacks/")


def test_listing_apps_takes_as_many_queries_for_many_apps_as_for_few(env):
    from sqlalchemy import event

    def queries_to_list() -> tuple[int, list[dict]]:
        seen: list[str] = []
        engine = env.app.extensions["paas.engine"]

        def count(conn, cursor, statement, *args) -> None:
            seen.append(statement)

        event.listen(engine, "before_cursor_execute", count)
        try:
            listed = env.client.get("/v1/apps").json["apps"]
        finally:
            event.remove(engine, "before_cursor_execute", count)
        return len(seen), listed

    def add(name: str, fail_later: bool = False) -> None:
        build = push(env.client, name, package()).json["build"]
        _settle(env, build["guid"], StageResult(
            ok=True, droplet_digest=name[-1] * 64, droplet_path="droplets/d.tar",
            droplet_size=10, image="paas/droplet:x", buildpack="python",
            process_types={"web": "gunicorn app:app"}))
        if fail_later:  # a second release that failed to deploy: the first still serves
            again = push(env.client, name, package()).json["build"]
            _settle(env, again["guid"], StageResult(
                ok=True, droplet_digest="f" * 64, droplet_path="droplets/f.tar",
                droplet_size=10, image="paas/droplet:f", buildpack="python",
                process_types={"web": "gunicorn app:app"}))
            with env.app.extensions["paas.sessionmaker"]() as session:
                from sqlalchemy import select

                app = session.scalar(select(App).where(App.name == name))
                first, second = sorted(session.scalars(
                    select(Release).where(Release.app_id == app.id)), key=lambda r: r.version)
                second.status, second.error, app.release_id = "FAILED", "it crashed", first.id
                session.commit()

    add("app-a")
    add("app-b", fail_later=True)
    few, _ = queries_to_list()
    for n in range(8):
        add(f"many-{n}", fail_later=n % 2 == 0)
    many, listed = queries_to_list()
    assert many == few, (few, many)
    assert len(listed) == 10
    by_name = {a["name"]: a for a in listed}
    assert by_name["app-b"]["release"]["version"] == 1
    assert by_name["app-b"]["release"]["buildpack"] == "python"
    assert by_name["many-0"]["failed_release"]["version"] == 2
    assert "failed_release" not in by_name["many-1"]
    assert by_name["many-1"]["urls"] == ["http://many-1.localhost:8080"]
    assert by_name["many-1"]["team"] and by_name["many-1"]["processes"][0]["type"] == "web"
