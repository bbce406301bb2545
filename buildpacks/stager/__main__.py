"""The stager process (``python -m buildpacks.stager``, ``paas-stager``): the Celery worker
on queue ``staging``, staging each build with :class:`buildpacks.stager.staging.Stager`."""

from __future__ import annotations

import logging
import time
from typing import Any

import docker
import redis
from celery import Celery

from contracts import settings as settings_mod
from contracts.celery_app import make_celery
from contracts.messages import STAGE_TASK, STAGING_QUEUE, StageRequest, dump
from contracts.settings import Settings


def create_worker_app(settings: Settings, metrics_registry: Any = None) -> Celery:
    """The stager's Celery app; staging durations go to ``metrics_registry`` (a
    ``prometheus_client`` registry) when given."""
    from prometheus_client import Histogram

    from buildpacks.stager.staging import Stager

    app = make_celery(settings, "paas-stager")
    state: dict[str, Stager] = {}
    durations = Histogram("paas_staging_seconds", "Time to stage a build, by outcome",
                          ["outcome"], registry=metrics_registry,
                          buckets=(1, 2, 5, 10, 20, 30, 60, 120, 300, 600, 900, 1800))
    for outcome in ("succeeded", "failed", "error"):  # every series shows from the start
        durations.labels(outcome)

    def stager() -> Stager:
        if "s" not in state:
            # Reads (log streams, waits) may be silent for as long as staging may take.
            client = docker.from_env(timeout=int(settings.staging_timeout) + 60)
            state["s"] = Stager(settings, client,
                                redis.Redis.from_url(settings.redis_url))
        return state["s"]

    @app.task(name=STAGE_TASK, acks_late=True)
    def stage(request: dict) -> dict:
        started, outcome = time.monotonic(), "error"
        try:
            result = stager().stage(StageRequest(**request))
            outcome = "succeeded" if result.ok else "failed"
            return dump(result)
        finally:
            durations.labels(outcome).observe(time.monotonic() - started)

    return app


def main() -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    settings = settings_mod.load()
    registry = None
    if settings.metrics_port_stager:
        from prometheus_client import REGISTRY, start_http_server

        registry = REGISTRY
        start_http_server(settings.metrics_port_stager, addr=settings.metrics_host)
    app = create_worker_app(settings, registry)
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
