"""The platform admin of ``make up``: a user with a password shown once, and a token kept in the
data dir that can be rotated."""

from __future__ import annotations

from click.testing import CliRunner

from contracts.settings import load
from controller.admin import ADMIN_USER, admin_token_file, ensure_admin, main, migrate
from controller.app import create_app
from tests.unit.fakes import FakeCelery, FakeRedis


def _client(settings):
    app = create_app(settings, TESTING=True, REDIS=FakeRedis(), CELERY=FakeCelery())
    return app, app.test_client()


def test_the_admin_is_a_user_whose_password_is_shown_once_and_logs_in(tmp_path):
    settings = load(env={}, data_dir=str(tmp_path))
    migrate(settings)
    token, password = ensure_admin(settings)
    assert password and len(password) >= 16
    again, shown = ensure_admin(settings)
    assert again == token and shown is None  # the same token; the password is not kept
    assert admin_token_file(settings).stat().st_mode & 0o777 == 0o600
    app, client = _client(settings)
    try:
        me = client.get("/v1/whoami", headers={"Authorization": f"Bearer {token}"}).json
        assert me["user"] == ADMIN_USER and me["admin"] is True
        r = client.post("/v1/login", json={"username": ADMIN_USER, "password": password})
        assert r.status_code == 201 and r.json["user"] == {"username": "admin", "admin": True}
        headers = {"Authorization": f"Bearer {r.json['token']}"}
        r = client.put("/v1/user/password", headers=headers,
                       json={"current_password": password, "new_password": "a new secret"})
        assert r.status_code == 200, r.json
        r = client.post("/v1/login", json={"username": ADMIN_USER, "password": password})
        assert r.status_code == 401 and r.json["error"] == "the username or password is wrong."
    finally:
        app.extensions["paas.engine"].dispose()


def test_rotating_the_admin_token_ends_the_old_one(tmp_path):
    settings = load(env={}, data_dir=str(tmp_path))
    migrate(settings)
    old, _ = ensure_admin(settings)
    new, password = ensure_admin(settings, rotate=True)
    assert new != old and password is None
    assert admin_token_file(settings).read_text().strip() == new
    app, client = _client(settings)
    try:
        r = client.get("/v1/apps", headers={"Authorization": f"Bearer {old}"})
        assert r.status_code == 401 and "not valid" in r.json["error"]
        assert client.get("/v1/apps", headers={"Authorization": f"Bearer {new}"}).status_code \
            == 200
    finally:
        app.extensions["paas.engine"].dispose()


def test_paas_admin_create_token_makes_a_member_of_a_team(tmp_path, monkeypatch):
    monkeypatch.setenv("PAAS_DATA_DIR", str(tmp_path))
    result = CliRunner().invoke(main, ["create-token", "carol", "--team", "blue",
                                       "--role", "viewer"])
    assert result.exit_code == 0, result.output
    token = result.output.strip()
    settings = load(env={"PAAS_DATA_DIR": str(tmp_path)})
    app, client = _client(settings)
    try:
        me = client.get("/v1/whoami", headers={"Authorization": f"Bearer {token}"}).json
        assert me["teams"] == [{"name": "blue", "role": "viewer"}] and me["admin"] is False
    finally:
        app.extensions["paas.engine"].dispose()
    result = CliRunner().invoke(main, ["create-token", "Bad Name", "--team", "blue"])
    assert result.exit_code == 1 and "is not a valid user name" in result.output
