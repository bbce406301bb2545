"""Fixtures shared by the unit tests."""

from __future__ import annotations

import pytest

from contracts.settings import load
from controller.admin import ensure_admin_token, migrate
from controller.app import create_app
from tests.unit.fakes import FakeCelery, FakeRedis


@pytest.fixture(autouse=True)
def cheap_passwords(monkeypatch: pytest.MonkeyPatch) -> None:
    """argon2id at its least cost in unit tests (they make and log in many users); what the
    platform uses is argon2-cffi's default, which tests/integration exercise."""
    from argon2 import PasswordHasher

    from controller import accounts

    cheap = PasswordHasher(time_cost=1, memory_cost=8, parallelism=1)
    monkeypatch.setattr(accounts, "_hasher", lambda: cheap)


@pytest.fixture
def fake_redis() -> FakeRedis:
    """The Redis stand-in ``env`` uses; a test module may override it."""
    return FakeRedis()


@pytest.fixture
def env(tmp_path, fake_redis):
    settings = load(env={}, data_dir=str(tmp_path), router_port=8080)
    migrate(settings)
    token = ensure_admin_token(settings)
    redis, celery = fake_redis, FakeCelery()
    app = create_app(settings, TESTING=True, REDIS=redis, CELERY=celery)
    client = app.test_client()
    client.environ_base["HTTP_AUTHORIZATION"] = f"Bearer {token}"
    yield type("Env", (), dict(settings=settings, client=client, redis=redis, celery=celery,
                               app=app, token=token))
    app.extensions["paas.engine"].dispose()
