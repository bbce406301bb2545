"""Secrets at rest and in transit: the envelope, sealed columns, migration 0005, the task
command in events, /metrics behind a token, the CLI's warning about plain http."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import requests
from alembic import command
from click.testing import CliRunner
from sqlalchemy import select, text

from cli.main import main as paas
from contracts.messages import InstanceSpec, TaskSpec, dump, seal, unseal
from contracts.secretbox import (
    PREFIX,
    SealedValueError,
    SecretBox,
    SecretKeyError,
    ensure_key,
    hide_arguments,
    key_path,
    load_box,
)
from contracts.settings import load
from controller.admin import alembic_config
from controller.models import Certificate, Domain, Release
from tests.unit.test_routes_api import certificate
from tests.unit.test_tasks import _push

SECRET = "hunter2-unique-7f3a"


# -- the envelope --------------------------------------------------------------------------
def test_a_sealed_value_opens_with_its_key_and_never_shows_the_value():
    box = SecretBox.generate()
    sealed = box.seal(SECRET)
    assert sealed.startswith(PREFIX) and SECRET not in sealed
    assert box.open(sealed) == SECRET
    assert box.seal(SECRET) != sealed  # a fresh nonce each time
    env = {"DB_PASSWORD": SECRET, "N": "1"}
    assert box.open_json(box.seal_json(env)) == env


def test_another_key_or_damage_or_clear_text_fails_with_a_sentence_for_operators():
    box, other = SecretBox.generate(), SecretBox.generate()
    sealed = box.seal(SECRET)
    with pytest.raises(SealedValueError, match="sealed with another key or is damaged"):
        other.open(sealed)
    with pytest.raises(SealedValueError, match="damaged"):
        box.open(sealed[:-4] + "AAAA")
    with pytest.raises(SealedValueError, match="does not start with"):
        box.open(SECRET)
    with pytest.raises(SecretKeyError, match="is not a secret key"):
        SecretBox("not a key")


def test_the_key_file_is_made_once_private_and_the_env_key_wins(tmp_path: Path):
    settings = load(env={}, data_dir=str(tmp_path / "data"))
    with pytest.raises(SecretKeyError, match="secret.key is missing: run 'paas-admin migrate'"):
        load_box(settings)
    path = ensure_key(settings)
    assert path == key_path(settings) == tmp_path / "data" / "secret.key"
    assert oct(path.stat().st_mode & 0o777) == "0o600"
    first = path.read_bytes()
    ensure_key(settings)
    assert path.read_bytes() == first and len(first.strip()) == 44  # 32 bytes, base64
    sealed = load_box(settings).seal(SECRET)
    from_env = load(env={"PAAS_SECRET_KEY": first.decode().strip(),
                         "PAAS_DATA_DIR": str(tmp_path / "elsewhere")})
    assert load_box(from_env).open(sealed) == SECRET
    assert SECRET not in repr(from_env) and first.decode().strip() not in repr(from_env)
    path.write_text("garbage\n")
    with pytest.raises(SecretKeyError, match=f"{path} is not a secret key"):
        load_box(settings)


def test_messages_carry_env_and_task_commands_sealed():
    box = SecretBox.generate()
    spec = InstanceSpec(instance_guid="i", app_guid="a", app_name="app", release=1,
                        process_type="web", index=0, image="img", command="python app.py",
                        memory_mb=64, env={"TOKEN": SECRET}, routes=[])
    wire = dump(seal(spec, box))
    assert SECRET not in json.dumps(wire) and wire["env"] == {}
    assert wire["command"] == "python app.py"  # a start command is not a secret
    assert unseal(InstanceSpec(**wire), box) == spec
    task = TaskSpec(task_guid="t", app_guid="a", app_name="app", release=1, image="img",
                    command=f"python manage.py reset --password {SECRET}", memory_mb=64,
                    env={"TOKEN": SECRET})
    wire = dump(seal(task, box))
    assert SECRET not in json.dumps(wire) and wire["command"] == ""
    assert unseal(TaskSpec(**wire), box) == task
    assert unseal(task, box) is task  # a message from before sealing runs as it came


@pytest.mark.parametrize("line, shown", [
    ("python manage.py migrate", "python (arguments hidden)"),
    ("ls", "ls"),
    (f"TOKEN={SECRET} ./reset.sh", "./reset.sh (arguments hidden)"),
    ("echo 'unbalanced", "echo (arguments hidden)"),
    (f"A={SECRET}", "(command hidden)"),
])
def test_a_command_is_recorded_by_its_program_only(line: str, shown: str):
    assert hide_arguments(line) == shown


# -- sealed columns and the migration --------------------------------------------------------
def _database_bytes(settings) -> bytes:
    db = Path(settings.data_dir) / "paas.db"
    return b"".join(p.read_bytes() for p in (db, Path(f"{db}-wal")) if p.exists())


def _add_certificate(env) -> tuple[str, str]:
    env.client.post("/v1/domains", json={"name": "example.com"})
    cert, key = certificate(["example.com"])
    r = env.client.put("/v1/certificates/example.com", json={"cert": cert, "key": key})
    assert r.status_code == 201, r.json
    return cert, key


def test_env_values_push_options_and_tls_keys_are_sealed_in_the_database(env):
    _push(env, "myapp", env_vars={"PUSHED": f"pushed-{SECRET}"})
    r = env.client.patch("/v1/apps/myapp/env", json={"set": {"DB_PASSWORD": SECRET}})
    assert r.status_code == 200 and r.json["changed"], r.json
    _, key = _add_certificate(env)
    raw = _database_bytes(env.settings)
    for value in (SECRET.encode(), b"pushed-", key.encode(), key.splitlines()[1].encode()):
        assert value not in raw
    with env.app.extensions["paas.engine"].connect() as conn:
        stored = conn.execute(text("SELECT env FROM releases")).scalars().all()
        stored_key = conn.execute(text("SELECT key_pem FROM certificates")).scalar_one()
    assert stored and all(json.loads(v).startswith(PREFIX) for v in stored)
    assert stored_key.startswith(PREFIX)
    # Reads are as before.
    assert env.client.get("/v1/apps/myapp/env").json["env"] == {
        "DB_PASSWORD": SECRET, "PUSHED": f"pushed-{SECRET}"}
    with env.app.extensions["paas.sessionmaker"]() as session:
        assert session.scalar(select(Certificate)).key_pem == key
    # The admin-only file modes.
    assert oct(os.stat(env.settings.data_dir).st_mode & 0o777) == "0o711"  # passed, not listed
    assert oct(os.stat(env.settings.blobstore_dir).st_mode & 0o777) == "0o700"
    assert oct(os.stat(Path(env.settings.data_dir) / "paas.db").st_mode & 0o777) == "0o600"


def test_the_env_event_and_log_line_name_variables_never_values(env):
    _push(env, "myapp")
    env.client.patch("/v1/apps/myapp/env", json={"set": {"DB_PASSWORD": SECRET}})
    events = env.client.get("/v1/apps/myapp/events").json
    assert "DB_PASSWORD" in json.dumps(events) and SECRET not in json.dumps(events)
    r = env.client.patch("/v1/apps/myapp/env", json={"set": {"1BAD": SECRET}})
    assert r.status_code == 400 and SECRET not in r.get_data(as_text=True)


def test_migration_0005_seals_existing_rows_and_the_downgrade_opens_them(env):
    _push(env, "myapp", env_vars={"DB_PASSWORD": SECRET})
    _, key = _add_certificate(env)
    env.app.extensions["paas.engine"].dispose()
    cfg = alembic_config(env.settings)
    command.downgrade(cfg, "0004")
    raw = _database_bytes(env.settings)
    assert SECRET.encode() in raw and key.splitlines()[1].encode() in raw  # as before 0005
    command.upgrade(cfg, "head")
    env.app.extensions["paas.engine"].dispose()
    raw = _database_bytes(env.settings)
    assert SECRET.encode() not in raw and key.splitlines()[1].encode() not in raw
    with env.app.extensions["paas.sessionmaker"]() as session:
        assert session.scalar(select(Release)).env == {"DB_PASSWORD": SECRET}
        assert session.scalar(select(Certificate).join(Domain)).key_pem == key
    command.upgrade(cfg, "head")  # again: nothing sealed twice
    with env.app.extensions["paas.sessionmaker"]() as session:
        assert session.scalar(select(Release)).env == {"DB_PASSWORD": SECRET}


def test_a_database_read_with_another_key_fails_with_a_sentence(env, tmp_path):
    _push(env, "myapp", env_vars={"DB_PASSWORD": SECRET})
    from controller.app import create_app

    other = env.settings.replace(secret_key_file=str(tmp_path / "other.key"))
    ensure_key(other)
    app = create_app(other, TESTING=True, REDIS=env.redis, CELERY=env.celery)
    with app.extensions["paas.sessionmaker"]() as session, \
            pytest.raises(SealedValueError, match="sealed with another key"):
        session.scalar(select(Release)).env  # noqa: B018
    client = app.test_client()
    client.environ_base["HTTP_AUTHORIZATION"] = f"Bearer {env.token}"
    r = client.get("/v1/apps/myapp/env")
    assert r.status_code == 503 and "cannot open the secrets it keeps" in r.json["error"]
    assert SECRET not in r.get_data(as_text=True)
    app.extensions["paas.engine"].dispose()


# -- the task command ------------------------------------------------------------------------
def test_a_tasks_arguments_stay_out_of_its_event_and_the_apps_log(env):
    from tests.unit.test_tasks import _agent

    _push(env, "myapp")
    _agent(env, "agent-a", 4096, 0)
    r = env.client.post("/v1/apps/myapp/tasks",
                        json={"command": f"python reset.py --password {SECRET}"})
    assert r.status_code == 201, r.json
    events = env.client.get("/v1/apps/myapp/events").json
    assert "python (arguments hidden)" in json.dumps(events)
    assert SECRET not in json.dumps(events)
    [(_, [spec], _)] = env.celery.sent
    assert SECRET not in json.dumps(spec)


@pytest.fixture
def fake_redis():  # streams, for the task tests above
    from tests.unit.test_tasks import StreamRedis

    return StreamRedis()


# -- /metrics ------------------------------------------------------------------------------
def test_metrics_need_an_admin_or_the_metrics_token(env, tmp_path):
    r = env.client.get("/metrics", headers={"Authorization": ""})
    assert r.status_code == 401 and r.is_json
    assert "/metrics needs a token" in r.json["error"]
    r = env.client.get("/metrics", headers={"Authorization": "Bearer wrong"})
    assert r.status_code == 401 and r.is_json
    assert env.client.get("/metrics").status_code == 200  # the admin token
    from controller.app import create_app

    scraper = env.settings.replace(metrics_token="scrape-me")
    app = create_app(scraper, TESTING=True, REDIS=env.redis, CELERY=env.celery)
    client = app.test_client()
    assert client.get("/metrics", headers={"Authorization": "Bearer scrape-me"}).status_code \
        == 200
    assert client.get("/metrics", headers={"Authorization": "Bearer scrape-m"}).status_code \
        == 401
    app.extensions["paas.engine"].dispose()


# -- the CLI's warning -----------------------------------------------------------------------
def _answer(*_args, **_kwargs) -> requests.Response:
    response = requests.Response()
    response.status_code = 200
    response._content = b'{"apps": []}'
    response.headers["Content-Type"] = "application/json"
    return response


@pytest.mark.parametrize("target, warned", [
    ("http://paas.example.test:8700", True),
    ("http://10.20.30.40:8700", True),
    ("https://paas.example.test", False),
    ("http://127.0.0.1:8700", False),
    ("http://localhost:8700", False),
    ("http://[::1]:8700", False),
])
def test_the_cli_warns_once_per_target_before_sending_a_token_over_plain_http(
        tmp_path, monkeypatch, target: str, warned: bool):
    home = tmp_path / "home"
    home.mkdir()
    (home / "config").write_text(json.dumps({"target": target, "token": "t0ken"}))
    monkeypatch.setenv("PAAS_HOME", str(home))
    sent: list[str] = []

    def request(self, method, url, **kwargs):
        sent.append(url)
        return _answer()

    monkeypatch.setattr(requests.Session, "request", request)  # nothing leaves this machine
    runner = CliRunner()
    first = runner.invoke(paas, ["apps"])
    assert first.exit_code == 0, first.output
    second = runner.invoke(paas, ["apps"])
    assert second.exit_code == 0 and len(sent) == 2
    words = "sends your API token to"
    assert (words in first.output) is warned
    assert words not in second.output  # once per target
    stored = json.loads((home / "config").read_text())
    assert stored["token"] == "t0ken" and stored["target"] == target
    assert stored.get("warned_plain_http", []) == ([target] if warned else [])


# -- make up's Redis -----------------------------------------------------------------------
def test_make_up_runs_its_own_redis_with_a_password_from_a_private_file(tmp_path: Path):
    from launcher.redis_server import config_text, has_password
    from launcher.up import own_redis

    settings = load(env={}, data_dir=str(tmp_path / "data"))
    given, server = own_redis(settings)
    assert server is not None and (server.host, server.port) == ("127.0.0.1", 6379)
    password_file = tmp_path / "data" / "redis.password"
    password = password_file.read_text().strip()
    assert len(password) == 64 and oct(password_file.stat().st_mode & 0o777) == "0o600"
    assert given.redis_url == f"redis://:{password}@127.0.0.1:6379/0"
    assert f'requirepass "{password}"' in config_text("127.0.0.1", 6379, password, tmp_path)
    again, _ = own_redis(settings)
    assert again.redis_url == given.redis_url  # the same password next time
    elsewhere, server = own_redis(settings.replace(redis_url="redis://127.0.0.1:6390/2"))
    assert server is not None and server.port == 6390
    assert elsewhere.redis_url == f"redis://:{password}@127.0.0.1:6390/2"
    theirs = settings.replace(redis_url="redis://:pw@10.0.0.9:6380/1")
    kept, none = own_redis(theirs)
    assert none is None and kept.redis_url == "redis://:pw@10.0.0.9:6380/1"
    assert has_password(kept.redis_url) and not has_password("redis://127.0.0.1:6379/0")
