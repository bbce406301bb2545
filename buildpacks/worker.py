"""``paas-stager``: the Celery worker on queue ``staging``."""

from __future__ import annotations

import logging

import docker
import redis
from celery import Celery

from contracts import settings as settings_mod
from contracts.celery_app import make_celery
from contracts.messages import STAGE_TASK, STAGING_QUEUE, StageRequest, dump
from contracts.settings import Settings


def create_worker_app(settings: Settings) -> Celery:
    from buildpacks.stager import Stager

    app = make_celery(settings, "paas-stager")
    state: dict[str, Stager] = {}

    def stager() -> Stager:
        if "s" not in state:
            # Reads (log streams, waits) may be silent for as long as staging may take.
            client = docker.from_env(timeout=int(settings.staging_timeout) + 60)
            state["s"] = Stager(settings, client,
                                redis.Redis.from_url(settings.redis_url))
        return state["s"]

    @app.task(name=STAGE_TASK, acks_late=True)
    def stage(request: dict) -> dict:
        return dump(stager().stage(StageRequest(**request)))

    return app


def main() -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    settings = settings_mod.load()
    app = create_worker_app(settings)
    app.Worker(
        queues=[STAGING_QUEUE],
        pool="threads",
        concurrency=2,
        hostname=f"stager-{settings.platform_id}@%h",
        loglevel="INFO",
        without_heartbeat=True,
        without_mingle=True,
        without_gossip=True,
    ).start()


if __name__ == "__main__":
    main()
