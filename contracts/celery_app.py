"""The one Celery application every process builds, from settings, with no tasks of its own."""

from __future__ import annotations

from celery import Celery

from contracts.messages import STAGING_QUEUE
from contracts.settings import Settings


def make_celery(settings: Settings, name: str = "paas") -> Celery:
    app = Celery(name, broker=settings.redis_url)
    app.conf.update(
        task_default_queue=STAGING_QUEUE,
        task_serializer="json",
        accept_content=["json"],
        task_acks_late=True,
        task_ignore_result=True,
        task_reject_on_worker_lost=True,
        worker_prefetch_multiplier=1,
        broker_connection_retry_on_startup=True,
        worker_hijack_root_logger=False,
        worker_redirect_stdouts=False,
        broker_transport_options={"visibility_timeout": 3600},
    )
    return app
