"""The Flask app factory. Nothing happens at import time."""

from __future__ import annotations

from typing import Any

import redis
from flask import Flask, g

from contracts import settings as settings_mod
from contracts.celery_app import make_celery
from contracts.secretbox import load_box
from contracts.settings import Settings
from controller.blobstore import Blobstore
from controller.db import make_engine, make_sessionmaker
from controller.models.sealed import use_secret_box


def create_app(settings: Settings | None = None, **test_config: Any) -> Flask:
    settings = settings or settings_mod.load()
    app = Flask("controller")
    app.config.update(
        PAAS_SETTINGS=settings,
        MAX_CONTENT_LENGTH=settings.max_upload_bytes + 1024 * 1024,
        JSON_SORT_KEYS=False,
    )
    app.config.update(test_config)
    # Rate limits first: a request over its caller's rate costs nothing more.
    from controller import ratelimit

    ratelimit.init_app(app)

    # The platform key seals env values and TLS keys in the database and in messages.
    box = load_box(settings)
    app.extensions["paas.secretbox"] = box
    engine = use_secret_box(make_engine(settings.sqlalchemy_url), box)
    # Under gevent a worker's SQLite writers must wait their turn cooperatively.
    from controller.sqlite_writers import serialize_writers

    app.extensions["paas.engine"] = serialize_writers(engine)
    app.extensions["paas.sessionmaker"] = make_sessionmaker(engine)
    app.extensions["paas.redis"] = test_config.get("REDIS") or redis.Redis.from_url(
        settings.redis_url, socket_timeout=10, socket_connect_timeout=3)
    from controller import appstream  # an app's events go to its stream when they commit

    appstream.install(app.extensions["paas.sessionmaker"], app.extensions["paas.redis"],
                      settings.app_stream_length)
    app.extensions["paas.celery"] = test_config.get("CELERY") or make_celery(settings)
    app.extensions["paas.blobstore"] = Blobstore(settings.blobstore_dir)

    @app.before_request
    def _open_session() -> None:
        g.db = app.extensions["paas.sessionmaker"]()

    @app.teardown_request
    def _close_session(_exc: BaseException | None) -> None:
        db = g.pop("db", None)
        if db is not None:
            db.close()

    from controller import metrics
    from controller.api import register_error_handlers, v1

    metrics.init_app(app)

    app.register_blueprint(v1)
    register_error_handlers(app)

    from controller.auth import Permission, requires

    @app.get("/")
    @requires(Permission.PUBLIC)
    def index():
        return {"name": "paas", "api": "/v1"}

    return app
