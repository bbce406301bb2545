"""``paas-agent``: a Celery worker on the agent's own queue, plus the monitor loop."""

from __future__ import annotations

import logging
import threading

import docker
import redis
from celery import Celery

from contracts import settings as settings_mod
from contracts.celery_app import make_celery
from contracts.messages import (
    RUN_TASK_TASK,
    START_INSTANCE_TASK,
    STOP_INSTANCE_TASK,
    InstanceSpec,
    TaskSpec,
    agent_queue,
)
from contracts.settings import Settings
from dea_agent.agent import Agent

log = logging.getLogger("paas.agent")


def create_worker_app(settings: Settings, agent: Agent) -> Celery:
    app = make_celery(settings, f"paas-agent-{settings.agent_id}")

    @app.task(name=START_INSTANCE_TASK, acks_late=True)
    def start_instance(spec: dict) -> None:
        agent.start(InstanceSpec(**spec))

    @app.task(name=STOP_INSTANCE_TASK, acks_late=True)
    def stop_instance(instance_guid: str) -> None:
        agent.stop(instance_guid)

    @app.task(name=RUN_TASK_TASK)  # not acks_late: a one-off command runs at most once
    def run_task(spec: dict) -> None:
        agent.tasks.start(TaskSpec(**spec))

    return app


def main() -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    settings = settings_mod.load()
    agent = Agent(settings, docker.from_env(timeout=120),
                  redis.Redis.from_url(settings.redis_url, socket_timeout=10))
    if settings.metrics_port_agent:
        from prometheus_client import REGISTRY, start_http_server

        from dea_agent.stats import CapacityCollector

        REGISTRY.register(CapacityCollector(agent.heartbeat))
        start_http_server(settings.metrics_port_agent, addr=settings.metrics_host)
    stop = threading.Event()
    monitor = threading.Thread(target=agent.run, args=(stop,), name="monitor", daemon=True)
    monitor.start()
    app = create_worker_app(settings, agent)
    try:
        app.Worker(
            queues=[agent_queue(settings.agent_id)],
            pool="threads",
            concurrency=4,
            hostname=f"{settings.agent_id}-{settings.platform_id}@%h",
            loglevel="INFO",
            without_heartbeat=True,
            without_mingle=True,
            without_gossip=True,
        ).start()
    finally:
        stop.set()
        agent.wake.set()
        monitor.join(timeout=5)
        log.info("agent stopped; its instances keep running and are re-adopted on restart")


if __name__ == "__main__":
    main()
