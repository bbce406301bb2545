"""The health manager process (``python -m controller.health``, ``paas-health``): one
:class:`~controller.health.manager.HealthManager` loop, its metrics, and garbage collection
while it is the active one."""

from __future__ import annotations

import logging
import signal
import threading

import redis

from contracts import keys
from contracts import settings as settings_mod
from contracts.celery_app import make_celery
from contracts.secretbox import load_box
from controller import gc
from controller.db import make_engine, make_sessionmaker
from controller.health.manager import HealthManager
from controller.metrics import HealthMetrics
from controller.models.sealed import use_secret_box


def main() -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    settings = settings_mod.load()
    engine = use_secret_box(make_engine(settings.sqlalchemy_url), load_box(settings))
    sessions = make_sessionmaker(engine)
    client = redis.Redis.from_url(settings.redis_url, socket_timeout=10)
    manager = HealthManager(settings, sessions, client, make_celery(settings))
    if settings.metrics_port_health:
        from prometheus_client import REGISTRY, start_http_server

        manager.metrics = HealthMetrics(REGISTRY)
        start_http_server(settings.metrics_port_health, addr=settings.metrics_host)
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    if settings.gc_interval_seconds > 0:  # garbage collection, by the active manager only
        threading.Thread(target=gc.run_every, daemon=True, args=(
            settings, sessions, stop,
            lambda: client.get(keys.HEALTH_LOCK) == manager.identity.encode())).start()
    manager.run(stop)


if __name__ == "__main__":
    main()
